"""Where the tools run and in which precision: one device resolver and one autocast-dtype rule.

Used by fine-tuning, evaluation and the study (tool level; the layers and models never import it).

The precision rule of :func:`resolve_amp` with ``requested='auto'``:

* CUDA: ``torch.bfloat16`` when the GPU supports it (``torch.cuda.is_bf16_supported()``), else float32
  (``None``: no autocast; float16 is only used when asked for, since training then needs a grad scaler).
* CPU: ``torch.bfloat16`` only on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX, see
  :func:`cpu_has_native_bf16`); float32 elsewhere. Without native support (e.g. an AVX2-only CPU) CPU bf16
  autocast emulates every operation and is measured at about 30x slower than float32 for resnet18_cifar.
* Other devices (mps, ...): float32.

Example:
    >>> from timm_asap_lab.runtime import resolve_amp, resolve_device
    >>> resolve_device('cpu')
    device(type='cpu')
    >>> resolve_amp(torch.device('cpu'), 'float32') is None
    True
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from timm_asap.layers.band import check_choice

__all__ = ['resolve_device', 'resolve_amp', 'amp_context', 'cpu_has_native_bf16', 'AMP_CHOICES']

# accepted spellings of a precision request, mapped to the autocast dtype (None: float32, no autocast)
_AMP_NAMES = {
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
    'fp16': torch.float16, 'float16': torch.float16,
    'fp32': None, 'float32': None, 'none': None, 'off': None,
}
AMP_CHOICES = ('auto', *_AMP_NAMES)


def resolve_device(name: str | torch.device | None = 'auto') -> torch.device:
    """The device to run on: ``'auto'``/None picks CUDA when available, else the CPU.

    Args:
        name: ``'auto'``, None, a device string (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``) or a
            :class:`torch.device`.

    Returns:
        The :class:`torch.device`.

    Raises:
        ValueError: the string is not a device, or it names CUDA/MPS (or a CUDA index) that this machine
            does not have; the message names what is available.

    Tested against: ``tests/test_runtime.py`` (auto, explicit, unavailable CUDA, bad strings).

    Example:
        >>> resolve_device('auto').type in ('cpu', 'cuda')
        True
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {name!r}") from e
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but MPS is not available; use 'cpu' or 'auto'")
    return device


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (x86 AVX512-BF16 or AMX).

    ``torch.backends.cpu.get_cpu_capability()`` (public) is checked first: only an ``AVX512`` (or newer)
    build/CPU can have native bf16. It does not report the BF16 extension itself, so the answer then
    comes from ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` (private: torch has no
    public query for these CPU features). Any other CPU (AVX2, ARM, ...) answers False.

    Returns:
        True when CPU bf16 autocast runs on native instructions.

    Example:
        >>> isinstance(cpu_has_native_bf16(), bool)
        True
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if 'AVX512' not in capability and 'AMX' not in capability:
        return False
    probes = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_amp(device: str | torch.device, requested: str | None = 'auto') -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for float32 (no autocast).

    Args:
        device: where the model runs (a :class:`torch.device` or a device string).
        requested: ``'auto'`` (the rule in this module's docstring), ``'bf16'``/``'bfloat16'``,
            ``'fp16'``/``'float16'``, or ``'fp32'``/``'float32'``/``'none'``/``'off'``/None for float32.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.

    Raises:
        ValueError: an unknown request (the message lists :data:`AMP_CHOICES`), or bfloat16 asked for on a
            CUDA device that does not support it.

    Tested against: ``tests/test_runtime.py`` (every spelling, the CPU rule with the capability mocked).

    Example:
        >>> resolve_amp('cpu', 'bf16')
        torch.bfloat16
    """
    device = torch.device(device)
    key = 'none' if requested is None else str(requested).strip().lower()
    if check_choice('precision', key, AMP_CHOICES) != 'auto':
        dtype = _AMP_NAMES[key]
        if dtype is torch.bfloat16 and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bfloat16 asked for on {device}, which does not support it; use 'float16' or 'float32'")
        return dtype
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == 'cpu':
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def amp_context(device: str | torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a null context when ``dtype`` is None.

    Args:
        device: where the model runs.
        dtype: the result of :func:`resolve_amp`.

    Returns:
        A context manager.

    Example:
        >>> with amp_context('cpu', None):
        ...     y = torch.ones(2) * 2
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
