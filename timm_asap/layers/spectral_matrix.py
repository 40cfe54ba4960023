"""The exact separable real-matrix form of spectral pooling (no FFT at run time).

Every step of FLC/ASAP pooling (zero padding, DFT, fftshift, window, band crop, inverse DFT, spatial
crop) is linear and acts on H and W separately, so for a real input ``x``::

    pool(x) = Re(A_H x A_W^T) = P_H x P_W^T - Q_H x Q_W^T,   A = P + iQ.

``A`` is built here in float64 from the closed-form DFT sums (independently of ``torch.fft``, which
the FFT formulation in :mod:`timm_asap.layers.fft_pool` uses, so one checks the other). ``Q`` is
usually of very low rank (with a symmetric window and band it is rank 0 or 1: only the unpaired
Nyquist bin of an even-length band is complex), so it is stored as ``Q = U V^T`` and the second
term costs ``O(HW)``. Matrices are cached per (size, options, dtype, device) in a process-wide cache,
outside any state dict.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .band import BandSpec, band_spec

__all__ = ['AxisOperator', 'axis_matrix', 'axis_operator', 'apply_separable', 'check_pool_input', 'clear_cache']

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class AxisOperator(NamedTuple):
    """Real factors of one axis' complex operator ``A = P + i U V^T``."""

    p: torch.Tensor  # (n_out, size)
    u: torch.Tensor  # (n_out, r)
    v: torch.Tensor  # (size, r)


def axis_matrix(spec: BandSpec, norm: str = 'forward') -> torch.Tensor:
    """The complex128 matrix (crop_len x size) that pools one axis as the FFT formulation does.

    ``norm='forward'`` scales the forward DFT by ``1 / padded`` (a constant signal keeps its value);
    ``'backward'`` scales the inverse DFT by ``1 / band_len`` instead (torch/numpy's default norm).
    """
    m = spec.padded
    b = torch.arange(spec.band_len, dtype=torch.float64)
    freq = spec.band_start + b - m // 2                  # signed frequency of each kept bin
    pos_out = b - spec.band_len // 2                     # its position after ifftshift
    t = torch.arange(spec.crop_start, spec.crop_start + spec.crop_len, dtype=torch.float64)
    pos_in = torch.arange(spec.size, dtype=torch.float64) + spec.pad_before
    if spec.window and m > 1:
        idx = spec.band_start + b
        weight = torch.sqrt(0.54 - 0.46 * torch.cos(2 * math.pi * idx / (m - 1)))
    else:
        weight = torch.ones(spec.band_len, dtype=torch.float64)
    scale = 1.0 / m if norm == 'forward' else 1.0 / spec.band_len
    inverse = torch.exp(2j * math.pi * torch.outer(t, pos_out) / spec.band_len)      # (crop_len, band_len)
    forward = torch.exp(-2j * math.pi * torch.outer(freq, pos_in) / m)              # (band_len, size)
    return (inverse * (weight * scale)) @ forward


def _factor(a: torch.Tensor) -> AxisOperator:
    p, q = a.real.contiguous(), a.imag
    if q.numel() == 0:
        return AxisOperator(p, q.new_zeros(q.shape[0], 0), q.new_zeros(q.shape[1], 0))
    su, s, svh = torch.linalg.svd(q, full_matrices=False)
    tol = 1e-13 * max(1.0, float(s.max()), float(torch.linalg.matrix_norm(p, ord=2)))
    r = int((s > tol).sum())
    return AxisOperator(p, (su[:, :r] * s[:r]).contiguous(), svh[:r].T.contiguous())


_float64_cache: dict[tuple, AxisOperator] = {}
_cast_cache: dict[tuple, AxisOperator] = {}


def _float64_operator(size: int, pool: str, padding: str, mode: str, norm: str) -> AxisOperator:
    key = (size, pool, padding, mode, norm)
    op = _float64_cache.get(key)
    if op is None:
        op = _float64_cache[key] = _factor(axis_matrix(band_spec(size, pool, padding, mode), norm))
    return op


