"""Registered ASAP/FLC variants: state dicts, shapes, timm API, pretrained configs and loading.

Cheap checks (state-dict keys/shapes, strict loading, default-size output and feature shapes) run on
the meta device for every variant; real forward/backward, the model API and pretrained loading from
a local file run on small inputs, with the largest models marked slow.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

import timm_asap.models as M
from timm_asap.layers import ASAP2d, FLC2d
from timm_asap.models.convert import PooledConvMixin

VARIANTS = sorted(timm.list_models('*_asap') + timm.list_models('*_flc'))
BASELINES = sorted(n for n, v in M.VARIANTS.items() if v.pool == 'none')
# real-tensor tests of the largest models (60M+ parameters) run in the slow suite only; their meta-device
# checks (state dict, shapes, features, kwargs, cfgs) stay in the default run
HEAVY = {f"{b}_{p}" for b in ('vgg16_bn', 'wide_resnet101_2', 'wide_resnet50_2', 'resnet152') for p in ('asap', 'flc')}


pytestmark = pytest.mark.usefixtures('one_thread')


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _base(name: str) -> str:
    return M.base_architecture(name)


def _is_cifar(name: str) -> bool:
    return M.get_variant(name).module == 'asap_cifar'


def _small_input(name: str, batch: int = 2, chans: int = 3) -> torch.Tensor:
    size = 32 if _is_cifar(name) else 64
    return torch.randn(batch, chans, size, size)


def _default_size(name: str) -> tuple[int, int, int]:
    return tuple(get_pretrained_cfg(name).input_size)


def _random_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random tensors with the names, shapes and dtypes of a (meta) model's state dict."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith('running_var'):
            out[k] = torch.rand(v.shape, generator=gen, dtype=v.dtype) + 0.5
        elif v.is_floating_point():
            out[k] = 0.02 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        else:
            out[k] = torch.zeros(v.shape, dtype=v.dtype)
    return out


def test_registry_lists_every_supported_base():
    for base in M.BASE_ARCHITECTURES:
        assert f"{base}_asap" in VARIANTS and f"{base}_flc" in VARIANTS
    for arch in M.CIFAR_ARCHITECTURES:
        assert arch in BASELINES and f"{arch}_asap" in VARIANTS and f"{arch}_flc" in VARIANTS
    required = {'resnet18', 'resnet26', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet50d',
                'wide_resnet50_2', 'wide_resnet101_2', 'resnext50_32x4d', 'seresnet50', 'regnety_008',
                'regnety_032', 'efficientnet_b0', 'efficientnet_b3', 'mobilenetv3_large_100', 'convnext_atto',
                'convnext_tiny', 'densenet121', 'vgg16_bn', 'resnet18_cifar', 'preactresnet18', 'wide_resnet28_10'}
    assert {f"{b}_{p}" for b in required for p in ('asap', 'flc')} <= set(VARIANTS)


def test_registered_in_modules_timm_does_not_use():
    modules = {v.module for v in M.VARIANTS.values()}
    assert modules == {'asap_timm', 'asap_cifar'}
    for module in modules:
        assert set(timm.list_models(module=module)) == {n for n, v in M.VARIANTS.items() if v.module == module}
    timm_modules = {m.rsplit('.', 1)[-1] for m in dir(timm.models)}
    assert not modules & timm_modules


@pytest.mark.parametrize('name', VARIANTS)
def test_state_dict_equals_base_and_loads_strict(name):
    base = timm.create_model(_base(name), device='meta')
    model = timm.create_model(name, device='meta')
    sd, base_sd = model.state_dict(), base.state_dict()
    assert list(sd) == list(base_sd)
    assert [(v.shape, v.dtype) for v in sd.values()] == [(v.shape, v.dtype) for v in base_sd.values()]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in base.named_buffers()]
    model.load_state_dict(base_sd, strict=True)
    pools = [m for m in model.modules() if isinstance(m, (ASAP2d, FLC2d))]
    assert pools and all(isinstance(m, ASAP2d if name.endswith('_asap') else FLC2d) for m in pools)


@pytest.mark.parametrize('name', VARIANTS)
def test_default_size_shapes_and_features_match_base(name):
    """At the default input size: logits, forward_features and every features_only output as the base."""
    chans, h, w = _default_size(name)
    x = torch.empty(1, chans, h, w, device='meta')
    base = timm.create_model(_base(name), device='meta')
    model = timm.create_model(name, device='meta')
    assert model.forward_features(x).shape == base.forward_features(x).shape
    assert model(x).shape == base(x).shape == (1, model.num_classes)

    if hasattr(base, 'forward_intermediates'):
        _, inter = model.forward_intermediates(x)
        _, base_inter = base.forward_intermediates(x)
        assert [t.shape for t in inter] == [t.shape for t in base_inter]

    fbase = timm.create_model(_base(name), features_only=True, device='meta')
    fmodel = timm.create_model(name, features_only=True, device='meta')
    assert fmodel.feature_info.out_indices == fbase.feature_info.out_indices
    assert fmodel.feature_info.reduction() == fbase.feature_info.reduction()
    assert fmodel.feature_info.channels() == fbase.feature_info.channels()
    outs, base_outs = fmodel(x), fbase(x)
    assert [o.shape for o in outs] == [o.shape for o in base_outs]
    for out, red, chs in zip(outs, fmodel.feature_info.reduction(), fmodel.feature_info.channels()):
        assert out.shape[1] == chs
        assert out.shape[-2:] == (math.ceil(h / red), math.ceil(w / red)), "feature_info reduction must stay true"


@pytest.mark.parametrize('name', VARIANTS + BASELINES)
def test_kwargs_num_classes_in_chans_drop_rate(name):
    model = timm.create_model(name, num_classes=7, in_chans=1, drop_rate=0.25, device='meta')
    base = timm.create_model(_base(name), num_classes=7, in_chans=1, drop_rate=0.25, device='meta')
    assert model.num_classes == 7
    assert getattr(model, 'drop_rate', None) == getattr(base, 'drop_rate', None)
    first_conv = model.pretrained_cfg['first_conv']
    assert model.get_submodule(first_conv).weight.shape[1] == 1
    x = torch.empty(2, 1, *_default_size(name)[1:], device='meta')
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize('name', _params(VARIANTS + BASELINES))
def test_forward_backward_and_model_api(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    x = _small_input(name)
    # training forward/backward
    model.train()
    out = model(x)
    assert out.shape == (2, 5)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # forward_features + forward_head == forward; pre_logits width
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        head_width = getattr(model, 'head_hidden_size', None) or model.num_features
        assert model.forward_head(feats, pre_logits=True).shape[-1] == head_width
        if hasattr(model, 'forward_intermediates'):
            fin, inter = model.forward_intermediates(x)
            torch.testing.assert_close(fin, feats)
            assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
    # grad checkpointing gives the same training-mode output (where the base supports it: not VGG)
    try:
        timm.create_model(_base(name), device='meta').set_grad_checkpointing(True)
    except AssertionError:
        with pytest.raises(AssertionError):
            model.set_grad_checkpointing(True)
    else:
        model.train()
        with torch.no_grad():
            ref = model(x)
            model.set_grad_checkpointing(True)
            torch.testing.assert_close(model(x), ref)
            model.set_grad_checkpointing(False)
    # reset_classifier
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.eval()(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, head_width)


@pytest.mark.parametrize('name', _params(VARIANTS))
def test_features_only_small_input(name):
    model = timm.create_model(name, features_only=True).eval()
    x = _small_input(name, batch=1)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(model.feature_info.out_indices)
    for out, red in zip(outs, model.feature_info.reduction()):
        assert out.shape[-1] == math.ceil(x.shape[-1] / red)
    some = timm.create_model(name, features_only=True, out_indices=(1, -1)).eval()
    with torch.no_grad():
        assert [o.shape for o in some(x)] == [outs[1].shape, outs[-1].shape]


@pytest.mark.parametrize('name', _params(VARIANTS))
def test_pretrained_from_local_file_loads_base_weights(name, tmp_path):
    base_name = _base(name)
    state = _random_state_dict(timm.create_model(base_name, device='meta'))
    path = tmp_path / f"{base_name}.safetensors"
    save_file(state, str(path))
    tags = [t for t, i in M.TAG_INFO.items() if t.split('.')[0] == name and i.kind == 'base']
    full = tags[0] if tags else name
    model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert model.pretrained_cfg['architecture'] == name
    with torch.no_grad():
        assert torch.isfinite(model.eval()(_small_input(name, batch=1))).all()


@pytest.mark.parametrize('name', VARIANTS + BASELINES)
def test_pretrained_cfgs(name):
    cfgs = get_arch_pretrained_cfgs(name)
    assert cfgs, name
    variant = M.get_variant(name)
    for full, cfg in cfgs.items():
        info = M.TAG_INFO[full]
        assert cfg.paper_ids == M.PAPER_IDS
        assert cfg.license
        assert len(cfg.input_size) == 3 and cfg.num_classes >= 0  # 0: headless base checkpoints
        if info.kind == 'none':
            assert not cfg.has_weights
            continue
        org, _, repo = cfg.hf_hub_id.partition('/')
        assert org and repo, f"{full}: hf_hub_id must be '<org>/<name>', got {cfg.hf_hub_id!r}"
        if info.kind == 'base':
            assert cfg.tag.endswith('_base')
            base_cfg = get_pretrained_cfg(info.source)
            assert info.source == f"{variant.base}.{cfg.tag[:-len('_base')]}"
            assert cfg.hf_hub_id == base_cfg.hf_hub_id
            assert cfg.input_size == base_cfg.input_size and cfg.mean == base_cfg.mean
        else:
            assert org == M.HUB_ORG
    default = get_pretrained_cfg(name)
    if default.has_weights:  # the default tag must be loadable
        assert M.is_loadable(name), f"{name}: default tag {default.tag} is not loadable"


def test_base_tag_points_at_base_checkpoint():
    cfg = get_pretrained_cfg('resnet50_asap.tv_in1k_base')
    assert cfg.hf_hub_id == 'timm/resnet50.tv_in1k'
    assert cfg.license == 'bsd-3-clause'
    assert cfg.paper_ids == 'arXiv:2307.09804'
    assert get_pretrained_cfg('resnet50_asap').tag == 'a1_in1k_base'  # follows resnet50's default
    assert M.is_loadable('resnet50_asap') and M.is_loadable('resnet50_asap.tv_in1k_base')


def test_unpublished_tag_raises_listing_what_exists():
    assert not M.is_loadable('resnet50_asap.ft_in1k')
    with pytest.raises(M.WeightsNotAvailableError) as e:
        timm.create_model('resnet50_asap.ft_in1k', pretrained=True)
    msg = str(e.value)
    assert 'not published' in msg and 'resnet50_asap.tv_in1k_base' in msg and 'timm-asap/resnet50_asap.ft_in1k' in msg
    # without pretrained the tag builds (its input config applies)
    model = timm.create_model('resnet50_asap.ft_in1k', device='meta')
    assert model.pretrained_cfg['hf_hub_id'] == 'timm-asap/resnet50_asap.ft_in1k'


def test_unpublished_cifar_tag_and_weightless_default_raise():
    with pytest.raises(M.WeightsNotAvailableError, match='not published'):
        timm.create_model('resnet18_cifar_asap.fmnist', pretrained=True)
    with pytest.raises(M.WeightsNotAvailableError, match='no pretrained weights') as e:
        timm.create_model('resnet18_cifar_asap', pretrained=True)
    assert 'resnet18_cifar_asap.fmnist' in str(e.value)
    with pytest.raises(M.WeightsNotAvailableError, match='loadable: none'):
        timm.create_model('wide_resnet28_10_flc', pretrained=True)


def test_unpublished_tag_loads_an_explicit_local_file(tmp_path):
    state = _random_state_dict(timm.create_model('resnet18_cifar_asap.fmnist', device='meta'))
    path = tmp_path / 'w.safetensors'
    save_file(state, str(path))
    model = timm.create_model('resnet18_cifar_asap.fmnist', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.conv1.weight, state['conv1.weight'])
    assert model.conv1.in_channels == 1 and model.num_classes == 10


def test_hub_config_tags_carry_input_config_and_labels():
    cfg = get_pretrained_cfg('preactresnet18_asap.fmnist')
    assert cfg.hf_hub_id == 'timm-asap/preactresnet18_asap.fmnist'
    assert cfg.input_size == (1, 32, 32) and cfg.num_classes == 10
    assert cfg.label_names[0] == 'T-shirt/top' and len(cfg.label_names) == 10
    assert cfg.paper_ids == 'arXiv:2307.09804'
    model = timm.create_model('preactresnet18_asap.fmnist', device='meta')
    assert model.stem.in_channels == 1 and model.num_classes == 10
    cfg = get_pretrained_cfg('resnet18_cifar.fmnist')  # baseline, pool none
    assert cfg.hf_hub_id == 'timm-asap/resnet18_cifar.fmnist'
    model = timm.create_model('resnet18_cifar.fmnist', device='meta')
    assert not any(isinstance(m, (ASAP2d, FLC2d, PooledConvMixin)) for m in model.modules())


def test_every_hub_config_names_a_registered_architecture():
    from timm_asap.config import list_hub_configs, load_config
    shipped = list_hub_configs()
    assert {'resnet18_asap.ft_in1k', 'resnet50_asap.ft_in1k', 'resnet50_flc.ft_in1k', 'resnet18_cifar_asap.fmnist',
            'resnet18_cifar_flc.fmnist', 'resnet18_cifar.fmnist', 'preactresnet18_asap.fmnist'} <= set(shipped)
    for stem, path in shipped.items():
        cfg = load_config(path)
        assert cfg.model.architecture in M.VARIANTS
        assert f"{cfg.model.architecture}.{cfg.model.tag}" == stem
        assert cfg.hub.repo_id == f"timm-asap/{stem}"
        assert get_pretrained_cfg(stem).hf_hub_id == cfg.hub.repo_id
        if cfg.model.base:
            assert M.check_model_name(cfg.model.base) == M.base_architecture(stem)
        if cfg.data.dataset == 'fashion_mnist':
            assert cfg.model.img_size == 32 and cfg.model.num_classes == 10 and len(cfg.data.label_names) == 10


def test_hub_config_with_unregistered_architecture_is_an_error(monkeypatch, tmp_path):
    from timm_asap.config import ConfigError, load_config
    from timm_asap.models import _builder
    src = load_config('resnet50_asap.ft_in1k')
    src.model.architecture = 'resnet50_aasp'
    monkeypatch.setattr(_builder, 'hub_configs_by_architecture',
                        lambda: {'resnet50_aasp': [(src, tmp_path / 'resnet50_aasp.ft_in1k.yaml')]})
    with pytest.raises(ConfigError, match=r"not registered by timm_asap.*resnet50_asap"):
        _builder.check_hub_configs()


def test_unknown_names_say_import_timm_asap():
    with pytest.raises(M.UnknownModelError, match=r"import timm_asap.*resnet50_asap"):
        M.check_model_name('resnet50_aasp')
    with pytest.raises(M.UnknownModelError, match=r"tv_in1k_base"):
        M.create_model('resnet50_asap.tv_in1k')
    assert M.check_model_name('resnet50_asap.tv_in1k_base') == 'resnet50_asap'


def test_local_dir_config_naming_unregistered_architecture(tmp_path):
    import json
    (tmp_path / 'config.json').write_text(json.dumps(dict(
        architecture='preactresnet18_aasp', num_classes=10, pretrained_cfg=dict(input_size=[3, 32, 32]))))
    with pytest.raises(M.UnknownModelError, match=r"import timm_asap.*preactresnet18_asap"):
        M.create_model(f'local-dir:{tmp_path}')


def test_pool_mode_and_args_kwargs():
    model = timm.create_model('resnet18_asap', pool_mode='reference', device='meta')
    pools = [m for m in model.modules() if isinstance(m, ASAP2d)]
    assert pools and all(p.mode == 'reference' for p in pools)
    # reference mode: the public code's crop (14 -> 8 in the last stage at 224 px)
    assert model.forward_features(torch.empty(1, 3, 224, 224, device='meta')).shape[-2:] == (8, 8)
    model = timm.create_model('resnet18_asap', pool_args=dict(padding='large'), device='meta')
    assert all(m.padding == 'large' for m in model.modules() if isinstance(m, ASAP2d))
    with pytest.raises(ValueError, match='mode'):
        timm.create_model('resnet18_asap', pool_mode='middle', device='meta')


def test_pretrained_adapts_in_chans_and_num_classes_like_timm(tmp_path):
    state = _random_state_dict(timm.create_model('resnet18', device='meta'))
    path = tmp_path / 'r18.safetensors'
    save_file(state, str(path))
    model = timm.create_model('resnet18_asap.tv_in1k_base', pretrained=True, in_chans=1, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.conv1.weight, state['conv1.weight'].sum(dim=1, keepdim=True))
    assert model.fc.out_features == 7 and torch.equal(model.layer1[0].conv1.weight, state['layer1.0.conv1.weight'])


def test_pretrained_cfg_and_data_config_like_base():
    model = timm.create_model('efficientnet_b3_asap.ra2_in1k_base', device='meta')
    base = timm.create_model('efficientnet_b3.ra2_in1k', device='meta')
    data = timm.data.resolve_data_config({}, model=model)
    assert data == timm.data.resolve_data_config({}, model=base)
    assert model.pretrained_cfg['architecture'] == 'efficientnet_b3_asap'
    assert model.pretrained_cfg['tag'] == 'ra2_in1k_base'
    assert model.pretrained_cfg['hf_hub_id'] == 'timm/efficientnet_b3.ra2_in1k'
    feats = timm.create_model('efficientnet_b3_asap', features_only=True, device='meta')
    assert 'num_classes' not in feats.pretrained_cfg  # timm's features cfg handling


def test_hub_cfg_dict_keeps_tag_model_args():
    """A full cfg dict (as timm builds from a Hub config.json) naming a hub-config tag gets its model args."""
    from timm_asap.models import _builder
    cfg = get_pretrained_cfg('resnet50_asap.ft_in1k').to_dict()
    key = 'resnet50_asap.ft_in1k'
    old = _builder.TAG_INFO[key]
    _builder.TAG_INFO[key] = _builder.TagInfo('hub', False, old.source, dict(pool_mode='reference'))
    try:
        model = timm.create_model('resnet50_asap', pretrained_cfg=cfg, device='meta')
    finally:
        _builder.TAG_INFO[key] = old
    assert {m.mode for m in model.modules() if isinstance(m, ASAP2d)} == {'reference'}


def test_published_hub_config_becomes_the_default_tag(monkeypatch, tmp_path):
    from timm_asap.config import load_config
    from timm_asap.models import _builder
    cfg = load_config('resnet50_asap.ft_in1k')
    cfg.hub.published = True
    monkeypatch.setattr(_builder, 'hub_configs_by_architecture',
                        lambda: {'resnet50_asap': [(cfg, tmp_path / 'resnet50_asap.ft_in1k.yaml')]})
    monkeypatch.setattr(_builder, 'TAG_INFO', dict(_builder.TAG_INFO))
    base_entries = _builder.base_tag_cfgs('resnet50_asap', 'resnet50', 'asap')
    published, unpublished = _builder.hub_tag_cfgs('resnet50_asap', 'asap', base_entries[0][1])
    assert [t for t, _ in published] == ['ft_in1k'] and unpublished == []
    default = _builder.make_default_cfg(published + base_entries + unpublished)
    assert default.tags[0] == 'ft_in1k' and default.cfgs['ft_in1k'].hf_hub_id == 'timm-asap/resnet50_asap.ft_in1k'
    assert _builder.TAG_INFO['resnet50_asap.ft_in1k'].published
    cfg.model.pool = 'flc'
    with pytest.raises(Exception, match="model.pool is 'flc'"):
        _builder.hub_tag_cfgs('resnet50_asap', 'asap', base_entries[0][1])
