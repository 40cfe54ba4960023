"""asapify: what each strided layer becomes, exact values, output sizes at every input size, errors."""
from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d, Conv2dSame, MixedConv2d, StdConv2dSame
from timm.layers.conv2d_same import conv2d_same
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from timm.models.resnet import BasicBlock
from torch import nn

import timm_asap.models as M
from timm_asap.layers import ASAP2d, ASAP2dFFT, FLC2d, asap_pool2d, asap_pool2d_fft, flc_pool2d, flc_pool2d_fft
from timm_asap.models import convert
from timm_asap.models.asap_cifar import SharedPoolPreActBlock
from timm_asap.models.convert import PooledConvMixin, SharedPoolBasicBlock, SpectralDownsample

SIZES = list(range(4, 41))


pytestmark = pytest.mark.usefixtures('one_thread')


def _convert_wrapped(layer: nn.Module, **kwargs) -> nn.Module:
    """asapify a copy of ``layer`` inside a container (pooling layers are replaced in their parent)."""
    model = nn.Sequential(copy.deepcopy(layer))
    M.asapify(model, **kwargs)
    return model


LAYERS = {
    'conv3x3s2': lambda: nn.Conv2d(4, 6, 3, 2, 1),
    'conv7x7s2': lambda: nn.Conv2d(4, 6, 7, 2, 3, bias=False),
    'conv1x1s2': lambda: nn.Conv2d(4, 6, 1, 2),
    'conv5x5s2_depthwise': lambda: nn.Conv2d(4, 4, 5, 2, 2, groups=4),
    'conv3x3s2_grouped_dilated': lambda: nn.Conv2d(4, 6, 3, 2, 2, dilation=2, groups=2),
    'conv3x3s2_valid': lambda: nn.Conv2d(4, 6, 3, 2, 0),
    'conv4x4s2_p1': lambda: nn.Conv2d(4, 6, 4, 2, 1),
    'conv3x3s4': lambda: nn.Conv2d(4, 6, 3, 4, 1),
    'patchify2': lambda: nn.Conv2d(4, 6, 2, 2),
    'patchify4': lambda: nn.Conv2d(4, 6, 4, 4),
    'conv2d_same': lambda: Conv2dSame(4, 6, 3, 2),
    'conv2d_same_even': lambda: Conv2dSame(4, 6, 4, 2),
    'std_conv_same': lambda: StdConv2dSame(4, 6, 3, 2),
    'mixed_conv': lambda: MixedConv2d(4, 6, [3, 5], stride=2),
    'maxpool3x3s2p1': lambda: nn.MaxPool2d(3, 2, 1),
    'maxpool3x3s2p0': lambda: nn.MaxPool2d(3, 2),
    'maxpool2x2': lambda: nn.MaxPool2d(2),
    'avgpool2x2_ceil': lambda: nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
    'avgpool3x3s2p1': lambda: nn.AvgPool2d(3, 2, 1),
    'avgpool2d_same': lambda: AvgPool2dSame(3, 2),
    'maxpool2d_same': lambda: MaxPool2dSame(3, 2),
    'blurpool': lambda: BlurPool2d(4, filt_size=3, stride=2),
    'blurpool5': lambda: BlurPool2d(4, filt_size=5, stride=2),
    'maxpool4x4s4': lambda: nn.MaxPool2d(4, 4),
}


