"""FLC pooling (FrequencyLowCut): alias-free downsampling by 2 in the frequency domain.

Grabinski, Jung, Keuper & Keuper, "FrequencyLowCut Pooling - Plug & Play against Catastrophic
Overfitting", ECCV 2022, arXiv:2204.00491; the predecessor of ASAP (arXiv:2307.09804).
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from timm_asap.layers.asap import check_channels, check_stride
from timm_asap.layers.backends import spectral_pool
from timm_asap.layers.band import FLC_NORMS, FLC_VARIANTS, MODES, check_choice, output_size, reject_unknown_args
from timm_asap.layers.spectral_matrix import check_pool_input

__all__ = ['flc_pool2d', 'FLC2d']


def flc_pool2d(x: torch.Tensor, mode: str = 'centered', variant: str = 'real', norm: str = 'forward') -> torch.Tensor:
    """FLC pooling of an (N, C, H, W) tensor in the exact separable real-matrix form.

    Keeps the centred low-frequency band of ``fft2(x)`` (no padding, no window) and transforms back.

    Args:
        x: real floating-point input (float16, bfloat16, float32 or float64), any memory format.
        mode: ``'centered'`` (DC-centred band, output ``ceil(H/2) x ceil(W/2)``) or ``'reference'``
            (the public code's crop ``[int(H/4), int(3H/4))``).
        variant: ``'real'`` (real part of the inverse transform; default) or ``'abs'`` (its
            magnitude, the ECCV 2022 code; where the magnitude is 0 its gradient is 0, as for
            ``torch.abs`` of the FFT form's complex result).
        norm: ``'forward'`` (default; a constant image keeps its value) or ``'backward'`` (torch's
            default norm, as in the ECCV code: the output is scaled by about 4). The ECCV layer is
            ``flc_pool2d(x, 'reference', 'abs', 'backward')``.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, ceil(H / 2), ceil(W / 2)) in ``'centered'`` mode,
          (N, C, int(3H/4) - int(H/4), int(3W/4) - int(W/4)) in ``'reference'`` mode.

    Tested against :func:`timm_asap.layers.flc_pool2d_fft` in float64 to 1e-10 for every H, W in
    1..64 and both modes; gradcheck in float64.

    Notes:
        As for :func:`timm_asap.layers.asap_pool2d`: a NaN or Inf in one input pixel makes its whole
        output plane non-finite (every output pixel depends on every input pixel of the plane; other
        channels and images are untouched); the first call at a new size builds and caches the
        matrices (about 1 s at 1024x1024 on one CPU thread); :func:`timm_asap.layers.set_backend`
        chooses the implementation of the real variant ('abs' always takes the two-product form).
    Example:
        >>> flc_pool2d(torch.randn(2, 3, 14, 14), variant='abs').shape
        torch.Size([2, 3, 7, 7])

    Raises:
        ValueError: for a non 4-D, integer or complex input, or an unknown mode/variant/norm.
    """
    check_pool_input(x, 'flc_pool2d')
    check_choice('mode', mode, MODES, 'FLC')
    check_choice('variant', variant, FLC_VARIANTS, 'FLC')
    check_choice('norm', norm, FLC_NORMS, 'FLC')
    return spectral_pool(x, 'flc', 'none', mode, norm, variant == 'abs')


torch.fx.wrap('flc_pool2d')


class FLC2d(nn.Module):
    """FLC pooling as a module; usable as timm's ``aa_layer``.

    Args:
        channels: accepted for timm's ``create_aa`` interface; unused.
        stride: must be 2 (anything else raises ValueError).
        mode: see :func:`flc_pool2d`.
        variant: see :func:`flc_pool2d`.
        norm: see :func:`flc_pool2d`.
        device: accepted for the factory-kwargs convention; matrices follow the input.
        dtype: likewise.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, ceil(H / 2), ceil(W / 2)) in ``'centered'`` mode.

    Raises:
        ValueError: for a stride other than 2, bad channels, or an unknown mode/variant/norm.
        TypeError: for an argument the layer does not take, e.g. ASAP's ``padding`` (the message lists
            the allowed ones).

    A NaN/Inf pixel makes its whole output plane non-finite, and the first call at a new size builds
    the matrices (see :func:`flc_pool2d`). Tested to equal :func:`flc_pool2d` and the FFT formulation.

    Example:
        >>> FLC2d()(torch.randn(1, 8, 14, 14)).shape
        torch.Size([1, 8, 7, 7])
    """

    def __init__(
            self,
            channels: int | None = None,
            stride: int = 2,
            mode: str = 'centered',
            variant: str = 'real',
            norm: str = 'forward',
            device=None,
            dtype=None,
            **unknown,
    ):
        super().__init__()
        reject_unknown_args(FLC2d, unknown)
        check_stride('FLC2d', stride)
        check_channels('FLC2d', channels)
        self.channels = channels
        self.mode = check_choice('mode', mode, MODES, 'FLC2d')
        self.variant = check_choice('variant', variant, FLC_VARIANTS, 'FLC2d')
        self.norm = check_choice('norm', norm, FLC_NORMS, 'FLC2d')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flc_pool2d(x, self.mode, self.variant, self.norm)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return output_size(height, 'flc', 'none', self.mode), output_size(width, 'flc', 'none', self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, variant={self.variant!r}, norm={self.norm!r}"
