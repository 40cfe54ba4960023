"""A fused Triton kernel for spectral pooling: both axis products and the low-rank term in one launch.

For each plane the kernel computes ``Y = L1 X R1^T + L2 X R2^T`` (forward: ``L1 = P_H``, ``R1 = P_W``,
``L2 = -M_H``, ``R2 = M_W`` with ``M = U V^T``; see :mod:`timm_asap.layers.spectral_matrix`). One program
owns a block of output rows of one plane over the whole output width: it walks the input plane once in
tiles, multiplies each tile by ``R1^T`` (and ``R2^T``) and adds ``L1`` (``L2``) times the result to a
float32 accumulator, then writes its rows once. Inputs are read through their strides, so NCHW,
channels_last and other strided layouts need no copy; the output takes the input's memory format.
float32 products run in IEEE float32 (no TF32); bfloat16/float16 inputs multiply in their own type on
tensor cores with float32 accumulation, the intermediate rounded to the input type as the two-product
form rounds it (under the interpreter, whose bfloat16 products are wrong in Triton 3.8, the rounded half
operands are widened exactly to float32 before each product). The backward of the linear map is its
transpose, the same kernel with ``L^T``, ``R^T``.

Triton is imported on the first call (never at ``import timm_asap``); where it is missing,
:func:`triton_available` is False and the backend selection falls back to the two-product form.
``TRITON_INTERPRET=1`` (set before the first call) runs the kernel on CPU tensors with Triton's
interpreter, which is how the tests prove it exact without a GPU. The kernel uses only Triton's
builtins (``tl.full``, not the jit-compiled ``tl.zeros``), so the interpreter runs it even where
``triton.language`` was imported before ``TRITON_INTERPRET`` was set (timm imports it).
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from timm_asap.layers.spectral_matrix import axis_operator, build_outside_graphs, is_channels_last, register_cache

__all__ = ['TRITON_MAX_SIDE', 'TRITON_CACHE_SIZE', 'triton_available', 'triton_interpreting', 'triton_pool']

# Largest input or output side (H, W, h, w) the kernel takes: a program holds a full output row block.
TRITON_MAX_SIDE = 512
TRITON_CACHE_SIZE = 128
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec('triton') is not None
    except (ImportError, ValueError):  # e.g. sys.modules['triton'] set to None to block it
        return False


def triton_interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0').lower() in ('1', 'true', 'yes', 'on')


def triton_supports(x: torch.Tensor, height: int, width: int) -> bool:
    """Whether the kernel can pool ``x``: Triton importable, a CUDA tensor (or a CPU tensor under the
    interpreter), float32/bfloat16/float16, and both input sides at most :data:`TRITON_MAX_SIDE` (output
    sides are never longer)."""
    if not triton_available() or x.dtype not in _DTYPES:
        return False
    if not (x.device.type == 'cuda' or (x.device.type == 'cpu' and triton_interpreting())):
        return False
    return max(height, width) <= TRITON_MAX_SIDE


@functools.lru_cache(maxsize=None)
def _kernel():
    """Import the kernel module on first use (this imports triton). It is reloaded when the cache was
    cleared, so a ``TRITON_INTERPRET`` set since takes effect (Triton reads it when a kernel is defined)."""
    import triton

    from timm_asap.layers import triton_kernel
    if _kernel_imported:
        importlib.reload(triton_kernel)
    _kernel_imported.append(True)
    return triton, triton_kernel.spectral_pool_kernel


_kernel_imported: list = []


def _next_pow2(n: int, low: int = 16) -> int:
    return max(low, 1 << (n - 1).bit_length())


def _launch(x: torch.Tensor, mats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``L1 X R1^T + L2 X R2^T`` per plane of ``x``; ``mats`` is ``(L1, R1)`` or ``(L1, R1, L2, R2)``."""
    triton, kernel = _kernel()
    l1, r1 = mats[0], mats[1]
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = l1.shape[0], r1.shape[0]
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    y = torch.empty((batch, channels, out_h, out_w), device=x.device, dtype=x.dtype, memory_format=fmt)
    if y.numel() == 0:
        return y
    has_imag = len(mats) == 4
    # Triton 3.8's interpreter multiplies bfloat16 tiles wrongly; there the operands, already rounded to
    # their half type, are widened exactly to float32 first (the same products, float32 accumulation).
    widen = x.device.type == 'cpu' and l1.dtype != torch.float32
    l2, r2 = (mats[2], mats[3]) if has_imag else (l1, r1)
    config = launch_config(out_h, out_w)
    grid = (batch * channels, triton.cdiv(out_h, config['BLOCK_I']))
    kernel[grid](
        x, y, l1, r1, l2, r2, channels, in_h, in_w, out_h, out_w,
        *x.stride(), *y.stride(),
        HAS_IMAG=has_imag, IEEE=widen or l1.dtype == torch.float32, WIDEN=widen, **config,
    )
    return y


def launch_config(out_h: int, out_w: int) -> dict:
    """Block sizes and warps for an output plane: a program owns up to 64 rows x the whole width
    (at most 8192 float32 accumulators), walking the input in 32 x 32 tiles."""
    block_j = _next_pow2(out_w)
    block_i = max(16, min(_next_pow2(out_h), 64, 8192 // block_j))
    return dict(BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_K=32, BLOCK_B=32,
                num_warps=4 if block_i * block_j <= 4096 else 8)


def _matrices(height, width, pool, padding, mode, norm, dtype, device):
    oh = axis_operator(height, pool, padding, mode, norm)
    ow = axis_operator(width, pool, padding, mode, norm)
    # the sign of the second term sits in L2 (= -M_H), so the kernel only adds
    mats = (oh.p, ow.p) + ((-oh.imag(), ow.imag()) if oh.rank and ow.rank else ())
    forward = tuple(m.to(device=device, dtype=dtype).contiguous() for m in mats)
    backward = tuple(m.T.to(device=device, dtype=dtype).contiguous() for m in mats)
    return forward, backward


@register_cache
@functools.lru_cache(maxsize=TRITON_CACHE_SIZE)
def _cached_matrices(height, width, pool, padding, mode, norm, dtype, device):
    return build_outside_graphs(lambda: _matrices(height, width, pool, padding, mode, norm, dtype, device))


class _TritonPool(torch.autograd.Function):
    """The kernel with autograd: the backward is the transposed map, itself differentiable."""

    @staticmethod
    def forward(ctx, x, forward_mats, backward_mats):
        ctx.mats = (forward_mats, backward_mats)
        return _launch(x, forward_mats)

    @staticmethod
    def backward(ctx, grad):
        forward_mats, backward_mats = ctx.mats
        return _TritonPool.apply(grad, backward_mats, forward_mats), None, None


def triton_pool(x: torch.Tensor, height: int, width: int, pool: str, padding: str, mode: str, norm: str,
                dtype: torch.dtype) -> torch.Tensor:
    """Pool ``x`` (N, C, H, W) with the fused kernel (a linear variant: not FLC 'abs').

    ``dtype`` is the compute dtype (the autocast dtype under autocast); the input is cast to it first.
    Only eager calls use it (see :func:`timm_asap.layers.backends.resolve_backend`).
    """
    forward_mats, backward_mats = _cached_matrices(height, width, pool, padding, mode, norm, dtype, x.device)
    return _TritonPool.apply(x.to(dtype), forward_mats, backward_mats)
