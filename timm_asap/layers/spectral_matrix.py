"""The exact separable real-matrix form of spectral pooling (no FFT at run time).

Every step of FLC/ASAP pooling (zero padding, DFT, fftshift, window, band crop, inverse DFT, spatial
crop) is linear and acts on H and W separately, so for a real input ``x``::

    pool(x) = Re(A_H x A_W^T) = P_H x P_W^T - Q_H x Q_W^T,   A = P + iQ.

``A`` is built here in float64 from the closed-form DFT sums (independently of ``torch.fft``, which
the FFT formulation in :mod:`timm_asap.layers.fft_pool` uses, so one checks the other). ``Q`` is
usually of very low rank (with a symmetric window and band it is rank 0 or 1: only the unpaired
Nyquist bin of an even-length band is complex), so it is stored as ``Q = U V^T``. Two ways to apply
the second term (:func:`pool_plan` picks): as separate small products, which adds little arithmetic
but several kernels (large planes on the CPU), or folded with the first term into exactly two matrix
products of twice the size (the paired form: GPUs, small planes, high ranks). The matrices of each input
(H, W), options, contraction order, dtype and device are cached process-wide (:func:`pool_plan`), outside
any state dict, in bounded LRU caches (:data:`OPERATOR_CACHE_SIZE`, :data:`PLAN_CACHE_SIZE`).
This is the ``'two_product'`` backend (the default); :mod:`timm_asap.layers.backends` chooses between it
and the other exact forms.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

from timm_asap.layers.band import BandSpec, band_spec

__all__ = [
    'PoolPlan', 'axis_matrix', 'axis_operator', 'pool_plan', 'check_pool_input', 'clear_cache', 'register_cache',
    'compute_dtype', 'static_size', 'is_channels_last', 'magnitude_of', 'two_product_pool', 'OPERATOR_CACHE_SIZE',
    'PLAN_CACHE_SIZE',
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class AxisOperator(NamedTuple):
    """Real factors of one axis' complex operator ``A = P + i U V^T``."""

    p: torch.Tensor  # (n_out, size)
    u: torch.Tensor  # (n_out, r)
    v: torch.Tensor  # (size, r)
    rank: int        # r, as a plain int (also under jit.trace, where tensor sizes are traced values)

    def imag(self) -> torch.Tensor:
        """The imaginary part ``M = U V^T`` as a full (n_out, size) matrix."""
        return self.u @ self.v.T


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
        return AxisOperator(p, q.new_zeros(q.shape[0], 0), q.new_zeros(q.shape[1], 0), 0)
    su, s, svh = torch.linalg.svd(q, full_matrices=False)
    tol = 1e-13 * max(1.0, float(s.max()), float(torch.linalg.matrix_norm(p, ord=2)))
    r = int((s > tol).sum())
    return AxisOperator(p, (su[:, :r] * s[:r]).contiguous(), svh[:r].T.contiguous(), r)


# Cache caps (least recently used entries are dropped first). One float64 operator is two (n x size)
# matrices of one axis; one plan holds the matrices of one input (H, W), options, order, dtype and device.
# A network uses a handful of each; the caps only bound processes that see many input sizes.
OPERATOR_CACHE_SIZE = 256
PLAN_CACHE_SIZE = 256
_caches: list = []


def register_cache(cached):
    """Register an ``functools.lru_cache``-wrapped function so :func:`clear_cache` empties it too."""
    _caches.append(cached)
    return cached


@register_cache
@functools.lru_cache(maxsize=OPERATOR_CACHE_SIZE)
def axis_operator(size: int, pool: str, padding: str, mode: str, norm: str) -> AxisOperator:
    """The float64 factors ``P``, ``U``, ``V`` of one axis' operator (cached, at most
    :data:`OPERATOR_CACHE_SIZE` entries)."""
    return build_outside_graphs(lambda: _factor(axis_matrix(band_spec(size, pool, padding, mode), norm)))


def build_outside_graphs(build):
    """Run ``build()`` as ordinary tensor code, so its real tensors can be cached: outside a jit.trace
    recording, the fake-tensor and proxy modes of torch.export / make_fx, and inference_mode (so a later
    call with autograd can save the result for backward). ``build`` starts from fresh tensors, so it has
    no autograd history; grad mode is left alone (torch.export records grad-mode switches as graph
    regions), and inference_mode is left only where it is on."""
    tracing_state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(unset_fake_temporarily())
            stack.enter_context(disable_proxy_modes_tracing())
            if torch.is_inference_mode_enabled():
                stack.enter_context(torch.inference_mode(False))
            return build()
    finally:
        torch._C._set_tracing_state(tracing_state)


