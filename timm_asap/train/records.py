"""What a run leaves beside its weights: ``summary.csv``, ``metrics.json``, TensorBoard scalars, a log file."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from .._files import atomic_write_text

__all__ = ['write_summary_csv', 'write_json', 'read_results', 'TensorBoardLogger', 'RunLogFile']

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


def read_results(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run folder, or None when there is none (or it is unreadable)."""
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
            _logger.info("tensorboard is not installed (pip install 'timm-asap[tensorboard]'); "
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
    """Copies ``timm_asap`` log records of level INFO and above to a file for the duration of a run.

    Raises the ``timm_asap`` logger to INFO while open (restored on close) so the file gets the
    per-epoch lines even when the application configured no logging.
    """

    def __init__(self, path: str | os.PathLike):
        self.logger = logging.getLogger('timm_asap')
        self.handler = logging.FileHandler(path, mode='a')
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
        self.old_level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(self.old_level)
