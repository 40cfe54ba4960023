"""Registered ASAP/FLC variants: state dicts, shapes, timm API, pretrained configs and loading.

Cheap checks (state-dict keys/shapes, strict loading, default-size output and feature shapes) run on
the meta device for every variant; real forward/backward, the model API and pretrained loading from
a local file run on small inputs, with the largest models marked slow.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

import timm_asap.models as M
from timm_asap.layers import ASAP2d, FLC2d
from timm_asap.models.convert import PooledConvMixin

VARIANTS = sorted(timm.list_models('*_asap') + timm.list_models('*_flc'))
BASELINES = M.list_variants(pool='none')
# real-tensor tests of the largest models (60M+ parameters) run in the slow suite only; their meta-device
# checks (state dict, shapes, features, kwargs, cfgs) stay in the default run
HEAVY = {f"{b}_{p}" for b in ('vgg16_bn', 'wide_resnet101_2', 'wide_resnet50_2', 'resnet152') for p in ('asap', 'flc')}


pytestmark = pytest.mark.usefixtures('one_thread')


# pool_position='after' runs on a representative set in the default run: each pooling, timm's and the CIFAR-size
# families, a resnet-d shortcut (avg-pool, then 1x1 conv), EfficientNet's depthwise convs, RegNet's grouped convs,
# ConvNeXt (kernel == stride convs only: the same model in both placements)
AFTER = ('resnet18_asap', 'resnet50d_flc', 'efficientnet_b0_asap', 'regnety_008_flc', 'convnext_atto_asap',
         'resnet18_cifar_flc', 'preactresnet18_asap')


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _placed(names):
    """(name, pool_position) cases: every name with the default placement (id: the name, as before the
    placement was a choice), and the :data:`AFTER` names among them with ``pool_position='after'``."""
    cases = [pytest.param(n, 'before', id=n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in names]
    return cases + [pytest.param(n, 'after', id=f'{n}-after') for n in AFTER if n in names]


def _placement_kwargs(pool_position: str) -> dict:
    """The create_model kwargs of a placement: none for the default (so the default stays what it was)."""
    return {} if pool_position == 'before' else {'pool_position': pool_position}


def _expected_position(name: str, pool_position: str):
    """What :func:`pool_position_of` reports: None for models whose strided convs are all kernel == stride."""
    return None if name.startswith('convnext') else pool_position


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


def test_entrypoints_are_module_level_definitions():
    """Every registered name is one line of its module (``<name> = register_model(...)``, found by grep),
    carries its name, module and docstring (``help()`` shows it) and is what timm's registry calls."""
    import importlib
    import inspect
    from timm.models import model_entrypoint
    sources = {}
    for name in M.list_variants():
        fn = model_entrypoint(name)
        module = importlib.import_module(fn.__module__)
        source = sources.setdefault(fn.__module__, inspect.getsource(module))
        assert getattr(module, name) is fn and fn.__name__ == fn.__qualname__ == name and fn.__doc__, name
        assert f"\n{name} = register_model(" in source, name
    assert set(sources) == {f"timm_asap.models.{m}" for m in M.registry.MODULES}


def test_registered_in_modules_timm_does_not_use():
    modules = {M.get_variant(n).module for n in M.list_variants()}
    assert modules == {'asap_timm', 'asap_cifar'}
    # every entrypoint this package defines, found independently of MODULES, is listed
    ours = {n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('timm_asap.')}
    assert set(M.list_variants()) == ours
    timm_modules = {m.rsplit('.', 1)[-1] for m in dir(timm.models)}
    assert not modules & timm_modules