def clear_cache() -> None:
    """Drop every cached matrix of every backend (e.g. to free GPU memory).

    The caches are bounded anyway: at most :data:`OPERATOR_CACHE_SIZE` float64 axis operators,
    :data:`PLAN_CACHE_SIZE` cast plans of the two-product form and
    :data:`timm_asap.layers.kronecker.KRONECKER_CACHE_SIZE` Kronecker matrices, least recently used
    dropped first.
    """
    for cached in _caches:
        cached.cache_clear()


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
# On the CPU the low-rank form ('low_rank' in PoolPlan) runs up to this rank and from this plane size (H * W)
# on, where the arithmetic dominates. Smaller planes, higher ranks and every other device (where the
# number of kernels matters more than the arithmetic) take the paired form.
_CPU_LOW_RANK_MAX = 2
_CPU_LOW_RANK_MIN_PLANE = 400
# device types torch.is_autocast_enabled accepts (it raises for others, e.g. 'meta')
_AUTOCAST_DEVICE_TYPES = frozenset({'cpu', 'cuda', 'xpu', 'hpu', 'mps', 'mtia', 'xla'})


def _paired_matrix(op: AxisOperator, form: str) -> torch.Tensor:
    """One axis' ``P`` and ``M = U V^T`` side by side (float64), in one of four arrangements.

    ``'h_nchw'``: rows ``P[a], M[a]`` interleaved (2n x size); ``'w_nchw'``: ``[P | -M]`` (n x 2 size);
    ``'h_nhwc'``: columns ``P[:, i], -M[:, i]`` interleaved (n x 2 size); ``'w_nhwc'``: ``[P; M]``
    (2n x size). See :func:`_apply_separable`.
    """
    p, m = op.p, op.imag()
    n, size = p.shape
    if form == 'h_nchw':
        return torch.stack([p, m], dim=1).reshape(2 * n, size)
    if form == 'w_nchw':
        return torch.cat([p, -m], dim=1)
    if form == 'h_nhwc':
        return torch.stack([p, -m], dim=2).reshape(n, 2 * size)
    if form == 'w_nhwc':
        return torch.cat([p, m], dim=0)
    raise ValueError(f"form must be one of 'h_nchw', 'w_nchw', 'h_nhwc', 'w_nhwc', got {form!r}")


class PoolPlan(NamedTuple):
    """How one input size, layout, dtype and device is pooled: a contraction kind and its matrices.

    ``kind`` is ``'plain'`` (``P_H x P_W^T``: the imaginary parts cancel), ``'low_rank'`` (one separable
    product with ``[P; V^T]`` on each axis gives ``P_H x P_W^T`` and ``V_H^T x V_W`` as blocks, then
    ``- U_H (V_H^T x V_W) U_W^T``: one fused multiply-add for rank 1), ``'paired'`` (P and M side by
    side for the input's contraction order, see :func:`_apply_separable`) or ``'magnitude'`` (FLC's abs
    variant). The sizes the contraction needs are kept as plain ints (``sep``: the separable product's
    output (rows, cols); ``inner``: the inner sizes of the left and right matrices; ``out``: the pooled
    (H, W)), so no size is read off the constant matrices while tracing (torch.compile with dynamic shapes).
    """

    kind: str
    mats: tuple[torch.Tensor, ...]
    sep: tuple[int, int]
    inner: tuple[int, int]
    out: tuple[int, int]


