"""What a run leaves beside its weights: ``summary.csv``, ``metrics.json``, TensorBoard scalars, a log file,
and :class:`RunRecords`, which writes them while a run trains."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from timm_asap._files import atomic_write_text

__all__ = ['write_summary_csv', 'write_json', 'load_results', 'TensorBoardLogger', 'RunLogFile', 'RunRecords']

_logger = logging.getLogger(__name__)

def write_summary_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write one row per epoch (the union of the rows' keys as columns), atomically.

    The whole table is rewritten from the run's history each epoch, so a resumed run's table holds
    exactly the epochs of the checkpoint it resumed from plus the new ones.
    """
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f'{v:.6g}'
    return v


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN/Inf as strings), atomically."""
    return atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + '\n')


def load_results(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The metrics of a fine-tuning run folder (its ``metrics.json``), or None when it has none (or it is
    unreadable). Not to be confused with :func:`timm_asap_lab.evaluation.read_results` (an evaluation's rows)."""
    path = Path(output_dir) / 'metrics.json'
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _logger.warning(f"ignoring unreadable {path}: {e}")
        return None


class TensorBoardLogger:
    """Scalars to ``<output>/tensorboard`` when the tensorboard package is installed; otherwise nothing.

    Args:
        log_dir: event-file folder.
        enabled: False turns it off without a message.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _logger.info("tensorboard is not installed (pip install -e '.[tensorboard]' in the timm-asap checkout); "
                         "skipping TensorBoard logs")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, Any], step: int, prefix: str = '') -> None:
        """Log the numeric entries of ``values`` at ``step``."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != 'epoch':
                self.writer.add_scalar(f'{prefix}{k}', v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RunLogFile:
    """Copies the log records of the plugin (``timm_asap``) and the lab (``timm_asap_lab``) of level INFO and
    above to a file for the duration of a run.

    Raises both loggers to INFO while open (restored on close) so the file gets the per-epoch lines even
    when the application configured no logging.
    """

    LOGGERS = ('timm_asap', 'timm_asap_lab')

    def __init__(self, path: str | os.PathLike):
        self.handler = logging.FileHandler(path, mode='a')
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
        self.loggers = [logging.getLogger(name) for name in self.LOGGERS]
        self.old_levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.handler)

    def close(self) -> None:
        for logger, level in zip(self.loggers, self.old_levels):
            logger.removeHandler(self.handler)
            logger.setLevel(level)
        self.handler.close()


_LAST_KEYS = ('val_top1', 'val_top5', 'val_loss', 'val_ema_top1', 'val_teacher_agree', 'train_loss')


class RunRecords:
    """Writes what a run reports (rank 0 only).

    Args:
        cfg: the run configuration (:class:`~timm_asap_lab.config.RunConfig`).
        out: the output folder.
        env: the distributed environment.
    """

    def __init__(self, cfg, out: Path, env):
        self.cfg, self.out, self.env = cfg, out, env
        self.parts = None  # set once built: Parts
        self.progress = None  # Progress
        self.tb: TensorBoardLogger | None = None
        self.status: dict[str, Any] = {}

    def attach(self, parts, progress) -> None:
        """Start recording a built run (opens TensorBoard on rank 0)."""
        self.parts, self.progress = parts, progress
        if self.env.is_primary:
            self.tb = TensorBoardLogger(self.out / 'tensorboard', enabled=self.cfg.train.tensorboard)

    @property
    def best_metric_name(self) -> str | None:
        """The validation metric that chooses the best epoch (None without validation)."""
        parts = self.parts
        if parts is None or parts.data.val_loader is None:
            return None
        if not parts.labelled:
            return 'val_ema_teacher_agree' if parts.ema is not None else 'val_teacher_agree'
        return 'val_ema_top1' if parts.ema is not None else 'val_top1'

    def metrics(self, status: str, error: str | None = None) -> dict[str, Any]:
        """What ``metrics.json`` holds."""
        cfg, parts, p, device = self.cfg, self.parts, self.progress, self.env.device
        last = p.history[-1] if p.history else {}
        rates = [r['train_images_per_sec'] for r in p.history if 'train_images_per_sec' in r]
        cuda = device.type == 'cuda'
        out = {
            'status': status, 'error': error, 'name': cfg.name, 'architecture': cfg.model.architecture,
            'epochs': cfg.train.epochs, 'epochs_completed': len(p.history), 'best_metric_name': self.best_metric_name,
            'best_epoch': p.best_epoch, 'best_metric': p.best_metric, 'final': last,
            'train_images_per_sec': sum(rates) / len(rates) if rates else None,
            'device': str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else ''),
            'world_size': self.env.world_size, 'amp': parts.amp_name, 'channels_last': parts.channels_last,
            'loader': parts.data.loader, 'output_dir': str(self.out), 'history': p.history, 'config': cfg.to_dict(),
        }
        out.update({k: last[k] for k in _LAST_KEYS if k in last})
        out.update(self.status)
        return out

    def write(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Write ``summary.csv`` and ``metrics.json`` (rank 0) and return the metrics."""
        metrics = self.metrics(status, error)
        if self.env.is_primary:
            if self.progress.history:
                write_summary_csv(self.out / 'summary.csv', self.progress.history)
            write_json(self.out / 'metrics.json', metrics)
        return metrics

    def epoch_done(self, row: dict[str, Any]) -> None:
        """Log an epoch's row and add it to TensorBoard (rank 0)."""
        if not self.env.is_primary:
            return
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
        if self.tb is not None:
            self.tb.scalars(row, row['epoch'])

    def close(self) -> None:
        """Close TensorBoard."""
        if self.tb is not None:
            self.tb.close()
