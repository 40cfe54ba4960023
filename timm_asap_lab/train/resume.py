"""Checkpoint and resume state: where a run stands, what a checkpoint holds, and how a resumed run
takes it up (same position, schedule, sample order and random state as the uninterrupted run)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from timm.scheduler import PlateauLRScheduler

from timm_asap.models.convert import pooling_signature
from timm_asap_lab.config import RunConfig
from timm_asap_lab.train.build import Parts
from timm_asap_lab.train.checkpoint import CHECKPOINT_FORMAT, get_rng_state, link_or_copy, save_checkpoint
from timm_asap_lab.train.distributed import DistEnv
from timm_asap_lab.train.errors import CheckpointError, RunExistsError

__all__ = ['Progress', 'NON_SEMANTIC', 'config_differences', 'resolve_resume', 'check_checkpoint', 'restore',
           'carry_best', 'checkpoint_state', 'save']

_logger = logging.getLogger(__name__)

# keys that do not change what a run computes: ignored when comparing a finished run's config
NON_SEMANTIC = {'data.workers', 'data.label_names', 'train.log_interval', 'train.tensorboard', 'hub'}
# keys whose change alters the order of an epoch's training samples (an interrupted epoch then restarts)
_SAMPLE_ORDER_KEYS = ('train.batch_size', 'data.dataset', 'data.train_split', 'data.train_subset', 'train.seed',
                      'data.loader')
# keys whose change makes a saved scheduler state stale (the schedule then follows the new config)
_SCHEDULE_KEYS = ('train.epochs', 'train.sched', 'train.lr', 'train.warmup_epochs', 'train.warmup_lr',
                  'train.min_lr', 'train.decay_epochs', 'train.decay_rate', 'train.batch_size',
                  'train.grad_accum_steps', 'data.train_subset', 'train.lr_base_size', 'train.lr_base_scale')


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves besides the weights and optimizer state.

    Attributes:
        history: one metrics row per finished epoch.
        best_metric: the best value of the run's selection metric so far.
        best_epoch: its epoch (1-based).
        num_updates: optimizer updates since the start of training.
        start_epoch: the epoch this process starts in (0-based).
        start_batches: batches of ``start_epoch`` already trained (an interrupted epoch).
        partial: the interrupted epoch's sums (``loss_sum``, ``samples``, ``unreadable``, ``time``).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    num_updates: int = 0
    start_epoch: int = 0
    start_batches: int = 0
    partial: dict[str, float] = field(default_factory=dict)


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


def resolve_resume(resume: str | Path | bool | None, out: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run).

    Raises:
        RunExistsError: a fresh run into a folder that holds one.
        CheckpointError: ``resume=True`` where the folder holds no run (the message says so).
    """
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
            raise CheckpointError(f"there is no run to resume in {out}: it holds no {last.name}; start a run "
                                  f"there without --resume, or pass the folder of the run to resume")
        return last
    return Path(resume)


