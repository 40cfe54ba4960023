"""Index arithmetic shared by every spectral pooling formulation: padding, kept band, spatial crop.

All functions here work on one spatial axis of length ``size`` and return plain integers, so the
fast matrix form (:mod:`timm_asap.layers.spectral_matrix`) and the FFT formulation
(:mod:`timm_asap.layers.fft_pool`) crop exactly the same frequencies.

Two band rules are implemented (see ``asap-spec.md`` / arXiv:2307.09804):

* ``'centered'`` (default): the DC-centred band of exactly ``ceil(size / 2)`` bins, so the output
  has the size a stride-2 convolution with ``padding=k // 2`` gives.
* ``'reference'``: indices ``[int(M / 4), int(3 * M / 4))`` of the centred spectrum of length
  ``M``, as in the authors' public code (e.g. 14 -> 8 for ASAP).

It also holds the argument checks the layers, the models and the lab share: :func:`check_choice` (the one
check of a value against a set of choices) and :func:`reject_unknown_args`.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ['POOLS', 'MODES', 'ASAP_PADDINGS', 'FLC_NORMS', 'FLC_VARIANTS', 'BandSpec', 'band_spec', 'output_size']

POOLS = ('asap', 'flc')
MODES = ('centered', 'reference')
ASAP_PADDINGS = ('one', 'none', 'large')
FLC_NORMS = ('forward', 'backward')
FLC_VARIANTS = ('real', 'abs')


@dataclass(frozen=True)
class BandSpec:
    """How one axis of length ``size`` is pooled.

    Attributes:
        size: input length.
        pad_before: zeros added before the signal.
        pad_after: zeros added after the signal.
        band_start: first kept index of the fftshift-ed spectrum of length ``padded``.
        band_len: number of kept frequency bins (length of the inverse transform).
        crop_start: first kept sample of the inverse transform (non-zero only for padding 'large').
        crop_len: output length.
        window: whether the sqrt-Hamming window of length ``padded`` multiplies the spectrum.
    """

    size: int
    pad_before: int
    pad_after: int
    band_start: int
    band_len: int
    crop_start: int
    crop_len: int
    window: bool

    @property
    def padded(self) -> int:
        return self.size + self.pad_before + self.pad_after


def check_choice(name: str, value, allowed: Iterable, owner: str = '', error: type[ValueError] = ValueError):
    """Return ``value`` if it is one of ``allowed``, else raise ``error`` naming it and the choices.

    The one check of a value against a fixed set of choices, for the layers, the models and the lab.

    Args:
        name: what is chosen, as the message names it (e.g. ``'padding'``, ``'$TIMM_ASAP_POOL_BACKEND'``).
        value: the value received (any object: an unhashable one is simply not a choice).
        allowed: the choices, in the order the message lists them.
        owner: who checks, put before ``name`` in the message (e.g. ``'ASAP2d'``); empty: ``name`` alone.
        error: the exception class raised (a ValueError subclass, e.g. the lab's ConfigError).

    Raises:
        ValueError: (or ``error``) e.g. ``ASAP2d padding must be one of ['one', 'none', 'large'], got 'two'``.

    Example:
        >>> check_choice('mode', 'centered', MODES, 'ASAP2d')
        'centered'
    """
    choices = list(allowed)
    try:
        known = value in choices
    except (TypeError, ValueError, RuntimeError):  # e.g. an array, whose comparison has no single truth value
        known = False
    if not known:
        subject = f"{owner} {name}" if owner else name
        raise error(f"{subject} must be one of {choices}, got {value!r}")
    return value


def init_arguments(cls: type) -> tuple[str, ...]:
    """The named arguments of ``cls.__init__`` (without ``self`` and ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != 'self' and p.kind is not p.VAR_KEYWORD)


def reject_unknown_args(owner: type, unknown: dict) -> None:
    """TypeError naming ``unknown`` keyword arguments and the ones ``owner.__init__`` accepts."""
    if unknown:
        raise TypeError(f"{owner.__name__} got unknown argument(s) {sorted(unknown)}; "
                        f"allowed: {list(init_arguments(owner))}")


def band_spec(size: int, pool: str = 'asap', padding: str = 'one', mode: str = 'centered') -> BandSpec:
    """Padding, band and crop for one axis.

    Args:
        size: input length along the axis (>= 1).
        pool: ``'asap'`` or ``'flc'``.
        padding: ASAP padding variant, ``'one'`` (one zero at the end, the paper's default),
            ``'none'`` or ``'large'`` (about ``size / 2`` zeros on each side, then a spatial centre
            crop). Ignored for FLC, which never pads.
        mode: ``'centered'`` or ``'reference'``.

    Returns:
        The :class:`BandSpec` of the axis.

    Raises:
        ValueError: for an unknown pool/padding/mode, or a size whose output would be empty.
    """
    check_choice('pool', pool, POOLS, 'spectral pooling')
    check_choice('mode', mode, MODES, pool.upper())
    if pool == 'asap':
        check_choice('padding', padding, ASAP_PADDINGS, 'ASAP')
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{pool.upper()} needs a spatial size >= 1, got {size!r}")
    if pool == 'flc' or padding == 'none':
        before, after = 0, 0
    elif padding == 'one':
        before, after = 0, 1
    else:  # 'large': int(size / 2 - 1) before (never negative), int(size / 2) after
        before, after = max(0, size // 2 - 1), size // 2
    m = size + before + after
    large = pool == 'asap' and padding == 'large'
    if mode == 'reference':
        start, stop = m // 4, (3 * m) // 4
        band_len = stop - start
        crop_start, crop_len = ((band_len // 4, (3 * band_len) // 4 - band_len // 4) if large else (0, band_len))
    else:
        n = (size + 1) // 2
        band_len = (m + 1) // 2 if large else n
        start = m // 2 - band_len // 2
        crop_start, crop_len = (band_len - n) // 2, n
    if crop_len < 1:
        raise ValueError(
            f"{pool.upper()} mode={mode!r} gives an empty output for spatial size {size}; "
            f"use a size >= 2 or mode='centered'")
    return BandSpec(size, before, after, start, band_len, crop_start, crop_len, window=pool == 'asap')


def output_size(size: int, pool: str = 'asap', padding: str = 'one', mode: str = 'centered') -> int:
    """Output length along one axis: ``ceil(size / 2)`` in ``'centered'`` mode.

    In ``'reference'`` mode the public code's crop decides (ASAP: ``ceil(size / 2)``, except
    ``size / 2 + 1`` when ``size % 4 == 2``).
    """
    return band_spec(size, pool, padding, mode).crop_len
