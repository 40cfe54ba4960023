"""Fine-tune a run configuration: zero-shot conversion of a base timm checkpoint, then training.

:func:`finetune` trains one :class:`~timm_asap.config.RunConfig` into an output folder and returns
its metrics; :func:`ensure_finetuned` returns a finished run's metrics without training again and
resumes an unfinished one. Both work in a single process (CPU or one GPU) and under torchrun (one
process per GPU or CPU slot, NCCL or gloo); only rank 0 logs and writes files.

The pieces come from timm: ``timm.data`` datasets and transforms (see :mod:`timm_asap.data`),
``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2`` (stepped per optimizer
update), ``timm.loss.create_classification_loss``, ``timm.data.Mixup``, ``timm.utils.ModelEmaV3``,
``timm.utils.NativeScaler`` and the ``timm.task`` classification and logit-distillation tasks.

Output folder:

* ``config.yaml``: the resolved configuration (overrides applied, label names filled in).
* ``last.pth``: resumable checkpoint after the last finished epoch (or of the interruption).
* ``best.pth``: the checkpoint of the epoch with the best validation top-1.
* ``model.safetensors``: weights only, of the model chosen by ``train.export``.
* ``summary.csv``, ``metrics.json``, ``train.log`` and, when installed, ``tensorboard/``.
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import signal
import threading
import time
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
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2
from timm.task import ClassificationTask, LogitDistillationTask
from timm.task.distillation import DistillationTeacher
from timm.utils import NativeScaler, distribute_bn, random_seed
from tqdm import tqdm

from ..config import RUN_CONFIG_FILE, ConfigError, RunConfig, config_from_dict, save_config
from ..data import DataError, create_run_data
from ..data.transforms import fit_channels
from .checkpoint import (
    CHECKPOINT_FORMAT, get_rng_state, link_or_copy, load_checkpoint, save_checkpoint, save_weights, set_rng_state)
from .distributed import DistEnv, init_distributed
from .errors import CheckpointError, NonFiniteLossError, RunExistsError, TrainingInterrupted
from .evaluate import validate
from .model import convert_from_base, create_model_from_config, create_teacher, load_base_model
from .records import RunLogFile, TensorBoardLogger, read_results, write_json, write_summary_csv

__all__ = ['finetune', 'ensure_finetuned', 'TrainState', 'config_differences', 'load_results']

_logger = logging.getLogger(__name__)

# keys that do not change what a run computes: ignored when comparing a finished run's config
_NON_SEMANTIC = {'data.workers', 'data.label_names', 'train.log_interval', 'train.tensorboard', 'hub'}
# keys whose change alters the order of an epoch's training samples (an interrupted epoch then restarts)
_SAMPLE_ORDER_KEYS = ('train.batch_size', 'data.dataset', 'data.train_split', 'data.train_subset', 'train.seed')
# keys whose change makes a saved scheduler state stale (the schedule then follows the new config)
_SCHEDULE_KEYS = ('train.epochs', 'train.sched', 'train.lr', 'train.warmup_epochs', 'train.warmup_lr',
                  'train.min_lr', 'train.decay_epochs', 'train.decay_rate', 'train.batch_size',
                  'train.grad_accum_steps', 'data.train_subset')


@dataclass
class TrainState:
    """What callbacks receive after each optimizer update.

    Attributes:
        epoch: current epoch (0-based).
        batches_done: batches of this epoch consumed so far (this rank).
        batches_per_epoch: batches per epoch (this rank).
        num_updates: optimizer updates since the start of training.
        model: the model being trained (unwrapped from DDP).
        rank: this process's rank.
        world_size: number of processes.
    """

    epoch: int
    batches_done: int
    batches_per_epoch: int
    num_updates: int
    model: nn.Module
    rank: int
    world_size: int


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict) and k != 'model_args':
            out.update(_flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def config_differences(a: dict | RunConfig, b: dict | RunConfig, ignore: Sequence[str] = ()) -> dict[str, tuple]:
    """Keys whose values differ between two configs: ``{'train.lr': (old, new), ...}``.

    Args:
        a: first config (RunConfig or its ``to_dict()``).
        b: second config.
        ignore: dotted keys or section prefixes to leave out.
    """
    fa = _flatten(a.to_dict() if isinstance(a, RunConfig) else a)
    fb = _flatten(b.to_dict() if isinstance(b, RunConfig) else b)
    out = {}
    for k in sorted(set(fa) | set(fb)):
        if any(k == i or k.startswith(i + '.') for i in ignore):
            continue
        if fa.get(k) != fb.get(k):
            out[k] = (fa.get(k), fb.get(k))
    return out


def load_results(output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics of a run folder (its ``metrics.json``), or None when it has none."""
    return read_results(output_dir)


class _SignalCatcher:
    """Turns the first SIGTERM/SIGINT into a flag the training loop polls; a second one acts as usual."""

    def __init__(self, enabled: bool):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        _logger.warning(f"received {signal.Signals(signum).name}: writing a checkpoint at the next step; "
                        f"send it again to stop at once")
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _ignore_signals_in_worker(worker_id: int) -> None:
    # loader workers leave SIGINT/SIGTERM to the main process, which checkpoints and shuts them down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_SYNSET = re.compile(r'n\d{8}')