def check_checkpoint(cfg: RunConfig, ckpt: dict, path: Path, env: DistEnv) -> dict[str, tuple]:
    """Refuse a checkpoint of another model; warn about changed settings and return them."""
    m = cfg.model
    theirs = (ckpt.get('architecture'), ckpt.get('num_classes'), ckpt.get('in_chans'))
    ours = (m.architecture, m.num_classes, m.in_chans)
    if theirs != ours:
        raise CheckpointError(
            f"resume checkpoint {path} is from another model: architecture {theirs[0]!r}, {theirs[1]} classes, "
            f"{theirs[2]} channels; this run builds {ours[0]!r}, {ours[1]} classes, {ours[2]} channels")
    diff = config_differences(ckpt['config'], cfg, ignore=sorted(NON_SEMANTIC))
    model_diff = {k: v for k, v in diff.items() if k.startswith('model.') and k != 'model.tag'}
    if model_diff:
        raise CheckpointError(f"resume checkpoint {path} was trained with other model settings: {model_diff}")
    if diff and env.is_primary:
        _logger.warning(f"resuming {path} with changed settings: "
                        + ', '.join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    return diff


def _load_optimizer_and_schedule(parts: Parts, ckpt: dict, path: Path, diff: dict) -> tuple[bool, int]:
    """Load optimizer and (when still valid) scheduler state; returns (schedule stale, old updates/epoch)."""
    try:
        parts.optimizer.load_state_dict(ckpt['optimizer'])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this run ({e}); resume with the run's own "
                              f"settings (did train.opt or train.weight_decay change?)") from None
    old_accum = int(ckpt['config'].get('train', {}).get('grad_accum_steps', 1))
    old_updates = math.ceil(ckpt['batches_per_epoch'] / old_accum)
    # per-update schedules count in updates: their saved state is stale when an epoch's update count changed
    units_changed = old_updates != parts.updates_per_epoch and not parts.scheduler.t_in_epochs
    schedule_changed = any(k in diff for k in _SCHEDULE_KEYS)
    if schedule_changed or units_changed:
        why = "the schedule settings changed" if schedule_changed else (
            f"an epoch now has {parts.updates_per_epoch} optimizer updates instead of {old_updates}")
        _logger.warning(f"{why}; the learning rate follows the schedule of this run from the resume position")
    else:
        parts.scheduler.load_state_dict(ckpt['scheduler'])
    return schedule_changed or units_changed, old_updates


def restore(parts: Parts, ckpt: dict, path: Path, env: DistEnv, diff: dict, accum: int) -> Progress:
    """Load a checkpoint's optimizer, schedule, EMA and scaler state into ``parts``; return its progress."""
    stale, old_updates = _load_optimizer_and_schedule(parts, ckpt, path, diff)
    if parts.ema is not None:
        if ckpt.get('state_dict_ema') is not None:
            parts.ema.module.load_state_dict(ckpt['state_dict_ema'])
        else:
            _logger.warning(f"{path} has no EMA weights; the EMA restarts from the current weights, and the "
                            f"best epoch is chosen again by the EMA's metric")
            ckpt = dict(ckpt, best_metric=None, best_epoch=None)
    if parts.scaler is not None and ckpt.get('scaler'):
        parts.scaler.load_state_dict(ckpt['scaler'])
    p = Progress(list(ckpt['history']), ckpt['best_metric'], ckpt['best_epoch'], ckpt['num_updates'], ckpt['epoch'])
    p.start_batches = _resume_batches(ckpt, parts.batches_per_epoch, env.world_size, diff, accum)
    p.partial = dict(ckpt.get('partial') or {}) if p.start_batches else {}
    if p.partial and not env.is_primary:  # the saved sums are over all ranks: counted once, on rank 0
        p.partial.update(loss_sum=0.0, samples=0, unreadable=0)
    if old_updates != parts.updates_per_epoch or p.start_batches != ckpt['batches_done']:
        # the updates up to the resume position, in this run's units (a restarted epoch counts none of its own)
        p.num_updates = p.start_epoch * parts.updates_per_epoch + p.start_batches // accum
    if stale or p.num_updates != ckpt['num_updates']:
        _set_lr_at_resume(parts.scheduler, p)
    if env.is_primary:
        where = f"epoch {p.start_epoch + 1}, batch {p.start_batches}" if p.start_batches \
            else f"the end of epoch {p.start_epoch}"
        _logger.info(f"resumed from {path} at {where} ({p.num_updates} optimizer updates done)")
    return p