@pytest.mark.parametrize('pool', ['asap', 'flc'])
@pytest.mark.parametrize('layer', sorted(LAYERS))
def test_output_size_matches_base_at_every_size(layer, pool):
    base = LAYERS[layer]()
    model = _convert_wrapped(base, pool=pool)
    assert list(model.state_dict()) == ['0.' + k for k in base.state_dict()]
    assert not any(m.stride != (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    for size in SIZES:
        x = torch.randn(1, 4, size, size + 3)
        try:
            want = base(x).shape
        except RuntimeError:  # the base op has no valid output at this size
            continue
        assert model(x).shape == want, (layer, size)


@pytest.mark.parametrize('pool, fn', [('asap', asap_pool2d), ('flc', flc_pool2d)])
def test_strided_conv_is_pool_then_conv_at_stride_1(pool, fn):
    conv = nn.Conv2d(4, 6, 3, 2, 1).double()
    model = _convert_wrapped(conv, pool=pool)
    x = torch.randn(2, 4, 15, 22, dtype=torch.float64)
    want = F.conv2d(fn(x), conv.weight, conv.bias, stride=1, padding=1)
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    pooled = model[0]
    assert isinstance(pooled, PooledConvMixin) and pooled.conv_stride == (2, 2) and pooled.pool_position == 'before'


def test_depthwise_and_same_padding_convs_values():
    dw = nn.Conv2d(4, 4, 5, 2, 2, groups=4).double()
    x = torch.randn(1, 4, 17, 17, dtype=torch.float64)
    torch.testing.assert_close(_convert_wrapped(dw)(x), F.conv2d(asap_pool2d(x), dw.weight, dw.bias, 1, 2, groups=4))
    same = Conv2dSame(4, 6, 3, 2).double()
    torch.testing.assert_close(_convert_wrapped(same)(x), conv2d_same(asap_pool2d(x), same.weight, same.bias, (1, 1)))


def test_patchify_conv_runs_at_stride_1_then_pools():
    conv = nn.Conv2d(4, 6, 4, 4).double()
    x = torch.randn(1, 4, 32, 32, dtype=torch.float64)
    model = _convert_wrapped(conv)
    want = asap_pool2d(asap_pool2d(F.conv2d(x, conv.weight, conv.bias)))
    torch.testing.assert_close(model(x), want)
    assert model[0].pool_position == 'after'
    before = _convert_wrapped(conv, patchify='before')
    assert before[0].pool_position == 'before'
    assert before(x).shape == conv(x).shape == (1, 6, 8, 8)


@pytest.mark.parametrize('layer', ['maxpool3x3s2p1', 'avgpool2x2_ceil', 'blurpool', 'maxpool2d_same'])
def test_pooling_layers_become_the_spectral_pool_alone(layer):
    model = _convert_wrapped(LAYERS[layer]())
    assert isinstance(model[0], ASAP2d)
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(model(x), asap_pool2d(x))


def test_valid_pool_is_fitted_to_base_size():
    model = _convert_wrapped(nn.MaxPool2d(3, 2))
    assert isinstance(model[0], SpectralDownsample)
    x = torch.randn(1, 4, 17, 17)
    torch.testing.assert_close(model(x), asap_pool2d(x)[..., :8, :8])


def test_state_dict_unchanged_and_base_weights_load_strict():
    base = timm.create_model('resnet26d', num_classes=10)
    model = M.asapify(copy.deepcopy(base))
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in base.state_dict().items()]
    model.load_state_dict(base.state_dict(), strict=True)
    for k, v in base.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_resnet_d_shortcut_avgpool_and_blurpool_models():
    model = M.asapify(timm.create_model('resnet26d', num_classes=10))
    assert isinstance(model.layer2[0].downsample[0], ASAP2d)  # the resnet-d AvgPool2d
    assert model.layer2[0].downsample[1].stride == (1, 1)
    aa = M.asapify(timm.create_model('resnetaa34d', num_classes=10))
    assert not any(isinstance(m, BlurPool2d) for m in aa.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert aa.eval()(x).shape == (1, 10)


def test_plan_lists_every_strided_layer():
    plan = M.plan_conversion(timm.create_model('resnet18', device='meta'))
    names = {op.name: op.action for op in plan}
    assert names == {'conv1': 'pool_before', 'maxpool': 'replace', 'layer2.0.conv1': 'pool_before',
                     'layer2.0.downsample.0': 'pool_before', 'layer3.0.conv1': 'pool_before',
                     'layer3.0.downsample.0': 'pool_before', 'layer4.0.conv1': 'pool_before',
                     'layer4.0.downsample.0': 'pool_before'}
    plan = M.plan_conversion(timm.create_model('convnext_atto', device='meta'))
    assert {op.action for op in plan} == {'pool_after'} and len(plan) == 4


def test_second_call_changes_nothing():
    model = M.asapify(timm.create_model('resnet18', device='meta'))
    pools = M.spectral_pool_modules(model)
    assert M.is_converted(model) and M.plan_conversion(model) == []
    M.asapify(model)
    assert len(M.spectral_pool_modules(model)) == len(pools)


def test_unsupported_stride_raises_or_warns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 3), nn.Conv2d(4, 4, 3, 2, 1))
    with pytest.raises(M.ConversionError, match=r"0 \(Conv2d, stride \(3, 3\)\).*power of two"):
        M.asapify(model)
    assert model[1].stride == (2, 2)  # nothing changed
    with pytest.warns(UserWarning, match='left 1 strided layer'):
        M.asapify(model, strict=False)
    assert model[0].stride == (3, 3) and isinstance(model[1], PooledConvMixin)