@torch.compiler.assume_constant_result
def axis_operator(
        size: int,
        pool: str = 'asap',
        padding: str = 'one',
        mode: str = 'centered',
        norm: str = 'forward',
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
) -> AxisOperator:
    """Cached real factors of one axis' pooling operator, cast to ``dtype`` on ``device``.

    The float64 matrices are built once per (size, pool, padding, mode, norm); each dtype/device
    copy is cached too. Nothing here is a module buffer, so state dicts stay untouched. Under
    ``torch.compile`` the call runs at trace time and its tensors enter the graph as constants.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    key = (size, pool, padding, mode, norm, dtype, device)
    op = _cast_cache.get(key)
    if op is None:
        # built as ordinary tensors even when first asked for under inference_mode, so that a later
        # call with autograd can save them for backward
        tracing_state = torch._C._get_tracing_state()  # under jit.trace: build outside the recorded graph
        torch._C._set_tracing_state(None)
        try:
            with torch.inference_mode(False), torch.no_grad():
                op = _cast_cache[key] = AxisOperator(
                    *(t.to(device=device, dtype=dtype) for t in _float64_operator(size, pool, padding, mode, norm)))
        finally:
            torch._C._set_tracing_state(tracing_state)
    return op


def clear_cache() -> None:
    """Drop every cached matrix (e.g. to free GPU memory)."""
    _float64_cache.clear()
    _cast_cache.clear()


def check_pool_input(x, owner: str) -> None:
    """ValueError unless ``x`` is a real floating-point (N, C, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{owner} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{owner} expects a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        kind = 'complex' if x.is_complex() else 'non-floating'
        raise ValueError(
            f"{owner} expects a real floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {kind} dtype {x.dtype}")


# below this many channels a channels_last input is contracted in NCHW order (and the result converted back)
_MIN_NHWC_CHANNELS = 16


def apply_separable(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ x @ right.T`` over the last two dims of an (N, C, H, W) tensor.

    ``left`` is (n, H) and ``right`` (m, W). NCHW inputs contract H first (a batched product per
    image and channel, which halves the rows of the following single GEMM over W); channels_last
    inputs are contracted in NHWC order without a layout copy and come back channels_last.
    """
    n_out, m_out = left.shape[0], right.shape[0]
    batch, channels, height = x.shape[0], x.shape[1], x.shape[2]
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.matmul(torch.matmul(left, x), right.transpose(0, 1))
    if channels < _MIN_NHWC_CHANNELS:  # e.g. an RGB input: NHWC products would be (m x W) @ (W x 3)
        y = torch.matmul(torch.matmul(left, x.contiguous()), right.transpose(0, 1))
        return y.contiguous(memory_format=torch.channels_last)
    nhwc = x.permute(0, 2, 3, 1)                                        # (N, H, W, C), contiguous
    t = torch.matmul(right, nhwc)                                       # (N, H, m, C)
    y = torch.matmul(left, t.reshape(batch, height, m_out * channels))  # (N, n, m * C)
    return y.reshape(batch, n_out, m_out, channels).permute(0, 3, 1, 2)


def spectral_pool(x: torch.Tensor, pool: str, padding: str, mode: str, norm: str, magnitude: bool) -> torch.Tensor:
    """Shared body of :func:`asap_pool2d` and :func:`flc_pool2d` (inputs already validated)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])  # plain ints also under jit.trace
    dtype = x.dtype
    device_type = x.device.type
    if dtype != torch.float64 and torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    oh = axis_operator(height, pool, padding, mode, norm, dtype, x.device)
    ow = axis_operator(width, pool, padding, mode, norm, dtype, x.device)
    real = apply_separable(x, oh.p, ow.p)
    if magnitude:
        qh, qw = oh.u @ oh.v.T, ow.u @ ow.v.T
        real = real - apply_separable(x, qh, qw)
        imag = apply_separable(x, oh.p, qw) + apply_separable(x, qh, ow.p)
        return torch.sqrt(real * real + imag * imag)
    if oh.u.shape[1] and ow.u.shape[1]:
        inner = apply_separable(x, oh.v.T, ow.v.T)                      # (N, C, r_h, r_w)
        real = real - apply_separable(inner, oh.u, ow.u)
    return real
