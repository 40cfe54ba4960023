"""Building what a run trains with: model (fresh from the base weights, or from a checkpoint), teacher and
task, data, optimizer, schedule, EMA and precision."""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import create_classification_loss
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import NativeScaler, random_seed

from timm_asap_lab.config import ConfigError, RunConfig
from timm_asap_lab.config_model import create_model_from_config
from timm_asap_lab.data import DataError, RunData, create_run_data
from timm_asap_lab.runtime import resolve_amp
from timm_asap_lab.train.distill import build_task
from timm_asap_lab.train.distributed import DistEnv
from timm_asap_lab.train.errors import CheckpointError
from timm_asap_lab.train.model import convert_from_base, create_teacher, load_base_model
from timm_asap_lab.train.signals import ignore_signals_in_worker

__all__ = ['Parts', 'build_parts', 'training_precision']

_SYNSET = re.compile(r'n\d{8}')


@dataclass
class Parts:
    """What the epoch loop trains with (built once per run by :func:`build_parts`)."""

    model: nn.Module
    task: nn.Module
    data: RunData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: nn.Module | None
    scaler: NativeScaler | None
    mixup: Mixup | None
    teacher_eval: Callable | None
    autocast: Callable
    amp_name: str
    channels_last: bool
    labelled: bool
    batches_per_epoch: int
    updates_per_epoch: int


def _imagenet_synsets(classes: Sequence[str]) -> bool:
    """True for ImageNet-1k's folder names (1000 WordNet ids such as n01440764): those are not filled
    in as label names, so that timm and transformers show their own ImageNet-1k class names."""
    return len(classes) == 1000 and all(_SYNSET.fullmatch(str(c)) for c in classes)


def training_precision(cfg: RunConfig, device: torch.device) -> tuple[torch.dtype | None, str]:
    """Autocast dtype and its name for training: ``train.amp_dtype`` on CUDA (through
    :func:`timm_asap_lab.runtime.resolve_amp`), float32 (``'off'``) on other devices."""
    name = cfg.train.amp_dtype
    if device.type != 'cuda' or name == 'float32':
        return None, 'off'
    try:
        return resolve_amp(device, name), name
    except ValueError:
        raise ConfigError("train.amp_dtype: this GPU does not support bfloat16; set train.amp_dtype=float16") from None


def _set_backends(cfg: RunConfig, cuda: bool) -> None:
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True


def _build_model(cfg: RunConfig, ckpt: dict | None, ckpt_path: Path | None):
    """The registered architecture with the base weights converted into it (fresh runs) or the
    checkpoint's weights; returns ``(model, base)`` (base: the loaded base model or None)."""
    model = create_model_from_config(cfg, pretrained_tag=False)
    base = None
    if ckpt is None and cfg.model.base:
        m = cfg.model
        base = load_base_model(m.base, m.num_classes, m.in_chans, m.base_file, m.model_args)
        convert_from_base(model, base)
    elif ckpt is not None:
        try:
            model.load_state_dict(ckpt['state_dict'], strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt_path}: weights do not fit {cfg.model.architecture!r}: {e}") from None
    return model, base


def _build_data(cfg: RunConfig, model: nn.Module, env: DistEnv, labelled: bool) -> RunData:
    data = create_run_data(cfg, model, rank=env.rank, world_size=env.world_size, pin_memory=env.device.type == 'cuda',
                           labelled=labelled, worker_init_fn=ignore_signals_in_worker, device=env.device)
    if (data.classes is not None and cfg.data.label_names is None and labelled
            and not _imagenet_synsets(data.classes)):
        cfg.data.label_names = list(data.classes)
    if len(data.train_batches) == 0:
        raise DataError("the training loader yields no batch; use more data or a smaller train.batch_size")
    return data


def _build_optimizer(cfg: RunConfig, model: nn.Module, world_size: int) -> torch.optim.Optimizer:
    t = cfg.train
    try:
        return create_optimizer_v2(model, opt=t.opt, lr=t.effective_lr(world_size), weight_decay=t.weight_decay,
                                   momentum=t.momentum)
    except (AssertionError, ValueError) as e:
        raise ConfigError(f"train.opt {t.opt!r}: not accepted by timm.optim ({e!r})") from None


def _build_scheduler(cfg: RunConfig, optimizer, has_val: bool, updates_per_epoch: int):
    t = cfg.train
    decay_epochs = t.decay_epochs if t.decay_epochs is not None else max(1.0, t.epochs / 3)
    if t.sched == 'plateau' and not has_val:
        raise ConfigError("train.sched 'plateau' follows the validation top-1: set data.val_split")
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=t.sched, num_epochs=max(t.epochs, 1), decay_epochs=decay_epochs,
            decay_milestones=[int(decay_epochs * i) for i in (1, 2)], patience_epochs=int(decay_epochs),
            decay_rate=t.decay_rate, min_lr=t.min_lr, warmup_lr=t.warmup_lr, warmup_epochs=t.warmup_epochs,
            step_on_epochs=t.sched == 'plateau', updates_per_epoch=updates_per_epoch)
    except (AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"train.sched {t.sched!r}: not accepted by timm.scheduler ({e!r})") from None
    if scheduler is None:
        raise ConfigError(f"train.sched: unknown scheduler {t.sched!r}")
    return scheduler


def _to_device(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def build_parts(cfg: RunConfig, env: DistEnv, ckpt: dict | None, ckpt_path: Path | None) -> Parts:
    """Seed, then build model, teacher, data, task, optimizer, schedule, EMA and grad scaler, in that order
    (the order fixes what each draws from the random state).

    Raises:
        ConfigError, DataError, CheckpointError: naming the setting, data or file at fault.
    """
    t, device = cfg.train, env.device
    cuda = device.type == 'cuda'
    random_seed(t.seed, env.rank)
    _set_backends(cfg, cuda)
    amp_dtype, amp_name = training_precision(cfg, device)
    channels_last = cuda and t.channels_last
    model, base = _build_model(cfg, ckpt, ckpt_path)
    teacher = create_teacher(cfg, base) if t.distill.enabled else None
    del base
    labelled = not (t.distill.enabled and t.distill.alpha == 1.0)
    data = _build_data(cfg, model, env, labelled)
    batches = len(data.train_batches)
    updates = math.ceil(batches / t.grad_accum_steps)
    _to_device(model, device, channels_last)
    mixup = None
    if t.mixup > 0 or t.cutmix > 0:
        mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=cfg.model.num_classes)
    criterion = create_classification_loss(smoothing=t.label_smoothing, soft_targets=mixup is not None)
    tmodel = _to_device(teacher.model, device, channels_last) if teacher is not None else None
    task, teacher_eval = build_task(cfg, model, tmodel, criterion, data.data_config, device)
    optimizer = _build_optimizer(cfg, model, env.world_size)
    scheduler = _build_scheduler(cfg, optimizer, data.val_loader is not None, updates)
    ema = task.setup_ema(decay=t.model_ema_decay) if t.model_ema else None
    scaler = NativeScaler(device='cuda') if amp_dtype == torch.float16 else None
    autocast = partial(torch.autocast, device_type='cuda', dtype=amp_dtype) if amp_dtype is not None else nullcontext
    return Parts(model, task, data, optimizer, scheduler, ema, scaler, mixup, teacher_eval, autocast, amp_name,
                 channels_last, labelled, batches, updates)
