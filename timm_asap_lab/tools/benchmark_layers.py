"""Layer benchmarks: ASAP (fast matrix form) vs its FFT formulation, avg_pool2d(2) and timm's BlurPool2d;
and the pooling backends against each other (:func:`benchmark_backends`), which gives the winners table
that backend ``'auto'`` reads (:func:`winners_table`).

Methods are timed interleaved (one call of each in turn, repeated), so slow drifts of a shared
machine hit all of them alike; the median of the repeats is reported with ratios against the
baselines measured in the same run: the median of the per-round ratios, with their spread
(:mod:`timm_asap_lab.tools.timing`). :func:`target_checks` judges the layer's speed targets from those and says
``unreliable`` where the rounds do not support a verdict.
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d

from timm_asap.layers import asap_pool2d, asap_pool2d_fft, set_backend
from timm_asap.layers.backends import TABLE_FORMAT, device_kind, layout_name, resolve_backend
from timm_asap_lab.tools.timing import PairedRatio, paired_ratio

__all__ = [
    'RESNET50_SHAPES', 'RESNET50_ASAP_SHAPES', 'RESNET18_CIFAR_SHAPES', 'NETWORK_SHAPES', 'layer_methods',
    'DEFAULT_REPEATS', 'LAYER_TARGETS', 'benchmark_layers', 'format_table', 'target_checks',
    'benchmark_backends', 'winners_table', 'format_backend_table',
]

#: timed rounds of :func:`benchmark_layers` by default (enough for a verdict on a quiet machine, see
#: :mod:`timm_asap_lab.tools.timing` and docs/benchmarks.md)
DEFAULT_REPEATS = 9
#: the layer's speed targets on CPU float32: (row key, numerator method, denominator method, target, at_least)
LAYER_TARGETS = (
    ('speedup_vs_fft', 'asap_fft', 'asap', 5.0, True),         # the FFT formulation takes >= 5x asap's time
    ('ratio_vs_avg_pool2d', 'asap', 'avg_pool2d', 2.5, False),  # asap takes <= 2.5x avg_pool2d's time
)

# (channels, size) of the tensors that ResNet-50 downsamples at 224 px, at batch 32.
RESNET50_SHAPES = ((3, 224), (64, 112), (128, 56), (256, 56), (512, 28), (1024, 14))
# (channels, size) of every pooling input of resnet50_asap at 224 px (block convs and shortcuts apart).
RESNET50_ASAP_SHAPES = ((3, 224), (64, 112), (128, 56), (256, 56), (256, 28), (512, 28), (512, 14), (1024, 14))
# (channels, size) of the tensors that resnet18_cifar downsamples at 32 px (3x3/1 stem, no stem pooling).
RESNET18_CIFAR_SHAPES = ((64, 32), (128, 16), (256, 8))
# network family -> (shapes, batch size the papers' and the study's runs use)
NETWORK_SHAPES = {'resnet50': (RESNET50_ASAP_SHAPES, 32), 'resnet18_cifar': (RESNET18_CIFAR_SHAPES, 128)}


def layer_methods(channels: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable]:
    """The downsample-by-2 operations compared, each taking an (N, C, H, W) tensor."""
    blur = BlurPool2d(channels, filt_size=3, stride=2).to(device=device, dtype=dtype)
    return {
        'asap': asap_pool2d,
        'asap_fft': asap_pool2d_fft,
        'avg_pool2d': lambda x: F.avg_pool2d(x, 2, ceil_mode=True),
        'blurpool': blur,
    }


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn: Callable, x: torch.Tensor, backward: bool, device: torch.device) -> float:
    if backward:
        x = x.detach().requires_grad_()
    _sync(device)
    start = time.perf_counter()
    y = fn(x)
    if backward:
        y.backward(torch.ones_like(y))
    _sync(device)
    return time.perf_counter() - start


def benchmark_layers(
        device: str | torch.device = 'cpu',
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        shapes=RESNET50_SHAPES,
        repeats: int = DEFAULT_REPEATS,
        warmup: int = 1,
        channels_last: bool = False,
        progress: bool = True,
) -> list[dict]:
    """Time forward and forward+backward of every method at every shape, interleaved.

    Args:
        device: where to run.
        dtype: input dtype (the FFT formulation computes in float32 for half types).
        batch_size: images per call.
        shapes: (channels, size) pairs; inputs are square.
        repeats: timed rounds; the median is reported (ratios: the median of the per-round ratios).
        warmup: untimed rounds first (matrix building, allocator, cuDNN autotuning).
        channels_last: feed channels_last inputs.
        progress: show a tqdm bar.

    Returns:
        One row per (shape, pass, method): ``device``, ``dtype``, ``shape``, ``pass``, ``method``,
        ``ms`` (median), ``round_ms`` (per round); on the ``asap`` rows ``speedup_vs_fft`` (FFT time / asap
        time), ``ratio_vs_avg_pool2d`` and ``ratio_vs_blurpool`` (asap time / theirs), each the median of
        the per-round ratios, with ``<name>_spread`` (:meth:`~timm_asap_lab.tools.timing.PairedRatio.as_dict`).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    rows = []
    work = [(c, s, p) for c, s in shapes for p in ('forward', 'forward+backward')]
    for channels, size, pass_ in tqdm(work, desc=f'benchmark {device.type} {str(dtype)[6:]}', disable=not progress):
        x = torch.randn(batch_size, channels, size, size, device=device, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        methods = layer_methods(channels, device, dtype)
        times: dict[str, list[float]] = {name: [] for name in methods}
        backward = pass_ != 'forward'
        grad_ctx = torch.enable_grad if backward else torch.no_grad
        with grad_ctx():
            for round_ in range(warmup + repeats):
                for name, fn in methods.items():
                    t = _timed(fn, x, backward, device)
                    if round_ >= warmup:
                        times[name].append(t)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        for name, ms in med.items():
            row = dict(device=device.type, dtype=str(dtype).replace('torch.', ''), batch=batch_size,
                       shape=f'{channels}x{size}x{size}', channels_last=channels_last, **{'pass': pass_},
                       method=name, ms=round(ms, 3), round_ms=[round(t * 1e3, 4) for t in times[name]])
            if name == 'asap':
                for key, numerator, denominator in (('speedup_vs_fft', 'asap_fft', 'asap'),
                                                    ('ratio_vs_avg_pool2d', 'asap', 'avg_pool2d'),
                                                    ('ratio_vs_blurpool', 'asap', 'blurpool')):
                    ratio = paired_ratio(times[numerator], times[denominator])
                    row[key], row[f'{key}_spread'] = round(ratio.median, 2), ratio.as_dict()
            rows.append(row)
    return rows


def _spread_cell(row: dict, key: str, digits: int = 2) -> str:
    spread = row.get(f'{key}_spread')
    if not spread:
        return f"{row[key]:.{digits}f}x"
    return f"{spread['median']:.{digits}f}x ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per (device, dtype, shape, pass) with every method's time and the ratios
    (median of the per-round ratios, their lowest and highest in brackets)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r['device'], r['dtype'], r['shape'], r['pass'])
        groups.setdefault(key, {})[r['method']] = r
    lines = ['| device | dtype | input (B=%d) | pass | asap ms | fft ms | avg_pool2d ms | blurpool ms | '
             'fft / asap | asap / avg_pool2d | asap / blurpool |' % rows[0]['batch'] if rows else '',
             '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for (device, dtype, shape, pass_), m in groups.items():
        a = m['asap']
        lines.append(f"| {device} | {dtype} | {shape} | {pass_} | {a['ms']:.2f} | {m['asap_fft']['ms']:.2f} | "
                     f"{m['avg_pool2d']['ms']:.2f} | {m['blurpool']['ms']:.2f} | {_spread_cell(a, 'speedup_vs_fft', 1)} | "
                     f"{_spread_cell(a, 'ratio_vs_avg_pool2d')} | {_spread_cell(a, 'ratio_vs_blurpool')} |")
    return '\n'.join(lines)


def target_checks(rows: list[dict]) -> list[str]:
    """The layer's speed targets (:data:`LAYER_TARGETS`, CPU float32) over every measured shape and pass.

    Each cell's per-round ratio (from the rows' ``round_ms``) gets a verdict
    (:meth:`~timm_asap_lab.tools.timing.PairedRatio.verdict`); a target is ``NOT met`` where any cell is reliably on
    the wrong side, else ``unreliable`` where any cell's rounds do not support a verdict, else ``met``.

    Returns:
        One line per target (none without CPU float32 rows).
    """
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r['device'] == 'cpu' and r['dtype'] == 'float32' and r.get('round_ms'):
            groups.setdefault((r['shape'], r['pass']), {})[r['method']] = r
    out = []
    for key, numerator, denominator, target, at_least in LAYER_TARGETS:
        cells: list[tuple[str, PairedRatio, str]] = []
        for (shape, pass_), m in groups.items():
            if numerator in m and denominator in m:
                ratio = paired_ratio(m[numerator]['round_ms'], m[denominator]['round_ms'])
                cells.append((f"{shape} {pass_}", ratio, ratio.verdict(target, at_least)))
        if not cells:
            continue
        goal = f"{numerator} time / {denominator} time {'>=' if at_least else '<='} {target:g}x at every shape"
        medians = [c[1].median for c in cells]
        failed = [c for c in cells if c[2] == 'NOT met']
        unsure = [c for c in cells if c[2].startswith('unreliable')]
        if failed:
            verdict = 'NOT met at ' + '; '.join(f"{label} {ratio.describe(2)}" for label, ratio, _ in failed)
        elif unsure:
            verdict = (f"unreliable at {len(unsure)} of {len(cells)} cells ("
                       + '; '.join(f"{label} {ratio.describe(2)}" for label, ratio, _ in unsure)
                       + f"): {unsure[0][2].split(': ', 1)[1]}")
        else:
            verdict = f"met at all {len(cells)} cells (medians {min(medians):.2f}x to {max(medians):.2f}x)"
        out.append(f"cpu float32 {goal}: {verdict}")
    return out


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 4)


