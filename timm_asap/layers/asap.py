"""ASAP pooling: aliasing- and spectral-artifact-free downsampling by 2.

Grabinski, Keuper & Keuper, "Fix your downsampling ASAP! Be natively more robust via Aliasing and
Spectral Artifact free Pooling", arXiv:2307.09804.
"""
from __future__ import annotations

import numbers

import torch
import torch.fx
from timm.layers import to_2tuple
from torch import nn

from timm_asap.layers.backends import spectral_pool
from timm_asap.layers.band import ASAP_PADDINGS, MODES, check_choice, output_size, reject_unknown_args
from timm_asap.layers.spectral_matrix import check_pool_input

__all__ = ['asap_pool2d', 'ASAP2d', 'check_stride', 'check_channels']


def asap_pool2d(x: torch.Tensor, padding: str = 'one', mode: str = 'centered') -> torch.Tensor:
    """ASAP pooling of an (N, C, H, W) tensor in the exact separable real-matrix form.

    Zero-pads (``padding='one'``: one row at the bottom and one column at the right), takes the
    centred spectrum (``fft2(norm='forward')``), multiplies it by the separable window
    ``sqrt(hamming(H') hamming(W')^T)``, keeps the low-frequency band and returns the real part of
    the inverse transform, computed as ``P_H x P_W^T - U_H (V_H^T x V_W) U_W^T`` with cached
    float64-built matrices (no FFT at run time).

    Args:
        x: real floating-point input (float16, bfloat16, float32 or float64), any memory format.
        padding: ``'one'`` (paper default), ``'none'`` (no padding; the public code's H/W swap is not
            reproduced) or ``'large'`` (about H/2 zeros on each side, then a spatial centre crop).
        mode: ``'centered'`` (DC-centred band, output ``ceil(H/2) x ceil(W/2)``) or ``'reference'``
            (the public code's crop, e.g. 14 -> 8).

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H_out, W_out) with ``H_out = ceil(H / 2)`` in ``'centered'`` mode; in
          ``'reference'`` mode ``H_out = ceil(H / 2)`` except ``H / 2 + 1`` for ``H % 4 == 2``
          (see :func:`timm_asap.layers.output_size`). channels_last inputs give channels_last outputs.

    Tested against :func:`timm_asap.layers.asap_pool2d_fft` in float64 to 1e-10 for every H, W in
    1..64, both modes and all paddings; gradcheck in float64.

    Notes:
        Each output pixel depends on every input pixel of its plane (a global linear operator), so a
        NaN or Inf in one input pixel makes that whole output plane non-finite; other channels and
        images are untouched. The first call at a new input size builds its matrices in float64
        (about 1 s at 1024x1024 on one CPU thread, milliseconds at 224x224), then they are cached
        (bounded LRU; :func:`timm_asap.layers.clear_cache` frees them). Which implementation runs is
        chosen by :func:`timm_asap.layers.set_backend`; every backend gives the same values to rounding.
    Example:
        >>> asap_pool2d(torch.randn(2, 3, 14, 14)).shape
        torch.Size([2, 3, 7, 7])

    Raises:
        ValueError: for a non 4-D, integer or complex input, or an unknown padding/mode.
    """
    check_pool_input(x, 'asap_pool2d')
    check_choice('padding', padding, ASAP_PADDINGS, 'ASAP')
    check_choice('mode', mode, MODES, 'ASAP')
    return spectral_pool(x, 'asap', padding, mode, 'forward', False)


torch.fx.wrap('asap_pool2d')


def check_stride(owner: str, stride) -> None:
    """ValueError unless ``stride`` is the int 2 or a pair of them (the layers downsample by exactly 2)."""
    pair = to_2tuple(stride)
    if len(pair) == 2 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s == 2 for s in pair):
        return
    raise ValueError(f"{owner} supports stride=2, got {stride!r}")


def check_channels(owner: str, channels) -> None:
    """ValueError unless ``channels`` is None or a non-negative int (timm's ``create_aa`` passes it)."""
    if channels is not None and (not isinstance(channels, numbers.Integral) or isinstance(channels, bool)
                                 or channels < 0):
        raise ValueError(f"{owner} channels must be None or an int >= 0, got {channels!r}")


class ASAP2d(nn.Module):
    """ASAP pooling as a module; usable as timm's ``aa_layer``.

    Args:
        channels: accepted for timm's ``create_aa`` interface; unused (the operation is per channel).
        stride: must be 2 (anything else raises ValueError, so timm's create_aa does not retry).
        padding: see :func:`asap_pool2d`.
        mode: see :func:`asap_pool2d`.
        device: accepted for the factory-kwargs convention; the layer has no parameters and its
            matrices follow the input's device.
        dtype: likewise; matrices follow the input's dtype.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, ceil(H / 2), ceil(W / 2)) in ``'centered'`` mode.

    Raises:
        ValueError: for a stride other than 2, bad channels, or an unknown padding/mode.
        TypeError: for an argument the layer does not take (the message lists the allowed ones).

    A NaN/Inf pixel makes its whole output plane non-finite, and the first call at a new size builds
    the matrices (see :func:`asap_pool2d`). Tested to equal :func:`asap_pool2d` and the FFT formulation.

    Example:
        >>> ASAP2d(mode='reference')(torch.randn(1, 8, 14, 14)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(
            self,
            channels: int | None = None,
            stride: int = 2,
            padding: str = 'one',
            mode: str = 'centered',
            device=None,
            dtype=None,
            **unknown,
    ):
        super().__init__()
        reject_unknown_args(ASAP2d, unknown)
        check_stride('ASAP2d', stride)
        check_channels('ASAP2d', channels)
        self.channels = channels
        self.padding = check_choice('padding', padding, ASAP_PADDINGS, 'ASAP2d')
        self.mode = check_choice('mode', mode, MODES, 'ASAP2d')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return asap_pool2d(x, self.padding, self.mode)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (output_size(height, 'asap', self.padding, self.mode),
                output_size(width, 'asap', self.padding, self.mode))

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, mode={self.mode!r}"
