"""The dense Kronecker form of spectral pooling: one GEMM of the flattened plane.

The separable operator ``y = P_H x P_W^T - M_H x M_W^T`` (``M = U V^T``, see
:mod:`timm_asap.layers.spectral_matrix`) is, on the row-major flattened plane, multiplication by the
``(h w) x (H W)`` matrix ``K = P_H (x) P_W - M_H (x) M_W`` (Kronecker products). One matrix product per
call and no intermediate tensor; the matrix grows as the fourth power of the side, so the form is offered
only up to :data:`KRONECKER_MAX_PLANE` input pixels. Its backward is autograd's (the product with
``K^T``: the transposed map). A candidate backend for GPUs with small planes; on the CPU it loses to the
two-product form from 14x14 planes up.
"""
from __future__ import annotations

import functools

import torch

from timm_asap.layers.band import output_size
from timm_asap.layers.spectral_matrix import axis_operator, build_outside_graphs, is_channels_last, register_cache

__all__ = ['KRONECKER_MAX_PLANE', 'KRONECKER_CACHE_SIZE', 'kronecker_matrix', 'kronecker_pool']

# Largest input plane (H * W) the Kronecker form takes: 64 x 64 gives a 1024 x 4096 matrix (16 MiB in float32).
KRONECKER_MAX_PLANE = 4096
# At most this many Kronecker matrices are cached (least recently used dropped first).
KRONECKER_CACHE_SIZE = 32


def _kron_float64(height: int, width: int, pool: str, padding: str, mode: str, norm: str) -> torch.Tensor:
    oh = axis_operator(height, pool, padding, mode, norm)
    ow = axis_operator(width, pool, padding, mode, norm)
    k = torch.kron(oh.p, ow.p)
    if oh.rank and ow.rank:
        k = k - torch.kron(oh.imag(), ow.imag())
    return k


@register_cache
@functools.lru_cache(maxsize=KRONECKER_CACHE_SIZE)
def _cached_kron(height, width, pool, padding, mode, norm, dtype, device) -> torch.Tensor:
    return build_outside_graphs(
        lambda: _kron_float64(height, width, pool, padding, mode, norm).to(device=device, dtype=dtype).contiguous())


@torch.compiler.assume_constant_result
def kronecker_matrix(height: int, width: int, pool: str, padding: str, mode: str, norm: str,
                     dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor]:
    """The cached ``(h w) x (H W)`` matrix of an input plane (built in float64, then cast), in a 1-tuple
    (torch.compile gives each constant-result tuple its own name; bare tensors of two calls would clash).

    Raises:
        ValueError: for a plane of more than :data:`KRONECKER_MAX_PLANE` pixels.
    """
    if height * width > KRONECKER_MAX_PLANE:
        raise ValueError(f"the Kronecker form takes planes of at most {KRONECKER_MAX_PLANE} pixels, "
                         f"got {height}x{width}")
    return (_cached_kron(height, width, pool, padding, mode, norm, dtype, device),)


def kronecker_pool(x: torch.Tensor, height: int, width: int, pool: str, padding: str, mode: str, norm: str,
                   dtype: torch.dtype) -> torch.Tensor:
    """Pool ``x`` (N, C, H, W) by one product with the Kronecker matrix (a linear variant: not FLC 'abs').

    NCHW inputs are flattened per plane, ``(N, C, H W) @ K^T``; channels_last inputs are read as
    (N, H W, C) without a copy, ``K @ x``, and the result comes back channels_last.
    """
    k = kronecker_matrix(height, width, pool, padding, mode, norm, dtype, x.device)[0]
    out = (output_size(height, pool, padding, mode), output_size(width, pool, padding, mode))
    batch, channels = x.shape[0], x.shape[1]
    if is_channels_last(x):
        y = torch.matmul(k, x.permute(0, 2, 3, 1).reshape(batch, height * width, channels))
        return y.reshape(batch, out[0], out[1], channels).permute(0, 3, 1, 2)
    y = torch.matmul(x.reshape(batch, channels, height * width), k.transpose(0, 1))
    return y.reshape(batch, channels, out[0], out[1])
