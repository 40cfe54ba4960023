"""The epoch loop: training steps (accumulation, AMP, EMA, schedule), the agreed stop points, validation,
per-epoch checkpoints and records."""
from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.utils import distribute_bn
from tqdm import tqdm

from timm_asap_lab.config import RunConfig
from timm_asap_lab.data import DataError
from timm_asap_lab.train import resume as _resume
from timm_asap_lab.train.build import Parts
from timm_asap_lab.train.distributed import DistEnv
from timm_asap_lab.train.errors import NonFiniteLossError, TrainingInterrupted
from timm_asap_lab.train.evaluate import validate
from timm_asap_lab.train.records import RunRecords
from timm_asap_lab.train.signals import SignalCatcher

__all__ = ['TrainState', 'EpochLoop']

_logger = logging.getLogger(__name__)


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


class EpochLoop:
    """Trains ``parts`` from ``progress`` to ``train.epochs``, checkpointing after every epoch and on a signal.

    Args:
        cfg: the run configuration.
        parts: from :func:`~timm_asap_lab.train.build.build_parts`.
        progress: where the run stands (fresh or restored).
        env: the distributed environment.
        records: the run's metrics/summary/TensorBoard writer.
        signals: the preemption flag.
        callbacks: called with a :class:`TrainState` after every optimizer update.
        progress_bar: show tqdm bars.
    """

    def __init__(self, cfg: RunConfig, parts: Parts, progress: _resume.Progress, env: DistEnv, records: RunRecords,
                 signals: SignalCatcher, callbacks: Sequence[Callable[[TrainState], None]] = (),
                 progress_bar: bool = False):
        self.cfg, self.parts, self.p, self.env = cfg, parts, progress, env
        self.records, self.signals, self.callbacks = records, signals, list(callbacks)
        self.bar = progress_bar
        self.cuda = env.device.type == 'cuda'
        self.out: Path = records.out

    def _save(self, epoch: int, batches: int, stats: dict | None = None, best: bool = False) -> Path:
        return _resume.save(self.cfg, self.parts, self.p, self.env, self.out, epoch, batches, stats, best)

    def sync_point(self, loss_sum: torch.Tensor, unreadable: int, force: bool, epoch: int, batch: int) -> bool:
        """Agree across ranks whether to stop (signal) and fail on a non-finite loss or too many bad images."""
        periodic = force or self.p.num_updates % self.cfg.train.log_interval == 0
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
            raise NonFiniteLossError(_diverged(self, epoch, batch))
        d = self.cfg.data
        limit = d.max_unreadable * (self.parts.data.train_size or 0)
        if unreadable_total > limit:
            raise DataError(f"{int(unreadable_total)} unreadable training images in epoch {epoch + 1}, more than "
                            f"data.max_unreadable={d.max_unreadable} of {self.parts.data.train_size}")
        return bool(stop)

    def _step(self, x: torch.Tensor, y: torch.Tensor, group_size: int, need_update: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; the optimizer step when it closes a group."""
        t, parts = self.cfg.train, self.parts
        sync_ctx = parts.task.no_sync() if self.env.distributed and not need_update else nullcontext()
        with sync_ctx:
            with parts.autocast():
                loss = parts.task(x, y)['loss']
            scaled = loss / group_size
            if parts.scaler is not None:
                parts.scaler(scaled, parts.optimizer, clip_grad=t.clip_grad, parameters=parts.model.parameters(),
                             need_update=need_update)
            else:
                scaled.backward()
                if need_update:
                    if t.clip_grad is not None:
                        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), t.clip_grad)
                    parts.optimizer.step()
        return loss

    def _after_update(self, epoch: int, batch: int, n: int, loss_sum: torch.Tensor, samples: int, bar) -> None:
        parts, p = self.parts, self.p
        parts.optimizer.zero_grad(set_to_none=True)
        p.num_updates += 1
        parts.task.update_ema(step=p.num_updates)
        parts.scheduler.step_update(num_updates=p.num_updates)
        if self.bar and p.num_updates % self.cfg.train.log_interval == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / max(samples, 1):.4f}",
                            lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        if self.callbacks:
            state = TrainState(epoch, batch, n, p.num_updates, parts.model, self.env.rank, self.env.world_size)
            for cb in self.callbacks:
                cb(state)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts, device = self.parts, self.env.device
        if not parts.labelled:
            y = torch.zeros_like(y)  # teacher-only distillation: labels are ignored
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if parts.mixup is not None:
            x, y = parts.mixup(x, y)
        return x, y

    def _sums(self, loss_sum: torch.Tensor, samples: int, unreadable: int) -> tuple[float, int, int]:
        """The epoch's sums so far over all ranks."""
        loss, n, bad = self.env.all_reduce_sum([loss_sum.item(), samples, unreadable])
        return loss, int(n), int(bad)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (from the resume position in the first epoch of a resumed run)."""
        t, parts, p = self.cfg.train, self.parts, self.p
        start = p.start_batches if epoch == p.start_epoch else 0
        before = p.partial if start else {}
        loss_sum = torch.tensor(before.get('loss_sum', 0.0), dtype=torch.float64, device=self.env.device)
        samples, unreadable = int(before.get('samples', 0)), int(before.get('unreadable', 0))
        time_before = float(before.get('time', 0.0))
        parts.task.train()
        accum, n = t.grad_accum_steps, parts.batches_per_epoch
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not self.bar,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        t0 = time.perf_counter()
        for batch_idx, (x, y, *rest) in enumerate(parts.data.train_batches.epoch(epoch, start), start=start):
            unreadable += rest[0] if rest else 0
            x, y = self._prepare(x, y)
            group_start = (batch_idx // accum) * accum
            group_size = min(accum, n - group_start)
            need_update = batch_idx + 1 == group_start + group_size
            loss = self._step(x, y, group_size, need_update)
            loss_sum += loss.detach().double() * x.shape[0]
            samples += x.shape[0]
            bar.update(1)
            if not need_update:
                continue
            self._after_update(epoch, batch_idx + 1, n, loss_sum, samples, bar)
            last_batch = batch_idx + 1 == n
            if self.sync_point(loss_sum, unreadable, force=last_batch, epoch=epoch, batch=batch_idx + 1) \
                    and not last_batch:
                bar.close()
                if self.cuda:
                    torch.cuda.synchronize(self.env.device)
                loss_total, n_total, bad_total = self._sums(loss_sum, samples, unreadable)
                stats = {'loss_sum': loss_total, 'samples': n_total, 'unreadable': bad_total,
                         'time': time_before + time.perf_counter() - t0}
                raise TrainingInterrupted(self.signals.signum, str(self._save(epoch, batch_idx + 1, stats)))
        bar.close()
        if self.cuda:
            torch.cuda.synchronize(self.env.device)
        elapsed = time_before + time.perf_counter() - t0
        loss_total, n_total, bad_total = self._sums(loss_sum, samples, unreadable)
        return {'train_loss': loss_total / max(n_total, 1), 'train_images': n_total,
                'train_images_per_sec': n_total / max(elapsed, 1e-9), 'train_time_s': elapsed,
                'train_unreadable': bad_total}

    def _eval_model(self, ema: bool = False):
        # the compiled forward when train.compile is on (never the DDP wrapper: validation is per rank)
        compiled = getattr(self.parts.task, 'eval_model_ema' if ema else 'eval_model', None)
        if compiled is not None:
            return compiled
        return self.parts.ema if ema else self.parts.model

    def evaluate(self) -> dict[str, Any]:
        """Validation of the model (and its EMA) on this rank's shard, combined over ranks."""
        parts = self.parts
        if parts.data.val_loader is None:
            return {}
        parts.task.eval()
        kw = dict(autocast=parts.autocast, channels_last=parts.channels_last, labelled=parts.labelled,
                  teacher=parts.teacher_eval, progress=self.bar)
        res = validate(self._eval_model(), parts.data.val_loader, self.env, **kw)
        row = {f'val_{k}': v for k, v in res.items() if k not in ('images', 'unreadable')}
        if parts.ema is not None:
            res_ema = validate(self._eval_model(ema=True), parts.data.val_loader, self.env, **kw)
            row.update({f'val_ema_{k}': v for k, v in res_ema.items() if k not in ('images', 'unreadable')})
        row['val_unreadable'] = res['unreadable']
        limit = self.cfg.data.max_unreadable * (parts.data.val_size or 0)
        if res['unreadable'] > limit:
            raise DataError(f"{res['unreadable']} unreadable validation images, more than "
                            f"data.max_unreadable={self.cfg.data.max_unreadable} of {parts.data.val_size}")
        parts.task.train()
        return row

    def _end_of_epoch(self, epoch: int, stats: dict, val: dict, t_epoch: float) -> None:
        parts, p = self.parts, self.p
        metric = val.get(self.records.best_metric_name) if self.records.best_metric_name else None
        parts.scheduler.step(epoch + 1, metric)
        earlier = float(p.partial.get('time', 0.0)) if epoch == p.start_epoch else 0.0
        row = {'epoch': epoch + 1, 'lr': parts.optimizer.param_groups[0]['lr'], **stats, **val,
               'epoch_time_s': time.perf_counter() - t_epoch + earlier}
        p.history.append(row)
        improved = metric is not None and (p.best_metric is None or metric > p.best_metric)
        if improved:
            p.best_metric, p.best_epoch = metric, epoch + 1
        self._save(epoch + 1, 0, best=improved)
        self.records.write('running')
        self.records.epoch_done(row)

    def run(self) -> None:
        """All remaining epochs; raises :class:`TrainingInterrupted` after the checkpoint a signal asked for."""
        t, env = self.cfg.train, self.env
        for epoch in range(self.p.start_epoch, t.epochs):
            t_epoch = time.perf_counter()
            stats = self.train_epoch(epoch)
            if env.distributed and t.dist_bn != 'none':
                distribute_bn(self.parts.model, env.world_size, reduce=t.dist_bn == 'reduce')
                if self.parts.ema is not None:
                    distribute_bn(self.parts.ema.module, env.world_size, reduce=t.dist_bn == 'reduce')
            self._end_of_epoch(epoch, stats, self.evaluate(), t_epoch)
            # a signal that arrived during validation: stop here, after the epoch's checkpoint (all ranks agree)
            stop = env.all_reduce_sum([float(self.signals.signum is not None)])[0] > 0
            if stop and epoch + 1 < t.epochs:
                raise TrainingInterrupted(self.signals.signum or signal.SIGTERM, str(self.out / 'last.pth'))


def _diverged(loop: EpochLoop, epoch: int, batch: int) -> str:
    """The message of a non-finite loss: what was kept (naming only files that exist) and a way on that works."""
    lr = loop.cfg.train.lr / 10
    what = (f"the training loss became NaN/Inf in epoch {epoch + 1} (by batch {batch} of "
            f"{loop.parts.batches_per_epoch}); stopped without writing a checkpoint")
    last, done = loop.out / 'last.pth', len(loop.p.history)
    if last.is_file():  # this run's: a fresh run refuses a folder holding one, a resumed one started from it
        kept = f"the last good one is {last} (epoch {done}): resume it"
    elif done:  # resumed from a checkpoint elsewhere and no epoch finished since
        kept = f"resume the checkpoint this run started from (epoch {done})"
    else:
        return (f"{what}; no epoch finished, so there is none to resume. Start again with a lower train.lr "
                f"(e.g. --lr {lr:g}, a tenth of {loop.cfg.train.lr:g}; the same --output starts afresh), or set "
                f"train.clip_grad, or check the data")
    return (f"{what}; {kept} with a lower train.lr (timm-asap finetune --output {loop.out} --resume "
            f"--lr {lr:g}), or set train.clip_grad, or check the data")
