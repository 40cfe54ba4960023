"""timm's own ``tests/test_models.py`` (from the sdist of the installed timm) over every name this package registers.

timm's functions are called directly with our names: its parametrisation filters some tests by model module
(``test_model_forward_intermediates*`` run only for timm's own modules), so it would leave ours out. The names
come from timm's registry (every entrypoint defined in ``timm_asap.*``). :data:`FAST` runs in the default
suite, every other name under ``-m slow`` (the :data:`SLOW_ONLY` tests run over :data:`FAST` only, slow).
Tests of timm's module that are parametrised over the registry but cannot apply to a plugin are in
:data:`NOT_APPLICABLE` with the reason; ``test_every_registry_test_is_covered`` fails when a timm version adds
such a test that is in neither list. Tests over fixed lists of timm's own model names (``resnet18``,
``convit_tiny``, ...) test those models, not a registry, and are not run.
"""
from __future__ import annotations

import functools
import inspect

import pytest
import timm
from timm.models import get_pretrained_cfg, split_model_name_tag
from timm_sdist import plugin_model_names

from timm_asap.models import PooledConvMixin, base_architecture, pool_position_of

# a few representative names for the default run: each pooling, the timm-converted and the CIFAR-size
# families, and one EfficientNet and one ConvNeXt
FAST = ('resnet18_asap', 'resnet18_flc', 'resnet18_cifar_asap', 'preactresnet18_flc', 'efficientnet_b0_asap',
        'convnext_atto_flc')

# timm's registry-parametrised tests run over our names (test_model_default_cfgs, like timm, over every
# arch.tag in the slow run)
RUN = (
    'test_model_forward',
    'test_model_backward',
    'test_model_default_cfgs',
    'test_model_forward_features',
    'test_model_forward_intermediates',
    'test_model_forward_intermediates_features',
    'test_model_forward_fx',
    'test_model_backward_fx',
    # unmarked and left out of timm's CI (prunes every model at every feature index): FAST names, slow run
    'test_prune_intermediate_layers_contract',
)
SLOW_ONLY = ('test_prune_intermediate_layers_contract',)

# the same timm tests with pool_position='after' (the op at stride 1, then the pooling): a timm-converted family
# (BasicBlock shortcuts) and a CIFAR-size pre-activation family in the default run, the other FAST names slow
AFTER = ('resnet18_asap', 'preactresnet18_flc')

NOT_APPLICABLE = {
    'test_model_forward_torchscript':
        'torch.jit.script of a converted model is not supported (it raises an error saying so); use '
        'torch.jit.trace, torch.export or ONNX (tested in tests/test_models_convert.py)',
    'test_model_forward_fx_torchscript': 'scripts the fx-traced model: torch.jit.script is not supported (see above)',
    'test_model_load_pretrained':
        'downloads every pretrained tag of the registry (hundreds of checkpoints); our tags name timm\'s base '
        'checkpoints or Hub folders whose loading is tested in tests/test_models.py and tests/test_hub_*.py',
    'test_model_features_pretrained': 'downloads every pretrained checkpoint (see test_model_load_pretrained)',
}

ARCHS = plugin_model_names()
TAGGED = plugin_model_names(include_tags=True)


def _default_tagged(arch: str) -> str:
    tag = get_pretrained_cfg(arch).tag
    return f'{arch}.{tag}' if tag else arch


def _cases() -> list:
    """(timm test, model name) pairs: FAST names in the default run, the rest (and SLOW_ONLY tests) slow."""
    cases = []
    for test in RUN:
        names = ARCHS
        if test == 'test_model_default_cfgs':  # the fast names' default tags run as the plain names
            fast_default = {_default_tagged(n) for n in FAST}
            names = list(FAST) + [n for n in TAGGED if n not in fast_default]
        if test in SLOW_ONLY:
            names = FAST
        for name in names:
            slow = test in SLOW_ONLY or name not in FAST
            cases.append(pytest.param(test, name, id=f'{test}-{name}', marks=[pytest.mark.slow] if slow else []))
    return cases


def _feature_cfg_cases() -> list:
    cases = []
    for feature_cls in ('fx', 'getter'):
        for name in ARCHS:
            marks = [] if name in FAST else [pytest.mark.slow]
            cases.append(pytest.param(feature_cls, name, id=f'{feature_cls}-{name}', marks=marks))
    return cases


def _param_values(fn, argname: str) -> list:
    """The values timm's ``pytest.mark.parametrize`` gives ``argname`` of ``fn`` (empty when not parametrised)."""
    for mark in getattr(fn, 'pytestmark', []):
        if mark.name != 'parametrize':
            continue
        names = mark.args[0]
        names = [s.strip() for s in names.split(',')] if isinstance(names, str) else list(names)
        if names == [argname]:
            return list(mark.args[1])
    return []