@pytest.mark.parametrize('name, pool_position', _placed(VARIANTS))
def test_state_dict_equals_base_and_loads_strict(name, pool_position):
    base = timm.create_model(_base(name), device='meta')
    model = timm.create_model(name, device='meta', **_placement_kwargs(pool_position))
    assert M.pool_position_of(model) == _expected_position(name, pool_position)
    sd, base_sd = model.state_dict(), base.state_dict()
    assert list(sd) == list(base_sd)
    assert [(v.shape, v.dtype) for v in sd.values()] == [(v.shape, v.dtype) for v in base_sd.values()]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in base.named_buffers()]
    model.load_state_dict(base_sd, strict=True)
    pools = [m for m in model.modules() if isinstance(m, (ASAP2d, FLC2d))]
    assert pools and all(isinstance(m, ASAP2d if name.endswith('_asap') else FLC2d) for m in pools)


@pytest.mark.parametrize('name, pool_position', _placed(VARIANTS))
def test_default_size_shapes_and_features_match_base(name, pool_position):
    """At the default input size: logits, forward_features and every features_only output as the base."""
    chans, h, w = _default_size(name)
    x = torch.empty(1, chans, h, w, device='meta')
    placed = _placement_kwargs(pool_position)
    base = timm.create_model(_base(name), device='meta')
    model = timm.create_model(name, device='meta', **placed)
    assert model.forward_features(x).shape == base.forward_features(x).shape
    assert model(x).shape == base(x).shape == (1, model.num_classes)

    if hasattr(base, 'forward_intermediates'):
        _, inter = model.forward_intermediates(x)
        _, base_inter = base.forward_intermediates(x)
        assert [t.shape for t in inter] == [t.shape for t in base_inter]

    fbase = timm.create_model(_base(name), features_only=True, device='meta')
    fmodel = timm.create_model(name, features_only=True, device='meta', **placed)
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


@pytest.mark.parametrize('name, pool_position', _placed(VARIANTS + BASELINES))
def test_forward_backward_and_model_api(name, pool_position):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **_placement_kwargs(pool_position))
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


@pytest.mark.parametrize('name, pool_position', _placed(VARIANTS))
def test_features_only_small_input(name, pool_position):
    placed = _placement_kwargs(pool_position)
    model = timm.create_model(name, features_only=True, **placed).eval()
    x = _small_input(name, batch=1)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(model.feature_info.out_indices)
    for out, red in zip(outs, model.feature_info.reduction()):
        assert out.shape[-1] == math.ceil(x.shape[-1] / red)
    some = timm.create_model(name, features_only=True, out_indices=(1, -1), **placed).eval()
    with torch.no_grad():
        assert [o.shape for o in some(x)] == [outs[1].shape, outs[-1].shape]


