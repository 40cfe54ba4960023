"""Which implementation computes the pooling: one switch over exact implementations of the same operator.

Backends (all compute ``P_H x P_W^T - U_H (V_H^T x V_W) U_W^T``, the same linear map, to rounding):

* ``'two_product'``: the separable products of :mod:`timm_asap.layers.spectral_matrix` (the default,
  every device, dtype, layout, torch.compile, torch.export and ONNX).
* ``'kronecker'``: one GEMM with the dense ``(h w) x (H W)`` matrix (:mod:`timm_asap.layers.kronecker`),
  for planes of at most ``KRONECKER_MAX_PLANE`` pixels; works everywhere, including compile and export.
* ``'triton'``: the fused kernel of :mod:`timm_asap.layers.triton_pool`, eager CUDA calls only. Under
  torch.compile, torch.export, ONNX export and torch.jit.trace it is skipped (the two-product form is
  traced instead, which inductor fuses itself), as it is for CPU tensors (unless ``TRITON_INTERPRET=1``),
  float64, sides over ``TRITON_MAX_SIDE``, or where triton is not installed.
* ``'auto'`` (default): the committed table ``backend_table.json`` of measured winners per
  (device kind, dtype, input plane, layout) decides; a key not in it takes ``'two_product'``. The table
  is written by ``timm-asap benchmark-layers --backends ... --json``; while it is empty, ``'auto'`` is
  exactly ``'two_product'``.

FLC's ``variant='abs'`` is not linear and always takes the two-product form. A backend that does not
apply to a call (see above) gives the two-product form for that call, never an error; every backend
gives the same values to rounding, so a fallback changes speed only.

Select with :func:`set_backend` (process-wide) or the environment variable ``TIMM_ASAP_POOL_BACKEND``
(read at each call until :func:`set_backend` is used). Tested in ``tests/test_layers_backends.py``: every
backend against the FFT oracle and the two-product form, forward and input gradient.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from timm_asap.layers.band import check_choice
from timm_asap.layers.kronecker import KRONECKER_MAX_PLANE, kronecker_pool
from timm_asap.layers.spectral_matrix import compute_dtype, is_channels_last, static_size, two_product_pool
from timm_asap.layers.triton_pool import triton_available, triton_pool, triton_supports

__all__ = [
    'BACKENDS', 'BACKEND_ENV', 'TABLE_PATH', 'set_backend', 'get_backend', 'resolve_backend', 'device_kind',
    'layout_name', 'load_table', 'table_is_empty', 'table_winner', 'spectral_pool',
]

BACKENDS = ('auto', 'two_product', 'kronecker', 'triton')
BACKEND_ENV = 'TIMM_ASAP_POOL_BACKEND'
TABLE_PATH = Path(__file__).with_name('backend_table.json')
TABLE_FORMAT = 1
_selected: str | None = None


def set_backend(name: str) -> str:
    """Select the pooling backend for this process; returns the previous selection.

    Args:
        name: one of :data:`BACKENDS`: ``'auto'``, ``'two_product'``, ``'kronecker'`` or ``'triton'``.

    Raises:
        ValueError: for another name (the message lists the allowed ones).
        ImportError: for ``'triton'`` where the triton package is not installed.

    Example:
        >>> previous = set_backend('kronecker')
        >>> get_backend()
        'kronecker'
        >>> _ = set_backend(previous)
    """
    global _selected
    check_choice('pooling backend', name, BACKENDS)
    if name == 'triton' and not triton_available():
        raise ImportError("pooling backend 'triton' needs the triton package (it ships with torch's CUDA "
                          "wheels); choose one of 'auto', 'two_product', 'kronecker'")
    previous = get_backend()
    _selected = name
    return previous


def get_backend() -> str:
    """The selected backend: the last :func:`set_backend`, else ``$TIMM_ASAP_POOL_BACKEND``, else ``'auto'``.

    Raises:
        ValueError: when the environment variable holds an unknown name.
    """
    if _selected is not None:
        return _selected
    return check_choice(f"${BACKEND_ENV}", os.environ.get(BACKEND_ENV, 'auto') or 'auto', BACKENDS)


def layout_name(x: torch.Tensor) -> str:
    """``'channels_last'`` or ``'contiguous'`` (any other layout): the table's layout key."""
    return 'channels_last' if is_channels_last(x) else 'contiguous'


@torch.compiler.assume_constant_result
def device_kind(device: torch.device) -> str:
    """The table's device key: ``'cpu'``, ``'cuda:sm_90'`` (compute capability), or the device type."""
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        return f'cuda:sm_{major}{minor}'
    return device.type


def load_table(path: str | Path | None = None) -> dict[tuple, str]:
    """Read a winners table (default: the committed :data:`TABLE_PATH`) into
    ``{(device, dtype, height, width, layout): backend}``.

    Raises:
        ValueError: naming the file for a malformed table or an unknown backend in it.
    """
    path = TABLE_PATH if path is None else path
    try:
        data = json.loads(Path(path).read_text())
        if data.get('format') != TABLE_FORMAT:
            raise ValueError(f"format must be {TABLE_FORMAT}, got {data.get('format')!r}")
        table = {}
        for row in data['winners']:
            key = (row['device'], row['dtype'], int(row['height']), int(row['width']), row['layout'])
            table[key] = check_choice('backend', row['backend'], BACKENDS[1:])
        return table
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"pooling backend table {path}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _table() -> dict[tuple, str]:
    return load_table()


@torch.compiler.assume_constant_result
def table_is_empty() -> bool:
    """Whether the committed table holds no winner (then ``'auto'`` is ``'two_product'``)."""
    return not _table()


@torch.compiler.assume_constant_result
def table_winner(device: str, dtype: str, height: int, width: int, layout: str) -> str:
    """The committed table's backend for a key, ``'two_product'`` for a key it does not hold."""
    return _table().get((device, dtype, height, width, layout), 'two_product')


def _tracing() -> bool:
    """torch.compile, torch.export / ONNX dynamo export, or torch.jit.trace / ONNX TorchScript export."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def resolve_backend(x: torch.Tensor, height: int, width: int, dtype: torch.dtype, magnitude: bool) -> str:
    """The backend that pools this call: the selection, looked up in the table for ``'auto'``, then
    ``'two_product'`` where the chosen one does not apply (see the module docstring). ``dtype`` is the
    compute dtype; ``magnitude`` is True for FLC's 'abs' variant."""
    name = get_backend()
    if magnitude or name == 'two_product':
        return 'two_product'
    if name == 'auto':
        if table_is_empty():
            return 'two_product'
        name = table_winner(device_kind(x.device), str(dtype).replace('torch.', ''), height, width, layout_name(x))
    if name == 'kronecker':
        return name if height * width <= KRONECKER_MAX_PLANE else 'two_product'
    if name == 'triton' and not _tracing() and triton_supports(x, height, width):
        return name
    return 'two_product'


def spectral_pool(x: torch.Tensor, pool: str, padding: str, mode: str, norm: str, magnitude: bool) -> torch.Tensor:
    """Shared body of :func:`asap_pool2d` and :func:`flc_pool2d` (inputs already validated): dispatch
    to the backend :func:`resolve_backend` picks."""
    height, width = static_size(x.shape[-2]), static_size(x.shape[-1])
    dtype = compute_dtype(x)
    backend = resolve_backend(x, height, width, dtype, magnitude)
    if backend == 'kronecker':
        return kronecker_pool(x, height, width, pool, padding, mode, norm, dtype)
    if backend == 'triton':
        return triton_pool(x, height, width, pool, padding, mode, norm, dtype)
    return two_product_pool(x, pool, padding, mode, norm, magnitude)
