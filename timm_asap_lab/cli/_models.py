"""What ``timm-asap compare`` and ``timm-asap repair`` share: a model from a command-line spec, its converted
copy, and images as the evaluation reads them."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import yaml
from torch import nn

__all__ = ['LoadedModel', 'load_classifier', 'converted_copy', 'read_images', 'yaml_dict', 'base_model_args',
           'normalisation', 'spec_weights', 'float_batches']

_logger = logging.getLogger(__name__)

_POOL_KEYS = ('pool_mode', 'pool_args', 'patchify', 'pool_position')


@dataclass
class LoadedModel:
    """A model as the CLIs use it.

    Attributes:
        model: the classifier wrapped for [0, 1] inputs (:class:`timm_asap_lab.evaluation.NormalizedModel`), in eval mode.
        architecture: its registered architecture (no tag), as its ``pretrained_cfg`` names it.
        model_args: the ``timm.create_model`` keyword arguments it was built with (classes, channels, widths).
        weights: the local weights file it was loaded from ('' for weights timm downloaded or cached).
    """

    model: nn.Module
    architecture: str
    model_args: dict = field(default_factory=dict)
    weights: str = ''


def yaml_dict(value: str | None, option: str) -> dict:
    """A ``--option '{key: value, ...}'`` YAML/JSON mapping (empty for None).

    Raises:
        ValueError: not YAML, or not a mapping.
    """
    if value is None or not str(value).strip():
        return {}
    try:
        data = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"{option} {value!r} is not valid YAML ({str(e).splitlines()[0]}); expected a mapping "
                         f"such as '{{channels: [8, 16, 32, 64]}}'") from None
    if not isinstance(data, dict):
        raise ValueError(f"{option} {value!r} is a {type(data).__name__}; expected a mapping such as "
                         f"'{{channels: [8, 16, 32, 64]}}'")
    return data


def _family(arch: str) -> str:
    from timm_asap.models import base_architecture, is_variant
    return base_architecture(arch) if is_variant(arch) else arch


def _run_config_args(name: str, checkpoint: str) -> dict:
    """The model kwargs of the fine-tuning run that wrote ``checkpoint`` (its ``config.yaml``), where the run
    built ``name``'s architecture or its base/variant; {} otherwise."""
    from timm_asap_lab.config import find_run_config, load_config
    path = find_run_config(checkpoint)
    if path is None:
        return {}
    m = load_config(path).model
    arch = name.split('.')[0]
    if not m.architecture or _family(m.architecture.split('.')[0]) != _family(arch):
        return {}
    args = {**m.model_args, 'num_classes': m.num_classes, 'in_chans': m.in_chans}
    if _family(arch) == arch:  # a baseline takes no pooling options
        args = {k: v for k, v in args.items() if k not in _POOL_KEYS}
    _logger.info(f"{checkpoint}: model arguments {args} from {path}")
    return args


def _architecture(model: nn.Module, fallback: str) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('architecture') or fallback).split('.')[0]


def spec_weights(spec: str) -> str:
    """The local weights file a spec loads ('' when timm downloads or caches them): the checkpoint of
    ``NAME@CHECKPOINT``, the ``model.safetensors`` of ``local-dir:<folder>``."""
    from timm_asap.hub.integrity import WEIGHTS_NAME
    from timm_asap_lab.cli.evaluate import parse_model_spec
    _, name, ckpt = parse_model_spec(spec)
    source, ident = timm.models.parse_model_name(name)
    return str(Path(ident) / WEIGHTS_NAME) if source == 'local-dir' else ckpt


