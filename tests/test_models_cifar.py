"""The CIFAR-size families: architecture details, feature extraction, pruning, ASAP placement."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import timm_asap.models as M
from timm_asap.layers import ASAP2d
from timm_asap.models.asap_cifar import SharedPoolPreActBlock
from timm_asap.models.convert import PooledConvMixin, SharedPoolBasicBlock


pytestmark = pytest.mark.usefixtures('one_thread')


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_cifar_stem_and_reductions():
    model = timm.create_model('resnet18_cifar', device='meta')
    assert isinstance(model, M.CifarResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 2, 4, 8]
    assert model.forward_features(torch.empty(1, 3, 32, 32, device='meta')).shape == (1, 512, 4, 4)
    assert _n_params(model) == 11_173_962  # ResNet-18 for CIFAR-10 (the usual 11.17M)


def test_resnet18_cifar_output_stride_and_stem_args():
    model = timm.create_model('resnet18_cifar', output_stride=4, device='meta')
    assert model.forward_features(torch.empty(1, 3, 32, 32, device='meta')).shape[-1] == 8
    with pytest.raises(ValueError, match='output_stride must be 8, 4 or 2'):
        timm.create_model('resnet18_cifar', output_stride=16, device='meta')
    with pytest.raises(ValueError, match='fixed 3x3/1 stem'):
        timm.create_model('resnet18_cifar', stem_type='deep', device='meta')


def test_preactresnet18_and_wrn_28_10_sizes():
    pre = timm.create_model('preactresnet18', device='meta')
    assert _n_params(pre) == 11_172_170  # PreActResNet-18 with the final BN-ReLU of He et al., 10 classes
    assert [f['reduction'] for f in pre.feature_info] == [1, 1, 2, 4, 8]
    wrn = timm.create_model('wide_resnet28_10', device='meta')
    assert _n_params(wrn) == 36_479_194  # WRN-28-10, 10 classes (36.5M)
    assert sum(1 for m in wrn.modules() if isinstance(m, M.PreActBlock)) == 12
    assert [f['num_chs'] for f in wrn.feature_info] == [16, 160, 320, 640]
    x = torch.empty(1, 3, 32, 32, device='meta')
    assert wrn.forward_features(x).shape == (1, 640, 8, 8)


@pytest.mark.parametrize('name', ['resnet18_cifar_asap', 'preactresnet18_asap', 'wide_resnet28_10_asap'])
def test_asap_placement_in_cifar_networks(name):
    model = timm.create_model(name, device='meta')
    base = timm.create_model(M.base_architecture(name), device='meta')
    strided = [n for n, m in base.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    # each downsampling block pools once, for its strided 3x3 conv and its 1x1 shortcut (both now stride 1)
    shared = [n for n, m in model.named_modules() if isinstance(m, (SharedPoolBasicBlock, SharedPoolPreActBlock))]
    shortcut = 'downsample.0' if name.startswith('resnet') else 'downsample'  # timm's Sequential or a bare conv
    assert strided == [f"{b}.{conv}" for b in shared for conv in ('conv1', shortcut)]
    assert all(isinstance(model.get_submodule(b).pool, ASAP2d) for b in shared)
    assert [n for n, m in model.named_modules() if isinstance(m, ASAP2d)] == [f"{b}.pool" for b in shared]
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, PooledConvMixin) for m in model.modules())
    # stems stay stride 1 without pooling: the first layer sees the input unchanged
    first = model.get_submodule(model.pretrained_cfg['first_conv'])
    assert not isinstance(first, PooledConvMixin) and first.stride == (1, 1)
    assert len(shared) == (2 if name.startswith('wide') else 3)  # one per downsampling stage


def test_preact_block_dropout_and_drop_path():
    model = timm.create_model('wide_resnet28_10', block_drop_rate=0.3, drop_path_rate=0.1, device='meta')
    blocks = [m for m in model.modules() if isinstance(m, M.PreActBlock)]
    assert all(isinstance(b.drop, nn.Dropout) and b.drop.p == 0.3 for b in blocks)
    assert isinstance(blocks[0].drop_path, nn.Identity)  # linearly increasing from 0
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_preact_intermediates_and_pruning():
    torch.manual_seed(0)
    model = timm.create_model('preactresnet18_asap', num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[-1] for t in inter] == [32, 32, 16, 8, 4]
        torch.testing.assert_close(final, model.forward_features(x))
        normed = model.forward_intermediates(x, indices=[4], norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final)
        kept = model.prune_intermediate_layers(indices=[1, 2])
        assert kept == [1, 2] and len(model.stages) == 2
        assert [t.shape[1] for t in model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)] == [64, 128]


def test_features_only_out_indices():
    model = timm.create_model('preactresnet18_flc', features_only=True, out_indices=(2, 4)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape for o in outs] == [(1, 128, 16, 16), (1, 512, 4, 4)]
    assert model.feature_info.reduction() == [2, 8]
