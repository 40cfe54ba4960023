"""Whole-network throughput: ResNet-50 against its ASAP, FLC, BlurPool and FFT-ASAP versions.

Models are timed interleaved (each round runs every model in turn, inference then a training step),
so drifts of a shared machine hit all of them alike; the median over rounds is reported with ratios
against the plain ResNet-50 measured in the same run. Peak memory: CUDA ``max_memory_allocated``
per model and pass; on the CPU the peak resident set size of a fresh process doing one training
step (:func:`cpu_peak_rss`), since the CPU allocator has no per-model counter.
"""
from __future__ import annotations

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

from .convert import asapify

__all__ = ['MODELS', 'build_model', 'benchmark_models', 'cpu_peak_rss', 'format_table', 'target_checks', 'paired_ratio']

BASELINE = 'resnet50'
# label -> how to build it (pretrained=False; the weights do not change the timing)
MODELS: dict[str, Callable[[], nn.Module]] = {
    'resnet50': lambda: timm.create_model('resnet50'),
    'resnet50_asap': lambda: timm.create_model('resnet50_asap'),
    'resnet50_flc': lambda: timm.create_model('resnet50_flc'),
    'resnetaa50 (BlurPool)': lambda: timm.create_model('resnetaa50'),
    'resnet50_asap_fft': lambda: asapify(timm.create_model('resnet50'), pool='asap_fft'),
}


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
        self.y = torch.randint(0, 1000, (batch_size,), device=device)
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
        rounds: int = 3,
        iters: int = 1,
        warmup: int = 1,
        passes: tuple[str, ...] = ('infer', 'train'),
        progress: bool = True,
) -> list[dict]:
    """Time inference and training steps of the models, interleaved, and compare with ResNet-50.

    Args:
        device: ``'cpu'`` or ``'cuda'``.
        dtype: ``torch.float32``, or a half type used through autocast (``bfloat16`` on CUDA).
        batch_size: images per step.
        img_size: square input size.
        channels_last: model and input in channels_last.
        compile_: wrap each model in ``torch.compile`` (compilation happens in the warm-up rounds).
        models: labels of :data:`MODELS` (default: all); ResNet-50 is always included as baseline.
        rounds: timed rounds; each runs every model's passes ``iters`` times; the median is reported.
        iters: steps per model and pass in a round.
        warmup: untimed rounds first (compilation, allocator, cuDNN autotuning).
        passes: ``'infer'`` and/or ``'train'``.
        progress: show a tqdm bar.

    Returns:
        One row per (model, pass): ``device``, ``dtype``, ``channels_last``, ``compile``, ``model``,
        ``pass``, ``ms`` (median per step), ``img_per_s``, ``ratio_vs_resnet50`` (throughput ratio: median
        over rounds of resnet50's time / this model's time in the same round), ``round_ms`` (per-round
        times), ``peak_mb`` (CUDA only, else None).
    """
    device = torch.device(device)
    labels = list(models or MODELS)
    if BASELINE not in labels:
        labels.insert(0, BASELINE)
    # every model is a ResNet sharing one forward: each compiled (model, mode) is a recompile of it
    # (the setting is named cache_size_limit before torch 2.7)
    config = torch._dynamo.config
    limit_name = 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'
    limit = max(getattr(config, limit_name), 2 * len(labels) * len(passes) + 2)
    with config.patch(**{limit_name: limit}):
        return _benchmark(device, dtype, batch_size, img_size, channels_last, compile_, labels, rounds, iters,
                          warmup, passes, progress)


def _benchmark(device, dtype, batch_size, img_size, channels_last, compile_, labels, rounds, iters, warmup, passes,
               progress) -> list[dict]:
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
        base = times[(BASELINE, pass_)]
        for runner in runners:
            own = times[(runner.label, pass_)]
            sec = statistics.median(own)
            peak = peaks.get((runner.label, pass_))
            rows.append(dict(
                device=device.type, dtype=str(dtype).replace('torch.', ''), channels_last=channels_last,
                compile=compile_, batch=batch_size, img_size=img_size, model=runner.label, **{'pass': pass_},
                ms=round(sec * 1e3, 1), img_per_s=round(batch_size / sec, 2),
                ratio_vs_resnet50=round(paired_ratio(base, own), 3), round_ms=[round(t * 1e3, 1) for t in own],
                peak_mb=round(peak / 2 ** 20) if peak is not None else None))
    del runners
    return rows