def _imagenet_synsets(classes: Sequence[str]) -> bool:
    """True for ImageNet-1k's folder names (1000 WordNet ids such as n01440764): those are not filled
    in as label names, so that timm and transformers show their own ImageNet-1k class names."""
    return len(classes) == 1000 and all(_SYNSET.fullmatch(str(c)) for c in classes)


def _resolve_resume(resume: str | Path | bool | None, out: Path) -> Path | None:
    last = out / 'last.pth'
    if resume is None or resume is False:
        if last.exists():
            raise RunExistsError(f"{out} already holds a run ({last.name}); resume it (resume='auto' or "
                                 f"--resume) or choose another output folder")
        return None
    if resume == 'auto':
        return last if last.exists() else None
    if resume is True or resume == 'last':
        if not last.exists():
            raise CheckpointError(f"nothing to resume: {last} does not exist")
        return last
    return Path(resume)


class _Trainer:
    def __init__(self, cfg: RunConfig, out: Path, env: DistEnv, progress: bool,
                 callbacks: Sequence[Callable[[TrainState], None]], signals: _SignalCatcher):
        self.cfg = cfg
        self.out = out
        self.env = env
        self.progress = progress and env.is_primary
        self.callbacks = list(callbacks)
        self.signals = signals
        self.device = env.device
        self.cuda = self.device.type == 'cuda'
        self.history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.num_updates = 0
        self.start_epoch = 0
        self.start_batches = 0
        self.partial: dict[str, float] = {}
        self.tb: TensorBoardLogger | None = None
        self.status: dict[str, Any] = {}
        self.data = None
        self.ema = None
        self.labelled = True
        self.training = False  # set once the epochs start: failures before that leave metrics.json alone
        self.amp_name = 'off'
        self.channels_last = False

    # ------------------------------------------------------------------ set-up
    def setup(self, ckpt_path: Path | None) -> None:
        cfg, t, env = self.cfg, self.cfg.train, self.env
        random_seed(t.seed, env.rank)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.cuda:
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = self._amp_dtype()
        self.autocast = (partial(torch.autocast, device_type='cuda', dtype=self.amp_dtype)
                         if self.amp_dtype is not None else nullcontext)
        self.channels_last = self.cuda and t.channels_last

        ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
        if ckpt is not None:
            self._check_checkpoint(ckpt, ckpt_path)

        # model: the registered architecture, the base weights converted into it (fresh runs)
        model = create_model_from_config(cfg)
        base = None
        if ckpt is None and cfg.model.base:
            base = load_base_model(cfg.model.base, cfg.model.num_classes, cfg.model.in_chans, cfg.model.base_file,
                                   cfg.model.model_args)
            convert_from_base(model, base)
        elif ckpt is not None:
            try:
                model.load_state_dict(ckpt['state_dict'], strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"{ckpt_path}: weights do not fit {cfg.model.architecture!r}: {e}") from None
        distill = t.distill.enabled
        teacher = create_teacher(cfg, base) if distill else None
        del base
        self.labelled = not (distill and t.distill.alpha == 1.0)

        # data
        self.data = create_run_data(cfg, model, rank=env.rank, world_size=env.world_size, pin_memory=self.cuda,
                                    labelled=self.labelled, worker_init_fn=_ignore_signals_in_worker)
        if (self.data.classes is not None and cfg.data.label_names is None and self.labelled
                and not _imagenet_synsets(self.data.classes)):
            cfg.data.label_names = list(self.data.classes)
        self.batches_per_epoch = len(self.data.train_loader)
        if self.batches_per_epoch == 0:
            raise DataError("the training loader yields no batch; use more data or a smaller train.batch_size")
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / t.grad_accum_steps)

        # device, memory format
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        # loss and task (timm.task): plain classification, or logit distillation from the teacher
        self.mixup = None
        if t.mixup > 0 or t.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                               num_classes=cfg.model.num_classes)
        criterion = create_classification_loss(smoothing=t.label_smoothing, soft_targets=self.mixup is not None)
        if teacher is not None:
            tmodel = teacher.model.to(self.device)
            if self.channels_last:
                tmodel.to(memory_format=torch.channels_last)
            kd_teacher = DistillationTeacher(tmodel, device=self.device)
            self.task = LogitDistillationTask(
                model, kd_teacher, criterion=criterion, task_loss_weight=1.0 - t.distill.alpha,
                distill_loss_weight=t.distill.alpha, temperature=t.distill.temperature, device=self.device,
                verbose=False)
            # the task re-normalises the student's input for the teacher: the base model (the usual
            # teacher) shares the student's normalisation, another teacher brings its pretrained one
            norm = self.data.data_config
            c = cfg.model.in_chans
            if t.distill.teacher in ('', cfg.model.base):
                t_mean, t_std = norm['mean'], norm['std']
            else:
                pcfg = tmodel.pretrained_cfg
                remedy = f"distill from a teacher whose pretrained_cfg has {c} values (or one, or three for 1 channel)"
                t_mean = fit_channels("the teacher's pretrained_cfg mean", pcfg.get('mean', norm['mean']), c,
                                      average=True, remedy=remedy)
                t_std = fit_channels("the teacher's pretrained_cfg std", pcfg.get('std', norm['std']), c,
                                     average=True, remedy=remedy)
            for module, names, (m_, s_) in ((self.task, ('student_mean', 'student_std'), (norm['mean'], norm['std'])),
                                            (kd_teacher, ('mean_kd', 'std_kd'), (t_mean, t_std))):
                module.register_buffer(names[0], torch.tensor(m_, device=self.device).view(1, -1, 1, 1),
                                       persistent=False)
                module.register_buffer(names[1], torch.tensor(s_, device=self.device).view(1, -1, 1, 1),
                                       persistent=False)
            task = self.task
            # validation hands the teacher what the training loss does: the input re-normalised for it
            self.teacher_eval = lambda x: tmodel(kd_teacher.normalize_input(x, task.student_mean, task.student_std))
        else:
            self.task = ClassificationTask(model, criterion=criterion, device=self.device, verbose=False)
            self.teacher_eval = None

        # optimizer, schedule
        try:
            self.optimizer = create_optimizer_v2(model, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay,
                                                 momentum=t.momentum)
        except (AssertionError, ValueError) as e:
            raise ConfigError(f"train.opt {t.opt!r}: not accepted by timm.optim ({e!r})") from None
        decay_epochs = t.decay_epochs if t.decay_epochs is not None else max(1.0, t.epochs / 3)
        if t.sched == 'plateau' and self.data.val_loader is None:
            raise ConfigError("train.sched 'plateau' follows the validation top-1: set data.val_split")
        try:
            self.scheduler, _ = create_scheduler_v2(
                self.optimizer, sched=t.sched, num_epochs=max(t.epochs, 1), decay_epochs=decay_epochs,
                decay_milestones=[int(decay_epochs * i) for i in (1, 2)], patience_epochs=int(decay_epochs),
                decay_rate=t.decay_rate, min_lr=t.min_lr, warmup_lr=t.warmup_lr, warmup_epochs=t.warmup_epochs,
                step_on_epochs=t.sched == 'plateau', updates_per_epoch=self.updates_per_epoch)
        except (AssertionError, ValueError, TypeError) as e:
            raise ConfigError(f"train.sched {t.sched!r}: not accepted by timm.scheduler ({e!r})") from None
        if self.scheduler is None:
            raise ConfigError(f"train.sched: unknown scheduler {t.sched!r}")

        # EMA (timm ModelEmaV3), grad scaler (fp16 only)
        self.ema = self.task.setup_ema(decay=t.model_ema_decay) if t.model_ema else None
        self.scaler = NativeScaler(device='cuda') if self.amp_dtype == torch.float16 else None

        if ckpt is not None:
            self._restore(ckpt, ckpt_path)
            self._carry_best(ckpt_path)

        if t.compile:
            self.task.compile()
            if self.ema is not None:
                self.task.compile_ema()
        if env.distributed:
            self.task.prepare_distributed(device_ids=[self.device.index] if self.cuda else None)

        if env.is_primary:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / RUN_CONFIG_FILE)
            self.tb = TensorBoardLogger(self.out / 'tensorboard', enabled=t.tensorboard)
            nparams = sum(p.numel() for p in model.parameters())
            _logger.info(f"{cfg.name}: {nparams / 1e6:.2f}M parameters, {self.batches_per_epoch} batches of "
                         f"{t.batch_size} x {env.world_size} process(es) per epoch, device {self.device}, "
                         f"AMP {self.amp_name}, channels_last {self.channels_last}, compile {t.compile}"
                         + (f", distilling from {t.distill.teacher or cfg.model.base}" if distill else ''))
        if ckpt is not None:
            # the random state last: everything built above may have drawn from it
            rng = ckpt['rng']
            if len(rng) == self.env.world_size:
                set_rng_state(rng[self.env.rank])
            else:
                _logger.warning(f"checkpoint has RNG states of {len(rng)} process(es), this run has "
                                f"{self.env.world_size}; random streams restart from the seed")
                random_seed(t.seed + self.start_epoch, self.env.rank)

    def _amp_dtype(self) -> torch.dtype | None:
        name = self.cfg.train.amp_dtype
        if not self.cuda or name == 'float32':
            self.amp_name = 'off'
            return None
        if name == 'bfloat16' and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.amp_dtype: this GPU does not support bfloat16; set train.amp_dtype=float16")
        self.amp_name = name
        return torch.bfloat16 if name == 'bfloat16' else torch.float16

    def _check_checkpoint(self, ckpt: dict, path: Path) -> None:
        m = self.cfg.model
        theirs = (ckpt.get('architecture'), ckpt.get('num_classes'), ckpt.get('in_chans'))
        ours = (m.architecture, m.num_classes, m.in_chans)
        if theirs != ours:
            raise CheckpointError(
                f"resume checkpoint {path} is from another model: architecture {theirs[0]!r}, {theirs[1]} classes, "
                f"{theirs[2]} channels; this run builds {ours[0]!r}, {ours[1]} classes, {ours[2]} channels")
        diff = config_differences(ckpt['config'], self.cfg, ignore=sorted(_NON_SEMANTIC))
        model_diff = {k: v for k, v in diff.items() if k.startswith('model.') and k != 'model.tag'}
        if model_diff:
            raise CheckpointError(f"resume checkpoint {path} was trained with other model settings: {model_diff}")
        if diff and self.env.is_primary:
            _logger.warning(f"resuming {path} with changed settings: "
                            + ', '.join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        self._resume_diff = diff

    def _restore(self, ckpt: dict, path: Path) -> None:
        try:
            self.optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this run ({e}); resume with the run's own "
                                  f"settings (did train.opt or train.weight_decay change?)") from None
        old_accum = int(ckpt['config'].get('train', {}).get('grad_accum_steps', 1))
        old_updates_per_epoch = math.ceil(ckpt['batches_per_epoch'] / old_accum)
        # per-update schedules count in updates: their saved state is stale when an epoch's update count changed
        units_changed = old_updates_per_epoch != self.updates_per_epoch and not self.scheduler.t_in_epochs
        schedule_changed = any(k in self._resume_diff for k in _SCHEDULE_KEYS)
        if schedule_changed or units_changed:
            why = "the schedule settings changed" if schedule_changed else (
                f"an epoch now has {self.updates_per_epoch} optimizer updates instead of {old_updates_per_epoch}")
            _logger.warning(f"{why}; the learning rate follows the schedule of this run from the resume position")
        else:
            self.scheduler.load_state_dict(ckpt['scheduler'])
        if self.ema is not None:
            if ckpt.get('state_dict_ema') is not None:
                self.ema.module.load_state_dict(ckpt['state_dict_ema'])
            else:
                _logger.warning(f"{path} has no EMA weights; the EMA restarts from the current weights, and the "
                                f"best epoch is chosen again by the EMA's metric")
                ckpt = dict(ckpt, best_metric=None, best_epoch=None)
        if self.scaler is not None and ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        self.history = list(ckpt['history'])
        self.best_metric = ckpt['best_metric']
        self.best_epoch = ckpt['best_epoch']
        self.num_updates = ckpt['num_updates']
        self.start_epoch = ckpt['epoch']
        self.start_batches = self._resume_batches(ckpt)
        self.partial = dict(ckpt.get('partial') or {}) if self.start_batches else {}
        if self.partial and not self.env.is_primary:  # the saved sums are over all ranks: counted once, on rank 0
            self.partial.update(loss_sum=0.0, samples=0, unreadable=0)
        if old_updates_per_epoch != self.updates_per_epoch or self.start_batches != ckpt['batches_done']:
            # the updates up to the resume position, in this run's units (a restarted epoch counts none of its own)
            self.num_updates = self.start_epoch * self.updates_per_epoch + self.start_batches // self.cfg.train.grad_accum_steps
        if schedule_changed or units_changed or self.num_updates != ckpt['num_updates']:
            self._set_lr_at_resume()
        if self.env.is_primary:
            where = f"epoch {self.start_epoch + 1}, batch {self.start_batches}" if self.start_batches \
                else f"the end of epoch {self.start_epoch}"
            _logger.info(f"resumed from {path} at {where} ({self.num_updates} optimizer updates done)")

    def _carry_best(self, ckpt_path: Path) -> None:
        """Resuming a checkpoint of another folder: bring its run's best.pth along (train.export 'best'
        reads it), or, where it has none, restart the choice of the best epoch."""
        if self.best_epoch is None or ckpt_path.parent.resolve() == self.out.resolve():
            return
        src = ckpt_path.parent / 'best.pth'
        if src.is_file():
            if self.env.is_primary:
                self.out.mkdir(parents=True, exist_ok=True)
                link_or_copy(src, self.out / 'best.pth')
            return
        if self.env.is_primary:
            _logger.warning(f"{src} does not exist: the best epoch is chosen again from the epochs of this run")
        self.best_metric = self.best_epoch = None

    def _resume_batches(self, ckpt: dict) -> int:
        """Batches of the interrupted epoch to skip. The ranks of a run together consume the epoch's
        permutation from its start, so with another world size (and the same data and batch size) the
        epoch continues after the samples already seen, rounded down to whole batches of this run."""
        batches, old_world, old_per_epoch = ckpt['batches_done'], ckpt['world_size'], ckpt['batches_per_epoch']
        if not batches:
            return 0
        world = self.env.world_size
        changed = sorted(k for k in self._resume_diff if k in _SAMPLE_ORDER_KEYS)
        if old_world == world:
            fits = old_per_epoch == self.batches_per_epoch
        else:  # per-rank batches scale with 1 / world size, up to the rounding of each rank's share
            fits = abs(self.batches_per_epoch - old_per_epoch * old_world / world) <= old_world / world + 1
        if changed or not fits:
            why = f"{', '.join(changed)} changed" if changed else (
                f"batches per epoch changed from {old_per_epoch} to {self.batches_per_epoch} per process")
            _logger.warning(f"{why}: the interrupted epoch restarts from its beginning")
            return 0
        if old_world != world:
            accum = self.cfg.train.grad_accum_steps  # whole accumulation groups: the first update is a full one
            batches = batches * old_world // world // accum * accum
            _logger.warning(f"world size changed from {old_world} to {world}: the interrupted epoch continues "
                            f"after the {ckpt['batches_done'] * old_world} batches already seen ({batches} per process)")
        return min(batches, self.batches_per_epoch)

    def _set_lr_at_resume(self) -> None:
        """Set the learning rate the schedule of this run gives at the resume position (the optimizer
        state just loaded carries the old schedule's rate)."""
        sched = self.scheduler
        if not sched.t_in_epochs:
            sched.step_update(num_updates=self.num_updates)
        elif isinstance(sched, PlateauLRScheduler) and self.start_epoch > sched.warmup_t:
            sched.update_groups(sched.base_values)  # a fresh plateau schedule starts at the base rate
        else:
            sched.step(self.start_epoch)

    # ------------------------------------------------------------------ helpers
    def _eval_model(self, ema: bool = False):
        # the compiled forward when train.compile is on (never the DDP wrapper: validation is per rank)
        compiled = getattr(self.task, 'eval_model_ema' if ema else 'eval_model', None)
        if compiled is not None:
            return compiled
        return self.ema if ema else self.model

    def _checkpoint_state(self, epoch: int, batches_done: int, partial_stats: dict | None) -> dict[str, Any] | None:
        rng = self.env.gather_objects(get_rng_state())
        if not self.env.is_primary:
            return None
        cfg = self.cfg
        return {
            'format': CHECKPOINT_FORMAT,
            'architecture': cfg.model.architecture,
            'num_classes': cfg.model.num_classes,
            'in_chans': cfg.model.in_chans,
            'config': cfg.to_dict(),
            'epoch': epoch,
            'batches_done': batches_done,
            'batches_per_epoch': self.batches_per_epoch,
            'num_updates': self.num_updates,
            'world_size': self.env.world_size,
            'state_dict': self.model.state_dict(),
            'state_dict_ema': self.ema.module.state_dict() if self.ema is not None else None,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'rng': rng,
            'history': self.history,
            'best_metric': self.best_metric,
            'best_epoch': self.best_epoch,
            'partial': partial_stats,
        }

    def _save(self, epoch: int, batches_done: int, partial_stats: dict | None = None, best: bool = False) -> Path:
        state = self._checkpoint_state(epoch, batches_done, partial_stats)
        path = self.out / 'last.pth'
        if state is not None:
            save_checkpoint(state, path)
            if best:
                link_or_copy(path, self.out / 'best.pth')
        return path

    def _metrics(self, status: str, error: str | None = None) -> dict[str, Any]:
        cfg = self.cfg
        last = self.history[-1] if self.history else {}
        rates = [r['train_images_per_sec'] for r in self.history if 'train_images_per_sec' in r]
        out = {
            'status': status,
            'error': error,
            'name': cfg.name,
            'architecture': cfg.model.architecture,
            'epochs': cfg.train.epochs,
            'epochs_completed': len(self.history),
            'best_metric_name': self.best_metric_name,
            'best_epoch': self.best_epoch,
            'best_metric': self.best_metric,
            'final': last,
            'train_images_per_sec': sum(rates) / len(rates) if rates else None,
            'device': str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})" if self.cuda else ''),
            'world_size': self.env.world_size,
            'amp': self.amp_name,
            'channels_last': self.channels_last,
            'output_dir': str(self.out),
            'history': self.history,
            'config': cfg.to_dict(),
        }
        for k in ('val_top1', 'val_top5', 'val_loss', 'val_ema_top1', 'val_teacher_agree', 'train_loss'):
            if k in last:
                out[k] = last[k]
        out.update(self.status)
        return out

    def _write_records(self, status: str, error: str | None = None) -> dict[str, Any]:
        metrics = self._metrics(status, error)
        if self.env.is_primary:
            if self.history:
                write_summary_csv(self.out / 'summary.csv', self.history)
            write_json(self.out / 'metrics.json', metrics)
        return metrics

    @property
    def best_metric_name(self) -> str | None:
        if self.data is None or self.data.val_loader is None:
            return None
        if not self.labelled:
            return 'val_ema_teacher_agree' if self.ema is not None else 'val_teacher_agree'
        return 'val_ema_top1' if self.ema is not None else 'val_top1'

    # ------------------------------------------------------------------ training
    def _sync_point(self, loss_sum: torch.Tensor, unreadable: int, force: bool, epoch: int, batch: int) -> bool:
        """Agree across ranks whether to stop (signal) and fail on a non-finite loss or too many bad images."""
        interval = self.cfg.train.log_interval
        periodic = force or self.num_updates % interval == 0
        if self.env.distributed:
            if not periodic:
                return False
            stop, bad_loss, unreadable_total = self.env.all_reduce_sum(
                [float(self.signals.signum is not None), float(not torch.isfinite(loss_sum).item()), unreadable])
        else:
            stop = self.signals.signum is not None
            # on CUDA the loss is read (a device sync) every log_interval updates, and always before a stop writes
            bad_loss = (periodic or stop or not self.cuda) and not torch.isfinite(loss_sum).item()
            unreadable_total = unreadable
        if bad_loss:
            raise NonFiniteLossError(
                f"the training loss became NaN/Inf in epoch {epoch + 1} (by batch {batch} of "
                f"{self.batches_per_epoch}); stopped without writing a checkpoint: the last good one is "
                f"{self.out / 'last.pth'} (epoch {len(self.history)}). Lower train.lr, set train.clip_grad "
                f"or check the data")
        limit = self.cfg.data.max_unreadable * (self.data.train_size or 0)
        if unreadable_total > limit:
            raise DataError(f"{int(unreadable_total)} unreadable training images in epoch {epoch + 1}, more than "
                            f"data.max_unreadable={self.cfg.data.max_unreadable} of {self.data.train_size}")
        return bool(stop)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        t, env = self.cfg.train, self.env
        loader = self.data.train_loader
        start = self.start_batches if epoch == self.start_epoch else 0
        if hasattr(loader.sampler, 'set_epoch') and hasattr(loader.sampler, 'samples_per_epoch'):
            loader.sampler.set_epoch(epoch, start * t.batch_size)
            batches = loader
        else:  # streaming dataset: shard-aware reader, skip consumed batches by reading them
            if hasattr(loader.dataset, 'set_epoch'):
                loader.dataset.set_epoch(epoch)
            batches = itertools.islice(loader, start, None)
        partial_stats = self.partial if start else {}
        loss_sum = torch.tensor(partial_stats.get('loss_sum', 0.0), dtype=torch.float64, device=self.device)
        samples = int(partial_stats.get('samples', 0))
        unreadable = int(partial_stats.get('unreadable', 0))
        time_before = float(partial_stats.get('time', 0.0))
        self.task.train()
        accum = t.grad_accum_steps
        n = self.batches_per_epoch
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not self.progress,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        t0 = time.perf_counter()
        batch_idx = start
        for batch_idx, batch in enumerate(batches, start=start):
            x, y = batch[0], batch[1]
            if len(batch) > 2:
                unreadable += int(batch[2].sum())
            if self.labelled:
                if y.min() < 0 or y.max() >= self.cfg.model.num_classes:
                    raise DataError(f"labels must be in 0..{self.cfg.model.num_classes - 1}, a batch holds "
                                    f"{int(y.min())}..{int(y.max())}; check model.num_classes against the data")
            else:
                y = torch.zeros_like(y)  # teacher-only distillation: labels are ignored
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            group_start = (batch_idx // accum) * accum
            group_size = min(accum, n - group_start)
            need_update = batch_idx + 1 == group_start + group_size
            sync_ctx = self.task.no_sync() if env.distributed and not need_update else nullcontext()
            with sync_ctx:
                with self.autocast():
                    loss = self.task(x, y)['loss']
                scaled = loss / group_size
                if self.scaler is not None:
                    self.scaler(scaled, self.optimizer, clip_grad=t.clip_grad,
                                parameters=self.model.parameters(), need_update=need_update)
                else:
                    scaled.backward()
                    if need_update:
                        if t.clip_grad is not None:
                            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                        self.optimizer.step()
            loss_sum += loss.detach().double() * x.shape[0]
            samples += x.shape[0]
            bar.update(1)
            if not need_update:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.num_updates += 1
            self.task.update_ema(step=self.num_updates)
            self.scheduler.step_update(num_updates=self.num_updates)
            if self.progress and self.num_updates % t.log_interval == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / max(samples, 1):.4f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            if self.callbacks:
                state = TrainState(epoch, batch_idx + 1, n, self.num_updates, self.model, env.rank, env.world_size)
                for cb in self.callbacks:
                    cb(state)
            last_batch = batch_idx + 1 == n
            if self._sync_point(loss_sum, unreadable, force=last_batch, epoch=epoch, batch=batch_idx + 1) \
                    and not last_batch:
                bar.close()
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                # the epoch's sums so far over all ranks (a resumed run gives them to its rank 0)
                loss_total, samples_total, unreadable_total = env.all_reduce_sum([loss_sum.item(), samples, unreadable])
                stats = {'loss_sum': loss_total, 'samples': int(samples_total), 'unreadable': int(unreadable_total),
                         'time': time_before + time.perf_counter() - t0}
                path = self._save(epoch, batch_idx + 1, stats)
                raise TrainingInterrupted(self.signals.signum, str(path))
        bar.close()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        elapsed = time_before + time.perf_counter() - t0
        loss_total, samples_total, unreadable_total = env.all_reduce_sum([loss_sum.item(), samples, unreadable])
        return {'train_loss': loss_total / max(samples_total, 1), 'train_images': int(samples_total),
                'train_images_per_sec': samples_total / max(elapsed, 1e-9), 'train_time_s': elapsed,
                'train_unreadable': int(unreadable_total)}

    def _evaluate(self) -> dict[str, Any]:
        if self.data.val_loader is None:
            return {}
        self.task.eval()
        kw = dict(autocast=self.autocast, channels_last=self.channels_last, labelled=self.labelled,
                  teacher=self.teacher_eval, progress=self.progress)
        row = {}
        res = validate(self._eval_model(), self.data.val_loader, self.env, **kw)
        row.update({f'val_{k}': v for k, v in res.items() if k not in ('images', 'unreadable')})
        if self.ema is not None:
            res_ema = validate(self._eval_model(ema=True), self.data.val_loader, self.env, **kw)
            row.update({f'val_ema_{k}': v for k, v in res_ema.items() if k not in ('images', 'unreadable')})
        row['val_unreadable'] = res['unreadable']
        limit = self.cfg.data.max_unreadable * (self.data.val_size or 0)
        if res['unreadable'] > limit:
            raise DataError(f"{res['unreadable']} unreadable validation images, more than "
                            f"data.max_unreadable={self.cfg.data.max_unreadable} of {self.data.val_size}")
        self.task.train()
        return row

    def run(self) -> dict[str, Any]:
        t, env = self.cfg.train, self.env
        self.training = True
        for epoch in range(self.start_epoch, t.epochs):
            t_epoch = time.perf_counter()
            stats = self._train_epoch(epoch)
            if env.distributed and t.dist_bn != 'none':
                distribute_bn(self.model, env.world_size, reduce=t.dist_bn == 'reduce')
                if self.ema is not None:
                    distribute_bn(self.ema.module, env.world_size, reduce=t.dist_bn == 'reduce')
            val = self._evaluate()
            metric = val.get(self.best_metric_name) if self.best_metric_name else None
            self.scheduler.step(epoch + 1, metric)
            earlier = float(self.partial.get('time', 0.0)) if epoch == self.start_epoch else 0.0
            row = {'epoch': epoch + 1, 'lr': self.optimizer.param_groups[0]['lr'], **stats, **val,
                   'epoch_time_s': time.perf_counter() - t_epoch + earlier}
            self.history.append(row)
            improved = metric is not None and (self.best_metric is None or metric > self.best_metric)
            if improved:
                self.best_metric, self.best_epoch = metric, epoch + 1
            self._save(epoch + 1, 0, best=improved)
            self._write_records('running')
            if env.is_primary:
                self._log_epoch(row)
                if self.tb is not None:
                    self.tb.scalars(row, epoch + 1)
            # a signal that arrived during validation: stop here, after the epoch's checkpoint (all ranks agree)
            stop = env.all_reduce_sum([float(self.signals.signum is not None)])[0] > 0
            if stop and epoch + 1 < t.epochs:
                raise TrainingInterrupted(self.signals.signum or signal.SIGTERM, str(self.out / 'last.pth'))
        return self._finish()

    def _log_epoch(self, row: dict[str, Any]) -> None:
        parts = [f"epoch {row['epoch']}/{self.cfg.train.epochs}", f"train loss {row['train_loss']:.4f}"]
        if 'val_top1' in row:
            parts.append(f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} top5 {row['val_top5']:.2f}")
        if 'val_ema_top1' in row:
            parts.append(f"EMA top1 {row['val_ema_top1']:.2f}")
        if 'val_teacher_agree' in row:
            parts.append(f"teacher agreement {row['val_teacher_agree']:.2f}")
        parts += [f"lr {row['lr']:.3e}", f"{row['train_images_per_sec']:.0f} img/s", f"{row['epoch_time_s']:.1f} s"]
        _logger.info(' | '.join(parts))
        if row.get('train_unreadable') or row.get('val_unreadable'):
            _logger.warning(f"epoch {row['epoch']}: skipped {row.get('train_unreadable', 0)} unreadable training "
                            f"and {row.get('val_unreadable', 0)} validation images (each replaced by the next "
                            f"readable one)")

    def _finish(self) -> dict[str, Any]:
        t = self.cfg.train
        kind = t.export
        if kind == 'best' and self.best_epoch is None:
            _logger.warning("train.export 'best' without validation: exporting the final weights")
            kind = 'ema' if self.ema is not None else 'last'
        export_epoch = len(self.history)
        if self.env.is_primary:
            if kind == 'best':
                best = load_checkpoint(self.out / 'best.pth')
                weights = best['state_dict_ema'] if self.ema is not None else best['state_dict']
                export_epoch = self.best_epoch
            elif kind == 'ema':
                weights = self.ema.module.state_dict()
            else:
                weights = self.model.state_dict()
            save_weights(weights, self.out / 'model.safetensors', metadata={
                'architecture': self.cfg.model.architecture, 'name': self.cfg.name, 'export': kind,
                'epoch': str(export_epoch)})
            save_config(self.cfg, self.out / RUN_CONFIG_FILE)
        self.status = {'export': {'kind': kind, 'epoch': export_epoch, 'file': 'model.safetensors'}}
        metrics = self._write_records('finished')
        if self.env.is_primary:
            _logger.info(f"finished {self.cfg.name}: exported {kind} weights (epoch {export_epoch}) to "
                         f"{self.out / 'model.safetensors'}")
        self.env.barrier()
        return metrics


def finetune(cfg: RunConfig, output_dir: str | Path, *, resume: str | Path | bool | None = None,
             device: str | torch.device | None = None, progress: bool = True,
             callbacks: Sequence[Callable[[TrainState], None]] = (), handle_signals: bool = True) -> dict[str, Any]:
    """Fine-tune ``cfg`` into ``output_dir`` and return its metrics (what ``metrics.json`` holds).

    A fresh run builds ``model.architecture``, loads ``model.base``'s timm weights into it (zero-shot
    conversion), and trains with the ``train`` recipe. Launched by torchrun, every process calls this;
    the process group is joined from the environment (NCCL on CUDA, gloo on CPU).

    Args:
        cfg: the run configuration (validated again here).
        output_dir: folder for checkpoints, weights and records (created).
        resume: None: start fresh (error if ``output_dir`` holds a run); ``'auto'``: resume
            ``output_dir/last.pth`` when it exists, else start fresh; True or ``'last'``: resume
            ``output_dir/last.pth``; a path: resume that checkpoint.
        device: ``cuda``, ``cpu``, ``cuda:1``; None: CUDA when available. In distributed CUDA runs each
            process takes ``cuda:<LOCAL_RANK>``.
        progress: tqdm bars (rank 0 only).
        callbacks: called with a :class:`TrainState` after every optimizer update.
        handle_signals: on the first SIGTERM/SIGINT, write a resumable checkpoint and raise
            :class:`TrainingInterrupted` (main thread only).

    Returns:
        The metrics: ``status``, ``val_top1``/``val_top5``/``val_loss`` of the last epoch, ``best_metric``
        and ``best_epoch``, ``train_images_per_sec``, ``history`` (one row per epoch), ``export``, ``config``.

    Raises:
        ConfigError: invalid settings (unknown architecture or optimizer, teacher without matching head, ...).
        DataError: missing/empty data, class-count mismatch, too many unreadable images.
        CheckpointError: resume checkpoint unreadable, foreign, or from another model.
        RunExistsError: ``output_dir`` holds a run and ``resume`` is None.
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        TrainingInterrupted: a signal stopped the run after writing ``last.pth``.
    """
    cfg = config_from_dict(cfg.to_dict())  # validated private copy
    out = Path(output_dir)
    signals = _SignalCatcher(handle_signals)
    env = init_distributed(device)
    log_file = None
    trainer = None
    try:
        ckpt_path = _resolve_resume(resume, out)
        if env.is_primary:
            out.mkdir(parents=True, exist_ok=True)
            log_file = RunLogFile(out / 'train.log')
        trainer = _Trainer(cfg, out, env, progress, callbacks, signals)
        trainer.setup(ckpt_path)
        return trainer.run()
    except TrainingInterrupted as e:
        if trainer is not None and trainer.data is not None:
            trainer._write_records('interrupted', str(e))
        if env.is_primary:
            _logger.warning(str(e))
        raise
    except Exception as e:
        if trainer is not None and trainer.training:
            try:
                trainer._write_records('failed', f"{type(e).__name__}: {e}")
            except Exception as record_error:  # the original error matters more
                _logger.warning(f"could not record the failure in metrics.json: {record_error!r}")
        raise
    finally:
        signals.restore()
        if trainer is not None and trainer.tb is not None:
            trainer.tb.close()
        if log_file is not None:
            log_file.close()
        env.close()


def ensure_finetuned(cfg: RunConfig, output_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Train ``cfg`` into ``output_dir`` unless it already holds that finished run; return its metrics.

    A finished run (``metrics.json`` with status ``finished``) of the same config is returned as is,
    without loading a model; an unfinished one is resumed from ``last.pth``; otherwise training starts.

    Args:
        cfg: the run configuration.
        output_dir: the run's folder.
        **kwargs: passed to :func:`finetune` (``device``, ``progress``, ``callbacks``, ...), not ``resume``.

    Raises:
        RunExistsError: ``output_dir`` holds a finished run of a different configuration.
        Everything :func:`finetune` raises.
    """
    if 'resume' in kwargs:
        raise TypeError("ensure_finetuned decides about resuming itself; do not pass resume")
    done = read_results(output_dir)
    if done is not None and done.get('status') == 'finished' and (Path(output_dir) / 'model.safetensors').is_file():
        diff = config_differences(done.get('config', {}), cfg, ignore=sorted(_NON_SEMANTIC))
        if diff:
            raise RunExistsError(f"{output_dir} holds a finished run of another configuration "
                                 f"({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in list(diff.items())[:6])}); "
                                 f"use another output folder")
        _logger.info(f"{output_dir}: finished run found, not training again")
        return done
    return finetune(cfg, output_dir, resume='auto', **kwargs)
