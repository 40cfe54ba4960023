"""The papers' CIFAR-size networks (32x32 inputs), registered in timm with ASAP and FLC variants.

* ``resnet18_cifar``: timm's ResNet-18 with a 3x3/1 stem convolution and no stem pooling.
* ``preactresnet18``: pre-activation ResNet-18 (He et al., arXiv:1603.05027), 3x3/1 stem.
* ``wide_resnet28_10``: Wide ResNet 28-10 (Zagoruyko & Komodakis, arXiv:1605.07146).

Each also as ``<name>_asap`` and ``<name>_flc`` (:func:`timm_asap.models.asapify`: the strided 3x3
block convolutions and 1x1 shortcuts become "pool, then the same conv at stride 1"; with
``pool_position='after'``, "the conv at stride 1, then pool"). All are built by
timm's ``build_model_with_cfg``, so ``features_only``, ``num_classes``/``in_chans``/``drop_rate`` and
pretrained loading work as for timm's own models. Defaults: 10 classes, CIFAR-10 normalisation.

Example:
    >>> import timm, timm_asap
    >>> model = timm.create_model('preactresnet18_asap', num_classes=10)
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
from timm.layers import BatchNormAct2d, DropPath, create_classifier, get_act_layer, get_device_dtype
from timm.models import PretrainedCfg, build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # not re-exported by timm.models; timm's own models use it
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from timm_asap.models.convert import NotScriptableMixin, register_shared_pool_block
from timm_asap.models.creation import create_variant
from timm_asap.models.registry import make_entrypoint, variant_cfgs
from timm_asap.models.weight_tags import paper_ids

__all__ = ['variant_pretrained_cfgs', 'CifarResNet', 'PreActBlock', 'SharedPoolPreActBlock', 'PreActResNet', 'CIFAR_ARCHITECTURES', 'CIFAR10_MEAN', 'CIFAR10_STD']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet(ResNet):
    """timm's :class:`~timm.models.resnet.ResNet` with the CIFAR stem: a 3x3/1 convolution and no pooling.

    Built by ResNet itself, then the 7x7/2 stem convolution is replaced by a 3x3/1 one and the stem
    max-pool by ``nn.Identity``; ``feature_info`` reductions become 1, 1, 2, 4, 8.

    Args:
        block: residual block class (``BasicBlock`` or ``Bottleneck``).
        layers: blocks per stage.
        output_stride: 8 (default, no dilation), 4 or 2.
        in_chans: input channels.
        device: parameter device.
        dtype: parameter dtype.
        **kwargs: further :class:`ResNet` arguments (``num_classes``, ``drop_rate``, ``act_layer``,
            ``channels`` for narrower stages ...), except the stem options
            ``stem_type``/``stem_width``/``replace_stem_pool``.

    Shape:
        - Input: (N, in_chans, H, W), 32x32 for CIFAR-size data
        - Output: (N, num_classes)
    """

    def __init__(self, block, layers, output_stride: int = 8, in_chans: int = 3, device=None, dtype=None, **kwargs):
        stem_args = sorted(k for k in ('stem_type', 'stem_width', 'replace_stem_pool') if k in kwargs)
        if stem_args:
            raise ValueError(f"CifarResNet has a fixed 3x3/1 stem of 64 channels (timm's ResNet uses stem_width "
                             f"for deep stems only); got stem arguments {stem_args}. Narrow the stages with "
                             f"channels=(...)")
        if output_stride not in (2, 4, 8):
            raise ValueError(f"CifarResNet output_stride must be 8, 4 or 2, got {output_stride}")
        # ResNet counts a stride-4 stem; this stem has stride 1, so its output_stride is 4x ours.
        super().__init__(block, layers, in_chans=in_chans, output_stride=output_stride * 4,
                         device=device, dtype=dtype, **kwargs)
        stem_chs = self.bn1.num_features
        self.conv1 = nn.Conv2d(in_chans, stem_chs, kernel_size=3, stride=1, padding=1, bias=False,
                               device=device, dtype=dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        self.feature_info = [dict(info, reduction=max(1, info['reduction'] // 4)) for info in self.feature_info]


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus shortcut.

    The projection shortcut (1x1 conv with the block's stride, where the shape changes) reads the
    pre-activated input, as in PreActResNet and Wide ResNet.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: 1 or 2.
        drop_rate: dropout between the two convolutions (Wide ResNet).
        drop_path_rate: stochastic depth of the residual branch.
        act_layer: activation.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer=nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = BatchNormAct2d(in_chs, act_layer=act_layer, **dd)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.norm2 = BatchNormAct2d(out_chs, act_layer=act_layer, **dd)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.downsample = (nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)
                           if stride != 1 or in_chs != out_chs else None)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x, self.norm1(x))

    def residual(self, x: torch.Tensor, x_pre: torch.Tensor) -> torch.Tensor:
        """The block's output from its input ``x`` and the pre-activated input ``x_pre = norm1(x)``."""
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        x = self.conv2(self.drop(self.norm2(self.conv1(x_pre))))
        return self.drop_path(x) + shortcut


class SharedPoolPreActBlock(NotScriptableMixin, PreActBlock):
    """:class:`PreActBlock` with one spectral pooling of the pre-activated input, read by both the first
    convolution and the projection shortcut (both at stride 1). Set up by :func:`~timm_asap.models.asapify`.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out), as the base block's.
    """

    pool: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x, self.pool(self.norm1(x)))


register_shared_pool_block(PreActBlock, SharedPoolPreActBlock, ('conv1', 'downsample'))


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs (PreActResNet-18, Wide ResNet-28-10).

    3x3/1 stem convolution, stages of :class:`PreActBlock` (first stage stride 1, the others 2),
    the final BN-ReLU of the pre-activation design (He et al.), global pooling and a linear
    classifier. PreActResNet-18 has 11,172,170 parameters with 10 classes, WRN-28-10 36,479,194.

    Args:
        layers: blocks per stage.
        channels: output channels per stage.
        stem_chs: stem convolution channels.
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        global_pool: timm global pooling type.
        drop_rate: dropout before the classifier.
        block_drop_rate: dropout inside each block (Wide ResNet's ``dropout``).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        act_layer: activation (name or class).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        - Input: (N, in_chans, H, W), 32x32 for CIFAR-size data
        - Output: (N, num_classes)
    """

    def __init__(
            self,
            layers: tuple[int, ...] = (2, 2, 2, 2),
            channels: tuple[int, ...] = (64, 128, 256, 512),
            stem_chs: int = 64,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            block_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: Union[str, type] = 'relu',
            device=None,
            dtype=None,
    ):
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError(f"PreActResNet needs one channel count per stage, got layers={layers}, channels={channels}")
        dd = dict(device=device, dtype=dtype)
        act_layer = get_act_layer(act_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = nn.Conv2d(in_chans, stem_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=stem_chs, reduction=1, module='stem')]
        total = sum(layers)
        dprs = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, prev, reduction, idx = [], stem_chs, 1, 0
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                blocks.append(PreActBlock(prev, chs, stride if j == 0 else 1, block_drop_rate, dprs[idx],
                                          act_layer=act_layer, **dd))
                prev, idx = chs, idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = BatchNormAct2d(prev, act_layer=act_layer, **dd)
        self.num_features = prev
        self.global_pool, self.fc = create_classifier(prev, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = prev * self.global_pool.feat_mult()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Kaiming-normal (fan_out) convolutions, unit BN scales, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier (on the model's device and dtype); ``global_pool=None`` keeps the current pooling."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, self.num_classes, pool_type=global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Forward features, returning the intermediates of the stem and every stage.

        Args:
            x: input images.
            indices: last n features if int, all if None, these indices if a sequence (0: stem).
            norm: apply the final BN-ReLU to the last stage's intermediate.
            stop_early: stop after the last requested intermediate.
            output_fmt: only ``'NCHW'``.
            intermediates_only: return only the intermediates.

        Returns:
            ``(final features, intermediates)`` or the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"PreActResNet output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        last = len(self.stages)
        stages = self.stages if (torch.jit.is_scripting() or not stop_early) else self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if (norm and feat_idx == last) else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, list[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (and head) not needed for the given intermediates; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[:max_index]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------

def _cfg(first_conv: str, pool_size: tuple[int, int], description: str, pool: str) -> PretrainedCfg:
    return PretrainedCfg(
        num_classes=10, input_size=(3, 32, 32), pool_size=pool_size, crop_pct=1.0, interpolation='bilinear',
        mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv=first_conv, classifier='fc', license='apache-2.0',
        paper_ids=paper_ids(pool), description=description)


def _build_resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build_model_with_cfg(CifarResNet, 'resnet18_cifar', pretrained, **dict(model_args, **kwargs))


def _build_preact(name: str, model_args: dict, feature_cfg: dict, pretrained: bool, kwargs: dict) -> nn.Module:
    """build_model_with_cfg for a PreActResNet; a user's ``feature_cfg`` entries replace the defaults."""
    feature_cfg = dict(feature_cfg, **(kwargs.pop('feature_cfg', None) or {}))
    return build_model_with_cfg(PreActResNet, name, pretrained, feature_cfg=feature_cfg, **dict(model_args, **kwargs))


def _build_preactresnet18(pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), stem_chs=64)
    return _build_preact('preactresnet18', model_args, dict(flatten_sequential=True), pretrained, kwargs)