def benchmark_backends(
        device: str | torch.device,
        dtype: torch.dtype,
        shapes,
        batch_size: int,
        backends=('two_product', 'kronecker', 'triton'),
        layout: str = 'channels_last',
        repeats: int = 20,
        warmup: int = 3,
        progress: bool = True,
) -> list[dict]:
    """Time forward+backward of :func:`asap_pool2d` under each backend, interleaved with ``avg_pool2d``.

    Args:
        device: where to run.
        dtype: input dtype.
        shapes: (channels, size) pairs; inputs are (batch_size, channels, size, size).
        batch_size: images per call.
        backends: backend names (see :data:`timm_asap.layers.BACKENDS`; not ``'auto'``).
        layout: ``'channels_last'`` or ``'contiguous'``.
        repeats: timed rounds; the median is reported.
        warmup: untimed rounds first (matrix building, Triton compilation, autotuning).
        progress: show a tqdm bar.

    Returns:
        One row per (shape, method): ``device``, ``device_kind``, ``dtype``, ``layout``, ``batch``,
        ``channels``, ``height``, ``width``, ``method`` (a backend or ``'avg_pool2d'``), ``ms``, and on
        backend rows ``ratio_vs_avg_pool2d`` and ``ratio_vs_two_product`` (when measured: the median of the
        per-round time ratios, with ``<name>_spread``, :meth:`~timm_asap_lab.tools.timing.PairedRatio.as_dict`). A backend that
        would not run on this input (e.g. ``'triton'`` without CUDA, ``'kronecker'`` on a large plane)
        gets ``ms=None`` and ``skipped`` saying why; it is never timed as its fallback.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    rows = []
    dtype_name = str(dtype).replace('torch.', '')
    previous = set_backend('two_product')
    try:
        for channels, size in tqdm(shapes, desc=f'backends {device.type} {dtype_name} {layout}', disable=not progress):
            x = torch.randn(batch_size, channels, size, size, device=device, dtype=dtype)
            if layout == 'channels_last':
                x = x.contiguous(memory_format=torch.channels_last)
            methods, skipped = {'avg_pool2d': lambda t: F.avg_pool2d(t, 2, ceil_mode=True)}, {}
            for name in backends:
                try:
                    set_backend(name)
                except ImportError as exc:
                    skipped[name] = str(exc)
                    continue
                if resolve_backend(x, size, size, dtype, False) != name:
                    skipped[name] = (f'{name} does not apply to this input on {device.type} '
                                     f'(see timm_asap.layers.backends)')
                else:
                    methods[name] = functools.partial(_with_backend, name)
            times: dict[str, list[float]] = {name: [] for name in methods}
            with torch.enable_grad():
                for round_ in range(warmup + repeats):
                    for name, fn in methods.items():
                        t = _timed(fn, x, True, device)
                        if round_ >= warmup:
                            times[name].append(t)
            med = {name: _median_ms(ts) for name, ts in times.items()}
            ratios = {name: {'ratio_vs_avg_pool2d': paired_ratio(ts, times['avg_pool2d']),
                             **({'ratio_vs_two_product': paired_ratio(ts, times['two_product'])}
                                if 'two_product' in times else {})}
                      for name, ts in times.items() if name != 'avg_pool2d'}
            base = dict(device=device.type, device_kind=device_kind(device), dtype=dtype_name, layout=layout_name(x),
                        batch=batch_size, channels=channels, height=size, width=size)
            for name in ('avg_pool2d',) + tuple(backends):
                row = dict(base, method=name, ms=med.get(name))
                if name in skipped:
                    row['skipped'] = skipped[name]
                elif name != 'avg_pool2d':
                    for key, ratio in ratios[name].items():
                        row[key], row[f'{key}_spread'] = round(ratio.median, 3), ratio.as_dict()
                rows.append(row)
    finally:
        set_backend(previous)
    return rows


def _with_backend(name: str, x: torch.Tensor) -> torch.Tensor:
    set_backend(name)
    return asap_pool2d(x)


def winners_table(rows: list[dict], measured_with: dict | None = None) -> dict:
    """The winners table backend ``'auto'`` reads (``timm_asap/layers/backend_table.json``'s format).

    For each (device kind, dtype, plane, layout) the backend with the smallest total forward+backward time
    over the measured shapes of that plane wins (planes of several channel counts are summed).
    """
    totals: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r['method'] == 'avg_pool2d' or r['ms'] is None:
            continue
        key = (r['device_kind'], r['dtype'], r['height'], r['width'], r['layout'])
        per = totals.setdefault(key, {})
        per[r['method']] = per.get(r['method'], 0.0) + r['ms']
    winners = [dict(device=k[0], dtype=k[1], height=k[2], width=k[3], layout=k[4], backend=min(per, key=per.get),
                    ms={name: round(ms, 4) for name, ms in sorted(per.items())})
               for k, per in sorted(totals.items())]
    return {'format': TABLE_FORMAT, 'measured_with': measured_with, 'winners': winners}


def format_backend_table(rows: list[dict]) -> str:
    """A Markdown table: one line per (device, dtype, layout, shape), each backend's ms and ratios."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r['device_kind'], r['dtype'], r['layout'], r['batch'], r['channels'], r['height'])
        groups.setdefault(key, {})[r['method']] = r
    methods = [m for m in dict.fromkeys(r['method'] for r in rows) if m != 'avg_pool2d']
    head = ['device', 'dtype', 'layout', 'input'] + ['avg_pool2d ms'] + [f'{m} ms (/avg_pool2d: median (min-max))'
                                                                         for m in methods]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * 4 + '---:|' * (1 + len(methods))]
    for (kind, dtype, layout, batch, channels, size), m in groups.items():
        cells = [kind, dtype, layout, f'{batch}x{channels}x{size}x{size}', f"{m['avg_pool2d']['ms']:.3f}"]
        for name in methods:
            r = m.get(name)
            cells.append('skipped' if r is None or r['ms'] is None else
                         f"{r['ms']:.3f} ({_spread_cell(r, 'ratio_vs_avg_pool2d')})")
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