def test_bad_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1))
    with pytest.raises(ValueError, match="pool must be one of"):
        M.asapify(model, pool='blur')
    with pytest.raises(ValueError, match="mode must be one of"):
        M.asapify(model, mode='middle')
    with pytest.raises(ValueError, match="patchify must be one of"):
        M.asapify(model, patchify='never')
    with pytest.raises(ValueError, match='padding'):
        M.asapify(model, padding='huge')
    with pytest.raises(ValueError, match='cannot replace the pooling layer'):
        M.asapify(nn.MaxPool2d(2))
    traced = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1)))
    with pytest.raises(ValueError, match='before tracing'):
        M.asapify(traced)
    assert isinstance(model[0], nn.Conv2d) and model[0].stride == (2, 2)


@pytest.mark.parametrize('name,shared,unshared', [
    ('resnet18', 5, 8), ('resnet34d', 5, 8), ('resnet18_cifar', 3, 6), ('preactresnet18', 3, 6),
    ('wide_resnet28_10', 2, 4), ('resnet26d', 8, 8),
])
@pytest.mark.parametrize('pool', ['asap', 'flc'])
def test_blocks_share_one_pooling_of_the_same_tensor(name, shared, unshared, pool, monkeypatch):
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, device='meta') if name == 'wide_resnet28_10' else dict(num_classes=10)
    base = timm.create_model(name, **kwargs)
    model = M.asapify(copy.deepcopy(base), pool=pool)
    with monkeypatch.context() as m:
        m.setattr(convert, '_share_block_pools', lambda model: 0)
        reference = M.asapify(copy.deepcopy(base), pool=pool)
    assert len(M.spectral_pool_modules(model)) == shared and len(M.spectral_pool_modules(reference)) == unshared
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in base.state_dict().items()]
    for block in model.modules():
        if isinstance(block, (SharedPoolBasicBlock, SharedPoolPreActBlock)):
            assert block.conv1.stride == (1, 1) and type(block.conv1) is nn.Conv2d
    if name == 'wide_resnet28_10':  # 36M parameters: structure only
        return
    model.load_state_dict(base.state_dict())
    reference.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model, reference = model.double().eval(), reference.double().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    x.requires_grad_(True)
    model.train()(x).sum().backward()
    grad, x.grad = x.grad, None
    reference.train()(x).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-12, atol=1e-12)


def test_blocks_with_unequal_pools_are_not_shared():
    block = timm.create_model('resnet18', num_classes=10).layer2[0]
    model = M.asapify(nn.Sequential(copy.deepcopy(block)))
    assert type(model[0]) is SharedPoolBasicBlock
    mixed = nn.Sequential(copy.deepcopy(block))
    M.asapify(mixed.get_submodule('0.downsample'), pool='flc')  # the shortcut pools with FLC
    M.asapify(mixed.get_submodule('0.conv1'))  # the main branch with ASAP
    assert convert._share_block_pools(mixed) == 0
    assert type(mixed[0]) is BasicBlock and isinstance(mixed[0].conv1.pool, ASAP2d)
    assert isinstance(mixed[0].downsample[0].pool, FLC2d)


def test_register_shared_pool_block_checks_arguments():
    with pytest.raises(TypeError, match='needs a subclass of BasicBlock'):
        convert.register_shared_pool_block(BasicBlock, nn.Module, ('conv1', 'downsample.0'))
    with pytest.raises(ValueError, match='at least two'):
        convert.register_shared_pool_block(BasicBlock, SharedPoolBasicBlock, ('conv1',))


