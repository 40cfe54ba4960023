"""The typed run configuration read from ``hub_configs/*.yaml``.

One YAML file describes one model we train and publish: which registered architecture and base
checkpoint it starts from (``model``), the data (``data``), the fine-tuning recipe (``train``) and where
it is published (``hub``). The same structure drives fine-tuning, evaluation and publishing, so the schema
is defined once, here; the registry's pretrained configs come from the plugin's weight-tag table, not from
these files.

A config whose ``<architecture>.<tag>`` is a weight tag of the registry's table
(:data:`timm_asap.models.weight_tags.WEIGHT_TAGS`) takes what that table says about the tag for every key
the file leaves out (:func:`weight_tag_settings`): the input size and class count, the base checkpoint, the
pooling and its placement, the normalisation, resize and crop, the label names, the Hub repository, the
licence and whether it is published. The shipped recipes set none of these keys: the table is their one
source. A config naming no weight tag (e.g. the template ``convert_asap.fmnist``) sets them itself.

Unknown keys and wrong types are errors naming the key, e.g.
``train.lr: expected float, got str 'fast'``.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from timm_asap._files import atomic_write_text
from timm_asap.layers.band import MODES, POOLS, check_choice
from timm_asap.models.convert import POOL_POSITIONS
from timm_asap.models.registry import get_variant
from timm_asap.models.weight_tags import WeightTag, weight_tag

__all__ = [
    'ConfigError', 'ModelConfig', 'DataConfig', 'DistillConfig', 'TrainConfig', 'HubConfig', 'RunConfig',
    'load_config', 'config_from_dict', 'apply_overrides', 'list_hub_configs', 'hub_config_dir', 'save_config',
    'RUN_CONFIG_FILE', 'find_run_config', 'WEIGHT_FILE_SUFFIXES', 'base_source_kind', 'weight_tag_settings',
]

# the resolved config the fine-tuning tool writes into its output folder, beside model.safetensors
RUN_CONFIG_FILE = 'config.yaml'
# weights files a base checkpoint may be given as (``model.base`` / ``model.base_file``)
WEIGHT_FILE_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin', '.ckpt', '.tar')


class ConfigError(ValueError):
    """A configuration value or key is not allowed; the message names the key."""


@dataclass
class ModelConfig:
    """What is built.

    Attributes:
        architecture: registered timm name, e.g. ``resnet50_asap`` (needs ``import timm_asap``).
        tag: the weight tag this recipe produces, e.g. ``ft_in1k``; ``<architecture>.<tag>`` is the
            model's full name. Where that is a weight tag of the registry's table, the keys the table
            describes default to its values (``weight_tag_settings`` lists them).
        base: the base checkpoint whose weights initialise the model (zero-shot conversion) and serve as
            distillation teacher; empty for random initialisation. One of: a timm name with tag
            (``resnet50.tv_in1k``: timm's pretrained weights); ``hf-hub:<org>/<name>`` or
            ``local-dir:<folder>`` (timm's Hub format: config.json names the architecture); a
            ``.safetensors``/``.pth`` file whose architecture is recorded (this project's safetensors
            header, or the run's config.yaml beside it); a fine-tuning run folder of this project
            (config.yaml + model.safetensors). ``model.architecture`` must be its ``_asap``/``_flc``
            variant (or the base's own architecture, to fine-tune it unchanged); the model_args the
            base was built with are added to ``model_args``.
        base_file: local weights file (``.safetensors``/``.pth``) for a ``base`` that names a timm
            architecture (with or without tag), used instead of downloading its pretrained weights;
            empty: ``base`` itself says where the weights are.
        pool: ``asap``, ``flc`` or ``none`` (the baseline without spectral pooling); fine-tuning checks it
            against the pooling layers of the built model.
        mode: pooling band rule, ``centered`` or ``reference`` (checked likewise).
        pool_position: where the pooling goes for strided convolutions: ``before`` (the paper's placement:
            pool, then the op at stride 1) or ``after`` (the op at stride 1, then the pooling: each kernel
            keeps the input extent the base weights were trained on, at stride² times that op's
            multiply-adds); checked likewise. Only ``before`` with ``pool: none``.
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: training and evaluation resolution (square).
        model_args: further keyword arguments for ``timm.create_model`` (also used for the base model).
    """

    architecture: str = ''
    tag: str = ''
    base: str = ''
    base_file: str = ''
    pool: str = 'asap'
    mode: str = 'centered'
    pool_position: str = 'before'
    num_classes: int = 1000
    in_chans: int = 3
    img_size: int = 224
    model_args: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images come from.

    Attributes:
        dataset: ``fashion_mnist`` (built in), ``''``/``folder`` (under ``data_dir``, per split: an
            ImageFolder tree, a ``<split>.tar``, or a folder of ``.tar`` shards), or any other name
            ``timm.data.create_dataset`` reads: ``hfds/<name>`` (Hugging Face datasets), ``wds/<name>``
            (webdataset tar shards), ``torch/<name>``, ...
        data_dir: root folder; for ``fashion_mnist`` the folder holding the IDX files (default: the
            Debian package's ``/usr/share/datasets/fashion-mnist``, else torchvision downloads them).
        train_split: split (sub-folder) used for training.
        val_split: split used for validation and evaluation (``''``: no validation while fine-tuning).
        train_subset: use a fixed random subset of N training images, the same in every run (None: all).
        val_subset: use a fixed random subset of N validation images, the same in every run (None: all).
        mean: normalisation mean (None: the model's pretrained_cfg).
        std: normalisation std (None: the model's pretrained_cfg).
        interpolation: resize interpolation.
        crop_pct: centre-crop fraction for evaluation (None: 1.0 for ``fashion_mnist``, whose whole
            image is resized, otherwise the model's pretrained_cfg).
        workers: DataLoader worker processes per training process (0: load in the main process,
            the leanest choice for small CPU runs).
        label_names: class names, in label order (written into the Hub config); fine-tuning fills them
            from the data when null.
        download: for ``fashion_mnist``, let torchvision download the files when ``data_dir`` (or the
            Debian default) does not hold them; for ``hfds/``/``tfds/`` names, passed to timm.
        no_aug: train without augmentation (evaluation transform for training too).
        scale: random-resized-crop area range ``[min, max]`` (fractions of the image).
        ratio: random-resized-crop aspect-ratio range ``[min, max]``.
        hflip: horizontal flip probability.
        color_jitter: colour-jitter strength (0 disables).
        auto_augment: timm auto-augment policy, e.g. ``rand-m9-mstd0.5`` (None disables).
        reprob: random-erasing probability.
        max_unreadable: fraction of a split's images that may be unreadable (each replaced by the next
            readable one and counted in the log) before the run stops with an error.
        loader: how training batches are made. ``memory``: the whole split as one uint8 tensor on the
            training device, augmented there in batches (random-resized crop with ``scale``/``ratio``, a
            random shift of up to ``crop_padding`` pixels, flip with ``hflip``), no worker processes; for
            datasets held as one array (``fashion_mnist``, torchvision's ``torch/mnist``-style sets).
            ``dataloader``: a torch DataLoader over timm's transforms (any dataset). ``auto``: ``memory``
            when the dataset is held as one array and fits ``memory_max_mb``, else ``dataloader``.
        memory_max_mb: the largest training split (uint8 bytes, in MiB) the ``memory`` loader holds.
        crop_padding: ``memory`` loader: random shift of up to this many pixels with zero fill (the
            CIFAR-style padded random crop); 0 disables it. The ``dataloader`` path does not offer it.
    """

    dataset: str = ''
    data_dir: str | None = None
    train_split: str = 'train'
    val_split: str = 'validation'
    train_subset: int | None = None
    val_subset: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = 'bicubic'
    crop_pct: float | None = None
    workers: int = 2
    label_names: list[str] | None = None
    download: bool = True
    no_aug: bool = False
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None
    reprob: float = 0.0
    max_unreadable: float = 0.01
    loader: str = 'auto'
    memory_max_mb: int = 4096
    crop_padding: int = 0


@dataclass
class DistillConfig:
    """Knowledge distillation from the base model.

    Attributes:
        enabled: distil from ``teacher``.
        teacher: the teacher, in any form ``model.base`` takes; empty means ``model.base`` (loaded the
            same way, with ``model.base_file``).
        alpha: weight of the KL term; the label loss gets ``1 - alpha`` (1.0: teacher only, for
            unlabelled images).
        temperature: softmax temperature of both logits; the KL term is scaled by its square.
    """

    enabled: bool = False
    teacher: str = ''
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass
class TrainConfig:
    """The fine-tuning recipe (names follow timm's train.py where they exist).

    Attributes:
        epochs: training epochs.
        batch_size: images per step per process.
        opt: optimizer name for ``timm.optim.create_optimizer_v2`` (``sgd``, ``adamw``, ...).
        lr: peak learning rate. Used as given when ``lr_base_size`` is null; otherwise it is the rate
            for a global batch of ``lr_base_size`` images and is scaled to the run's global batch
            (``batch_size x processes x grad_accum_steps``) by ``lr_base_scale``.
        lr_base_size: global batch size that ``lr`` is meant for (null: no scaling).
        lr_base_scale: ``linear`` (``lr x batch / lr_base_size``) or ``sqrt`` (``lr x sqrt(batch / lr_base_size)``).
        momentum: SGD momentum.
        weight_decay: weight decay (not applied to biases and norm layers, timm's default).
        sched: ``timm.scheduler`` name (``cosine``, ``step``, ``multistep``, ``plateau``, ``poly``, ...),
            stepped after every optimizer update (``plateau``: after every epoch, on the validation top-1).
        decay_epochs: epochs between decays for ``step``, patience for ``plateau`` (None: a third of
            ``epochs``).
        decay_rate: learning-rate factor at each decay (``step``, ``multistep``, ``plateau``).
        warmup_epochs: linear warm-up epochs.
        warmup_lr: learning rate at the start of warm-up.
        min_lr: final learning rate.
        label_smoothing: label smoothing of the cross-entropy.
        mixup: mixup alpha (0 disables).
        cutmix: cutmix alpha (0 disables).
        model_ema: keep an EMA of the weights (timm ModelEmaV3).
        model_ema_decay: EMA decay.
        amp_dtype: ``bfloat16``, ``float16`` (with a grad scaler) or ``float32`` (AMP off); AMP is used on CUDA only.
        channels_last: channels_last memory format on CUDA.
        compile: wrap the model in ``torch.compile``.
        grad_accum_steps: micro-batches per optimizer step.
        clip_grad: gradient norm clipping (None: off).
        seed: random seed (data order, augmentation and initialisation follow from it).
        log_interval: optimizer steps between progress-bar loss updates; also how often the ranks of a
            distributed run agree on stopping (preemption signal, non-finite loss).
        export: weights written to ``model.safetensors``: ``best`` (the epoch with the best validation
            top-1, or teacher agreement for teacher-only distillation; the EMA weights when ``model_ema``
            is on), ``last`` (the final weights) or ``ema`` (the final EMA weights).
        dist_bn: how BatchNorm statistics are made equal across ranks before each validation:
            ``reduce`` (average), ``broadcast`` (rank 0's) or ``none``.
        deterministic: ask PyTorch for deterministic kernels (slower on GPU).
        tensorboard: write TensorBoard scalars under ``<output>/tensorboard`` when tensorboard is installed
            (``pip install -e '.[tensorboard]'`` in the checkout).
        distill: knowledge distillation settings.
    """

    epochs: int = 10
    batch_size: int = 128
    opt: str = 'sgd'
    lr: float = 0.01
    lr_base_size: int | None = None
    lr_base_scale: str = 'linear'
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sched: str = 'cosine'
    decay_epochs: float | None = None
    decay_rate: float = 0.1
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    amp_dtype: str = 'bfloat16'
    channels_last: bool = True
    compile: bool = False
    grad_accum_steps: int = 1
    clip_grad: float | None = None
    seed: int = 42
    log_interval: int = 50
    export: str = 'best'
    dist_bn: str = 'reduce'
    deterministic: bool = False
    tensorboard: bool = True
    distill: DistillConfig = field(default_factory=DistillConfig)

    def effective_lr(self, world_size: int = 1) -> float:
        """The peak learning rate of a run with ``world_size`` processes (``lr`` scaled as ``lr_base_size``
        and ``lr_base_scale`` state; ``lr`` itself when ``lr_base_size`` is null).

        Example:
            >>> TrainConfig(lr=0.1, batch_size=512, lr_base_size=128).effective_lr()
            0.4
        """
        if self.lr_base_size is None:
            return self.lr
        ratio = self.batch_size * world_size * self.grad_accum_steps / self.lr_base_size
        return self.lr * (ratio if self.lr_base_scale == 'linear' else ratio ** 0.5)


@dataclass
class HubConfig:
    """Where the trained model is published.

    Attributes:
        repo_id: full Hugging Face Hub repository id, ``<org>/<name>``.
        license: licence identifier for the model card and pretrained_cfg (e.g. ``apache-2.0``).
        published: whether weights exist at ``repo_id``; the registry refuses to load unpublished tags.
        private: create the repository private.
        datasets: Hub dataset ids for the card metadata.
        tags: extra card tags.
    """

    repo_id: str = ''
    license: str = 'apache-2.0'
    published: bool = False
    private: bool = False
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """A whole ``hub_configs/*.yaml`` file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    @property
    def name(self) -> str:
        """``<architecture>.<tag>`` (or the bare architecture without a tag)."""
        return f"{self.model.architecture}.{self.model.tag}" if self.model.tag else self.model.architecture

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Check value ranges and choices (types are checked on load)."""
        for key, value, allowed in (
                ('model.pool', self.model.pool, (*POOLS, 'none')), ('model.mode', self.model.mode, MODES),
                ('model.pool_position', self.model.pool_position, POOL_POSITIONS),
                ('train.amp_dtype', self.train.amp_dtype, ('bfloat16', 'float16', 'float32')),
                ('train.export', self.train.export, ('best', 'last', 'ema')),
                ('train.dist_bn', self.train.dist_bn, ('reduce', 'broadcast', 'none')),
                ('train.lr_base_scale', self.train.lr_base_scale, ('linear', 'sqrt')),
                ('data.loader', self.data.loader, ('auto', 'memory', 'dataloader'))):
            check_choice(f"{key}:", value, allowed, error=ConfigError)
        if self.model.pool == 'none' and self.model.pool_position != 'before':
            raise ConfigError(f"model.pool_position: {self.model.pool_position!r} places spectral pooling, but "
                              f"model.pool is 'none' (no pooling to place); leave pool_position at 'before'")
        if self.train.export == 'ema' and not self.train.model_ema:
            raise ConfigError("train.export: 'ema' needs train.model_ema: true")
        for key, value, low in (
                ('model.num_classes', self.model.num_classes, 1), ('model.in_chans', self.model.in_chans, 1),
                ('model.img_size', self.model.img_size, 1), ('train.epochs', self.train.epochs, 1),
                ('train.batch_size', self.train.batch_size, 1), ('train.grad_accum_steps', self.train.grad_accum_steps, 1),
                ('train.warmup_epochs', self.train.warmup_epochs, 0), ('data.workers', self.data.workers, 0),
                ('train.log_interval', self.train.log_interval, 1), ('data.memory_max_mb', self.data.memory_max_mb, 1),
                ('data.crop_padding', self.data.crop_padding, 0)):
            if value < low:
                why = " (a run without epochs would export untrained weights)" if key == 'train.epochs' else ''
                raise ConfigError(f"{key}: must be >= {low}, got {value}{why}")
        for key, value in (('train.lr', self.train.lr), ('train.weight_decay', self.train.weight_decay),
                           ('train.label_smoothing', self.train.label_smoothing), ('train.mixup', self.train.mixup),
                           ('train.cutmix', self.train.cutmix), ('train.distill.temperature', self.train.distill.temperature)):
            if value < 0:
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        if not 0.0 <= self.train.distill.alpha <= 1.0:
            raise ConfigError(f"train.distill.alpha: must be in [0, 1], got {self.train.distill.alpha}")
        if self.data.crop_pct is not None and not 0.0 < self.data.crop_pct <= 1.0:
            raise ConfigError(f"data.crop_pct: must be in (0, 1], got {self.data.crop_pct}")
        for key, value in (('data.hflip', self.data.hflip), ('data.reprob', self.data.reprob),
                           ('data.max_unreadable', self.data.max_unreadable),
                           ('train.model_ema_decay', self.train.model_ema_decay)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}: must be in [0, 1], got {value}")
        if self.data.color_jitter < 0:
            raise ConfigError(f"data.color_jitter: must be >= 0, got {self.data.color_jitter}")
        for key, value, top in (('data.scale', self.data.scale, 1.0), ('data.ratio', self.data.ratio, None)):
            if len(value) != 2 or not 0.0 < value[0] <= value[1] or (top is not None and value[1] > top):
                limit = f" and at most {top}" if top is not None else ''
                raise ConfigError(f"{key}: must be [min, max] with 0 < min <= max{limit}, got {value}")
        if self.train.decay_epochs is not None and self.train.decay_epochs <= 0:
            raise ConfigError(f"train.decay_epochs: must be > 0 or null, got {self.train.decay_epochs}")
        if not 0.0 < self.train.decay_rate <= 1.0:
            raise ConfigError(f"train.decay_rate: must be in (0, 1], got {self.train.decay_rate}")
        if (self.train.mixup > 0 or self.train.cutmix > 0) and self.train.batch_size % 2:
            raise ConfigError(f"train.batch_size: mixup/cutmix need an even batch size, got {self.train.batch_size}")
        if self.train.clip_grad is not None and self.train.clip_grad <= 0:
            raise ConfigError(f"train.clip_grad: must be > 0 or null, got {self.train.clip_grad}")
        for key, value in (('data.train_subset', self.data.train_subset), ('data.val_subset', self.data.val_subset),
                           ('train.lr_base_size', self.train.lr_base_size)):
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be >= 1 or null, got {value}")
        if self.hub.repo_id and self.hub.repo_id.count('/') != 1:
            raise ConfigError(f"hub.repo_id: must look like '<org>/<name>', got {self.hub.repo_id!r}")
        return self


def _type_name(tp) -> str:
    return getattr(tp, '__name__', str(tp).replace('typing.', ''))


def _convert(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (dataclasses from dicts)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, key + '.')
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {key}")


def _from_dict(cls, data: dict, prefix: str = ''):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; allowed keys here: {names}")
    return cls(**{k: _convert(prefix + k, v, hints[k]) for k, v in data.items()})


def weight_tag_settings(entry: WeightTag) -> dict[str, dict[str, Any]]:
    """The config keys a weight tag of the registry's table sets, by section (``model``, ``data``, ``hub``).

    Args:
        entry: the table entry (:func:`timm_asap.models.weight_tags.weight_tag`).

    Raises:
        ConfigError: the entry's input size is not square (``model.img_size`` is one side).

    Example:
        >>> weight_tag_settings(weight_tag('resnet18_cifar_asap.fmnist'))['model']['in_chans']
        1
    """
    chans, height, width = entry.input_size
    if height != width:
        raise ConfigError(f"weight tag {entry.name}: input_size {entry.input_size} is not square; "
                          f"model.img_size describes square inputs only")
    args = dict(entry.model_args)
    placement = {key: args.pop(arg) for key, arg in (('mode', 'pool_mode'), ('pool_position', 'pool_position'))
                 if arg in args}
    model = dict(base=entry.base, pool=get_variant(entry.architecture).pool, **placement,
                 num_classes=entry.num_classes, in_chans=chans, img_size=height, model_args=args)
    data = dict(mean=_list_or_none(entry.mean), std=_list_or_none(entry.std), interpolation=entry.interpolation,
                crop_pct=entry.crop_pct, label_names=_list_or_none(entry.label_names))
    hub = dict(repo_id=entry.hf_hub_id, license=entry.license, published=entry.published)
    return {'model': model, 'data': data, 'hub': hub}


def _list_or_none(values) -> list | None:
    return None if values is None else list(values)


def _with_weight_tag(data: dict) -> dict:
    """``data`` with the keys its weight tag sets where ``data`` leaves them out (unchanged without a tag)."""
    model = data.get('model')
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ('architecture', 'tag')):
        return data  # no tag named (a wrong type is reported by the type check)
    entry = weight_tag(f"{model['architecture']}.{model['tag']}")
    if entry is None:
        return data
    out = dict(data)
    for section, values in weight_tag_settings(entry).items():
        given = out.get(section, {})
        if isinstance(given, dict):  # else the type check names the section
            out[section] = {**values, **given}
    return out


def config_from_dict(data: dict | None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a (YAML-loaded) mapping. Keys it leaves out come from its
    weight tag's table entry where ``<architecture>.<tag>`` is one (:func:`weight_tag_settings`), else take
    the defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return _from_dict(RunConfig, _with_weight_tag(data)).validate()


def hub_config_dir() -> Path:
    """The folder of the shipped ``hub_configs/*.yaml`` (installed as ``timm_asap_lab.hub_configs``)."""
    return Path(str(resources.files('timm_asap_lab.hub_configs')))


def list_hub_configs() -> dict[str, Path]:
    """Shipped configs by file stem, e.g. ``{'resnet50_asap.ft_in1k': Path(...)}``."""
    return {p.stem: p for p in sorted(hub_config_dir().glob('*.yaml'))}


def load_config(path_or_name: str | Path) -> RunConfig:
    """Read a YAML file, or a shipped config by name (the file stem under ``hub_configs/``).

    Raises:
        ConfigError: the file does not exist (listing the shipped names), is not valid YAML, or a key
            is unknown or of the wrong type.
    """
    path = Path(path_or_name)
    if not path.is_file():
        shipped = list_hub_configs()
        key = path.name[:-5] if path.name.endswith('.yaml') else path.name
        if key not in shipped:
            raise ConfigError(f"no config file {str(path_or_name)!r} and no shipped config of that name; "
                              f"shipped: {sorted(shipped)}")
        path = shipped[key]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides applied (values parsed as YAML).

    Example: ``apply_overrides(cfg, ['train.lr=0.1', 'model.pool=flc', 'train.distill.enabled=true'])``.
    """
    data = copy.deepcopy(cfg.to_dict())
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f"override {item!r}: expected 'section.key=value'")
        dotted, raw = item.split('=', 1)
        parts = dotted.strip().split('.')
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: unknown section in override {item!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{dotted}: unknown key in override {item!r}; allowed keys here: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return config_from_dict(data)


def find_run_config(checkpoint: str | Path) -> Path | None:
    """The fine-tuning tool's :data:`RUN_CONFIG_FILE` for a checkpoint file (in its folder) or an output
    folder; None where there is none."""
    folder = Path(checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    path = folder / RUN_CONFIG_FILE
    return path if path.is_file() else None


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML atomically (temp file + rename) and return the path."""
    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def base_source_kind(base: str) -> str:
    """What kind of checkpoint a ``model.base`` value names (read from the string and the file system only).

    Returns:
        ``'none'`` (empty), ``'hf-hub'``, ``'local-dir'``, ``'path'`` (a file or folder: an existing path,
        or one that contains a path separator or ends in a weights suffix) or ``'name'`` (a timm model name).

    Example:
        >>> [base_source_kind(b) for b in ('', 'resnet50.tv_in1k', 'hf-hub:org/m', 'runs/base', 'w.safetensors')]
        ['none', 'name', 'hf-hub', 'path', 'path']
    """
    if not base:
        return 'none'
    for prefix in ('hf-hub', 'local-dir'):
        if base.startswith(prefix + ':'):
            return prefix
    if ('/' in base or '\\' in base or base.lower().endswith(WEIGHT_FILE_SUFFIXES)
            or Path(base).expanduser().exists()):
        return 'path'
    return 'name'
