"""Evaluation results for the model card, read from the evaluation tool's output folder.

The evaluation tool (:mod:`timm_asap_lab.evaluation`) writes ``results.json`` (schema
``timm-asap-evaluation/1``: ``{'schema', 'config', 'rows'}``, one row per model and measurement),
``results.md`` (Markdown tables of all evaluated models, e.g. the ASAP model beside its baseline) and PNG
plots. Publishing puts the whole table and the plots into the card, and the numbers of the published
model into the card's ``model-index``:

=====================  ==========================================  ====================
row                    model-index metric                          Hub metric type
=====================  ==========================================  ====================
``clean``              clean top-1 and top-5                       accuracy, top_5_accuracy
``corruption_summary`` mean corruption accuracy (mCA), mCE         mca, mce
``attack``             robust top-1 per attack and eps             robust_accuracy
``shift``              shift consistency                           shift_consistency
=====================  ==========================================  ====================

Which model of the rows is the published one: the name given explicitly, else ``<architecture>.<tag>``,
else the architecture, else the only model evaluated with that architecture as the name's first part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm_asap_lab.publish.errors import HubPublishError, MissingEvaluationError

__all__ = ['RESULTS_NAME', 'TABLE_NAME', 'Metric', 'EvalResults', 'load_eval_results', 'find_eval_results']

RESULTS_NAME = 'results.json'
TABLE_NAME = 'results.md'


@dataclass
class Metric:
    """One evaluated number of the published model (percent)."""

    metric: str
    value: float
    name: str
    dataset: str | None = None


@dataclass
class EvalResults:
    """An evaluation tool output folder.

    Attributes:
        path: the results.json.
        rows: all result rows.
        config: the evaluation's recorded configuration.
        models: evaluated model names, in order.
        table: the Markdown report (results.md), if written.
        plots: PNG plots in the folder.
    """

    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    models: list[str]
    table: Path | None = None
    plots: list[Path] = field(default_factory=list)

    @property
    def dataset(self) -> str | None:
        return self.config.get('dataset') or next((r.get('dataset') for r in self.rows if r.get('dataset')), None)

    def select_model(self, architecture: str, full_name: str = '', explicit: str | None = None) -> str:
        """The name under which the published model was evaluated.

        Raises:
            HubPublishError: no (or more than one) row model fits, listing the evaluated models.
        """
        if explicit:
            if explicit not in self.models:
                raise HubPublishError(f"{self.path}: no results for model {explicit!r}; evaluated: {self.models}")
            return explicit
        for name in (full_name, architecture):
            if name and name in self.models:
                return name
        fits = [m for m in self.models if m.split('.')[0] == architecture]
        if len(fits) == 1:
            return fits[0]
        raise HubPublishError(
            f"{self.path}: cannot tell which evaluated model is {full_name or architecture!r}; evaluated: "
            f"{self.models}. Name it explicitly (eval_model / --eval-model)")

    def metrics(self, model: str) -> list[Metric]:
        """The model-index numbers of ``model`` (see the module docstring)."""
        from timm_asap_lab.evaluation.report import format_eps
        out = []
        for r in self.rows:
            if r.get('model') != model:
                continue
            ds = r.get('dataset') or self.dataset
            task = r.get('task')
            if task == 'clean':
                out += [Metric('top1', r['top1'], 'Clean top-1 accuracy', ds),
                        Metric('top5', r['top5'], 'Clean top-5 accuracy', ds)]
            elif task == 'corruption_summary' and r.get('corruption') == 'mean':
                out.append(Metric('mca', r.get('mca'), 'Mean corruption accuracy (mCA)', ds))
                if r.get('mce') is not None:
                    out.append(Metric('mce', r['mce'], f"mCE (vs {r.get('mce_baseline')})", ds))
            elif task == 'attack' and r.get('component') is None:
                norm = 'Linf' if r.get('norm') == 'linf' else 'L2'
                attack = {'pgd': f"PGD-{r.get('steps')}", 'fgsm': 'FGSM', 'autoattack': 'AutoAttack (standard)'}.get(
                    r.get('attack'), str(r.get('attack')))
                out.append(Metric('robust_accuracy', r['robust_top1'],
                                  f"Robust top-1 accuracy, {attack} {norm} eps={format_eps(float(r['eps']))}", ds))
            elif task == 'shift':
                out.append(Metric('shift_consistency', r['consistency'], 'Shift consistency', ds))
        return [m for m in out if isinstance(m.value, (int, float)) and math.isfinite(m.value)]

    def image_counts(self, model: str) -> dict[str, list[int]]:
        """How many images each kind of measurement of ``model`` used, read from its rows.

        Returns:
            ``{'clean': [...], 'corruptions': [...], 'attacks': [...], 'shift': [...], 'aliasing': [...]}``
            (only the kinds measured; each list holds the distinct counts, ascending).
        """
        kinds = {'clean': 'clean', 'corruption': 'corruptions', 'attack': 'attacks', 'shift': 'shift',
                 'aliasing': 'aliasing'}
        out: dict[str, set[int]] = {}
        for r in self.rows:
            kind = kinds.get(r.get('task'))
            if r.get('model') == model and kind is not None and isinstance(r.get('count'), int):
                out.setdefault(kind, set()).add(r['count'])
        return {k: sorted(out[k]) for k in kinds.values() if k in out}

    def image_counts_text(self, model: str) -> str:
        """One sentence stating the images behind ``model``'s numbers (see :meth:`image_counts`).

        Example:
            >>> EvalResults(Path('results.json'), [{'task': 'clean', 'model': 'm', 'count': 10000,
            ...     'dataset': 'fashion_mnist:test'}], {}, ['m']).image_counts_text('m')
            'Images behind these numbers, from fashion_mnist:test: clean accuracy 10000.'
        """
        counts = self.image_counts(model)
        labels = {'clean': 'clean accuracy {}', 'corruptions': 'corruptions {} per corruption and severity',
                  'attacks': 'adversarial attacks {}', 'shift': 'shift consistency {}', 'aliasing': 'aliasing {}'}
        dataset = next((r.get('dataset') for r in self.rows if r.get('model') == model and r.get('dataset')),
                       None) or self.dataset
        parts = [labels[k].format(' or '.join(map(str, v))) for k, v in counts.items()]
        if not parts:
            return 'The results record no image counts.'
        return ('Images behind these numbers' + (f", from {dataset}" if dataset else '') + ': '
                + ', '.join(parts) + '.')

    def markdown_table(self) -> str:
        """The evaluation tool's Markdown report, headings moved one level down for the card."""
        if self.table is None or not self.table.is_file():
            from timm_asap_lab.evaluation.report import markdown_report
            text = markdown_report(self.rows, title=None)
        else:
            text = self.table.read_text(encoding='utf-8')
        lines = [('#' + line) if line.startswith('#') else line for line in text.strip().splitlines()]
        return '\n'.join(lines)


def load_eval_results(path: str | Path) -> EvalResults:
    """Read an evaluation output folder (or its results.json) with its results.md and PNG plots.

    Raises:
        MissingEvaluationError: no results.json there.
        ValueError: the file is not a timm-asap evaluation results file, or holds no rows.
    """
    from timm_asap_lab.evaluation.report import read_results
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise MissingEvaluationError(f"no evaluation results at {path}")
    rows, config = read_results(path)
    models = list(dict.fromkeys(r['model'] for r in rows if isinstance(r, dict) and r.get('model')))
    if not models:
        raise ValueError(f"{path}: holds no result rows")
    table = folder / TABLE_NAME if (folder / TABLE_NAME).is_file() else None
    plots = sorted(p for p in folder.glob('*.png') if p.is_file())
    return EvalResults(path, rows, config, models, table, plots)


def find_eval_results(*folders: str | Path | None) -> EvalResults | None:
    """The first of ``folders`` holding a results.json, read; None when none does."""
    for folder in folders:
        if folder is not None and (Path(folder) / RESULTS_NAME).is_file():
            return load_eval_results(folder)
    return None