def load_classifier(spec: str, model_args: dict | None = None, mean=None, std=None) -> LoadedModel:
    """Load the model a ``NAME[@CHECKPOINT]`` spec names, with its weights.

    * ``hf-hub:<repo>`` / ``local-dir:<folder>``: the checked Hub loaders (:func:`timm_asap.hub.load_model`);
    * ``NAME@CHECKPOINT``: ``NAME`` built by timm (kwargs from the fine-tuning run's ``config.yaml`` beside
      the checkpoint, then ``model_args``) with the local checkpoint; normalisation as the run trained it
      (:func:`timm_asap_lab.evaluation.create_eval_model`);
    * ``NAME``: its pretrained weights (timm's download or cache; an error when it has none).

    Args:
        spec: the model spec (``LABEL=`` prefixes are ignored).
        model_args: further ``timm.create_model`` keyword arguments (win over the run config's).
        mean: normalisation mean (None: the checkpoint's run, else the model's pretrained_cfg).
        std: normalisation std (likewise).

    Raises:
        ValueError: an empty name, a checkpoint combined with a Hub name, a missing checkpoint file, or a
            name without pretrained weights.
    """
    from timm_asap.hub import load_model
    from timm_asap_lab.cli.evaluate import parse_model_spec
    from timm_asap_lab.evaluation import create_eval_model, wrap_model
    _, name, ckpt = parse_model_spec(spec)
    args = dict(model_args or {})
    source, ident = timm.models.parse_model_name(name)
    if source in ('hf-hub', 'local-dir'):
        if ckpt:
            raise ValueError(f"model {spec!r}: a {source}: name brings its own weights; drop @{ckpt}")
        inner = load_model(name, pretrained=True, **args)
        if source == 'local-dir':
            from timm_asap.hub.integrity import CONFIG_NAME, read_config_json
            config = read_config_json(Path(ident) / CONFIG_NAME)
            args = {**config.get('model_args', {}), 'num_classes': config.get('num_classes'), **args}
        return LoadedModel(wrap_model(inner, mean, std), _architecture(inner, name), args, spec_weights(spec))
    if ckpt:
        if not Path(ckpt).exists():  # a weights file, or a run or Hub folder (as timm-asap evaluate takes them)
            raise FileNotFoundError(f"model {spec!r}: checkpoint {ckpt} not found")
        args = {**_run_config_args(name, ckpt), **args}
        model = create_eval_model(name, checkpoint_path=ckpt, mean=mean, std=std, **args)
        return LoadedModel(model, _architecture(model.model, name), args, ckpt)
    from timm_asap.models import is_variant
    arch = name.split('.')[0]
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(arch) and not is_variant(arch) else None
    if cfg is not None and not cfg.has_weights:  # ours raise WeightsNotAvailableError listing the loadable tags
        raise ValueError(f"model {name!r} has no pretrained weights; give NAME@CHECKPOINT (a local weights file), "
                         f"hf-hub:<repo> or local-dir:<folder>")
    inner = load_model(name, pretrained=True, **args)
    return LoadedModel(wrap_model(inner, mean, std), _architecture(inner, name), args, '')


def base_model_args(loaded: LoadedModel) -> dict:
    """``loaded``'s model arguments without its pooling options: those its converted variants share."""
    return {k: v for k, v in loaded.model_args.items() if k not in _POOL_KEYS}


def normalisation(model: nn.Module, which: str) -> list[float]:
    """The ``'mean'`` or ``'std'`` a wrapped model (:class:`~timm_asap_lab.evaluation.NormalizedModel`) applies."""
    return [round(float(v), 6) for v in getattr(model, which).flatten()]


def converted_copy(loaded: LoadedModel, pool: str, pool_args: dict | None = None) -> LoadedModel:
    """A copy of a base model converted with :func:`timm_asap.asapify` (its weights unchanged: the zero-shot
    conversion); the base is untouched.

    Args:
        loaded: the base model.
        pool: ``'asap'`` or ``'flc'``.
        pool_args: further :func:`timm_asap.asapify` keyword arguments (``mode``, ``patchify``, pooling-layer
            options such as ``padding``).

    Raises:
        ValueError: the base already has spectral pooling, or asapify's own errors (unknown options,
            unconvertible layers).
    """
    from timm_asap import asapify
    from timm_asap.models import is_converted
    if is_converted(loaded.model.model):
        raise ValueError(f"{loaded.architecture} already has spectral pooling; give the base model it was converted "
                         f"from (or leave out --pool)")
    wrapped = copy.deepcopy(loaded.model)
    asapify(wrapped.model, pool=pool, **dict(pool_args or {}))
    return LoadedModel(wrapped.eval(), f"{_family(loaded.architecture)}_{pool}", dict(loaded.model_args), '')


def read_images(model: nn.Module, dataset: str, data_dir: str | None, split: str, count: int | None, seed: int,
                workers: int = 0, progress: bool = False, img_size: int | None = None):
    """``count`` images of a dataset at the model's input size and channels, as the evaluation reads them
    (:func:`timm_asap_lab.evaluation.create_eval_dataset` and :func:`~timm_asap_lab.evaluation.load_images`):
    Fashion-MNIST uncropped, other data with the model's crop and interpolation; ``img_size`` None: the model's
    pretrained_cfg input size."""
    from timm_asap_lab.data import is_fashion_mnist
    from timm_asap_lab.evaluation import create_eval_dataset, load_images
    from timm_asap_lab.evaluation.wrapper import model_input_info
    info = model_input_info(model)
    img_size = img_size or (info['input_size'][-1] if info['input_size'] else 224)
    in_chans = info['in_chans'] or 3
    crop_pct = 1.0 if is_fashion_mnist(dataset) else float(info.get('crop_pct') or 1.0)
    ds = create_eval_dataset(dataset, data_dir, split, img_size, crop_pct, info.get('interpolation') or 'bilinear',
                             in_chans)
    name = f"{dataset or 'folder'}:{split}" if data_dir is None or is_fashion_mnist(dataset) else f"{data_dir}:{split}"
    return load_images(ds, count, seed=seed, workers=workers, name=name, progress=progress)


def float_batches(images, batch_size: int):
    """The uint8 images of an :class:`~timm_asap_lab.evaluation.EvalImages` as [0, 1] float batches, made one at a
    time (the whole set as floats would take four times its memory)."""
    for start in range(0, len(images), batch_size):
        yield images.images[start:start + batch_size].float().div_(255)