def _build_wide_resnet28_10(pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = dict(layers=(4, 4, 4), channels=(160, 320, 640), stem_chs=16)
    return _build_preact('wide_resnet28_10', model_args, dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
                         pretrained, kwargs)


# name -> (builder, first_conv, pool_size at 32x32, description)
CIFAR_ARCHITECTURES = {
    'resnet18_cifar': (_build_resnet18_cifar, 'conv1', (4, 4),
                       'ResNet-18 for 32x32 inputs (3x3/1 stem, no stem pooling)'),
    'preactresnet18': (_build_preactresnet18, 'stem', (4, 4),
                       'pre-activation ResNet-18 for 32x32 inputs'),
    'wide_resnet28_10': (_build_wide_resnet28_10, 'stem', (8, 8),
                         'Wide ResNet-28-10 for 32x32 inputs'),
}
_POOL_TEXT = {'none': '', 'asap': ' with ASAP downsampling', 'flc': ' with FLC downsampling'}


def _names(arch: str) -> list[tuple[str, str]]:
    return [(arch if pool == 'none' else f"{arch}_{pool}", pool) for pool in ('none', 'asap', 'flc')]


def variant_pretrained_cfgs(name: str) -> dict:
    """``'arch.tag'``-keyed pretrained cfgs of a CIFAR-size family member: its weight tags and the
    weightless untagged cfg (random initialisation)."""
    arch, pool = next((a, p) for a in CIFAR_ARCHITECTURES for n, p in _names(a) if n == name)
    _, first_conv, pool_size, desc = CIFAR_ARCHITECTURES[arch]
    defaults = _cfg(first_conv, pool_size, desc + _POOL_TEXT[pool], pool)
    return variant_cfgs(name, defaults, [('', defaults)])  # _cfg names no weights: the untagged cfg is weightless


#: pretrained cfgs by registered name; :func:`_entrypoint` adds each model's before timm's ``register_model``
#: reads them
default_cfgs: dict = {}


def _entrypoint(arch: str, pool: str) -> Callable[..., nn.Module]:
    """The entrypoint of ``arch`` (``pool='none'``) or ``<arch>_<pool>`` of this module (name, module and
    docstring set), with its pretrained cfgs added to :data:`default_cfgs`, ready for timm's ``register_model``."""
    name = arch if pool == 'none' else f"{arch}_{pool}"
    default_cfgs.update(generate_default_cfgs(variant_pretrained_cfgs(name)))
    builder, _, _, desc = CIFAR_ARCHITECTURES[arch]
    create = functools.partial(create_variant, name, builder, pool)
    return make_entrypoint(name, __name__, create, f"{desc}{_POOL_TEXT[pool]}; 10 classes and 32x32 inputs by default.")


# One line per registered model: ``timm.create_model('<name>')`` calls the entrypoint of that name.
resnet18_cifar = register_model(_entrypoint('resnet18_cifar', 'none'))
resnet18_cifar_asap = register_model(_entrypoint('resnet18_cifar', 'asap'))
resnet18_cifar_flc = register_model(_entrypoint('resnet18_cifar', 'flc'))
preactresnet18 = register_model(_entrypoint('preactresnet18', 'none'))
preactresnet18_asap = register_model(_entrypoint('preactresnet18', 'asap'))
preactresnet18_flc = register_model(_entrypoint('preactresnet18', 'flc'))
wide_resnet28_10 = register_model(_entrypoint('wide_resnet28_10', 'none'))
wide_resnet28_10_asap = register_model(_entrypoint('wide_resnet28_10', 'asap'))
wide_resnet28_10_flc = register_model(_entrypoint('wide_resnet28_10', 'flc'))
