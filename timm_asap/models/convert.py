"""One-call conversion of a timm CNN to ASAP or FLC downsampling: :func:`asapify`.

Every stride-2 spatial downsampling of the model becomes "spectral pooling, then the same operation
at stride 1" (Grabinski, Keuper & Keuper, arXiv:2307.09804):

* strided convolutions of any kernel size, grouped/depthwise included, and timm's dynamic 'same'
  padding convolutions (``Conv2dSame``, ``StdConv2dSame``, ``CondConv2d``, ...): with
  ``pool_position='before'`` (default, the paper's placement) the pooling runs first, then the
  convolution with stride 1; the multiply-adds stay those of the strided conv. With
  ``pool_position='after'`` the convolution runs at stride 1 and the pooling follows it (BlurPool's
  placement): the kernel keeps the input extent its pretrained weights were trained on, at
  ``stride**2`` times that convolution's multiply-adds.
* kernel == stride "patchify" convolutions (ConvNeXt's 4x4/4 stem and 2x2/2 downsamplers): a
  patchify conv *is* a stride-1 convolution followed by subsampling, so by default
  (``patchify='after'``) the convolution runs at stride 1 and the pooling replaces the subsampling
  (``log2(stride)`` times). Pooling first would stretch the k x k kernel over a (k * stride)^2 input
  footprint and change what pretrained weights mean. The price is ``stride**2`` times that
  convolution's multiply-adds; ``patchify='before'`` keeps the cost and pools first. With
  ``pool_position='after'`` every strided convolution pools after, patchify ones included
  (``patchify='before'`` together with it is an error); ``pool_position='before'`` leaves patchify
  convolutions to the ``patchify`` switch.
* strided max/avg pooling (the ResNet stem max-pool, resnet-d shortcuts' ``AvgPool2d``, DenseNet
  transitions, VGG, ``MaxPool2dSame``/``AvgPool2dSame``) and timm's anti-aliasing layers already in
  the model (``BlurPool2d``): replaced by the spectral pooling alone (the paper's "stem max-pool ->
  ASAP").

Where several strided operations of one block read the same tensor (the strided 3x3 convolution and
the projection shortcut of a ResNet ``BasicBlock`` both read the block input), that tensor is pooled
once for all of them (:func:`register_shared_pool_block`): the same values, with fewer pooling kernels.
With ``pool_position='after'`` each convolution pools its own output, so nothing is shared.

Nothing is added to or removed from the state dict: the pooling layers have no parameters or
persistent buffers, converted convolutions keep their class's parameters (their class becomes a
subclass that pools first), so a checkpoint of the base model loads with ``strict=True``.

Output sizes: in ``mode='centered'`` every converted op returns exactly the size the base op returns,
for every input size (where the base op's padding is not 'same'-like, e.g. a 3x3/2 'valid' conv, the
stride-1 op's input is padded or cropped by the difference), so shortcuts, ``feature_info``
reductions and detection necks are unchanged. A convolution pooled after needs no fitting: at stride 1
it returns ``L = H + 2p - span`` (``H`` for 'same' padding), the centred pooling halves a length to
``ceil(L / 2)`` (twice: ``ceil(L / 4)``), and the strided conv returns ``floor((L - 1) / s) + 1 =
ceil(L / s)``. In ``mode='reference'`` sizes follow the public code's band crop (e.g. 14 -> 8) and
are not adjusted.
"""
from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import (BlurPool2d, CondConv2d, Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d,
                         StdConv2dSame, register_notrace_module, to_2tuple)
from timm.layers.conv2d_same import Conv2dSameExport
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from timm.models.resnet import BasicBlock
from torch import nn

from timm_asap.layers import MODES, create_pool, output_size
from timm_asap.layers.band import check_choice
from timm_asap.layers.create import POOL_LAYERS, pool_arguments

__all__ = [
    'asapify', 'plan_conversion', 'StridedOp', 'ConversionError', 'PooledConvMixin', 'SpectralDownsample',
    'is_converted', 'spectral_pool_modules', 'PATCHIFY_CHOICES', 'register_shared_pool_block', 'SharedPoolBasicBlock',
    'pool_kwarg_names', 'check_pool_kwargs', 'pooling_signature', 'NotScriptableMixin', 'POOL_POSITIONS',
    'pool_position_of', 'check_placement',
]

_logger = logging.getLogger(__name__)

PATCHIFY_CHOICES = ('after', 'before')
#: where the pooling goes for strided convolutions: 'before' the op at stride 1 (the paper's placement,
#: the default) or 'after' it (BlurPool's placement)
POOL_POSITIONS = ('before', 'after')
_SPACE_TO_DEPTH = (nn.PixelUnshuffle,)
POOL_TYPES = tuple(POOL_LAYERS.values())
# Layers with a stride that never downsample an (N, C, H, W) map: 1d/3d ops and transposed convs.
_NOT_2D_DOWNSAMPLING = (
    nn.Conv1d, nn.Conv3d, nn.modules.conv._ConvTransposeNd, nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d,
    nn.LPPool1d,
)


class ConversionError(ValueError):
    """The model has a strided operation :func:`asapify` cannot convert (the message lists them)."""


# ---------------------------------------------------------------------------------------------------
# Geometry of the base operation along one axis
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Axis:
    """How the base op maps an input length to an output length along one axis."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil_mode: bool = False
    same: bool = False  # dynamic TF-style 'same' padding: out = ceil(size / stride)

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1)

    def base_out(self, size: int) -> int:
        """Output length of the base op (PyTorch's conv/pool formula; ceil(size / stride) for 'same')."""
        if self.same:
            return -(-size // self.stride)
        eff = size + 2 * self.padding - self.span - 1
        if self.ceil_mode:
            out = -(-eff // self.stride) + 1
            if (out - 1) * self.stride >= size + self.padding:
                out -= 1
            return out
        return eff // self.stride + 1


def _pair(v) -> tuple[int, int]:
    """An int, a 1-sequence (as torch accepts for pool sizes) or a 2-sequence as an ``(int, int)`` pair."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    h, w = to_2tuple(v)
    return int(h), int(w)


def _num_halvings(stride: tuple[int, int]) -> int | None:
    """m with stride == (2**m, 2**m), m >= 1; None otherwise."""
    sh, sw = stride
    if sh != sw or sh < 2 or sh & (sh - 1):
        return None
    return int(math.log2(sh))


# ---------------------------------------------------------------------------------------------------
# Converted modules
# ---------------------------------------------------------------------------------------------------

class NotScriptableMixin:
    """Makes ``torch.jit.script`` of a converted model fail with a clear message.

    ``torch.jit.script`` calls ``__prepare_scriptable__`` on the model and every submodule before
    compiling; the converted modules (conv subclasses whose class changes in place, per-instance size
    fitting) are not TorchScript-compatible, so they say so instead of TorchScript's "Unknown type
    annotation" error.
    """

    def __prepare_scriptable__(self):
        _refuse_scripting(type(self).__name__)


def _refuse_scripting(found: str):
    raise RuntimeError(f"torch.jit.script is not supported for models converted by timm_asap.asapify (found "
                       f"{found}); use torch.jit.trace, torch.export.export or ONNX export (torch.onnx.export) instead")


def _pool_sizes(size: int, pools: int, pool_kind: str, padding: str, mode: str) -> int:
    for _ in range(pools):
        size = output_size(size, pool_kind, padding, mode)
    return size


def _split(diff: int) -> tuple[int, int]:
    """Split a size difference into (before, after); odd remainders go to the end, crops likewise."""
    before = int(diff / 2)
    return before, diff - before


class PooledConvMixin(NotScriptableMixin):
    """Mixed into a convolution class: spectral pooling before (or after) the convolution at stride 1.

    The pooling lives in the child module ``pool`` (no parameters, no persistent buffers), so the
    state dict is that of the base convolution. ``conv_stride`` keeps the base stride; ``stride``
    itself is 1. Set up by :func:`asapify`, not constructed directly.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out) with H_out, W_out those of the base strided convolution
          (``mode='centered'``).
    """

    pool: nn.Module
    conv_stride: tuple[int, int]
    pool_position: str
    fit_axes: tuple | None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.pool_position == 'after':
            return self.pool(super().forward(x, *args, **kwargs))
        if self.fit_axes is None:
            return super().forward(self.pool(x), *args, **kwargs)
        size = x.shape[-2:]
        x = self.pool(x)
        pads = []
        for axis, (geom, pooled_size) in enumerate(zip(self.fit_axes, x.shape[-2:])):
            want = geom.base_out(int(size[axis]))
            got = int(pooled_size) + 2 * geom.padding - geom.span
            pads.append(_split(want - got))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conv_stride={self.conv_stride}, pool_position={self.pool_position!r}"


class PooledConv2d(PooledConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledConv2dSame(PooledConvMixin, Conv2dSame):
    """timm ``Conv2dSame`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledConv2dSameExport(PooledConvMixin, Conv2dSameExport):
    """timm ``Conv2dSameExport`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledStdConv2d(PooledConvMixin, StdConv2d):
    """timm ``StdConv2d`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledStdConv2dSame(PooledConvMixin, StdConv2dSame):
    """timm ``StdConv2dSame`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledScaledStdConv2d(PooledConvMixin, ScaledStdConv2d):
    """timm ``ScaledStdConv2d`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledScaledStdConv2dSame(PooledConvMixin, ScaledStdConv2dSame):
    """timm ``ScaledStdConv2dSame`` with spectral pooling (see :class:`PooledConvMixin`)."""


class PooledCondConv2d(PooledConvMixin, CondConv2d):
    """timm ``CondConv2d`` with spectral pooling (see :class:`PooledConvMixin`)."""

    def extra_repr(self) -> str:
        return f"conv_stride={self.conv_stride}, pool_position={self.pool_position!r}"


_POOLED_CLASSES: dict[type, type] = {
    nn.Conv2d: PooledConv2d,
    Conv2dSame: PooledConv2dSame,
    Conv2dSameExport: PooledConv2dSameExport,
    StdConv2d: PooledStdConv2d,
    StdConv2dSame: PooledStdConv2dSame,
    ScaledStdConv2d: PooledScaledStdConv2d,
    ScaledStdConv2dSame: PooledScaledStdConv2dSame,
    CondConv2d: PooledCondConv2d,
}

# Conv classes whose forward pads 'same' from the stride at run time (output ceil(size / stride)).
_DYNAMIC_SAME = (Conv2dSame, Conv2dSameExport)


def _pooled_class(cls: type) -> type:
    """The pooled subclass of a convolution class; other nn.Conv2d subclasses get one made here.

    Classes made here are added to this module's namespace under their name (so pickling a whole
    model finds them while this process has made them) and registered as FX leaves.
    """
    if cls in _POOLED_CLASSES:
        return _POOLED_CLASSES[cls]
    name = f"Pooled{cls.__name__}"
    new_cls = type(name, (PooledConvMixin, cls), {
        '__module__': __name__,
        '__doc__': f"``{cls.__module__}.{cls.__qualname__}`` with spectral pooling (see PooledConvMixin).",
    })
    if name in globals():  # two different classes of the same name: keep both reachable
        name = f"{name}_{cls.__module__.replace('.', '_')}"
        new_cls.__name__ = new_cls.__qualname__ = name
    globals()[name] = new_cls
    register_notrace_module(new_cls)
    _POOLED_CLASSES[cls] = new_cls
    return new_cls


class SpectralDownsample(NotScriptableMixin, nn.Module):
    """Spectral pooling standing in for a strided pooling layer whose output size differs from it.

    Used only where the replaced layer's geometry is not 'same'-like (e.g. a 3x3/2 max-pool without
    padding, or a 2x2/2 pool at odd sizes); elsewhere the bare pooling layer is used. The output is
    cropped (or zero-padded) at the end to the replaced layer's output size.

    Args:
        pools: the pooling layers, applied in order (one per halving).
        axes: per-axis geometry of the replaced layer.
    """

    def __init__(self, pools: list[nn.Module], axes: tuple):
        super().__init__()
        self.pool = pools[0] if len(pools) == 1 else nn.Sequential(*pools)
        self.axes = axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want_h, want_w = (geom.base_out(int(s)) for geom, s in zip(self.axes, x.shape[-2:]))
        y = self.pool(x)
        (top, bottom), (left, right) = _split(want_h - y.shape[-2]), _split(want_w - y.shape[-1])
        if top or bottom or left or right:
            y = F.pad(y, (left, right, top, bottom))
        return y

    def extra_repr(self) -> str:
        return 'fit=' + ', '.join(f"(k={a.kernel}, s={a.stride}, p={a.padding})" for a in self.axes)


# ---------------------------------------------------------------------------------------------------
# One pooling for the strided operations of a block that read the same tensor
# ---------------------------------------------------------------------------------------------------

# block class -> (its shared-pool subclass, paths of the strided ops that read the shared tensor)
_SHARED_POOL_BLOCKS: dict[type, tuple[type, tuple[str, ...]]] = {}


def register_shared_pool_block(block_cls: type, shared_cls: type, strided: tuple[str, ...]) -> None:
    """Declare that the strided operations ``strided`` of ``block_cls`` all read one tensor.

    After converting, :func:`asapify` gives each block of exactly this class whose listed operations
    all pool first with equal pooling layers (and need no size fitting) one pooling, the child module
    ``pool``, and makes its class ``shared_cls``; the listed convolutions become plain stride-1
    convolutions again and listed pooling layers (e.g. the spectral pooling that replaced a resnet-d
    shortcut's ``AvgPool2d``) become ``nn.Identity``. ``shared_cls`` is a subclass of ``block_cls``
    whose forward applies ``self.pool`` to that tensor; the outputs are those of the unshared model.

    Args:
        block_cls: the block class (matched exactly, not its subclasses).
        shared_cls: its subclass that applies ``self.pool`` once.
        strided: the operations' module paths inside the block, e.g. ``('conv1', 'downsample.0')``.
    """
    if not (isinstance(shared_cls, type) and issubclass(shared_cls, block_cls)):
        raise TypeError(f"register_shared_pool_block needs a subclass of {block_cls.__name__}, got {shared_cls!r}")
    if len(strided) < 2:
        raise ValueError(f"register_shared_pool_block needs at least two strided op paths, got {strided!r}")
    _SHARED_POOL_BLOCKS[block_cls] = (shared_cls, tuple(strided))


class SharedPoolBasicBlock(NotScriptableMixin, BasicBlock):
    """timm's ResNet ``BasicBlock`` with one spectral pooling of the block input, read by both the
    first convolution and the projection shortcut (both at stride 1). Set up by :func:`asapify`.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out), as the base block's (``mode='centered'``: the base
          block's strided output size).
    """

    pool: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pool(x))


register_shared_pool_block(BasicBlock, SharedPoolBasicBlock, ('conv1', 'downsample.0'))


def _leading_pool(m: nn.Module) -> nn.Module | None:
    """The pooling ``m`` applies to its input before anything else: a converted conv's pool (pool
    first, no size fitting) or a bare spectral pooling layer; None otherwise."""
    if isinstance(m, PooledConvMixin):
        return m.pool if m.pool_position == 'before' and m.fit_axes is None else None
    return m if isinstance(m, POOL_TYPES) else None


def _unpool(block: nn.Module, path: str) -> None:
    """Remove the leading pooling of the op at ``path`` (a converted conv keeps its weights and stride 1)."""
    m = block.get_submodule(path)
    if isinstance(m, PooledConvMixin):
        del m._modules['pool']
        for attr in ('conv_stride', 'pool_position', 'fit_axes'):
            delattr(m, attr)
        m.__class__ = type(m).__bases__[1]
    else:
        parent, child = _get_parent(block, path)
        setattr(parent, child, nn.Identity())


def _share_block_pools(model: nn.Module) -> int:
    """Give each registered block whose strided ops pool the same tensor one shared pooling; returns
    how many blocks were changed."""
    changed = 0
    for block in model.modules():
        entry = _SHARED_POOL_BLOCKS.get(type(block))
        if entry is None:
            continue
        shared_cls, paths = entry
        try:
            pools = [_leading_pool(block.get_submodule(path)) for path in paths]
        except AttributeError:  # e.g. no projection shortcut
            continue
        if any(p is None for p in pools) or len({(type(p), repr(p)) for p in pools}) != 1:
            continue
        for path in paths:
            _unpool(block, path)
        block.__class__ = shared_cls
        block.add_module('pool', pools[0])
        changed += 1
    return changed


for _cls in (PooledConv2d, PooledConv2dSame, PooledConv2dSameExport, PooledStdConv2d, PooledStdConv2dSame,
             PooledScaledStdConv2d, PooledScaledStdConv2dSame, PooledCondConv2d, SpectralDownsample):
    register_notrace_module(_cls)


# ---------------------------------------------------------------------------------------------------
# Finding the strided operations
# ---------------------------------------------------------------------------------------------------

@dataclass
class StridedOp:
    """One spatial downsampling found in a model.

    Attributes:
        name: module path in the model.
        kind: ``'conv'``, ``'pool'`` (max/avg pooling), ``'aa'`` (anti-aliasing layer such as
            BlurPool2d) or ``'other'``.
        module_type: class name of the module.
        stride: base stride.
        kernel: base kernel size.
        action: ``'pool_before'`` (spectral pooling, then the op at stride 1), ``'pool_after'`` (the
            op at stride 1, then spectral pooling: patchify convs, or every strided conv with
            ``pool_position='after'``), ``'replace'`` (spectral pooling
            alone), ``'keep'`` (a lossless space-to-depth rearrangement, left as is) or
            ``'unsupported'``.
        reason: why an op is kept or unsupported.
    """

    name: str
    kind: str
    module_type: str
    stride: tuple[int, int]
    kernel: tuple[int, int]
    action: str
    reason: str = ''


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, CondConv2d)) and not isinstance(m, PooledConvMixin)


