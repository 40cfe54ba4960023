"""Whole-network throughput: ResNet-50 against its ASAP, FLC, BlurPool and FFT-ASAP versions, ResNet-18
against its ASAP and FLC versions, and the CIFAR-size ResNet-18 against its ASAP and FLC versions (at 32x32).
Each converted model can also be timed with the pooling placed after the strided convolutions
(``pool_positions``; label suffix :data:`AFTER_SUFFIX`), in the same run as the paper's placement.

Models are timed interleaved (each round runs every model in turn, inference then a training step),
so drifts of a shared machine hit all of them alike; the median over rounds is reported with ratios
against the family's baseline (``resnet50`` or ``resnet18_cifar``) measured in the same run, each with its
spread over the rounds (:mod:`timm_asap_lab.tools.timing`); a target on a ratio whose rounds disagree is reported as
unreliable, not as met or not met.
:func:`profile_extra_time` shows where a converted model's extra time goes (torch.profiler, per
operator and per pooling module). Peak memory: CUDA ``max_memory_allocated``
per model and pass; on the CPU the peak resident set size of a fresh process doing one training
step (:func:`cpu_peak_rss`), since the CPU allocator has no per-model counter.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from timm_asap.models.convert import POOL_POSITIONS, asapify
from timm_asap_lab.tools.timing import PairedRatio, paired_ratio

__all__ = ['MODELS', 'FAMILIES', 'PLACEABLE', 'AFTER_SUFFIX', 'build_model', 'placed_labels', 'family_of',
           'benchmark_models', 'cpu_peak_rss', 'format_table', 'target_checks', 'DEFAULT_ROUNDS', 'row_ratio',
           'profile_extra_time', 'format_profile']

BASELINE = 'resnet50'
#: timed rounds by default: enough for the ratios' interval to settle a verdict on a quiet machine
#: (docs/benchmarks.md: how it was measured)
DEFAULT_ROUNDS = 9
# label -> how to build it (pretrained=False; the weights do not change the timing)
MODELS: dict[str, Callable[[], nn.Module]] = {
    'resnet50': lambda: timm.create_model('resnet50'),
    'resnet50_asap': lambda: timm.create_model('resnet50_asap'),
    'resnet50_flc': lambda: timm.create_model('resnet50_flc'),
    'resnetaa50 (BlurPool)': lambda: timm.create_model('resnetaa50'),
    'resnet50_asap_fft': lambda: asapify(timm.create_model('resnet50'), pool='asap_fft'),
    'resnet18': lambda: timm.create_model('resnet18'),
    'resnet18_asap': lambda: timm.create_model('resnet18_asap'),
    'resnet18_flc': lambda: timm.create_model('resnet18_flc'),
    'resnet18_cifar': lambda: timm.create_model('resnet18_cifar'),
    'resnet18_cifar_asap': lambda: timm.create_model('resnet18_cifar_asap'),
    'resnet18_cifar_flc': lambda: timm.create_model('resnet18_cifar_flc'),
}
#: family -> its labels in :data:`MODELS`, the baseline first (the paper's placement; see :func:`placed_labels`)
FAMILIES: dict[str, list[str]] = {
    'resnet50': ['resnet50', 'resnet50_asap', 'resnet50_flc', 'resnetaa50 (BlurPool)', 'resnet50_asap_fft'],
    'resnet18': ['resnet18', 'resnet18_asap', 'resnet18_flc'],
    'resnet18_cifar': ['resnet18_cifar', 'resnet18_cifar_asap', 'resnet18_cifar_flc'],
}
#: the registered variants that are also timed with ``pool_position='after'``, as ``<name>`` + :data:`AFTER_SUFFIX`
PLACEABLE = ('resnet50_asap', 'resnet50_flc', 'resnet18_asap', 'resnet18_flc', 'resnet18_cifar_asap',
             'resnet18_cifar_flc')
AFTER_SUFFIX = ' (pool after)'
MODELS.update({f"{name}{AFTER_SUFFIX}": functools.partial(timm.create_model, name, pool_position='after')
               for name in PLACEABLE})


def placed_labels(labels: list[str], pool_positions: tuple[str, ...] = ('before',)) -> list[str]:
    """The labels to time for ``pool_positions``: each :data:`PLACEABLE` label as itself (``'before'``) and/or
    its ``pool_position='after'`` label right after it; models without a placement (baselines, BlurPool, the
    FFT formulation) as themselves.

    Raises:
        ValueError: an unknown or empty ``pool_positions``.
    """
    bad = [p for p in pool_positions if p not in POOL_POSITIONS]
    if bad or not pool_positions:
        raise ValueError(f"pool_positions must be a non-empty selection of {list(POOL_POSITIONS)}, got "
                         f"{list(pool_positions)}")
    out = []
    for label in labels:
        if label not in PLACEABLE:
            out.append(label)
            continue
        out += [label] if 'before' in pool_positions else []
        out += [f"{label}{AFTER_SUFFIX}"] if 'after' in pool_positions else []
    return out


def family_of(label: str) -> str | None:
    """The :data:`FAMILIES` key a label (an after-placement label included) belongs to; None if none."""
    base = label[:-len(AFTER_SUFFIX)] if label.endswith(AFTER_SUFFIX) else label
    return next((f for f, labels in FAMILIES.items() if base in labels), None)


def build_model(label: str) -> nn.Module:
    """Build one of :data:`MODELS` by label."""
    if label not in MODELS:
        raise ValueError(f"unknown benchmark model {label!r}; allowed: {list(MODELS)}")
    return MODELS[label]()


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class _Runner:
    """One model with its optimizer and data, ready for timed inference and training steps."""

    def __init__(self, label, device, dtype, batch_size, img_size, channels_last, compile_):
        self.label, self.device, self.dtype = label, device, dtype
        self.model = build_model(label).to(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=memory_format)
        self.x = torch.randn(batch_size, 3, img_size, img_size, device=device).to(memory_format=memory_format)
        self.y = torch.randint(0, self.model.num_classes, (batch_size,), device=device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.fn = torch.compile(self.model) if compile_ else self.model
        self.autocast = dtype != torch.float32

    def _ctx(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._ctx():
            self.fn(self.x)

    def train(self) -> None:
        self.model.train()
        with self._ctx():
            loss = F.cross_entropy(self.fn(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, what: str, iters: int) -> tuple[float, int | None]:
        """Median seconds per iteration of ``iters`` calls, and the CUDA peak bytes (None on CPU)."""
        step = self.infer if what == 'infer' else self.train
        cuda = self.device.type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(iters):
            _sync(self.device)
            start = time.perf_counter()
            step()
            _sync(self.device)
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(self.device) if cuda else None
        return statistics.median(times), peak


def benchmark_models(
        device: str | torch.device = 'cpu',
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        img_size: int = 224,
        channels_last: bool = False,
        compile_: bool = False,
        models: list[str] | None = None,
        rounds: int = DEFAULT_ROUNDS,
        iters: int = 1,
        warmup: int = 1,
        passes: tuple[str, ...] = ('infer', 'train'),
        progress: bool = True,
        family: str = 'resnet50',
        pool_positions: tuple[str, ...] = ('before',),
) -> list[dict]:
    """Time inference and training steps of the models, interleaved, and compare with the family's baseline.

    Args:
        device: ``'cpu'`` or ``'cuda'``.
        dtype: ``torch.float32``, or a half type used through autocast (``bfloat16`` on CUDA).
        batch_size: images per step.
        img_size: square input size.
        channels_last: model and input in channels_last.
        compile_: wrap each model in ``torch.compile`` (compilation happens in the warm-up rounds).
        models: labels of the family's :data:`MODELS` (default: all); the baseline is always included.
        rounds: timed rounds; each runs every model's passes ``iters`` times; the median is reported.
        iters: steps per model and pass in a round.
        warmup: untimed rounds first (compilation, allocator, cuDNN autotuning).
        passes: ``'infer'`` and/or ``'train'``.
        progress: show a tqdm bar.
        family: ``'resnet50'``, ``'resnet18'`` or ``'resnet18_cifar'`` (see :data:`FAMILIES`).
        pool_positions: placements of the converted models (:func:`placed_labels`): ``('before',)`` (the
            paper's, default), ``('after',)`` or both, each ratio against the baseline of the same run.

    Returns:
        One row per (model, pass): ``device``, ``dtype``, ``channels_last``, ``compile``, ``model``,
        ``pass``, ``ms`` (median per step), ``img_per_s``, ``baseline``, ``ratio_vs_baseline`` (throughput
        ratio: median over rounds of the baseline's time / this model's time in the same round; also as
        ``ratio_vs_resnet50`` for the resnet50 family), ``ratio_spread`` (``median``, ``min``, ``max``,
        ``rounds`` and the median's ``interval`` of those per-round ratios, :meth:`PairedRatio.as_dict`),
        ``round_ms`` (per-round times), ``peak_mb`` (CUDA only, else None).

    Raises:
        ValueError: an unknown family, a model of another family, or unknown ``pool_positions``.
    """
    device = torch.device(device)
    if family not in FAMILIES:
        raise ValueError(f"unknown benchmark family {family!r}; allowed: {list(FAMILIES)}")
    labels = list(models or FAMILIES[family])
    foreign = [m for m in labels if m not in FAMILIES[family]]
    if foreign:
        raise ValueError(f"models {foreign} are not of the {family} family; allowed: {FAMILIES[family]}")
    baseline = FAMILIES[family][0]
    if baseline not in labels:
        labels.insert(0, baseline)
    labels = placed_labels(labels, tuple(pool_positions))
    # every model is a ResNet sharing one forward: each compiled (model, mode) is a recompile of it
    # (the setting is named cache_size_limit before torch 2.7)
    config = torch._dynamo.config
    limit_name = 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'
    limit = max(getattr(config, limit_name), 2 * len(labels) * len(passes) + 2)
    with config.patch(**{limit_name: limit}):
        return _benchmark(device, dtype, batch_size, img_size, channels_last, compile_, labels, rounds, iters,
                          warmup, passes, progress, baseline)


def _benchmark(device, dtype, batch_size, img_size, channels_last, compile_, labels, rounds, iters, warmup, passes,
               progress, baseline=BASELINE) -> list[dict]:
    from tqdm.auto import tqdm

    runners = [_Runner(label, device, dtype, batch_size, img_size, channels_last, compile_) for label in labels]
    times = {(r.label, p): [] for r in runners for p in passes}
    peaks: dict[tuple[str, str], int] = {}
    total = (warmup + rounds) * len(runners) * len(passes)
    with tqdm(total=total, desc=f'{device.type} {str(dtype)[6:]} compile={compile_}', disable=not progress) as bar:
        for round_ in range(warmup + rounds):
            for runner in runners:
                for pass_ in passes:
                    sec, peak = runner.timed(pass_, iters if round_ >= warmup else 1)
                    if round_ >= warmup:
                        times[(runner.label, pass_)].append(sec)
                        if peak is not None:
                            peaks[(runner.label, pass_)] = max(peaks.get((runner.label, pass_), 0), peak)
                    bar.update(1)
    rows = []
    for pass_ in passes:
        base = times[(baseline, pass_)]
        for runner in runners:
            own = times[(runner.label, pass_)]
            sec = statistics.median(own)
            peak = peaks.get((runner.label, pass_))
            paired = paired_ratio(base, own)
            ratio = round(paired.median, 3)
            rows.append(dict(
                device=device.type, dtype=str(dtype).replace('torch.', ''), channels_last=channels_last,
                compile=compile_, batch=batch_size, img_size=img_size, model=runner.label, **{'pass': pass_},
                ms=round(sec * 1e3, 1), img_per_s=round(batch_size / sec, 2), baseline=baseline,
                ratio_vs_baseline=ratio, **({'ratio_vs_resnet50': ratio} if baseline == BASELINE else {}),
                ratio_spread=paired.as_dict(), round_ms=[round(t * 1e3, 4) for t in own],
                peak_mb=round(peak / 2 ** 20) if peak is not None else None))
    del runners
    return rows


def row_ratio(row: dict, reference: dict) -> PairedRatio:
    """The throughput of ``row``'s model relative to ``reference``'s, per round (both rows of one run)."""
    return paired_ratio(reference['round_ms'], row['round_ms'])


def _child_peak_rss(label: str, batch_size: int, img_size: int) -> dict:
    """In this (fresh) process: RSS before and peak after one training step of ``label`` on the CPU."""
    model = build_model(label)
    runner_x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, model.num_classes, (batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    with open('/proc/self/statm') as f:
        before = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    model.train()
    F.cross_entropy(model(runner_x), y).backward()
    opt.step()
    # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's peak across exec)
    with open('/proc/self/status') as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) * 1024
    return dict(model=label, rss_before_mb=round(before / 2 ** 20), peak_rss_mb=round(peak / 2 ** 20),
                step_mb=round((peak - before) / 2 ** 20))


def cpu_peak_rss(label: str, batch_size: int = 32, img_size: int = 224, threads: int | None = None) -> dict:
    """Peak resident memory of a fresh process doing one CPU training step of ``label``.

    Returns:
        ``model``, ``rss_before_mb`` (after building model and batch), ``peak_rss_mb`` and
        ``step_mb`` (their difference: activations, gradients and optimizer state of the step).

    Raises:
        RuntimeError: the child process failed (its stderr is included).
    """
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    code = ('import json, sys; from timm_asap_lab.tools.benchmark_models import _child_peak_rss; '
            'print(json.dumps(_child_peak_rss(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))')
    proc = subprocess.run([sys.executable, '-c', code, label, str(batch_size), str(img_size)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child for {label!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread_cell(row: dict) -> str:
    spread = row.get('ratio_spread')
    if not spread:
        return f"{row['ratio_vs_baseline']:.2f}x"
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"


def format_table(rows: list[dict], rss: list[dict] | None = None) -> str:
    """Markdown: one line per (setting, model) with both passes' throughput and ratios (median, and the
    lowest and highest of the per-round ratios in brackets)."""
    rss_by = {r['model']: r for r in (rss or [])}
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r['device'], r['dtype'], r['channels_last'], r['compile'], r['model'], r['batch'], r['img_size'])
        groups.setdefault(key, {})[r['pass']] = r
    mem_head = ('peak MB (infer / train)' if any(r['peak_mb'] is not None for r in rows)
                else 'CPU train step: peak RSS MB (step\'s own MB)')
    lines = [f"| device | dtype | channels_last | compile | batch x size | model | infer img/s | infer vs baseline | "
             f"train img/s | train vs baseline | {mem_head} |",
             '|---|---|---|---|---|---|---:|---:|---:|---:|---:|']
    for (device, dtype, cl, comp, model, batch, size), p in groups.items():
        cells = []
        for pass_ in ('infer', 'train'):
            r = p.get(pass_)
            cells += [f"{r['img_per_s']:.1f}", f"{_spread_cell(r)} vs {r['baseline']}"] if r else ['', '']
        if any(r['peak_mb'] is not None for r in p.values()):
            mem = ' / '.join(str(p[k]['peak_mb']) if k in p else '' for k in ('infer', 'train'))
        else:
            m = rss_by.get(model)
            mem = f"{m['peak_rss_mb']} ({m['step_mb']})" if m else ''
        lines.append(f"| {device} | {dtype} | {cl} | {comp} | {batch} x {size} | {model} | " + ' | '.join(cells)
                     + f" | {mem} |")
    return '\n'.join(lines)


def target_checks(rows: list[dict]) -> list[str]:
    """The speed targets, each as a line with the measured ratio, its spread over rounds and the verdict.

    Targets: resnet50_asap >= 0.9x resnet50 on CPU (float32) and >= 0.95x on CUDA (bfloat16,
    channels_last); resnet50_asap >= 1.8x the FFT formulation on CPU. The verdict is ``met``, ``NOT met``
    or ``unreliable: <why>`` (:meth:`timm_asap_lab.tools.timing.PairedRatio.verdict`: too few rounds, rounds that
    disagree, or a target inside the median's interval).
    """
    out = []
    by = {(r['device'], r['dtype'], r['channels_last'], r['compile'], r['model'], r['pass']): r for r in rows
          if r.get('baseline', BASELINE) == BASELINE}
    for (device, dtype, cl, comp, model, pass_), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if model != 'resnet50_asap':
            continue
        setting = f"{device} {dtype} channels_last={cl} compile={comp} {pass_}"
        if device == 'cpu':
            goal = 0.9
            fft = by.get((device, dtype, cl, comp, 'resnet50_asap_fft', pass_))
            if fft:
                speedup = row_ratio(r, fft)
                out.append(f"{setting}: asap vs FFT formulation {speedup.describe()} (target >= 1.8x): "
                           f"{speedup.verdict(1.8)}")
        else:
            goal = 0.95 if (dtype == 'bfloat16' and cl) else None
        base = by.get((device, dtype, cl, comp, BASELINE, pass_))
        if goal is not None and base is not None:
            # three decimals: a ratio just under the target must not print as the target itself
            ratio = row_ratio(r, base)
            out.append(f"{setting}: resnet50_asap / resnet50 throughput {ratio.describe()} "
                       f"(target >= {goal}x): {ratio.verdict(goal)}")
    return out


def _pool_modules(model: nn.Module) -> list[nn.Module]:
    """The spectral (and BlurPool) pooling modules of a model: the layers a conversion adds."""
    from timm.layers import BlurPool2d

    from timm_asap.layers.create import POOL_LAYERS
    return [m for m in model.modules() if isinstance(m, (*POOL_LAYERS.values(), BlurPool2d))]


def _profiled_steps(label: str, device: torch.device, dtype: torch.dtype, batch_size: int, img_size: int,
                    channels_last: bool, steps: int) -> tuple[dict[str, dict], dict[str, float]]:
    """Per-operator times (ms per step) of ``steps`` training steps of one model, and per pooling-module type."""
    from torch.profiler import ProfilerActivity, profile, record_function

    runner = _Runner(label, device, dtype, batch_size, img_size, channels_last, False)
    handles, scopes = [], []
    for module in _pool_modules(runner.model):  # one profiler range around every pooling forward
        name = f"pool:{type(module).__name__}"
        handles.append(module.register_forward_pre_hook(
            lambda m, a, n=name: scopes.append(record_function(n).__enter__())))
        handles.append(module.register_forward_hook(lambda m, a, o: scopes.pop().__exit__(None, None, None)))
    for _ in range(2):  # warm-up: allocator, cuDNN, the spectral matrices
        runner.train()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.train()
        _sync(device)
    for h in handles:
        h.remove()
    cuda = device.type == 'cuda'
    ops, modules = {}, {}
    for ev in prof.key_averages():
        # device time where there is a device (kernels), else CPU self time; microseconds -> ms per step
        own = (ev.self_device_time_total if cuda else ev.self_cpu_time_total) / 1e3 / steps
        total = (ev.device_time_total if cuda else ev.cpu_time_total) / 1e3 / steps
        if ev.key.startswith('pool:'):
            modules[ev.key[5:]] = round(total, 3)
        elif own > 0:
            ops[ev.key] = {'ms': round(own, 3), 'calls': ev.count // steps}
    return ops, modules


def profile_extra_time(model: str, baseline: str | None = None, device: str | torch.device = 'cpu',
                       dtype: torch.dtype = torch.float32, batch_size: int = 32, img_size: int = 224,
                       channels_last: bool = False, steps: int = 3, top: int = 15) -> dict:
    """Where a converted model's extra training-step time goes, from torch.profiler.

    Both models run ``steps`` training steps under the profiler (after two warm-up steps); per operator
    (CUDA kernels on a GPU, CPU operators otherwise) the time per step of each is listed with the
    difference, largest first, and the pooling modules (each forward wrapped in a ``pool:<type>`` range)
    with their total time per step.

    Args:
        model: a label of :data:`MODELS` (e.g. ``'resnet50_asap'``).
        baseline: its family's baseline (None: found from :data:`FAMILIES`).
        device: ``'cpu'`` or ``'cuda'``.
        dtype: float32, or a half type used through autocast.
        batch_size: images per step.
        img_size: square input size.
        channels_last: channels_last model and input.
        steps: profiled steps.
        top: operators listed.

    Returns:
        ``{'model', 'baseline', 'device', 'dtype', 'batch', 'img_size', 'step_ms': {model: ms, baseline: ms},
        'ops': [{'op', 'model_ms', 'baseline_ms', 'extra_ms', 'calls'}], 'pool_modules': {type: ms}}``.

    Raises:
        ValueError: an unknown model.
    """
    family = family_of(model) if model in MODELS else None
    if family is None:
        raise ValueError(f"unknown benchmark model {model!r}; allowed: {list(MODELS)}")
    baseline = baseline or FAMILIES[family][0]
    device = torch.device(device)
    args = (device, dtype, batch_size, img_size, channels_last, steps)
    ops_m, pools = _profiled_steps(model, *args)
    ops_b, _ = _profiled_steps(baseline, *args)
    table = []
    for op in set(ops_m) | set(ops_b):
        m, b = ops_m.get(op, {}).get('ms', 0.0), ops_b.get(op, {}).get('ms', 0.0)
        table.append({'op': op, 'model_ms': m, 'baseline_ms': b, 'extra_ms': round(m - b, 3),
                      'calls': ops_m.get(op, ops_b.get(op, {})).get('calls', 0)})
    table.sort(key=lambda r: -r['extra_ms'])
    step = {model: round(sum(o['ms'] for o in ops_m.values()), 3),
            baseline: round(sum(o['ms'] for o in ops_b.values()), 3)}
    return {'model': model, 'baseline': baseline, 'device': device.type, 'dtype': str(dtype).replace('torch.', ''),
            'batch': batch_size, 'img_size': img_size, 'channels_last': channels_last, 'step_ms': step,
            'ops': table[:top], 'pool_modules': pools}


def format_profile(result: dict) -> str:
    """Markdown: the step times, the pooling modules' time and the operators with the most extra time."""
    m, b = result['model'], result['baseline']
    lines = [f"#### {m} vs {b} ({result['device']} {result['dtype']}, batch {result['batch']} x {result['img_size']}, "
             f"training step)", '',
             f"Profiled time per step: {m} {result['step_ms'][m]:.2f} ms, {b} {result['step_ms'][b]:.2f} ms.", '',
             '| pooling module | ms per step (forward, with its kernels) |', '|---|---:|']
    lines += [f"| {k} | {v:.3f} |" for k, v in result['pool_modules'].items()] or ['| (none) | |']
    lines += ['', f"| operator / kernel | {m} ms | {b} ms | extra ms | calls per step |", '|---|---:|---:|---:|---:|']
    lines += [f"| `{r['op'][:90]}` | {r['model_ms']:.3f} | {r['baseline_ms']:.3f} | {r['extra_ms']:+.3f} | {r['calls']} |"
              for r in result['ops']]
    return '\n'.join(lines)
