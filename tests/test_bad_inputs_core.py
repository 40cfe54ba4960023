"""Bad inputs to the core (model creation, conversion, the Hub loaders): each gives a clear error naming
what was wrong and what is allowed, or the correct result, never a silently different model."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import timm
import torch
from huggingface_hub import constants
from timm.models import FeatureGraphNet

import timm_asap.models as M
from timm_asap import hub as H
from timm_asap.layers import ASAP2d, FLC2d

pytestmark = pytest.mark.usefixtures('one_thread')


# ---- creation kwargs ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['resnet18_asap', 'resnet18_cifar', 'preactresnet18_flc', 'convnext_atto_asap'])
@pytest.mark.parametrize('kwargs, words', [
    (dict(in_chans=0), 'in_chans must be a positive integer, got 0'),
    (dict(in_chans=-3), 'in_chans must be a positive integer, got -3'),
    (dict(in_chans=2.5), 'in_chans must be a positive integer, got 2.5'),
    (dict(num_classes=-1), 'num_classes must be a non-negative integer (0: no classifier), got -1'),
])
def test_bad_channel_and_class_counts_fail_at_creation(name, kwargs, words):
    with pytest.raises(ValueError) as e:
        timm.create_model(name, device='meta', **kwargs)
    assert words in str(e.value) and name in str(e.value)


def test_zero_classes_is_a_headless_model():
    assert timm.create_model('resnet18_cifar_asap', num_classes=0, device='meta').num_classes == 0


@pytest.mark.parametrize('pool_args, words', [
    ('large', "pool_args must be a dict of ASAP pooling-layer arguments, got str 'large'"),
    (['padding'], 'got list'),
])
def test_pool_args_of_the_wrong_type(pool_args, words):
    with pytest.raises(TypeError) as e:
        timm.create_model('resnet18_asap', pool_args=pool_args, device='meta')
    assert words in str(e.value) and "pool_args=dict(padding='large')" in str(e.value)


@pytest.mark.parametrize('name, pool_args, words', [
    ('resnet18_flc', dict(padding='large'), "'padding' not an option of 'flc' pooling (FLC2d); allowed: variant, norm"),
    ('resnet18_flc', dict(padding='large'), 'padding is an ASAP option'),
    ('resnet18_asap', dict(variant='abs'), "'variant' not an option of 'asap' pooling (ASAP2d); allowed: padding"),
    ('resnet18_cifar_asap', dict(stride=4), "'stride' not an option"),
])
def test_pool_args_name_the_allowed_keys(name, pool_args, words):
    with pytest.raises(TypeError) as e:
        timm.create_model(name, pool_args=pool_args, device='meta')
    assert words in str(e.value)


def test_pool_args_of_each_pooling_reach_the_layers():
    assert M.pool_kwarg_names('asap') == ('padding',) and M.pool_kwarg_names('flc') == ('variant', 'norm')
    flc = timm.create_model('resnet18_flc', pool_args=dict(variant='abs'), device='meta')
    assert {m.variant for m in flc.modules() if isinstance(m, FLC2d)} == {'abs'}
    with pytest.raises(TypeError, match="allowed: padding"):
        M.asapify(timm.create_model('resnet18', device='meta'), pool='asap', norm='ortho')


def test_pooling_options_on_a_baseline_are_an_error():
    with pytest.raises(ValueError, match="resnet18_cifar has no spectral pooling; pool_mode apply to its _asap/_flc"):
        timm.create_model('resnet18_cifar', pool_mode='reference', device='meta')


def test_narrower_cifar_resnet_through_model_args():
    """channels= (timm ResNet's stage widths) reaches the CIFAR-size ResNet and its variants; stem_width, which
    timm's ResNet reads for deep stems only, is refused rather than ignored."""
    for name in ('resnet18_cifar', 'resnet18_cifar_asap'):
        model = timm.create_model(name, channels=(16, 32, 64, 128), num_classes=10)
        assert model.layer1[0].conv1.out_channels == 16 and model.layer4[0].conv1.out_channels == 128
        assert model.fc.in_features == 128
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for bad in (dict(stem_type='deep'), dict(stem_width=16)):
        with pytest.raises(ValueError, match=r"fixed 3x3/1 stem of 64 channels .*channels="):
            timm.create_model('resnet18_cifar_asap', device='meta', **bad)


# ---- conversion ---------------------------------------------------------------------------------------

def test_asapify_an_already_converted_model_with_other_pooling_raises():
    model = timm.create_model('resnet18_asap', device='meta')
    with pytest.raises(M.ConversionError) as e:
        M.asapify(model, pool='flc')
    msg = str(e.value)
    assert "already converted, with ASAP2d(padding='one', mode='centered')" in msg and 'FLC2d' in msg
    assert 'convert the unconverted base model' in msg
    with pytest.raises(M.ConversionError, match="mode='reference'"):
        M.asapify(model, mode='reference')
    with pytest.raises(M.ConversionError, match="padding='large'"):
        M.asapify(model, padding='large')
    # the same pooling again changes nothing
    before = [(n, type(m)) for n, m in model.named_modules()]
    assert M.asapify(model) is model and [(n, type(m)) for n, m in model.named_modules()] == before


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('name', ['resnet18_cifar_asap', 'preactresnet18_flc', 'vgg16_bn_asap', 'convnext_atto_flc'])
def test_torch_jit_script_says_it_is_not_supported(name):
    model = timm.create_model(name, device='meta')
    with pytest.raises(RuntimeError) as e:
        torch.jit.script(model)
    assert 'torch.jit.script is not supported' in str(e.value)
    assert 'torch.jit.trace' in str(e.value) and 'torch.export' in str(e.value) and 'ONNX' in str(e.value)


@pytest.mark.filterwarnings('ignore::FutureWarning', 'ignore::torch.jit.TracerWarning')
def test_torch_jit_trace_still_works():
    model = timm.create_model('resnet18_cifar_asap', num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.trace(model, x)(x), model(x))


# ---- features_only / feature_cfg --------------------------------------------------------------------

FX_NAMES = sorted(timm.list_models('*_asap') + timm.list_models('*_flc'))
HEAVY = {f"{b}_{p}" for b in ('vgg16_bn', 'wide_resnet101_2', 'wide_resnet50_2', 'resnet152', 'regnety_032',
                              'densenet121', 'efficientnet_b3', 'resnet101', 'wide_resnet28_10')
         for p in ('asap', 'flc')}


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in FX_NAMES])
def test_fx_features_through_feature_cfg(name):
    """timm's own spelling feature_cfg=dict(feature_cls='fx') works for every converted model, as the top-level
    feature_cls='fx' does, and gives the same feature shapes as the hook-free default extractor."""
    fx = timm.create_model(name, features_only=True, feature_cfg=dict(feature_cls='fx'))
    assert isinstance(fx, FeatureGraphNet)
    assert any(isinstance(m, (ASAP2d, FLC2d)) for m in fx.modules())
    size = 32 if M.get_variant(name).module == 'asap_cifar' else 64
    x = torch.randn(1, 3, size, size)
    plain = timm.create_model(name, features_only=True)
    with torch.no_grad():
        assert [o.shape for o in fx(x)] == [o.shape for o in plain(x)]