def _is_pool(m: nn.Module) -> bool:
    return isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d))


def _conv_axes(m: nn.Module) -> tuple[_Axis, _Axis]:
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    same = isinstance(m, _DYNAMIC_SAME) or bool(getattr(m, 'same_pad', False)) \
        or bool(getattr(m, 'dynamic_padding', False))
    if isinstance(m.padding, str):
        if m.padding != 'valid':
            raise ConversionError(f"unexpected padding {m.padding!r} on a strided {type(m).__name__}")
        p = (0, 0)
    else:
        p = _pair(m.padding)
    return tuple(_Axis(k[i], s[i], p[i], d[i], False, same) for i in range(2))


def _pool_axes(m: nn.Module) -> tuple[_Axis, _Axis]:
    if isinstance(m, BlurPool2d):
        pad = m.padding[0]
        return tuple(_Axis(m.filt_size, m.stride, pad) for _ in range(2))
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    same = isinstance(m, (MaxPool2dSame, AvgPool2dSame))
    p = _pair(getattr(m, 'padding', 0))
    d = _pair(getattr(m, 'dilation', 1))
    ceil_mode = bool(getattr(m, 'ceil_mode', False))
    return tuple(_Axis(k[i], s[i], p[i], d[i], ceil_mode, same) for i in range(2))


