"""The model a run configuration describes: one builder for fine-tuning, Hub export and evaluation.

It sits in the Hub package, below fine-tuning and evaluation in the dependency order, because export
needs it and export must not import the training tools.
"""
from __future__ import annotations

import timm
from torch import nn

from timm_asap.hub.errors import UnregisteredArchitectureError
from timm_asap.layers import ASAP2d, ASAP2dFFT, FLC2d, FLC2dFFT
from timm_asap.models import check_architecture, pool_position_of
from timm_asap_lab.config import ConfigError, RunConfig

__all__ = ['create_model_from_config', 'model_kwargs', 'check_pooling']

_POOL_CLASSES = {'asap': (ASAP2d, ASAP2dFFT), 'flc': (FLC2d, FLC2dFFT)}


def check_pooling(model: nn.Module, pool: str, mode: str, name: str = 'model', pool_position: str = 'before') -> None:
    """Check that ``model`` holds the spectral pooling ``model.pool``/``model.mode``/``model.pool_position`` claim.

    Args:
        model: the built model.
        pool: ``asap``, ``flc`` or ``none``.
        mode: ``centered`` or ``reference``.
        name: how to call the model in errors.
        pool_position: ``before`` or ``after`` (checked where the model has strided convolutions to place
            it at; otherwise both placements build the same model).

    Raises:
        ConfigError: the model has no pooling of the configured kind, pooling where ``pool`` is
            ``none``, pooling layers of another mode, or strided convolutions pooled at the other place.
    """
    found = {kind: [m for m in model.modules() if isinstance(m, classes)] for kind, classes in _POOL_CLASSES.items()}
    if pool == 'none':
        present = [k for k, mods in found.items() if mods]
        if present:
            raise ConfigError(f"model.pool: 'none', but {name} contains {present} pooling layers; "
                              f"set model.pool to {present[0]!r}")
        return
    mods = found[pool]
    if not mods:
        other = [k for k, m in found.items() if m]
        raise ConfigError(f"model.pool: {pool!r}, but {name} has no {pool.upper()} pooling layers"
                          + (f" (it has {other})" if other else '') + "; check model.architecture")
    modes = sorted({m.mode for m in mods})
    if modes != [mode]:
        raise ConfigError(f"model.mode: {mode!r}, but {name}'s {pool.upper()} layers use mode {modes}; "
                          f"set model.mode or pass the mode through model.model_args")
    built = pool_position_of(model)
    if built is not None and built != pool_position:
        raise ConfigError(f"model.pool_position: {pool_position!r}, but {name}'s strided convolutions pool "
                          f"{built}; set model.pool_position (not model.model_args) to {built!r}")


def model_kwargs(cfg: RunConfig) -> dict:
    """The ``timm.create_model`` keyword arguments a run config builds its model with: ``model.model_args``,
    ``num_classes``, ``in_chans`` and, for a pooled model, ``model.mode`` as ``pool_mode`` and a
    ``model.pool_position`` other than ``'before'``.

    Example:
        >>> from timm_asap_lab.config import config_from_dict
        >>> model_kwargs(config_from_dict({'model': {'architecture': 'resnet18_cifar_asap', 'num_classes': 10}}))
        {'num_classes': 10, 'in_chans': 3, 'pool_mode': 'centered'}
    """
    m = cfg.model
    args = dict(m.model_args)
    args.setdefault('num_classes', m.num_classes)
    args.setdefault('in_chans', m.in_chans)
    if m.pool != 'none':  # recorded in config.json's model_args, so loaders build the same band mode
        args.setdefault('pool_mode', m.mode)
        if m.pool_position != 'before':  # and the same placement
            args.setdefault('pool_position', m.pool_position)
    return args


def create_model_from_config(cfg: RunConfig, *, pretrained_tag: bool = True, **kwargs) -> nn.Module:
    """Build the (untrained) model a run config describes: ``model.architecture`` with its classes,
    channels, ``model_args`` and the pooling band ``model.mode`` (as ``pool_mode``), checked against
    ``model.pool``/``model.mode``. The placement ``model.pool_position`` goes to the model as
    ``pool_position`` where it is ``after`` (the default ``before`` is not passed, so models of the paper's
    placement record exactly the arguments they did before the placement was a choice). The one builder
    of fine-tuning, export and evaluation.

    Args:
        cfg: the run configuration.
        pretrained_tag: give the model the registered pretrained_cfg of ``<architecture>.<tag>`` when
            that tag is registered (export); False: the architecture's default pretrained_cfg (training,
            whose normalisation comes from the recipe).
        **kwargs: further ``timm.create_model`` arguments (win over the config's).

    Returns:
        The model with random weights.

    Raises:
        ConfigError: an unknown architecture (naming the registered ASAP/FLC models), ``model_args`` the
            architecture does not accept, or pooling layers that differ from
            ``model.pool``/``model.mode``/``model.pool_position``.

    Example:
        >>> from timm_asap_lab.config import config_from_dict
        >>> cfg = config_from_dict({'model': {'architecture': 'resnet18_cifar_asap', 'num_classes': 10}})
        >>> create_model_from_config(cfg).num_classes
        10
    """
    m = cfg.model
    if not m.architecture:
        raise ConfigError("model.architecture: required (a registered timm name, e.g. resnet18_cifar_asap)")
    try:
        arch = check_architecture(m.architecture, 'model.architecture')
    except UnregisteredArchitectureError as e:
        raise ConfigError(f"model.architecture: unknown model {m.architecture!r}: {e}") from None
    tagged = f"{arch}.{m.tag}"
    name = tagged if pretrained_tag and m.tag and tagged in timm.models.get_arch_pretrained_cfgs(arch) else arch
    args = model_kwargs(cfg)
    args.update(kwargs)
    try:
        model = timm.create_model(name, pretrained=False, **args)
    except TypeError as e:
        raise ConfigError(f"model.model_args {m.model_args}: not accepted by {m.architecture!r}: {e}") from None
    check_pooling(model, m.pool, m.mode, repr(m.architecture), m.pool_position)
    return model