def _build_plan(height, width, pool, padding, mode, norm, magnitude, nhwc, dtype, device,
                low_rank_max, low_rank_min_plane) -> PoolPlan:
    oh = axis_operator(height, pool, padding, mode, norm)
    ow = axis_operator(width, pool, padding, mode, norm)
    out = (oh.p.shape[0], ow.p.shape[0])
    if magnitude:
        kind, mats = 'magnitude', (oh.p, ow.p, oh.imag(), ow.imag())
    elif min(oh.rank, ow.rank) == 0:  # M_H x M_W^T vanishes
        kind, mats = 'plain', (oh.p, ow.p)
    elif device.type == 'cpu' and max(oh.rank, ow.rank) <= low_rank_max and height * width >= low_rank_min_plane:
        # [P; V^T] per axis: one separable product yields P_H x P_W^T and V_H^T x V_W as blocks
        ext_h, ext_w = torch.cat([oh.p, oh.v.T], dim=0), torch.cat([ow.p, ow.v.T], dim=0)
        if oh.rank == ow.rank == 1:
            kind, mats = 'low_rank', (ext_h, ext_w, -torch.outer(oh.u[:, 0], ow.u[:, 0]))
        else:
            kind, mats = 'low_rank', (ext_h, ext_w, oh.u, ow.u)
    elif nhwc:
        kind, mats = 'paired', (_paired_matrix(oh, 'h_nhwc'), _paired_matrix(ow, 'w_nhwc'))
    else:
        kind, mats = 'paired', (_paired_matrix(oh, 'h_nchw'), _paired_matrix(ow, 'w_nchw'))
    left, right = mats[0], mats[1]
    if kind == 'paired':  # NCHW: left 2h x H, right w x 2W; NHWC: left h x 2H, right 2w x W
        sep = (left.shape[0] // (1 if nhwc else 2), right.shape[0] // (2 if nhwc else 1))
    else:
        sep = (left.shape[0], right.shape[0])
    return PoolPlan(kind, tuple(m.to(device=device, dtype=dtype).contiguous() for m in mats),
                    sep, (left.shape[1], right.shape[1]), out)


@register_cache
@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cached_plan(height, width, pool, padding, mode, norm, magnitude, nhwc, dtype, device,
                 low_rank_max, low_rank_min_plane) -> PoolPlan:
    return build_outside_graphs(lambda: _build_plan(height, width, pool, padding, mode, norm, magnitude, nhwc, dtype,
                                                    device, low_rank_max, low_rank_min_plane))


@torch.compiler.assume_constant_result
def pool_plan(
        height: int,
        width: int,
        pool: str,
        padding: str,
        mode: str,
        norm: str,
        magnitude: bool,
        nhwc: bool,
        dtype: torch.dtype,
        device: torch.device,
) -> PoolPlan:
    """The cached :class:`PoolPlan` for an input; built on first use from the float64 factors.

    One call per pooling (under ``torch.compile`` it runs at trace time and its tensors enter the graph
    as constants). Nothing here is a module buffer, so state dicts stay untouched. At most
    :data:`PLAN_CACHE_SIZE` plans are kept (least recently used dropped first), keyed by the input's size,
    options, order, dtype and device and the CPU low-rank tuning constants.
    """
    return _cached_plan(height, width, pool, padding, mode, norm, magnitude, nhwc, dtype, device,
                        _CPU_LOW_RANK_MAX, _CPU_LOW_RANK_MIN_PLANE)


# torch.compiler.is_exporting is missing from older torch releases
_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)


def _inductor_compiling() -> bool:
    """True while torch.compile traces (not torch.export or ONNX's dynamo export, which keep eager's order)."""
    return torch.compiler.is_dynamo_compiling() and not _is_exporting()


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is stored channels_last and not also plain contiguous."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _nhwc_order(x: torch.Tensor) -> bool:
    """Whether to contract ``x`` in NHWC order: channels_last inputs with enough channels, and, compiled
    for the CPU, any input with enough channels (inductor lays convolutions out channels_last whatever
    the traced layout, so tracing the NCHW order would add two layout copies; the compiled result of a
    contiguous input is then a channels_last tensor, equal in value). torch.export and ONNX export keep
    eager's order. Under torch.compile the channel count enters only through this comparison (a guard,
    not a specialisation on its value)."""
    if not bool(x.shape[1] >= _MIN_NHWC_CHANNELS):  # guards only this comparison under torch.compile
        return False
    return is_channels_last(x) or (_inductor_compiling() and x.device.type == 'cpu')