@pytest.mark.parametrize('name, pool_position', _placed(VARIANTS))
def test_pretrained_from_local_file_loads_base_weights(name, pool_position, tmp_path):
    base_name = _base(name)
    state = _random_state_dict(timm.create_model(base_name, device='meta'))
    path = tmp_path / f"{base_name}.safetensors"
    save_file(state, str(path))
    tags = [t for t in get_arch_pretrained_cfgs(name) if t.endswith('_base')]
    full = tags[0] if tags else name
    model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **_placement_kwargs(pool_position))
    assert M.pool_position_of(model) == _expected_position(name, pool_position)
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
    trained = {t.name: t for t in M.WEIGHT_TAGS}
    for full, cfg in cfgs.items():
        assert cfg.paper_ids == ('arXiv:2204.00491' if variant.pool == 'flc' else 'arXiv:2307.09804'), full
        assert cfg.license
        assert len(cfg.input_size) == 3 and cfg.num_classes >= 0  # 0: headless base checkpoints
        # timm says pretrained exactly where weights can be downloaded
        assert timm.is_model_pretrained(full) == bool(cfg.has_weights) == (full in timm.list_pretrained(f'{name}.*'))
        if full in trained:
            assert bool(cfg.has_weights) == trained[full].published
            assert cfg.hf_hub_id == (trained[full].hf_hub_id if trained[full].published else None)
            assert cfg.input_size == trained[full].input_size and cfg.license == trained[full].license
        elif cfg.tag and cfg.tag.endswith('_base'):
            base_cfg = get_pretrained_cfg(f"{variant.base}.{cfg.tag[:-len('_base')]}")
            assert base_cfg.has_weights and cfg.hf_hub_id == base_cfg.hf_hub_id
            assert cfg.input_size == base_cfg.input_size and cfg.mean == base_cfg.mean
        else:  # the untagged cfg of a CIFAR-size family: random initialisation
            assert not cfg.tag and not cfg.has_weights
    default = get_pretrained_cfg(name)
    assert M.is_loadable(name) == bool(default.has_weights), f"{name}: default tag {default.tag}"


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
    # timm does not advertise it
    assert not timm.is_model_pretrained('resnet50_asap.ft_in1k')
    assert 'resnet50_asap.ft_in1k' not in timm.list_pretrained('resnet50_asap*')
    assert 'resnet50_asap.tv_in1k_base' in timm.list_pretrained('resnet50_asap*')
    # without pretrained the tag builds (its input config applies)
    model = timm.create_model('resnet50_asap.ft_in1k', device='meta')
    assert model.pretrained_cfg['tag'] == 'ft_in1k' and not model.pretrained_cfg.get('hf_hub_id')


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
    assert cfg.hf_hub_id is None and 'timm-asap/preactresnet18_asap.fmnist' in ' '.join(cfg.notes)
    assert cfg.input_size == (1, 32, 32) and cfg.num_classes == 10
    assert cfg.label_names[0] == 'T-shirt/top' and len(cfg.label_names) == 10
    assert cfg.paper_ids == 'arXiv:2307.09804'
    model = timm.create_model('preactresnet18_asap.fmnist', device='meta')
    assert model.stem.in_channels == 1 and model.num_classes == 10
    cfg = get_pretrained_cfg('resnet18_cifar.fmnist')  # baseline, pool none
    assert cfg.input_size == (1, 32, 32) and not cfg.has_weights
    model = timm.create_model('resnet18_cifar.fmnist', device='meta')
    assert not any(isinstance(m, (ASAP2d, FLC2d, PooledConvMixin)) for m in model.modules())


def _shipped_configs() -> tuple[dict, dict]:
    """The shipped configs split into weight-tag recipes (file ``<architecture>.<tag>.yaml``, named as the
    tag they train) and templates for users' own runs (any other file name, e.g. ``convert_asap.fmnist``)."""
    from timm_asap_lab.config import list_hub_configs, load_config
    configs = {name: load_config(path) for name, path in list_hub_configs().items()}
    recipes = {name: cfg for name, cfg in configs.items() if cfg.name == name}
    return recipes, {name: cfg for name, cfg in configs.items() if name not in recipes}


def test_recipes_read_the_weight_tag_table():
    """Every weight tag of the registry's table (WEIGHT_TAGS) has its training recipe
    (hub_configs/<architecture>.<tag>.yaml), which names the tag, sets none of the keys the table describes
    (one source) and reads them from the table."""
    import yaml
    from timm_asap_lab.config import list_hub_configs, weight_tag_settings
    shipped = list_hub_configs()
    recipes, _ = _shipped_configs()
    assert set(recipes) == {t.name for t in M.WEIGHT_TAGS}
    for t in M.WEIGHT_TAGS:
        cfg, raw = recipes[t.name], yaml.safe_load(shipped[t.name].read_text())
        assert t.recipe == shipped[t.name].name
        for section, values in weight_tag_settings(t).items():
            assert not set(raw.get(section) or {}) & set(values), f"{t.name}: {section} repeats the table"
            assert {k: getattr(getattr(cfg, section), k) for k in values} == values, t.name
        m, d, h = cfg.model, cfg.data, cfg.hub
        assert (m.architecture, m.tag) == (t.architecture, t.tag)
        assert m.pool == M.get_variant(t.architecture).pool
        assert (m.in_chans, m.img_size, m.img_size) == t.input_size and m.num_classes == t.num_classes
        assert m.base == t.base and h.repo_id == t.hf_hub_id and h.license == t.license and h.published == t.published
        placement = {'pool_mode': m.mode, 'pool_position': m.pool_position} if m.pool != 'none' else {}
        assert {**m.model_args, **placement} == t.model_args
        assert tuple(d.mean or ()) == (t.mean or ()) and tuple(d.std or ()) == (t.std or ())
        assert (d.interpolation, d.crop_pct) == (t.interpolation, t.crop_pct)
        assert tuple(d.label_names or ()) == (t.label_names or ())
        if m.base:
            assert M.check_model_name(m.base) == M.base_architecture(t.name)


