"""The FFT formulation of ASAP and FLC pooling: the definition, kept as the test oracle.

These follow the papers' description step by step with ``torch.fft`` (pad, ``fft2``, ``fftshift``,
window, band crop, ``ifftshift``, ``ifft2``) and share only the index arithmetic of
:mod:`timm_asap.layers.band` with the fast form. They are slower than :func:`asap_pool2d` (about
5-10x on CPU) and, for float16/bfloat16 inputs, compute in float32 (``torch.fft`` takes half
precision only for power-of-two sizes on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timm_asap.layers.asap import check_channels, check_stride
from timm_asap.layers.band import (ASAP_PADDINGS, FLC_NORMS, FLC_VARIANTS, MODES, BandSpec, band_spec, check_choice,
                                   reject_unknown_args)
from timm_asap.layers.spectral_matrix import check_pool_input

__all__ = ['asap_pool2d_fft', 'flc_pool2d_fft', 'ASAP2dFFT', 'FLC2dFFT']


def _fft_pool(x: torch.Tensor, sh: BandSpec, sw: BandSpec, norm: str, magnitude: bool) -> torch.Tensor:
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    x = F.pad(x, (sw.pad_before, sw.pad_after, sh.pad_before, sh.pad_after))
    spec = torch.fft.fftshift(torch.fft.fft2(x, norm=norm), dim=(-2, -1))
    if sh.window:
        wh = torch.hamming_window(sh.padded, periodic=False, dtype=torch.float64, device=x.device)
        ww = torch.hamming_window(sw.padded, periodic=False, dtype=torch.float64, device=x.device)
        spec = spec * torch.sqrt(torch.outer(wh, ww)).to(x.dtype)
    spec = spec[..., sh.band_start:sh.band_start + sh.band_len, sw.band_start:sw.band_start + sw.band_len]
    y = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm=norm)
    y = y[..., sh.crop_start:sh.crop_start + sh.crop_len, sw.crop_start:sw.crop_start + sw.crop_len]
    return (y.abs() if magnitude else y.real).to(out_dtype)


def asap_pool2d_fft(x: torch.Tensor, padding: str = 'one', mode: str = 'centered') -> torch.Tensor:
    """ASAP pooling computed with ``torch.fft`` (the definition; see :func:`asap_pool2d`).

    Args:
        x: real floating-point (N, C, H, W) input.
        padding: ``'one'``, ``'none'`` or ``'large'``.
        mode: ``'centered'`` or ``'reference'``.

    Shape:
        Same as :func:`timm_asap.layers.asap_pool2d`.
    """
    check_pool_input(x, 'asap_pool2d_fft')
    check_choice('padding', padding, ASAP_PADDINGS, 'ASAP')
    sh = band_spec(x.shape[-2], 'asap', padding, mode)
    sw = band_spec(x.shape[-1], 'asap', padding, mode)
    return _fft_pool(x, sh, sw, 'forward', False)


def flc_pool2d_fft(x: torch.Tensor, mode: str = 'centered', variant: str = 'real', norm: str = 'forward') -> torch.Tensor:
    """FLC pooling computed with ``torch.fft`` (the definition; see :func:`flc_pool2d`).

    Args:
        x: real floating-point (N, C, H, W) input.
        mode: ``'centered'`` or ``'reference'``.
        variant: ``'real'`` or ``'abs'``.
        norm: ``'forward'`` or ``'backward'``.

    Shape:
        Same as :func:`timm_asap.layers.flc_pool2d`.
    """
    check_pool_input(x, 'flc_pool2d_fft')
    check_choice('variant', variant, FLC_VARIANTS, 'FLC')
    check_choice('norm', norm, FLC_NORMS, 'FLC')
    sh = band_spec(x.shape[-2], 'flc', 'none', mode)
    sw = band_spec(x.shape[-1], 'flc', 'none', mode)
    return _fft_pool(x, sh, sw, norm, variant == 'abs')


class ASAP2dFFT(nn.Module):
    """:func:`asap_pool2d_fft` as a module (same arguments as :class:`ASAP2d`); a baseline for benchmarks."""

    def __init__(self, channels=None, stride=2, padding: str = 'one', mode: str = 'centered', device=None, dtype=None,
                 **unknown):
        super().__init__()
        reject_unknown_args(ASAP2dFFT, unknown)
        check_stride('ASAP2dFFT', stride)
        check_channels('ASAP2dFFT', channels)
        self.padding = check_choice('padding', padding, ASAP_PADDINGS, 'ASAP2dFFT')
        self.mode = check_choice('mode', mode, MODES, 'ASAP2dFFT')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return asap_pool2d_fft(x, self.padding, self.mode)


class FLC2dFFT(nn.Module):
    """:func:`flc_pool2d_fft` as a module (same arguments as :class:`FLC2d`); a baseline for benchmarks."""

    def __init__(self, channels=None, stride=2, mode: str = 'centered', variant: str = 'real', norm: str = 'forward',
                 device=None, dtype=None, **unknown):
        super().__init__()
        reject_unknown_args(FLC2dFFT, unknown)
        check_stride('FLC2dFFT', stride)
        check_channels('FLC2dFFT', channels)
        self.mode = check_choice('mode', mode, MODES, 'FLC2dFFT')
        self.variant = check_choice('variant', variant, FLC_VARIANTS, 'FLC2dFFT')
        self.norm = check_choice('norm', norm, FLC_NORMS, 'FLC2dFFT')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flc_pool2d_fft(x, self.mode, self.variant, self.norm)