def _classify(name: str, m: nn.Module, patchify: str, pool_position: str = 'before') -> StridedOp | None:
    """The StridedOp for a module that downsamples spatially, None for one that does not."""
    tname = type(m).__name__
    if _is_conv(m):
        stride, kernel = _pair(m.stride), _pair(m.kernel_size)
        if stride == (1, 1):
            return None
        kind = 'conv'
    elif isinstance(m, BlurPool2d):
        stride, kernel = _pair(m.stride), _pair(m.filt_size)
        if stride == (1, 1):
            return None
        kind = 'aa'
    elif _is_pool(m):
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        kernel = _pair(m.kernel_size)
        if stride == (1, 1):
            return None
        kind = 'pool'
    elif isinstance(m, _SPACE_TO_DEPTH) or tname == 'SpaceToDepth':
        factor = getattr(m, 'downscale_factor', getattr(m, 'bs', 0))
        return StridedOp(name, 'other', tname, (factor, factor), (factor, factor), 'keep',
                         'lossless space-to-depth rearrangement (no subsampling, nothing aliases)')
    elif (hasattr(m, 'stride') and not any(True for _ in m.children())
          and not isinstance(m, POOL_TYPES + _NOT_2D_DOWNSAMPLING)):
        try:
            stride = _pair(m.stride)
        except (TypeError, ValueError):
            return None
        if stride == (1, 1):
            return None
        kernel = _pair(getattr(m, 'kernel_size', 0))
        return StridedOp(name, 'other', tname, stride, kernel, 'unsupported',
                         f"unknown strided layer type {tname}")
    else:
        return None

    if _num_halvings(stride) is None:
        return StridedOp(name, kind, tname, stride, kernel, 'unsupported',
                         f"stride {stride} is not a square power of two")
    if kind == 'pool' and getattr(m, 'return_indices', False):
        return StridedOp(name, kind, tname, stride, kernel, 'unsupported', 'max-pool with return_indices')
    if kind == 'conv':
        if type(m) not in _POOLED_CLASSES and not isinstance(m, nn.Conv2d):
            return StridedOp(name, kind, tname, stride, kernel, 'unsupported', f"unknown conv class {tname}")
        after = pool_position == 'after' or (kernel == stride and patchify == 'after')
        action = 'pool_after' if after else 'pool_before'
        return StridedOp(name, kind, tname, stride, kernel, action)
    return StridedOp(name, kind, tname, stride, kernel, 'replace')