def test_recipe_follows_its_table_entry(monkeypatch):
    """A changed table entry changes its recipe; a key a config sets itself wins; a bad entry is named."""
    from timm_asap_lab.config import ConfigError, config_from_dict, load_config
    name = 'resnet18_cifar_asap.fmnist'
    _with_tag(monkeypatch, name, license='mit', published=True, input_size=(3, 28, 28), mean=(0.5,) * 3,
              std=(0.25,) * 3, label_names=None, model_args=dict(pool_mode='reference', pool_position='after'))
    cfg = load_config(name)
    assert (cfg.hub.license, cfg.hub.published, cfg.model.in_chans, cfg.model.img_size) == ('mit', True, 3, 28)
    assert cfg.data.mean == [0.5] * 3 and cfg.data.label_names is None
    assert (cfg.model.mode, cfg.model.pool_position, cfg.model.model_args) == ('reference', 'after', {})
    own = config_from_dict({'model': {'architecture': 'resnet18_cifar_asap', 'tag': 'fmnist', 'img_size': 16},
                            'hub': {'license': 'cc-by-4.0'}})
    assert (own.model.img_size, own.model.in_chans, own.hub.license) == (16, 3, 'cc-by-4.0')
    untagged = config_from_dict({'model': {'architecture': 'resnet18_cifar_asap', 'tag': 'mine'}})
    assert (untagged.model.in_chans, untagged.hub.license, untagged.data.mean) == (3, 'apache-2.0', None)
    _with_tag(monkeypatch, name, input_size=(1, 32, 28))
    with pytest.raises(ConfigError, match=r"weight tag resnet18_cifar_asap.fmnist: input_size \(1, 32, 28\) is not square"):
        load_config(name)


def test_template_configs_are_not_weight_tags():
    """A shipped template (a recipe for the user's own base) never claims a registered tag or its Hub repo,
    names a registered architecture, and publishes nothing."""
    _, templates = _shipped_configs()
    assert 'convert_asap.fmnist' in templates
    repos = {t.hf_hub_id for t in M.WEIGHT_TAGS}
    for name, cfg in templates.items():
        assert M.weight_tags.weight_tag(cfg.name) is None and cfg.hub.repo_id not in repos, name
        assert cfg.hub.repo_id == f"{M.HUB_ORG}/{cfg.name}" and not cfg.hub.published, name
        assert M.get_variant(cfg.model.architecture).pool == cfg.model.pool, name


def test_fashion_mnist_labels_are_the_datasets():
    from timm_asap_lab.data.fashion_mnist import FashionMNIST
    assert FashionMNIST.classes is M.weight_tags.FASHION_MNIST_LABELS


