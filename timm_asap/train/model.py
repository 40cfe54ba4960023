"""Convert a base timm checkpoint into a run's model and build the distillation teacher (the model itself
comes from :func:`timm_asap.hub.config_model.create_model_from_config`)."""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import timm
import torch.nn as nn
from timm.models import get_pretrained_cfg, load_state_dict

from ..config import ConfigError, RunConfig

__all__ = ['BaseModel', 'load_base_model', 'convert_from_base', 'create_teacher']

_logger = logging.getLogger(__name__)


def _register_models() -> None:
    # registers the ASAP/FLC architectures in timm's registry (present once the model package is built)
    importlib.import_module('timm_asap.models')


@dataclass
class BaseModel:
    """The base timm model with its pretrained weights.

    Attributes:
        model: the model, built with the run's ``num_classes`` and ``in_chans``.
        name: ``model.base`` (name with tag).
        pretrained_classes: classes of the pretrained classifier.
        head_loaded: the pretrained classifier was kept (its class count equals ``model.num_classes``);
            otherwise timm left the classifier freshly initialised.
    """

    model: nn.Module
    name: str
    pretrained_classes: int | None
    head_loaded: bool


def _file_classes(path: str, classifier: str | None) -> int | None:
    if not classifier:
        return None
    sd = load_state_dict(path)
    w = sd.get(f'{classifier}.weight')
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _base_file_record(file: str, name: str, record=None, model: nn.Module | None = None):
    """Read ``model.base_file``'s record (when ``record`` is None) and check it against the base ``name``
    (and the built ``model``); a problem is a ConfigError naming the key."""
    from ..hub.checkpoint import check_record_identity, read_checkpoint_record
    from ..hub.errors import IntegrityError
    try:
        record = record if record is not None else read_checkpoint_record(file)
        check_record_identity(record, name, model)
    except IntegrityError as e:
        raise ConfigError(f"model.base_file: {e}") from None
    return record


def load_base_model(name: str, num_classes: int, in_chans: int, file: str = '',
                    model_args: dict | None = None) -> BaseModel:
    """``timm.create_model(name, pretrained=True)`` fitted to ``num_classes``/``in_chans``.

    timm's loader does the fitting: a classifier of another class count is left freshly initialised,
    and the first convolution is adapted to ``in_chans``.

    Args:
        name: timm name with optional tag, e.g. ``resnet50.tv_in1k``.
        num_classes: classifier outputs wanted.
        in_chans: input channels wanted.
        file: local weights file to load instead of downloading.
        model_args: further ``timm.create_model`` arguments (the run's ``model.model_args``, so the base
            has the same structure as the converted model).

    Raises:
        ConfigError: unknown model or tag, no pretrained weights, an unreadable file, or a file that records
            another architecture or pooling than ``name`` (:func:`timm_asap.hub.checkpoint.check_record_identity`).
    """
    _register_models()
    overlay = None
    pcfg = None
    record = None
    if file:  # a file that records its model must hold ``name``'s weights (one that records nothing: a warning)
        record = _base_file_record(file, name)
    try:
        pcfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        pcfg = None
    pretrained_classes = getattr(pcfg, 'num_classes', None) if pcfg is not None else None
    if file:
        try:
            file_classes = _file_classes(file, getattr(pcfg, 'classifier', None) if pcfg is not None else None)
        except (OSError, RuntimeError, ValueError) as e:
            raise ConfigError(f"model.base_file {file!r}: cannot be read: {e}") from None
        overlay = {'file': file}
        if file_classes is not None:
            overlay['num_classes'] = pretrained_classes = file_classes
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                  pretrained_cfg_overlay=overlay, **(model_args or {}))
    except RuntimeError as e:
        raise ConfigError(f"base model {name!r}: {e}") from None
    except (OSError, ValueError) as e:
        where = f"file {file!r}" if file else "download"
        raise ConfigError(f"base model {name!r}: pretrained weights unavailable ({where}): {e}") from None
    if record is not None:
        _base_file_record(file, name, record, model)
    head_loaded = pretrained_classes is not None and pretrained_classes == num_classes
    return BaseModel(model, name, pretrained_classes, head_loaded)


def convert_from_base(model: nn.Module, base: BaseModel) -> None:
    """Load the base model's weights into ``model`` (zero-shot conversion: same keys and shapes).

    Raises:
        ConfigError: the state dicts differ in keys or shapes (the base is not this architecture's base).
    """
    src = base.model.state_dict()
    dst = model.state_dict()
    missing = sorted(set(dst) - set(src))
    unexpected = sorted(set(src) - set(dst))
    shapes = [f"{k}: {tuple(src[k].shape)} vs {tuple(dst[k].shape)}" for k in sorted(set(src) & set(dst))
              if src[k].shape != dst[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"model.base {base.name!r} does not fit {type(model).__name__}: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(src, strict=True)
    _logger.info(f"converted {base.name} into the model: {len(src)} tensors loaded"
                 + ('' if base.head_loaded else
                    f" (classifier freshly initialised: base has {base.pretrained_classes} classes)"))


def create_teacher(cfg: RunConfig, base: BaseModel | None = None) -> BaseModel:
    """The distillation teacher: ``train.distill.teacher``, else ``model.base``, with its own classifier.

    Args:
        cfg: the run configuration.
        base: the already loaded base model, reused when it is the teacher.

    Raises:
        ConfigError: no teacher named, or a teacher whose pretrained classifier does not have
            ``model.num_classes`` outputs (its logits would be meaningless).
    """
    name = cfg.train.distill.teacher or cfg.model.base
    if not name:
        raise ConfigError("train.distill: distillation needs a teacher; set train.distill.teacher or model.base")
    if base is not None and base.name == name:
        teacher = base
    else:
        same = name == cfg.model.base
        teacher = load_base_model(name, cfg.model.num_classes, cfg.model.in_chans,
                                  cfg.model.base_file if same else '', cfg.model.model_args if same else None)
    if not teacher.head_loaded:
        raise ConfigError(f"train.distill: teacher {name!r} was trained for {teacher.pretrained_classes} classes, "
                          f"model.num_classes is {cfg.model.num_classes}; distillation needs a teacher "
                          f"for the same classes")
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher
