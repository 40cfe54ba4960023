"""Layer benchmark: ASAP (fast matrix form) vs its FFT formulation, avg_pool2d(2) and timm's BlurPool2d.

Methods are timed interleaved (one call of each in turn, repeated), so slow drifts of a shared
machine hit all of them alike; the median of the repeats is reported with ratios against the
baselines measured in the same run.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d

from .layers import asap_pool2d, asap_pool2d_fft

__all__ = ['RESNET50_SHAPES', 'layer_methods', 'benchmark_layers', 'format_table']

# (channels, size) of the tensors that ResNet-50 downsamples at 224 px, at batch 32.
RESNET50_SHAPES = ((3, 224), (64, 112), (128, 56), (256, 56), (512, 28), (1024, 14))


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
        repeats: int = 5,
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
        repeats: timed rounds; the median is reported.
        warmup: untimed rounds first (matrix building, allocator, cuDNN autotuning).
        channels_last: feed channels_last inputs.
        progress: show a tqdm bar.

    Returns:
        One row per (shape, pass, method): ``device``, ``dtype``, ``shape``, ``pass``, ``method``,
        ``ms`` (median), plus ``speedup_vs_fft`` and ``ratio_vs_avg_pool2d`` on the ``asap`` rows.
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
                       method=name, ms=round(ms, 3))
            if name == 'asap':
                row['speedup_vs_fft'] = round(med['asap_fft'] / ms, 2)
                row['ratio_vs_avg_pool2d'] = round(ms / med['avg_pool2d'], 2)
                row['ratio_vs_blurpool'] = round(ms / med['blurpool'], 2)
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per (device, dtype, shape, pass) with every method's time and the ratios."""
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
                     f"{m['avg_pool2d']['ms']:.2f} | {m['blurpool']['ms']:.2f} | {a['speedup_vs_fft']:.1f}x | "
                     f"{a['ratio_vs_avg_pool2d']:.2f}x | {a['ratio_vs_blurpool']:.2f}x |")
    return '\n'.join(lines)