def test_broken_or_missing_recipe_never_breaks_import_or_creation(tmp_path):
    """The registry does not read the recipes: a broken recipe (and a recipe folder without any) leaves
    ``import timm_asap`` and model creation working; fine-tuning that recipe fails with a ConfigError."""
    import shutil
    import subprocess
    import sys
    import timm_asap
    from timm_asap_lab.config import ConfigError, hub_config_dir, load_config
    pkg = tmp_path / 'timm_asap'
    shutil.copytree(Path(timm_asap.__file__).parent, pkg, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(hub_config_dir(), pkg / 'hub_configs', dirs_exist_ok=True)
    recipe = pkg / 'hub_configs' / 'resnet50_asap.ft_in1k.yaml'
    recipe.write_text(recipe.read_text().replace('lr: 0.02', 'lr: fast') + '\n  : [unbalanced\n')
    (pkg / 'hub_configs' / 'resnet18_cifar.fmnist.yaml').unlink()
    code = ("import timm, timm_asap; assert timm_asap.__file__.startswith(%r); "
            "m = timm.create_model('resnet50_asap.ft_in1k', device='meta'); "
            "assert timm.create_model('resnet18_cifar.fmnist', device='meta').num_classes == 10; "
            "print(m.pretrained_cfg['tag'])" % str(pkg))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'ft_in1k'
    with pytest.raises(ConfigError):
        load_config(recipe)


def test_unknown_name_lists_each_close_match_once():
    with pytest.raises(M.UnknownModelError, match='Close matches: ') as e:
        M.check_model_name('resnet50_asp')
    close = str(e.value).split('Close matches: ')[1].split('. ')[0].split(', ')
    assert 'resnet50_asap' in close and len(close) == len(set(close)), close


def test_unknown_names_say_import_timm_asap():
    with pytest.raises(M.UnknownModelError, match=r"import timm_asap.*resnet50_asap"):
        M.check_model_name('resnet50_aasp')
    with pytest.raises(M.UnknownModelError, match=r"tv_in1k_base"):
        M.check_model_name('resnet50_asap.tv_in1k')
    assert M.check_model_name('resnet50_asap.tv_in1k_base') == 'resnet50_asap'
    assert issubclass(M.UnknownModelError, ImportError) and issubclass(M.UnknownModelError, RuntimeError)


def test_no_deprecation_layer():
    """The earlier names are gone (never released): no module-level __getattr__ hides a name, and the
    only one left, ``timm_asap.__getattr__``, defers importing the Hub loaders."""
    import importlib
    import timm_asap
    for module, name in ((M, 'create_model'), (M, 'VARIANTS'), (M, 'TAG_INFO'), (timm_asap, 'integration')):
        with pytest.raises(AttributeError):
            getattr(module, name)
    for gone in ('timm_asap.models.factory', 'timm_asap._deprecation', 'timm_asap.hub.integration'):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(gone)
    assert not hasattr(M, '__getattr__') and timm_asap.hub is importlib.import_module('timm_asap.hub')


def test_local_dir_config_naming_unregistered_architecture(tmp_path):
    import json
    from timm_asap import hub
    (tmp_path / 'config.json').write_text(json.dumps(dict(
        architecture='preactresnet18_aasp', num_classes=10, pretrained_cfg=dict(input_size=[3, 32, 32]))))
    save_file({'x': torch.zeros(1)}, str(tmp_path / 'model.safetensors'))
    with pytest.raises(M.UnknownModelError, match=r"import timm_asap.*preactresnet18_asap"):
        hub.load_model(f'local-dir:{tmp_path}')


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


def _with_tag(monkeypatch, name: str, **changes):
    """Replace the weight-tag table entry ``name`` for one test."""
    import dataclasses
    from timm_asap.models import weight_tags
    table = tuple(dataclasses.replace(t, **changes) if t.name == name else t for t in weight_tags.WEIGHT_TAGS)
    monkeypatch.setattr(weight_tags, 'WEIGHT_TAGS', table)


def test_hub_cfg_dict_keeps_tag_model_args(monkeypatch):
    """A full cfg dict (as timm builds from a Hub config.json) naming a weight tag gets its model args."""
    cfg = get_pretrained_cfg('resnet50_asap.ft_in1k').to_dict()
    _with_tag(monkeypatch, 'resnet50_asap.ft_in1k', model_args=dict(pool_mode='reference'))
    model = timm.create_model('resnet50_asap', pretrained_cfg=cfg, device='meta')
    assert {m.mode for m in model.modules() if isinstance(m, ASAP2d)} == {'reference'}


def test_published_weight_tag_becomes_the_default_tag(monkeypatch):
    from timm.models import generate_default_cfgs
    from timm_asap.models import registry
    _with_tag(monkeypatch, 'resnet50_asap.ft_in1k', published=True)
    base_entries = registry.base_tag_cfgs('resnet50_asap', 'resnet50', 'asap')
    cfgs = registry.variant_cfgs('resnet50_asap', base_entries[0][1], base_entries)
    default = generate_default_cfgs(cfgs)['resnet50_asap']
    assert default.tags[0] == 'ft_in1k' and default.cfgs['ft_in1k'].hf_hub_id == 'timm-asap/resnet50_asap.ft_in1k'
    assert default.cfgs['ft_in1k'].has_weights


def test_pool_position_kwarg_and_its_errors():
    model = timm.create_model('resnet50_asap', pool_position='after', device='meta')
    convs = [m for m in model.modules() if isinstance(m, PooledConvMixin)]
    assert convs and all(m.pool_position == 'after' for m in convs)
    assert M.pooling_signature(model)[-1] == "pool_position='after'"
    default = timm.create_model('resnet50_asap', device='meta')
    assert {m.pool_position for m in default.modules() if isinstance(m, PooledConvMixin)} == {'before'}
    with pytest.raises(ValueError, match=r"resnet50_asap: asapify pool_position must be one of \['before', 'after'\], "
                                         r"got 'later'"):
        timm.create_model('resnet50_asap', pool_position='later', device='meta')
    with pytest.raises(ValueError, match=r"resnet50_asap: .*patchify='before' contradicts"):
        timm.create_model('resnet50_asap', pool_position='after', patchify='before', device='meta')
    with pytest.raises(ValueError, match='resnet18_cifar has no spectral pooling; pool_position apply'):
        timm.create_model('resnet18_cifar', pool_position='after', device='meta')


def test_pool_position_checked_before_the_weights_load(tmp_path):
    """A bad placement fails before timm builds the model or reads its weights (no download for a typo)."""
    missing = tmp_path / 'absent.safetensors'
    with pytest.raises(ValueError, match="pool_position must be one of"):
        timm.create_model('resnet18_asap.tv_in1k_base', pretrained=True, pool_position='sideways',
                          pretrained_cfg_overlay=dict(file=str(missing)))


def test_base_tags_say_they_are_a_zero_shot_starting_point():
    """Every ``_base`` tag's pretrained cfg says plainly what its weights are worth as loaded, with the measured
    figures of its pooling and the repair; trained tags record their placement."""
    for name, numbers in (('resnet50_asap', ('22.2 %', '69.4 %', '79.3 %')), ('resnet18_cifar_flc', None),
                          ('convnext_tiny_flc', ('43.9 %', '81.9 %', '86.8 %'))):
        for full, cfg in get_arch_pretrained_cfgs(name).items():
            if not (cfg.tag or '').endswith('_base'):
                continue
            text = ' '.join(cfg.notes)
            assert 'zero-shot' in text and 'loses accuracy until fine-tuned' in cfg.description, full
            assert 'base 90.0 %' in text and all(n in text for n in numbers), full
            assert 'timm_asap.recalibrate_norm' in text and "pool_position='after'" in text, full
    for t in M.WEIGHT_TAGS:
        notes = ' '.join(get_pretrained_cfg(t.name).notes)
        if M.get_variant(t.architecture).pool != 'none':
            assert t.model_args['pool_position'] == 'before' and "'pool_position': 'before'" in notes
            model = timm.create_model(t.name, device='meta')
            assert M.pool_position_of(model) == 'before'