def check_placement(patchify: str, pool_position: str) -> None:
    """Validate :func:`asapify`'s ``patchify`` and ``pool_position`` and that they do not contradict each other.

    Raises:
        ValueError: an unknown value, or ``pool_position='after'`` with ``patchify='before'``.
    """
    check_choice('patchify', patchify, PATCHIFY_CHOICES, 'asapify')
    check_choice('pool_position', pool_position, POOL_POSITIONS, 'asapify')
    if pool_position == 'after' and patchify == 'before':
        raise ValueError("asapify pool_position='after' pools after every strided convolution, kernel == stride "
                         "ones included; patchify='before' contradicts it (got both): drop patchify, or use "
                         "pool_position='before' to pool before the other convolutions")


def plan_conversion(model: nn.Module, patchify: str = 'after', pool_position: str = 'before') -> list[StridedOp]:
    """List the spatial downsampling layers of ``model`` and what :func:`asapify` does with each.

    Only modules are seen: a strided ``F.conv2d``/``F.max_pool2d`` call inside some module's forward
    is not (the coverage report finds those by running the model).

    Args:
        model: any ``nn.Module``.
        patchify: ``'after'`` or ``'before'`` (see :func:`asapify`).
        pool_position: ``'before'`` or ``'after'`` (see :func:`asapify`).

    Returns:
        One :class:`StridedOp` per strided module, in ``named_modules`` order.

    Raises:
        ValueError: an unknown ``patchify``/``pool_position``, or ``pool_position='after'`` with
            ``patchify='before'``.
    """
    check_placement(patchify, pool_position)
    ops = []
    for name, m in model.named_modules():
        if isinstance(m, POOL_TYPES) or isinstance(m, (PooledConvMixin, SpectralDownsample)):
            continue
        op = _classify(name, m, patchify, pool_position)
        if op is not None:
            ops.append(op)
    return ops


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` holds spectral pooling placed by :func:`asapify`."""
    return any(isinstance(m, (PooledConvMixin, SpectralDownsample) + POOL_TYPES) for m in model.modules())


def spectral_pool_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every spectral pooling layer in ``model`` (ASAP2d, FLC2d and FFT forms)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, POOL_TYPES)]


def _describe_pool(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


def _is_patchify(m: PooledConvMixin) -> bool:
    return _pair(m.kernel_size) == tuple(m.conv_stride)


def pool_position_of(model: nn.Module) -> str | None:
    """Where ``model``'s strided convolutions (kernel != stride) pool: ``'before'``, ``'after'`` or None.

    None when the model has no such converted convolution (unconverted, or only kernel == stride
    convolutions and pooling layers, whose placement the ``patchify`` switch decides): then the two
    placements build the same function.

    Raises:
        ConversionError: the model mixes both placements (asapify never builds that).
    """
    shared = tuple(cls for cls, _ in _SHARED_POOL_BLOCKS.values())
    found = {'before' if isinstance(m, shared) else m.pool_position for m in model.modules()
             if isinstance(m, shared) or (isinstance(m, PooledConvMixin) and not _is_patchify(m))}
    if len(found) > 1:
        raise ConversionError("the model's strided convolutions pool both before and after (asapify builds one "
                              "placement per model)")
    return found.pop() if found else None


def pooling_signature(model: nn.Module) -> list[str]:
    """The distinct spectral pooling layers of ``model``, e.g. ``["ASAP2d(padding='one', mode='centered')"]``,
    and ``"pool_position='after'"`` where its strided convolutions pool after the op (:func:`asapify`).

    Two models with equal state dicts compute the same function only if their signatures agree too:
    the Hub weights record it (safetensors metadata) and the checked loaders compare it. The paper's
    placement (``'before'``) adds no entry, so signatures recorded before the placement became a choice
    stay valid.
    """
    pools = sorted({_describe_pool(m) for _, m in spectral_pool_modules(model)})
    return pools + (["pool_position='after'"] if pools and pool_position_of(model) == 'after' else [])


_NOT_POOL_OPTIONS = ('channels', 'stride', 'mode', 'device', 'dtype')  # set by asapify itself


def pool_kwarg_names(pool: str) -> tuple[str, ...]:
    """The pooling-layer options :func:`asapify` passes on for ``pool`` (``'asap'``: ``padding``;
    ``'flc'``: ``variant``, ``norm``), read from the layer's signature."""
    return tuple(p for p in pool_arguments(pool) if p not in _NOT_POOL_OPTIONS)


def check_pool_kwargs(pool: str, kwargs: dict, what: str = 'asapify') -> None:
    """Raise a TypeError naming the options ``pool`` does not take and those it does.

    Args:
        pool: a :data:`~timm_asap.layers.create.POOL_LAYERS` name.
        kwargs: the pooling options given.
        what: how to name the caller in the message.
    """
    allowed = pool_kwarg_names(pool)
    bad = sorted(set(kwargs) - set(allowed))
    if not bad:
        return
    extra = ''
    if 'padding' in bad and pool.startswith('flc'):
        extra = ' (padding is an ASAP option: FLC keeps the low-frequency block without padding)'
    raise TypeError(f"{what}: {', '.join(repr(k) for k in bad)} not an option of {pool!r} pooling "
                    f"({POOL_LAYERS[pool].__name__}); allowed: {', '.join(allowed) if allowed else 'none'}{extra}")


def _check_existing_pooling(model: nn.Module, requested: nn.Module, pool_position: str) -> None:
    present = sorted({_describe_pool(m) for _, m in spectral_pool_modules(model)})
    position = pool_position_of(model)
    if present and present != [_describe_pool(requested)]:
        asked = _describe_pool(requested)
    elif position is not None and position != pool_position:
        present, asked = [f"pool_position={position!r}"], f"pool_position={pool_position!r}"
    else:
        return
    raise ConversionError(
        f"asapify: the model is already converted, with {', '.join(present)}; asked for {asked}. Pooling "
        f"layers are not swapped or moved: convert the unconverted base model (e.g. "
        f"timm.create_model('resnet50') rather than 'resnet50_asap')")


# ---------------------------------------------------------------------------------------------------
# asapify
# ---------------------------------------------------------------------------------------------------

def _pool_kind(pool: str) -> str:
    return 'flc' if pool.startswith('flc') else 'asap'


def _needs_fit(check, lo: int = 1, hi: int = 96) -> bool:
    """True when ``check(size)`` is False for some input size (sizes where the base is empty skipped)."""
    return not all(check(size) for size in range(lo, hi + 1))


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition('.')
    return (model.get_submodule(parent_name) if parent_name else model), child


def asapify(
        model: nn.Module,
        pool: str = 'asap',
        mode: str = 'centered',
        patchify: str = 'after',
        strict: bool = True,
        *,
        pool_position: str = 'before',
        **pool_kwargs,
) -> nn.Module:
    """Convert a timm CNN in place to spectral (ASAP or FLC) downsampling, by default the paper's placement.

    Every stride-2 downsampling becomes "pool, then the same op at stride 1" (``pool_position='before'``)
    or, for strided convolutions, "the op at stride 1, then pool" (``pool_position='after'``); stride
    2**m becomes m poolings. Strided pooling layers (max/avg/blur) become the spectral pooling alone
    either way. See the module docstring for the handling of each layer type and of kernel == stride
    "patchify" convolutions. Blocks whose strided ops read the same tensor (ResNet's ``BasicBlock``,
    see :func:`register_shared_pool_block`) pool it once (placement ``'before'`` only). Parameter and
    buffer names and shapes do not change, so the base model's state dict loads with ``strict=True``;
    feature_info reductions and (in ``'centered'`` mode) every output size stay those of the base model.

    Args:
        model: the model (or a timm features_only wrapper of one); modified in place.
        pool: ``'asap'`` (default), ``'flc'``, or their FFT formulations ``'asap_fft'``/``'flc_fft'``
            (slower, for comparison).
        mode: band rule, ``'centered'`` (output sizes of a stride-2 conv) or ``'reference'`` (the
            public code's crop, e.g. 14 -> 8; output sizes then differ from the base model).
        patchify: ``'after'`` (default): kernel == stride convs run at stride 1 and the pooling
            follows them; ``'before'``: the pooling precedes them like every other conv (only with
            ``pool_position='before'``).
        strict: raise :class:`ConversionError` when the model has a strided layer that cannot be
            converted (stride that is not a square power of two, unknown strided layer class);
            with ``strict=False`` those are left as they are and a warning lists them.
        pool_position: where the pooling goes for strided convolutions (keyword only). ``'before'``
            (default, the paper's placement): pool, then the conv at stride 1, the strided conv's
            multiply-adds. ``'after'``: the conv at stride 1, then pool (BlurPool's placement): each
            kernel covers the input extent the pretrained weights were trained on, at ``stride**2``
            times that conv's multiply-adds, and no pooling is shared between a block's convs.
        **pool_kwargs: further arguments of the pooling layer, e.g. ``padding='large'`` for ASAP or
            ``variant='abs'`` for FLC.

    Returns:
        ``model`` itself, converted.

    Raises:
        ValueError: unknown ``pool``/``mode``/``patchify``/``pool_position``, ``pool_position='after'``
            with ``patchify='before'``, or a traced ``torch.fx.GraphModule`` (convert before tracing:
            traced graphs may have inlined the strided ops).
        TypeError: a pooling option the pooling does not take (the message lists the allowed ones).
        ConversionError: unsupported strided layers (``strict=True``), or a model already converted
            with other pooling (other kind, mode, options or placement; layers are not swapped or
            moved). Converting a model again with the same pooling and placement changes nothing.

    Example:
        >>> model = asapify(timm.create_model('resnet50', pretrained=True))
        >>> model = asapify(timm.create_model('resnet50', pretrained=True), pool_position='after')
    """
    check_choice('pool', pool, sorted(POOL_LAYERS), 'asapify')
    check_choice('mode', mode, MODES, 'asapify')
    check_placement(patchify, pool_position)
    traced = [n or '<model>' for n, m in model.named_modules() if isinstance(m, torch.fx.GraphModule)]
    if traced:
        raise ValueError(f"asapify got a model holding a traced torch.fx.GraphModule ({', '.join(traced[:3])}); "
                         f"convert the model before tracing it (e.g. before timm's feature_cls='fx' wrapping)")
    kind = _pool_kind(pool)
    padding = pool_kwargs.get('padding', 'one') if kind == 'asap' else 'none'
    check_pool_kwargs(pool, pool_kwargs)
    # validate the arguments once, before changing anything
    _check_existing_pooling(model, create_pool(pool, mode=mode, **pool_kwargs), pool_position)

    ops = plan_conversion(model, patchify, pool_position)
    bad = [op for op in ops if op.action == 'unsupported']
    if bad:
        listing = '; '.join(f"{op.name} ({op.module_type}, stride {op.stride}): {op.reason}" for op in bad)
        if strict:
            raise ConversionError(f"asapify cannot convert {len(bad)} strided layer(s): {listing}. "
                                  f"Pass strict=False to convert the rest and keep these.")
        warnings.warn(f"asapify left {len(bad)} strided layer(s) unconverted: {listing}", stacklevel=2)

    if any(op.name == '' and op.action == 'replace' for op in ops):
        raise ValueError(f"asapify converts in place and cannot replace the pooling layer it was given "
                         f"({type(model).__name__}); use timm_asap.layers.create_pool({pool!r}) instead, or "
                         f"convert a model that contains the layer")

    def make_pools(halvings: int) -> list[nn.Module]:
        pools = [create_pool(pool, mode=mode, **pool_kwargs) for _ in range(halvings)]
        for p in pools:  # torch.jit.script looks the hook up on each instance: a clear error for bare pools too
            p.__prepare_scriptable__ = functools.partial(_refuse_scripting, type(p).__name__)
        return pools

    centered = mode == 'centered'
    for op in ops:
        if op.action not in ('pool_before', 'pool_after', 'replace'):
            continue
        m = model.get_submodule(op.name)
        halvings = _num_halvings(op.stride)
        if op.kind == 'conv':
            axes = _conv_axes(m)
            pools = make_pools(halvings)
            fit = None
            if op.action == 'pool_before' and centered and not axes[0].same:
                def ok(size):
                    pooled = _pool_sizes(size, halvings, kind, padding, mode)
                    return all(g.base_out(size) < 1 or g.base_out(size) == pooled + 2 * g.padding - g.span
                               for g in axes)
                if _needs_fit(ok):
                    fit = axes
            m.__class__ = _pooled_class(type(m))
            m.stride = (1, 1)
            m.conv_stride = op.stride
            m.pool_position = 'before' if op.action == 'pool_before' else 'after'
            m.fit_axes = fit
            m.add_module('pool', pools[0] if halvings == 1 else nn.Sequential(*pools))
        else:
            axes = _pool_axes(m)
            pools = make_pools(halvings)

            def ok(size):
                return all(g.base_out(size) < 1
                           or g.base_out(size) == _pool_sizes(size, halvings, kind, padding, mode) for g in axes)
            if centered and _needs_fit(ok):
                new = SpectralDownsample(pools, axes)
            else:
                new = pools[0] if halvings == 1 else nn.Sequential(*pools)
            parent, child = _get_parent(model, op.name)
            setattr(parent, child, new)
    shared = _share_block_pools(model)
    _logger.debug('asapify converted %d layers (pool=%s, mode=%s, pool_position=%s); %d blocks share one pooling',
                  len(ops) - len(bad), pool, mode, pool_position, shared)
    return model