def _resume_batches(ckpt: dict, batches_per_epoch: int, world: int, diff: dict, accum: int) -> int:
    """Batches of the interrupted epoch to skip. The ranks of a run together consume the epoch's
    permutation from its start, so with another world size (and the same data and batch size) the
    epoch continues after the samples already seen, rounded down to whole batches of this run."""
    batches, old_world, old_per_epoch = ckpt['batches_done'], ckpt['world_size'], ckpt['batches_per_epoch']
    if not batches:
        return 0
    changed = sorted(k for k in diff if k in _SAMPLE_ORDER_KEYS)
    if old_world == world:
        fits = old_per_epoch == batches_per_epoch
    else:  # per-rank batches scale with 1 / world size, up to the rounding of each rank's share
        fits = abs(batches_per_epoch - old_per_epoch * old_world / world) <= old_world / world + 1
    if changed or not fits:
        why = f"{', '.join(changed)} changed" if changed else (
            f"batches per epoch changed from {old_per_epoch} to {batches_per_epoch} per process")
        _logger.warning(f"{why}: the interrupted epoch restarts from its beginning")
        return 0
    if old_world != world:
        batches = batches * old_world // world // accum * accum  # whole accumulation groups
        _logger.warning(f"world size changed from {old_world} to {world}: the interrupted epoch continues "
                        f"after the {ckpt['batches_done'] * old_world} batches already seen ({batches} per process)")
    return min(batches, batches_per_epoch)


def _set_lr_at_resume(sched, p: Progress) -> None:
    """Set the learning rate the schedule of this run gives at the resume position (the optimizer
    state just loaded carries the old schedule's rate)."""
    if not sched.t_in_epochs:
        sched.step_update(num_updates=p.num_updates)
    elif isinstance(sched, PlateauLRScheduler) and p.start_epoch > sched.warmup_t:
        sched.update_groups(sched.base_values)  # a fresh plateau schedule starts at the base rate
    else:
        sched.step(p.start_epoch)


def carry_best(p: Progress, ckpt_path: Path, out: Path, env: DistEnv) -> None:
    """Resuming a checkpoint of another folder: bring its run's best.pth along (train.export 'best'
    reads it), or, where it has none, restart the choice of the best epoch."""
    if p.best_epoch is None or ckpt_path.parent.resolve() == out.resolve():
        return
    src = ckpt_path.parent / 'best.pth'
    if src.is_file():
        if env.is_primary:
            out.mkdir(parents=True, exist_ok=True)
            link_or_copy(src, out / 'best.pth')
        return
    if env.is_primary:
        _logger.warning(f"{src} does not exist: the best epoch is chosen again from the epochs of this run")
    p.best_metric = p.best_epoch = None


def checkpoint_state(cfg: RunConfig, parts: Parts, p: Progress, env: DistEnv, epoch: int, batches_done: int,
                     partial_stats: dict | None) -> dict[str, Any] | None:
    """The checkpoint dictionary (rank 0; None on other ranks, which only contribute their RNG state)."""
    rng = env.gather_objects(get_rng_state())
    if not env.is_primary:
        return None
    m = cfg.model
    return {
        'format': CHECKPOINT_FORMAT, 'architecture': m.architecture, 'num_classes': m.num_classes,
        'in_chans': m.in_chans, 'pooling': pooling_signature(parts.model), 'config': cfg.to_dict(), 'epoch': epoch,
        'batches_done': batches_done,
        'batches_per_epoch': parts.batches_per_epoch, 'num_updates': p.num_updates, 'world_size': env.world_size,
        'state_dict': parts.model.state_dict(),
        'state_dict_ema': parts.ema.module.state_dict() if parts.ema is not None else None,
        'optimizer': parts.optimizer.state_dict(), 'scheduler': parts.scheduler.state_dict(),
        'scaler': parts.scaler.state_dict() if parts.scaler is not None else None,
        'rng': rng, 'history': p.history, 'best_metric': p.best_metric, 'best_epoch': p.best_epoch,
        'partial': partial_stats,
    }


def save(cfg: RunConfig, parts: Parts, p: Progress, env: DistEnv, out: Path, epoch: int, batches_done: int,
         partial_stats: dict | None = None, best: bool = False) -> Path:
    """Write ``out/last.pth`` (and ``best.pth`` when ``best``) on rank 0; returns the path."""
    state = checkpoint_state(cfg, parts, p, env, epoch, batches_done, partial_stats)
    path = out / 'last.pth'
    if state is not None:
        save_checkpoint(state, path)
        if best:
            link_or_copy(path, out / 'best.pth')
    return path