def test_fft_formulation_matches_fast_form():
    torch.manual_seed(0)
    base = timm.create_model('resnet18_cifar', num_classes=10).double().eval()
    fast = M.asapify(copy.deepcopy(base), pool='asap')
    fft = M.asapify(copy.deepcopy(base), pool='asap_fft')
    assert any(isinstance(m, ASAP2dFFT) for m in fft.modules())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), fft(x), rtol=1e-9, atol=1e-9)


def test_flc_variant_kwargs():
    model = M.asapify(nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1)), pool='flc', variant='abs')
    assert isinstance(model[0].pool, FLC2d) and model[0].pool.variant == 'abs'


def test_deepcopy_and_pickle_whole_model():
    model = timm.create_model('resnet18_cifar_asap', num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(copy.deepcopy(model)(x), ref)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.load(buf, weights_only=False)(x), ref)


def test_fx_feature_extraction_of_converted_model():
    torch.manual_seed(0)
    model = timm.create_model('resnet18_asap', features_only=True, feature_cls='fx').eval()
    torch.manual_seed(0)
    ref = timm.create_model('resnet18_asap', features_only=True).eval()  # timm's default FeatureListNet
    assert sum(isinstance(m, ASAP2d) for m in model.modules()) == 5  # stem conv, max-pool, 3 shared block pools
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, want in zip(model(x), ref(x)):
            torch.testing.assert_close(out, want)


