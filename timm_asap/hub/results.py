"""Reading evaluation results for the model card.

The evaluation tool writes ``results.json`` (plus a Markdown table and PNG plots) into its output folder.
Publishing needs only these fields of ``results.json``::

    {
      "model": "resnet18_cifar_asap.ft_fmnist",      # the evaluated model (architecture or architecture.tag)
      "dataset": "fashion_mnist",                    # optional: evaluation dataset
      "split": "test",                               # optional: evaluation split
      "results": [                                   # one entry per number ("metrics" is accepted too)
        {"metric": "top1", "value": 91.2, "name": "clean"},
        {"metric": "top1", "value": 62.0, "name": "corruption mean", "dataset": "fashion_mnist-c"}
      ]
    }

``metric`` is the metric id (``top1``, ``top5``, ``accuracy``, ``robust_accuracy``, ``consistency``, ...),
``value`` a number, ``name`` a readable label; ``dataset``/``split`` per entry override the top-level ones.
A mapping ``{"metrics": {"top1": 91.2}}`` is accepted as a short form. Other keys are kept and ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingEvaluationError

__all__ = ['RESULTS_NAME', 'Metric', 'EvalResults', 'load_eval_results', 'find_eval_results']

RESULTS_NAME = 'results.json'


@dataclass
class Metric:
    """One evaluated number."""

    metric: str
    value: float
    name: str = ''
    dataset: str | None = None
    split: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.metric


@dataclass
class EvalResults:
    """Evaluation results and the files that go with them.

    Attributes:
        model: the evaluated model's name.
        dataset: evaluation dataset (default for metrics without one).
        split: evaluation split.
        metrics: the numbers.
        path: the results.json read.
        table: Markdown results table written by the evaluation tool, if any.
        plots: PNG plots written by the evaluation tool.
        raw: the whole parsed results.json.
    """

    model: str
    dataset: str | None
    split: str | None
    metrics: list[Metric]
    path: Path | None = None
    table: Path | None = None
    plots: list[Path] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def markdown_table(self) -> str:
        """The evaluation tool's table if it wrote one, else a table built from :attr:`metrics`."""
        if self.table is not None and self.table.is_file():
            return self.table.read_text(encoding='utf-8').strip()
        rows = ['| Evaluation | Dataset | Metric | Value |', '|---|---|---|---:|']
        for m in self.metrics:
            rows.append(f"| {m.label} | {m.dataset or self.dataset or ''} | {m.metric} | {m.value:.2f} |")
        return '\n'.join(rows)


def _number(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {where}: value must be a finite number, got {value!r}")
    return float(value)


def load_eval_results(path: str | Path) -> EvalResults:
    """Read a results.json (or the folder holding it, with its ``*.md`` table and ``*.png`` plots).

    Raises:
        MissingEvaluationError: no results.json at ``path``.
        ValueError: the file is not valid JSON or lacks the fields listed in this module's docstring.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise MissingEvaluationError(f"no evaluation results at {path}")
    try:
        raw = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    model = raw.get('model') or raw.get('model_name')
    if not isinstance(model, str) or not model:
        raise ValueError(f"{path}: 'model' must name the evaluated model, got {model!r}")
    dataset, split = raw.get('dataset'), raw.get('split')
    entries = raw.get('results', raw.get('metrics'))
    metrics = []
    if isinstance(entries, dict):
        metrics = [Metric(str(k), _number(path, f"metrics.{k}", v)) for k, v in entries.items()]
    elif isinstance(entries, list):
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get('metric', e.get('type')), str):
                raise ValueError(f"{path}: results[{i}] must be an object with a 'metric' string, got {e!r}")
            metrics.append(Metric(e.get('metric', e.get('type')), _number(path, f"results[{i}]", e.get('value')),
                                  str(e.get('name', '')), e.get('dataset'), e.get('split')))
    if not metrics:
        raise ValueError(f"{path}: no results: expected a non-empty 'results' list of "
                         "{'metric', 'value', 'name'} objects")
    tables = sorted(p for p in folder.glob('*.md') if p.is_file())
    plots = sorted(p for p in folder.rglob('*.png') if p.is_file())
    return EvalResults(model, dataset, split, metrics, path, tables[0] if tables else None, plots, raw)


def find_eval_results(*folders: str | Path | None) -> EvalResults | None:
    """The first of ``folders`` holding a results.json, read; None when none does."""
    for folder in folders:
        if folder is not None and (Path(folder) / RESULTS_NAME).is_file():
            return load_eval_results(folder)
    return None