def _call(timm_tests, test: str, name: str) -> None:
    """Call timm's test function ``test`` for ``name`` with the other arguments timm parametrises it with."""
    fn = getattr(timm_tests, test)
    kwargs = {}
    for arg in list(inspect.signature(fn).parameters)[1:]:
        if arg == 'cfg_device':
            # what timm's cfg_device fixture returns: the meta device where torch has device contexts
            kwargs[arg] = 'meta' if timm_tests._HAS_DEVICE_CONTEXT else timm_tests.torch_device
        elif _param_values(fn, arg):
            kwargs[arg] = _param_values(fn, arg)[0]
        else:
            raise TypeError(f"timm's {test} takes {arg!r}, which this harness does not provide")
    fn(name, **kwargs)


@pytest.mark.parametrize('test, model_name', _cases())
def test_timm(timm_tests, test, model_name):
    _call(timm_tests, test, model_name)


def _after_cases() -> list:
    """(timm test, model name) pairs run with pool_position='after': :data:`AFTER` in the default run."""
    return [pytest.param(test, name, id=f'{test}-{name}-after', marks=[] if name in AFTER else [pytest.mark.slow])
            for test in RUN if test not in SLOW_ONLY for name in FAST]


@pytest.mark.parametrize('test, model_name', _after_cases())
def test_timm_pool_after(timm_tests, monkeypatch, test, model_name):
    """timm's test with every model it creates built with ``pool_position='after'``."""
    create, built = timm_tests.create_model, []

    def create_after(*args, **kwargs):
        built.append(create(*args, pool_position='after', **kwargs))
        return built[-1]

    monkeypatch.setattr(timm_tests, 'create_model', create_after)
    _call(timm_tests, test, model_name)
    # every strided conv pools after (ConvNeXt has only kernel == stride convs: pool_position_of says None there)
    assert built and all(pool_position_of(m) in ('after', None) and any(
        isinstance(c, PooledConvMixin) and c.pool_position == 'after' for c in m.modules()) for m in built)


def _create_with_feature_cfg(create_model, default_cls: str, model_name: str, **kwargs):
    """timm's ``create_model`` with ``feature_cls`` given the way timm's own tests spell it: in ``feature_cfg``."""
    kwargs['feature_cfg'] = dict(kwargs.pop('feature_cfg', {}), feature_cls=kwargs.pop('feature_cls', default_cls))
    return create_model(model_name, **kwargs)


# feature_cls -> timm's test that checks the feature model it builds
FEATURE_CFG_TESTS = {'fx': 'test_model_forward_features', 'getter': 'test_model_forward_intermediates_features'}


@pytest.mark.parametrize('feature_cls, model_name', _feature_cfg_cases())
def test_timm_feature_cfg(timm_tests, monkeypatch, feature_cls, model_name):
    """timm's feature-model checks with ``features_only=True, feature_cfg=dict(feature_cls=...)``.

    A variant may reject a user ``feature_cfg`` only where timm's own base architecture does (its builder
    passes one itself: ConvNeXt, DenseNet, VGG); that case is skipped with timm's error.
    """
    create = functools.partial(_create_with_feature_cfg, timm_tests.create_model, feature_cls)
    monkeypatch.setattr(timm_tests, 'create_model', create)
    try:
        _call(timm_tests, FEATURE_CFG_TESTS[feature_cls], model_name)
        return
    except TypeError as e:
        base = base_architecture(model_name)
        if 'feature_cfg' not in str(e) or base in ARCHS:
            raise
        error = e
    # outside the handler: CPython reports a duplicate ** keyword raised inside one as a KeyError
    try:
        timm.create_model(base, features_only=True, feature_cfg=dict(feature_cls=feature_cls), device='meta')
    except TypeError as base_error:
        pytest.skip(f"timm's own {base} takes no user feature_cfg either ({base_error})")
    raise error


@pytest.mark.parametrize('test', sorted(NOT_APPLICABLE))
def test_not_applicable(timm_tests, test):
    """One skipped item per timm test not run, with its reason (and a check that timm still has that test)."""
    assert callable(getattr(timm_tests, test, None)), f"timm {timm.__version__} has no {test}: update NOT_APPLICABLE"
    pytest.skip(f'{test}: {NOT_APPLICABLE[test]}')


def test_every_registry_test_is_covered(timm_tests):
    """Each timm test parametrised over a registry listing that includes our names is run or listed."""
    ours = set(ARCHS)
    listed = set(RUN) | set(NOT_APPLICABLE)
    missing = [t for t in RUN if not callable(getattr(timm_tests, t, None))]
    assert not missing, f"timm {timm.__version__} has none of {missing}: update RUN"
    uncovered = []
    for test, fn in vars(timm_tests).items():
        if not test.startswith('test_') or not callable(fn) or test in listed:
            continue
        values = _param_values(fn, 'model_name')
        if any(isinstance(v, str) and split_model_name_tag(v)[0] in ours for v in values):
            uncovered.append(test)
    assert not uncovered, f"timm tests over the registry that are neither run nor listed: {uncovered}"


def test_fast_names_are_registered():
    """The default run's names are registered (a renamed one would silently leave the default run)."""
    assert not set(FAST) - set(ARCHS), f"not registered: {sorted(set(FAST) - set(ARCHS))}"