def test_channels_last_and_bfloat16():
    model = timm.create_model('resnet18_cifar_asap', num_classes=10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


@pytest.mark.slow
@pytest.mark.parametrize('pool_position', M.POOL_POSITIONS)
def test_torch_compile_matches_eager(pool_position):
    model = timm.create_model('resnet18_cifar_asap', num_classes=10, pool_position=pool_position).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('pool_position', M.POOL_POSITIONS)
def test_onnx_export(tmp_path, pool_position):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    model = timm.create_model('resnet18_cifar_asap', num_classes=10, pool_position=pool_position).eval()
    path = tmp_path / 'm.onnx'
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


def test_one_element_pool_sizes_convert_like_ints():
    # torch accepts MaxPool2d((2,)); the conversion reads it as (2, 2)
    x = torch.randn(1, 3, 16, 16)
    one = M.asapify(nn.Sequential(nn.MaxPool2d((2,))), pool='asap')
    two = M.asapify(nn.Sequential(nn.MaxPool2d(2)), pool='asap')
    torch.testing.assert_close(one(x), two(x))


@pytest.mark.parametrize('pool', ['asap', 'flc', 'asap_fft', 'flc_fft'])
def test_profiled_pool_modules_cover_every_pool_layer(pool):
    from timm_asap_lab.tools.benchmark_models import _pool_modules

    model = M.asapify(timm.create_model('resnet18', num_classes=10), pool=pool)
    assert _pool_modules(model) and all(type(m).__name__ != 'MaxPool2d' for m in _pool_modules(model))


# ---------------------------------------------------------------------------------------------------
# pool_position: where the pooling goes for strided convolutions
# ---------------------------------------------------------------------------------------------------

CONV_LAYERS = sorted(k for k in LAYERS if k.startswith(('conv', 'patchify', 'std_conv', 'mixed')))
FFT_POOL = {'asap': asap_pool2d_fft, 'flc': flc_pool2d_fft}


def _at_stride_1(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` whose convolutions run at stride 1 (their padding rules unchanged)."""
    layer = copy.deepcopy(layer)
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
    return layer


@pytest.mark.parametrize('pool', ['asap', 'flc'])
@pytest.mark.parametrize('layer', CONV_LAYERS)
def test_pool_after_is_the_op_at_stride_1_then_the_fft_pooling(layer, pool):
    """pool_position='after' against the FFT definition: the base op at stride 1, then log2(stride) FFT poolings,
    with the base op's output size at every input size (no fitting needed: ceil(L / 2) per halving)."""
    torch.manual_seed(0)
    base = LAYERS[layer]().double()
    model = _convert_wrapped(base, pool=pool, pool_position='after')
    assert list(model.state_dict()) == ['0.' + k for k in base.state_dict()]
    converted = [m for m in model.modules() if isinstance(m, PooledConvMixin)]
    assert converted and all(m.pool_position == 'after' and m.stride == (1, 1) for m in converted)
    reference = _at_stride_1(base)
    halvings = int(math.log2(_pair_stride(base)))
    for size in SIZES:
        x = torch.randn(1, 4, size, size + 3, dtype=torch.float64)
        try:
            want_shape = base(x).shape
        except RuntimeError:  # the base op has no valid output at this size
            continue
        with torch.no_grad():
            want = reference(x)
            for _ in range(halvings):
                want = FFT_POOL[pool](want)
            out = model(x)
        assert out.shape == want_shape, (layer, size)
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)


def _pair_stride(layer: nn.Module) -> int:
    conv = next(m for m in layer.modules() if isinstance(m, nn.Conv2d))
    return conv.stride[0]


@pytest.mark.parametrize('pool', ['asap', 'flc'])
def test_pool_after_functional_form(pool):
    conv = nn.Conv2d(4, 6, 3, 2, 1).double()
    x = torch.randn(2, 4, 15, 22, dtype=torch.float64)
    model = _convert_wrapped(conv, pool=pool, pool_position='after')
    want = FFT_POOL[pool](F.conv2d(x, conv.weight, conv.bias, stride=1, padding=1))
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)
    before = _convert_wrapped(conv, pool=pool)
    assert not torch.allclose(before(x), model(x))  # the two placements are different functions


def test_pooling_layers_are_the_spectral_pool_alone_in_both_placements():
    for layer in ('maxpool3x3s2p1', 'blurpool', 'avgpool2x2_ceil'):
        before = _convert_wrapped(LAYERS[layer]())
        after = _convert_wrapped(LAYERS[layer](), pool_position='after')
        assert type(after[0]) is type(before[0]) is ASAP2d
    plan = {op.name: op.action for op in M.plan_conversion(timm.create_model('resnet18', device='meta'),
                                                              pool_position='after')}
    assert plan == {'conv1': 'pool_after', 'maxpool': 'replace', 'layer2.0.conv1': 'pool_after',
                    'layer2.0.downsample.0': 'pool_after', 'layer3.0.conv1': 'pool_after',
                    'layer3.0.downsample.0': 'pool_after', 'layer4.0.conv1': 'pool_after',
                    'layer4.0.downsample.0': 'pool_after'}


@pytest.mark.parametrize('name', ['resnet18', 'resnet26d', 'preactresnet18'])
@pytest.mark.parametrize('pool', ['asap', 'flc'])
def test_pool_after_whole_model_loads_strict_and_matches_fft_form(name, pool):
    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=10).double().eval()
    model = M.asapify(copy.deepcopy(base), pool=pool, pool_position='after')
    fft = M.asapify(copy.deepcopy(base), pool=f'{pool}_fft', pool_position='after')
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in base.state_dict().items()]
    model.load_state_dict(base.state_dict(), strict=True)
    fft.load_state_dict(base.state_dict(), strict=True)
    # no pooling is shared: each strided conv pools its own output
    assert not any(isinstance(m, (SharedPoolBasicBlock, SharedPoolPreActBlock)) for m in model.modules())
    assert M.pool_position_of(model) == 'after' and M.pool_position_of(fft) == 'after'
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, fft(x), rtol=1e-9, atol=1e-9)
        assert out.shape == base(x).shape


def test_pool_after_shares_no_pooling_and_counts_one_per_op():
    before = M.asapify(timm.create_model('resnet18', device='meta'))
    after = M.asapify(timm.create_model('resnet18', device='meta'), pool_position='after')
    # stem conv, stem max-pool and 2 per downsampling block; 'before' shares the block input's pooling
    assert len(M.spectral_pool_modules(after)) == 8 and len(M.spectral_pool_modules(before)) == 5
    assert sum(isinstance(m, SharedPoolBasicBlock) for m in before.modules()) == 3
    assert not any(isinstance(m, SharedPoolBasicBlock) for m in after.modules())


def test_default_placement_is_before_and_unchanged():
    """pool_position='before' (the default) builds exactly the model asapify built before it was a choice."""
    torch.manual_seed(0)
    base = timm.create_model('resnet18', num_classes=10).eval()
    default = M.asapify(copy.deepcopy(base))
    explicit = M.asapify(copy.deepcopy(base), pool_position='before')
    assert repr(default) == repr(explicit)
    assert M.pooling_signature(default) == ["ASAP2d(padding='one', mode='centered')"]  # no placement entry
    assert M.pool_position_of(default) == 'before'
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), base.state_dict().values()))


def test_pooling_signature_records_the_placement():
    after = M.asapify(timm.create_model('resnet18_cifar', device='meta'), pool='flc', pool_position='after')
    assert M.pooling_signature(after) == ["FLC2d(mode='centered', variant='real', norm='forward')",
                                          "pool_position='after'"]
    # only kernel == stride convolutions (ConvNeXt): both placements build the same model and signature
    convnext = [M.asapify(timm.create_model('convnext_atto', device='meta'), pool_position=p) for p in M.POOL_POSITIONS]
    assert repr(convnext[0]) == repr(convnext[1])
    assert M.pool_position_of(convnext[0]) is None
    assert M.pooling_signature(convnext[0]) == M.pooling_signature(convnext[1])
    assert M.pool_position_of(timm.create_model('resnet18', device='meta')) is None


def test_placement_is_not_moved_by_a_second_call():
    model = M.asapify(timm.create_model('resnet18', device='meta'))
    with pytest.raises(M.ConversionError, match=r"pool_position='before'; asked for pool_position='after'"):
        M.asapify(model, pool_position='after')
    after = M.asapify(timm.create_model('resnet18', device='meta'), pool_position='after')
    pools = len(M.spectral_pool_modules(after))
    M.asapify(after, pool_position='after')  # the same placement again: nothing changes
    assert len(M.spectral_pool_modules(after)) == pools
    with pytest.raises(M.ConversionError, match="pool_position='after'; asked for pool_position='before'"):
        M.asapify(after)


def test_bad_placement_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1))
    with pytest.raises(ValueError, match=r"pool_position must be one of \['before', 'after'\], got 'middle'"):
        M.asapify(model, pool_position='middle')
    with pytest.raises(ValueError, match="patchify='before' contradicts it"):
        M.asapify(model, pool_position='after', patchify='before')
    with pytest.raises(TypeError):
        M.asapify(model, 'asap', 'centered', 'after', True, 'after')  # keyword only
    assert type(model[0]) is nn.Conv2d and model[0].stride == (2, 2)
    with pytest.raises(ValueError, match="patchify='before' contradicts"):
        M.plan_conversion(model, patchify='before', pool_position='after')


def test_pool_after_patchify_convs_pool_after_too():
    model = M.asapify(timm.create_model('convnext_atto', device='meta'), pool_position='after')
    assert {op.action for op in M.plan_conversion(timm.create_model('convnext_atto', device='meta'),
                                                  pool_position='after')} == {'pool_after'}
    assert all(m.pool_position == 'after' for m in model.modules() if isinstance(m, PooledConvMixin))


@pytest.mark.parametrize('pool_position', M.POOL_POSITIONS)
def test_features_only_reductions_in_both_placements(pool_position):
    base = timm.create_model('resnet18', features_only=True, device='meta')
    torch.manual_seed(0)
    model = timm.create_model('resnet18_asap', features_only=True, pool_position=pool_position).eval()
    assert model.feature_info.reduction() == base.feature_info.reduction()
    x = torch.randn(1, 3, 61, 64)
    with torch.no_grad():
        outs = model(x)
    for out, red in zip(outs, model.feature_info.reduction()):
        assert out.shape[-2:] == (math.ceil(61 / red), math.ceil(64 / red))
    torch.manual_seed(0)
    fx = timm.create_model('resnet18_asap', features_only=True, feature_cls='fx', pool_position=pool_position).eval()
    with torch.no_grad():
        for a, b in zip(fx(x), outs):
            torch.testing.assert_close(a, b)