def paired_ratio(reference: list[float], other: list[float]) -> float:
    """Median over rounds of ``reference[i] / other[i]``: the throughput of ``other`` relative to ``reference``.

    Both were timed in the same interleaved round, so a slow phase of a shared machine cancels out.
    """
    return statistics.median(r / o for r, o in zip(reference, other))


def _child_peak_rss(label: str, batch_size: int, img_size: int) -> dict:
    """In this (fresh) process: RSS before and peak after one training step of ``label`` on the CPU."""
    model = build_model(label)
    runner_x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 1000, (batch_size,))
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
    code = ('import json, sys; from timm_asap.models.benchmark import _child_peak_rss; '
            'print(json.dumps(_child_peak_rss(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))')
    proc = subprocess.run([sys.executable, '-c', code, label, str(batch_size), str(img_size)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child for {label!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], rss: list[dict] | None = None) -> str:
    """Markdown: one line per (setting, model) with both passes' throughput and ratios."""
    rss_by = {r['model']: r for r in (rss or [])}
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r['device'], r['dtype'], r['channels_last'], r['compile'], r['model'])
        groups.setdefault(key, {})[r['pass']] = r
    mem_head = ('peak MB (infer / train)' if any(r['peak_mb'] is not None for r in rows)
                else 'CPU train step: peak RSS MB (step\'s own MB)')
    lines = [f"| device | dtype | channels_last | compile | model | infer img/s | infer vs resnet50 | "
             f"train img/s | train vs resnet50 | {mem_head} |",
             '|---|---|---|---|---|---:|---:|---:|---:|---:|']
    for (device, dtype, cl, comp, model), p in groups.items():
        cells = []
        for pass_ in ('infer', 'train'):
            r = p.get(pass_)
            cells += [f"{r['img_per_s']:.1f}", f"{r['ratio_vs_resnet50']:.2f}x"] if r else ['', '']
        if any(r['peak_mb'] is not None for r in p.values()):
            mem = ' / '.join(str(p[k]['peak_mb']) if k in p else '' for k in ('infer', 'train'))
        else:
            m = rss_by.get(model)
            mem = f"{m['peak_rss_mb']} ({m['step_mb']})" if m else ''
        lines.append(f"| {device} | {dtype} | {cl} | {comp} | {model} | " + ' | '.join(cells) + f" | {mem} |")
    return '\n'.join(lines)


def target_checks(rows: list[dict]) -> list[str]:
    """The speed targets, each as a line with the measured value and whether it is met.

    Targets: resnet50_asap >= 0.9x resnet50 on CPU (float32) and >= 0.95x on CUDA (bfloat16,
    channels_last); resnet50_asap >= 1.8x the FFT formulation on CPU.
    """
    out = []
    by = {(r['device'], r['dtype'], r['channels_last'], r['compile'], r['model'], r['pass']): r for r in rows}
    for (device, dtype, cl, comp, model, pass_), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if model != 'resnet50_asap':
            continue
        setting = f"{device} {dtype} channels_last={cl} compile={comp} {pass_}"
        if device == 'cpu':
            goal = 0.9
            fft = by.get((device, dtype, cl, comp, 'resnet50_asap_fft', pass_))
            if fft:
                speedup = paired_ratio(fft['round_ms'], r['round_ms'])
                out.append(f"{setting}: asap vs FFT formulation {speedup:.3f}x (target >= 1.8x): "
                           f"{'met' if speedup >= 1.8 else 'NOT met'}")
        else:
            goal = 0.95 if (dtype == 'bfloat16' and cl) else None
        if goal is not None:
            # three decimals: a ratio just under the target must not print as the target itself
            out.append(f"{setting}: resnet50_asap / resnet50 throughput {r['ratio_vs_resnet50']:.3f}x "
                       f"(target >= {goal}x): {'met' if r['ratio_vs_resnet50'] >= goal else 'NOT met'}")
    return out
