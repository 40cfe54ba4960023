"""What a checkpoint records about the model it holds, and the model a name asks for, built from it and checked.

Every weights format that records its model is checked against the name it is loaded under, and what it
records is applied when the model is built:

* a fine-tuning checkpoint (``last.pth``/``best.pth``): architecture, classes, channels, pooling and the
  whole run config (``model_args``, band mode, label names, normalisation, input size);
* a ``.safetensors`` file written by timm-asap: architecture, pooling and (fine-tuning exports) the
  ``timm.create_model`` arguments in its header; with the fine-tuning tool's ``config.yaml`` beside it,
  the run config too;
* a run folder (the fine-tuning tool's output: ``config.yaml`` + ``model.safetensors``) or a Hub folder
  (``config.json`` + ``model.safetensors``), named as the checkpoint;
* anything else timm reads (a plain timm ``.pth.tar`` state dict) records nothing: it loads with a warning
  that its architecture could not be checked; its class and channel counts are read from its tensors.

A name that differs from the recorded architecture, a class or channel count, or a ``timm.create_model``
argument that contradicts the record, and tensors that do not fit the built model are errors of one line
naming both sides.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from timm_asap.hub.errors import IntegrityError
from timm_asap.hub.integrity import (ARCHITECTURE_KEY, CONFIG_NAME, POOLING_KEY, WEIGHTS_NAME, check_recorded_model,
                                     config_model_args, load_safetensors, read_safetensors_header, recorded_model_args,
                                     state_shape_mismatch, verify_hub_folder)
from timm_asap.models.registry import check_model_name
from timm_asap_lab.config import RUN_CONFIG_FILE, ConfigError, RunConfig, config_from_dict, find_run_config, load_config
from timm_asap_lab.config_model import create_model_from_config, model_kwargs

__all__ = ['CheckpointRecord', 'read_checkpoint_record', 'check_record_identity', 'create_checkpoint_model',
           'load_checkpoint_state_dict', 'load_state_dict_checked', 'load_trained_model']

_logger = logging.getLogger(__name__)


@dataclass
class CheckpointRecord:
    """What a checkpoint records about its model (None / empty: not recorded).

    Attributes:
        weights: the file holding the tensors.
        recorded_in: where the record was read, for messages (a file, or ``"its header"``).
        architecture: the registered architecture the weights were trained as.
        pooling: the spectral pooling signature as JSON (:func:`timm_asap.models.pooling_signature`).
        num_classes: classifier outputs.
        in_chans: input channels.
        model_args: further ``timm.create_model`` arguments (``num_classes``/``in_chans`` excluded).
        label_names: class names in label order.
        run_config: the fine-tuning run config (normalisation, input size, crop and interpolation).
        pretrained_cfg: a Hub folder's ``pretrained_cfg`` (likewise).
    """

    weights: Path
    recorded_in: str = ''
    architecture: str | None = None
    pooling: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] | None = None
    run_config: RunConfig | None = None
    pretrained_cfg: dict[str, Any] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """The architecture and pooling entries, as a safetensors header holds them."""
        return {k: v for k, v in ((ARCHITECTURE_KEY, self.architecture), (POOLING_KEY, self.pooling)) if v}

    def take_create_args(self, args: dict[str, Any]) -> None:
        """Record ``timm.create_model`` arguments (``num_classes`` and ``in_chans`` go to their fields)."""
        args = dict(args)
        self.num_classes = args.pop('num_classes', self.num_classes)
        self.in_chans = args.pop('in_chans', self.in_chans)
        args.pop('pretrained', None)
        self.model_args = args

    def take_run_config(self, cfg: RunConfig, path: str) -> None:
        """Record what a fine-tuning run config says about the model (it wins over a file's header)."""
        if self.architecture and self.architecture != cfg.model.architecture:
            raise IntegrityError(self.weights, f"{self.recorded_in} records architecture {self.architecture!r}, but "
                                               f"{path} beside it describes {cfg.model.architecture!r}: that run "
                                               f"config is not this file's; move the file out of the run folder")
        self.architecture = cfg.model.architecture
        self.take_create_args(model_kwargs(cfg))
        self.label_names = list(cfg.data.label_names) if cfg.data.label_names else self.label_names
        self.run_config = cfg
        self.recorded_in = path


def read_checkpoint_record(path: str | Path) -> CheckpointRecord:
    """What ``path`` (a weights file, a run folder or a Hub folder) records about its model.

    Args:
        path: a ``.safetensors`` or torch (``.pth``, ``.pth.tar``, ...) file, a fine-tuning output folder
            (``config.yaml`` + ``model.safetensors``) or a Hub folder (``config.json`` + ``model.safetensors``).

    Returns:
        The :class:`CheckpointRecord` (its fields None where nothing is recorded).

    Raises:
        IntegrityError: a missing file or folder, a folder that is neither a run nor a Hub folder, a run folder
            without ``model.safetensors``, a damaged header or config, or a run config beside the file that
            describes another architecture than the file's header.

    Example:
        >>> read_checkpoint_record('no/such/model.safetensors')
        Traceback (most recent call last):
        ...
        timm_asap.hub.errors.IntegrityError: no/such/model.safetensors: checkpoint not found (no such file or folder)
    """
    path = Path(path)
    if path.is_dir():
        return _folder_record(path)
    if not path.is_file():
        raise IntegrityError(path, 'checkpoint not found (no such file or folder)')
    if path.suffix == '.safetensors':
        metadata = read_safetensors_header(path)[1]
        record = CheckpointRecord(path, f"{path.name}'s header", metadata.get(ARCHITECTURE_KEY),
                                  metadata.get(POOLING_KEY))
        args = recorded_model_args(path, metadata)
        if args is not None:
            record.take_create_args(args)
    else:
        record = _torch_record(path)
    if record.run_config is None:
        run_config = find_run_config(path)
        if run_config is not None:
            record.take_run_config(load_config(run_config), str(run_config))
    return record


def _folder_record(folder: Path) -> CheckpointRecord:
    if (folder / CONFIG_NAME).is_file():  # a Hub folder: checked as the Hub loaders check it
        config = verify_hub_folder(folder, allow_pickle=True)
        weights = folder / WEIGHTS_NAME
        record = CheckpointRecord(weights, str(folder / CONFIG_NAME), config['architecture'],
                                  read_safetensors_header(weights)[1].get(POOLING_KEY))
        record.take_create_args(config_model_args(config))
        pcfg = dict(config['pretrained_cfg'])
        record.label_names = config.get('label_names') or pcfg.get('label_names')
        record.pretrained_cfg = pcfg
        return record
    if (folder / RUN_CONFIG_FILE).is_file():
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            present = sorted(p.name for p in folder.iterdir())
            raise IntegrityError(folder, f"a run folder without {WEIGHTS_NAME}: the run has not finished (it holds "
                                         f"{present}); name its last.pth or best.pth instead")
        return read_checkpoint_record(weights)
    present = sorted(p.name for p in folder.iterdir())
    raise IntegrityError(folder, f"neither a run folder ({RUN_CONFIG_FILE} + {WEIGHTS_NAME}, written by "
                                 f"timm-asap-finetune) nor a Hub folder ({CONFIG_NAME} + {WEIGHTS_NAME}); it holds "
                                 f"{present}")


def _torch_load_record(path: Path) -> Any:
    """The checkpoint object, its tensors memory-mapped where the format allows (None: unreadable here;
    the weights loader reports why)."""
    for mmap in (True, False):
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 - torch raises many types for other formats; the loader names the problem
            continue
    return None


def _torch_record(path: Path) -> CheckpointRecord:
    # the fine-tuning tool's format tag (imported here: the train package is loaded only when needed)
    from timm_asap_lab.train.checkpoint import CHECKPOINT_FORMAT
    ckpt = _torch_load_record(path)
    record = CheckpointRecord(path, 'the checkpoint')
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        return record  # a plain state dict (or a foreign checkpoint): nothing recorded
    record.architecture = ckpt.get('architecture') or None
    if isinstance(ckpt.get('pooling'), list):  # written since the checkpoints record it
        record.pooling = json.dumps(ckpt['pooling'])
    record.num_classes, record.in_chans = ckpt.get('num_classes'), ckpt.get('in_chans')
    try:
        cfg = config_from_dict(ckpt['config'])
    except (ConfigError, KeyError, TypeError) as e:
        _logger.warning(f"{path}: its run config cannot be read ({e}); using its recorded architecture, classes "
                        f"and channels only")
        return record
    record.take_run_config(cfg, "the checkpoint's run config")
    return record


def _tensor_count(name: str, state_dict: dict[str, torch.Tensor], key: str) -> tuple[int | None, str]:
    """``num_classes`` or ``in_chans`` as the tensors of the layer timm's pretrained cfg names hold them."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: timm.create_model reports it
        cfg = None
    layer = getattr(cfg, 'classifier' if key == 'num_classes' else 'first_conv', None) if cfg is not None else None
    layer = layer[0] if isinstance(layer, (list, tuple)) and layer else layer
    weight = state_dict.get(f"{layer}.weight") if isinstance(layer, str) else None
    if weight is None:
        return None, ''
    if key == 'num_classes':
        return int(weight.shape[0]), f"its classifier {layer}.weight has {weight.shape[0]} rows"
    if weight.ndim != 4:
        return None, ''
    return int(weight.shape[1]), f"its first convolution {layer}.weight takes {weight.shape[1]} channels"


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _create_args(name: str, record: CheckpointRecord, state_dict: dict[str, torch.Tensor], num_classes: int | None,
                 in_chans: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``timm.create_model`` arguments, with the given ones where they do not contradict them."""
    args = dict(record.model_args)
    for key, value in kwargs.items():
        if key in args and not _same(args[key], value):
            raise ValueError(f"{key}={value!r} was given for {name!r}, but {record.weights} records {key}="
                             f"{args[key]!r} ({record.recorded_in}); leave it out to build the model it holds")
        args[key] = value
    for key, given, what in (('num_classes', num_classes, 'classes'), ('in_chans', in_chans, 'input channels')):
        have = getattr(record, key)
        source = f"recorded in {record.recorded_in}"
        if have is None:
            have, source = _tensor_count(name, state_dict, key)
        if given is not None and have is not None and given != have:
            raise ValueError(f"{key}={given} was given for {name!r}, but {record.weights} holds a model with {have} "
                             f"{what} ({source}); leave {key} out to take the checkpoint's")
        value = given if given is not None else have
        if value is not None:
            args[key] = value
    return args


def _apply_recorded_config(model: nn.Module, record: CheckpointRecord) -> None:
    """Put the recorded label names, normalisation, input size, crop and interpolation into the model's
    ``pretrained_cfg`` (timm's place for them, where the evaluation reads them)."""
    update: dict[str, Any] = {}
    if record.run_config is not None:  # resolved as the training pipeline resolved it
        from timm_asap_lab.data import run_data_config
        dc = run_data_config(record.run_config, model)
        update.update({k: dc[k] for k in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation') if k in dc})
        _logger.info(f"{record.weights}: normalisation mean {tuple(dc['mean'])}, std {tuple(dc['std'])}, input "
                     f"{tuple(dc['input_size'])} from {record.recorded_in}")
    elif record.pretrained_cfg is not None:
        update.update({k: record.pretrained_cfg[k] for k in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation')
                       if record.pretrained_cfg.get(k) is not None})
    if record.label_names:
        update['label_names'] = list(record.label_names)
    if update:
        model.pretrained_cfg = {**(getattr(model, 'pretrained_cfg', None) or {}), **update}
        model.default_cfg = model.pretrained_cfg


def check_record_identity(record: CheckpointRecord, name: str, model: nn.Module | None = None) -> None:
    """Check a checkpoint's recorded architecture (and, given the built model, pooling) against the name it is
    loaded under; a checkpoint that records nothing gets a one-line warning that it could not be checked.

    Call it once before building (``model`` None: the recorded arguments may not fit another architecture)
    and once with the built model.

    Args:
        record: from :func:`read_checkpoint_record`.
        name: the timm model name (``arch``, ``arch.tag``, ``hf-hub:...``, ``local-dir:...``).
        model: the built model, or None.

    Raises:
        IntegrityError: another architecture or pooling, naming both (:func:`check_recorded_model`).
        UnknownModelError: an unknown model name.
    """
    arch = check_model_name(name)
    plain = not name.startswith(('hf-hub:', 'local-dir:'))
    if not record.architecture:
        if model is None:
            _logger.warning(f"{record.weights} records no architecture: could not check that it holds weights of "
                            f"{name!r}")
        return
    if model is None and not plain:  # the architecture of a Hub name is known once it is built
        return
    if not plain:
        arch = str((getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or arch)
    check_recorded_model(record.weights, arch, model, f"the model name {name!r}", record.metadata, record.recorded_in)


def create_checkpoint_model(name: str, checkpoint: str | Path, num_classes: int | None = None,
                            in_chans: int | None = None, **kwargs) -> tuple[nn.Module, CheckpointRecord]:
    """Build ``name`` as the checkpoint records it, load its weights and check them against the name.

    Args:
        name: the timm model name the weights are loaded under (a tag selects that tag's pretrained_cfg).
        checkpoint: a weights file, a run folder or a Hub folder (see :func:`read_checkpoint_record`).
        num_classes: classifier outputs (None: the checkpoint's).
        in_chans: input channels (None: the checkpoint's).
        **kwargs: further ``timm.create_model`` arguments (must not contradict the recorded ones).

    Returns:
        ``(model, record)``: the model with the weights, its ``pretrained_cfg`` holding the recorded label
        names, normalisation and input settings; and the record.

    Raises:
        IntegrityError: the checkpoint records another architecture or pooling, or its tensors do not fit.
        ValueError: a class count, channel count or argument that contradicts the checkpoint; arguments the
            architecture does not take.
        UnknownModelError: an unknown model name.
    """
    record = read_checkpoint_record(checkpoint)
    check_record_identity(record, name)
    state_dict = load_checkpoint_state_dict(record.weights)
    args = _create_args(name, record, state_dict, num_classes, in_chans, kwargs)
    try:
        model = timm.create_model(name, pretrained=False, **args)
    except TypeError as e:
        raise ValueError(f"{name!r} cannot be built with {args} (from {record.recorded_in or 'the arguments given'}): "
                         f"{e}") from None
    check_record_identity(record, name, model)
    shown = ', '.join(f"{k}={v!r}" for k, v in args.items())
    load_state_dict_checked(model, state_dict, record.weights, f"{name!r} built with {shown or 'its defaults'}")
    _apply_recorded_config(model, record)
    return model, record


def load_checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read model weights from a ``.safetensors`` file (checked) or a timm ``.pth``/``.pth.tar`` checkpoint.

    Torch checkpoints are read with ``weights_only=True`` (no arbitrary unpickling); EMA weights are
    preferred when present, as timm's loader does.

    Raises:
        IntegrityError: naming the file when it is missing, truncated, corrupted or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(path, 'checkpoint not found')
    if path.suffix == '.safetensors':
        state_dict = load_safetensors(path)
    else:
        try:
            state_dict = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)
        except Exception as e:
            raise IntegrityError(path, f"cannot read the checkpoint ({type(e).__name__}: {e}); "
                                       "it is truncated, corrupted or not a torch checkpoint") from e
    return timm.models.clean_state_dict(state_dict)


def _state_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    return '; '.join(state_shape_mismatch(expected, got, 'checkpoint', 'model')) or None


def load_trained_model(cfg: RunConfig, checkpoint: str | Path) -> nn.Module:
    """Build the model of ``cfg`` and load ``checkpoint`` into it (strict), in eval mode on the CPU.

    Raises:
        IntegrityError: the checkpoint is unreadable or its tensors do not fit the architecture.
    """
    model = create_model_from_config(cfg)
    load_state_dict_checked(model, load_checkpoint_state_dict(checkpoint), checkpoint,
                            f"{cfg.model.architecture!r} with num_classes={cfg.model.num_classes}, "
                            f"in_chans={cfg.model.in_chans}")
    return model.eval()


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], checkpoint: str | Path,
                            built_as: str) -> nn.Module:
    """``model.load_state_dict(state_dict, strict=True)``, with one line naming every missing, unexpected and
    wrong-shaped tensor instead of torch's multi-line error.

    Args:
        model: the built model.
        state_dict: the checkpoint's tensors.
        checkpoint: the checkpoint file, named in the message.
        built_as: how the model was built, for the message (e.g. ``"'resnet18_cifar' with num_classes=10"``).

    Returns:
        ``model``.

    Raises:
        IntegrityError: the tensors do not fit the model.
    """
    problem = _state_mismatch(model, state_dict)
    if problem:
        raise IntegrityError(checkpoint, f"does not fit {built_as}: {problem}")
    model.load_state_dict(state_dict, strict=True)
    return model