@pytest.mark.parametrize('name', ['preactresnet18', 'preactresnet18_asap', 'wide_resnet28_10_flc', 'resnet18_cifar'])
def test_cifar_families_accept_a_user_feature_cfg(name):
    model = timm.create_model(name, features_only=True, feature_cfg=dict(out_indices=(1, 2)), device='meta')
    assert model.feature_info.out_indices == (1, 2)
    fx = timm.create_model(name, features_only=True, feature_cfg=dict(feature_cls='fx', out_indices=(2,)),
                           device='meta')
    assert len(fx.feature_info.out_indices) == 1


# ---- weights ------------------------------------------------------------------------------------------

def test_unpublished_tag_is_not_advertised_and_pretrained_raises():
    assert not timm.is_model_pretrained('resnet18_cifar_asap.fmnist')
    assert 'resnet18_cifar_asap.fmnist' not in timm.list_pretrained()
    with pytest.raises(M.WeightsNotAvailableError) as e:
        timm.create_model('resnet18_cifar_asap.fmnist', pretrained=True)
    assert 'not published yet' in str(e.value) and 'pretrained_cfg_overlay' in str(e.value)


def _folder(tmp_path, arch='resnet18_cifar_asap', **model_args):
    """A minimal Hub folder written by the checked writer (its header records architecture and pooling)."""
    model = timm.create_model(arch, num_classes=10, **model_args)
    folder = tmp_path / 'hub'
    folder.mkdir()
    H.save_safetensors(model.state_dict(), folder / 'model.safetensors', metadata=H.weights_metadata(model, arch))
    (folder / 'config.json').write_text(json.dumps(dict(
        architecture=arch, num_classes=10, model_args=model_args,
        pretrained_cfg=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3, num_classes=10))))
    return folder, model