def _apply_separable(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, plan: PoolPlan, nhwc: bool) -> torch.Tensor:
    """``left @ x @ right.T`` over the last two dims of an (N, C, H, W) tensor, or its paired form.

    Plain: ``left`` is (n, H) and ``right`` (m, W). NCHW inputs contract H first (a batched product per
    image and channel, which halves the rows of the following single GEMM over W); in NHWC order
    (:func:`_nhwc_order`) the W product comes first, without a layout copy, and the result comes back
    channels_last. A few-channel channels_last input (e.g. RGB, where NHWC products would be
    (m x W) @ (W x 3)) is contracted in NCHW order and converted back.

    Paired (:func:`_paired_matrix`): ``P_H x P_W^T - M_H x M_W^T`` in the same two products, for any rank
    of ``M``. NCHW: ``left`` interleaves the rows of ``P_H`` and ``M_H`` (2h x H), so each plane of the
    first product read as (h, 2W) holds ``[P_H x | M_H x]`` row by row, and ``right = [P_W | -M_W]``
    (w x 2W) finishes. NHWC: ``right = [P_W; M_W]`` (2w x W) gives (H, 2w, C), which read as (2H, w C)
    pairs each input row's two results, and the column-interleaved ``left = [P_H, -M_H]`` (h x 2H)
    finishes. Twice the arithmetic of the plain product and no extra kernels: the better trade where
    kernel launches, not arithmetic, bound the time. The reshapes below serve both forms, with the
    sizes taken from ``plan`` (the matrices must be the plan's, built for this order).
    """
    batch, channels = x.shape[0], x.shape[1]
    (rows, cols), (inner_h, inner_w) = plan.sep, plan.inner
    if not nhwc:
        channels_last = is_channels_last(x)
        t = torch.matmul(left, x.contiguous() if channels_last else x)                     # (N, C, n, W)
        y = torch.matmul(t.reshape(batch, channels, rows, inner_w), right.transpose(0, 1))
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y
    t = torch.matmul(right, x.permute(0, 2, 3, 1))                                         # (N, H, m, C)
    y = torch.matmul(left, t.reshape(batch, inner_h, cols * channels))
    return y.reshape(batch, rows, cols, channels).permute(0, 3, 1, 2)


def static_size(n) -> int:
    """A tensor size as a plain int (the matrices and the contraction order depend on it).

    ``int()`` gives plain ints under jit.trace; ``len(range(...))`` makes torch.compile specialize a
    size it has made dynamic (after seeing a second input size) with a guard on its value, so each
    size gets its own graph with constant matrices instead of failing on a symbolic size.
    """
    return len(range(int(n)))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matrices are cast to: the autocast dtype under autocast (except for float64), else x's."""
    device_type = x.device.type
    if (x.dtype != torch.float64 and device_type in _AUTOCAST_DEVICE_TYPES
            and torch.is_autocast_enabled(device_type)):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def two_product_pool(x: torch.Tensor, pool: str, padding: str, mode: str, norm: str, magnitude: bool) -> torch.Tensor:
    """The two-product form (the default backend) of :func:`asap_pool2d` and :func:`flc_pool2d`
    (inputs already validated)."""
    nhwc = _nhwc_order(x)
    plan = pool_plan(static_size(x.shape[-2]), static_size(x.shape[-1]), pool, padding, mode, norm,
                     magnitude, nhwc, compute_dtype(x), x.device)
    # fields read by name and index (older torch.compile cannot iterate a constant-result tuple)
    kind, mats = plan.kind, plan.mats
    if kind in ('plain', 'paired'):
        return _apply_separable(x, mats[0], mats[1], plan, nhwc)
    if kind == 'low_rank':  # mats: [P_H; V_H^T], [P_W; V_W^T], then -u_H u_W^T (rank 1) or U_H, U_W
        y = _apply_separable(x, mats[0], mats[1], plan, nhwc)            # (N, C, h + r_h, w + r_w)
        h_out, w_out = plan.out[0], plan.out[1]
        if len(mats) == 3:
            return torch.addcmul(y[..., :h_out, :w_out], y[..., h_out:, w_out:], mats[2])
        inner = y[..., h_out:, w_out:]                                  # V_H^T x V_W: (N, C, r_h, r_w)
        return y[..., :h_out, :w_out] - torch.matmul(torch.matmul(mats[2], inner), mats[3].transpose(0, 1))
    # 'magnitude'; mats: P_H, P_W, Q_H, Q_W (all four products have the same sizes)
    real = _apply_separable(x, mats[0], mats[1], plan, nhwc) - _apply_separable(x, mats[2], mats[3], plan, nhwc)
    imag = _apply_separable(x, mats[0], mats[3], plan, nhwc) + _apply_separable(x, mats[2], mats[1], plan, nhwc)
    return magnitude_of(real, imag)


def magnitude_of(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """``|real + i imag|`` with a finite gradient where it is 0 (there 0, as ``torch.abs`` of a complex
    tensor gives; ``sqrt``'s own gradient is 0/0 there). Real arithmetic only, so it exports to ONNX."""
    squared = real * real + imag * imag
    zero = squared == 0  # NaN compares unequal, so a NaN stays NaN
    safe = torch.where(zero, torch.ones_like(squared), squared)
    return torch.where(zero, torch.zeros_like(squared), torch.sqrt(safe))