def _set_config(folder, **changes):
    cfg = json.loads((folder / 'config.json').read_text())
    cfg.update(changes)
    (folder / 'config.json').write_text(json.dumps(cfg))


def test_hub_folder_naming_another_architecture_with_the_same_tensors(tmp_path):
    folder, model = _folder(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(H.load_hub_folder(folder)(x), model.eval()(x))
    _set_config(folder, architecture='resnet18_cifar_flc')
    for load in (H.verify_hub_folder, H.load_hub_folder, lambda f: H.load_model(f'local-dir:{f}')):
        with pytest.raises(H.IntegrityError) as e:
            load(folder)
        msg = str(e.value)
        assert "architecture 'resnet18_cifar_asap'" in msg and "names 'resnet18_cifar_flc'" in msg
        assert e.value.path.endswith('model.safetensors')


def test_hub_folder_with_another_pool_mode(tmp_path):
    folder, _ = _folder(tmp_path, pool_mode='reference')
    H.verify_hub_folder(folder)
    _set_config(folder, model_args={})  # the default, centered
    with pytest.raises(H.IntegrityError) as e:
        H.load_hub_folder(folder)
    assert "mode='reference'" in str(e.value) and "mode='centered'" in str(e.value)
    assert 'pool_mode/pool_args' in str(e.value)


@pytest.mark.parametrize('offline', [False, True], ids=['unreachable', 'HF_HUB_OFFLINE'])
def test_pretrained_without_network_is_one_clear_line(monkeypatch, tmp_path, offline):
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nobody listens there
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
    monkeypatch.setattr(constants, 'HF_HUB_ETAG_TIMEOUT', 1)
    for name in ('hf-hub:timm-asap/nothing-here', 'resnet18_asap.tv_in1k_base'):
        start = time.monotonic()
        with pytest.raises(H.HubDownloadError) as e:
            H.load_model(name, cache_dir=tmp_path / 'cache')
        msg = str(e.value)
        assert '\n' not in msg and 'config.json' in msg and 'http://127.0.0.1:9' in msg
        assert 'HF_HUB_OFFLINE=1' in msg and 'pretrained_cfg_overlay' in msg and str(tmp_path / 'cache') in msg
        assert ('offline mode' in msg) == offline
        assert time.monotonic() - start < 60  # no minute of retries (not a timing test: a hang guard)
    assert not list((tmp_path / 'cache').rglob('*.incomplete'))


def test_checked_loaders_name_unknown_architectures(tmp_path):
    folder, _ = _folder(tmp_path)
    _set_config(folder, architecture='resnet18_cifar_aasp')
    with pytest.raises(M.UnknownModelError) as e:
        H.load_model(f'local-dir:{folder}')
    assert 'import timm_asap' in str(e.value) and 'resnet18_cifar_asap' in str(e.value)
    with pytest.raises(M.UnknownModelError, match=r"has no tag 'tv_in1k'; close: tv_in1k_base"):
        H.load_model('resnet18_asap.tv_in1k')
    shutil.rmtree(folder)


# ---- the repair (recalibrate_norm) ----------------------------------------------------------------------

@pytest.mark.parametrize('model, kwargs, error, words', [
    (lambda: {'not': 'a model'}, {}, TypeError, 'model must be a torch.nn.Module, got dict'),
    (lambda: torch.nn.BatchNorm2d(3), {'num_images': True}, ValueError,
     'num_images must be a positive integer or None (all), got True'),
    (lambda: torch.nn.BatchNorm2d(3), {'batch_size': 2.5}, ValueError,
     'batch_size must be a positive integer, got 2.5'),
])
def test_recalibrate_norm_bad_arguments(model, kwargs, error, words):
    with pytest.raises(error) as e:
        M.recalibrate_norm(model(), torch.randn(2, 3, 4, 4), **kwargs)
    assert words in str(e.value)


def test_recalibrate_norm_of_a_bare_batchnorm_layer_takes_the_image_statistics():
    bn = torch.nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    M.recalibrate_norm(bn, x, batch_size=8)  # one batch: exactly its mean and unbiased variance
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, x.transpose(0, 1).reshape(3, -1).var(1))
