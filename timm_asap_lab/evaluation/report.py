"""Writing and reading results: ``results.json``, a Markdown report (model-card ready) and PNG plots."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from timm_asap._files import atomic_path, atomic_write_text
from timm_asap_lab.evaluation.corruptions import ALL_CORRUPTIONS, CORRUPTIONS

__all__ = [
    'RESULTS_SCHEMA', 'write_results', 'read_results', 'format_eps', 'markdown_report', 'parse_markdown_tables',
    'plot_corruptions', 'plot_attacks', 'plot_shift', 'plot_aliasing',
]

RESULTS_SCHEMA = 'timm-asap-evaluation/1'


def _clean_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, 'item') and not isinstance(v, (str, bytes)):
        return _clean_value(v.item())
    if isinstance(v, (list, tuple)):
        return [_clean_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean_value(x) for k, x in v.items()}
    return v


def write_results(path: str | os.PathLike, rows: Sequence[dict], config: dict | None = None) -> Path:
    """Write ``{'schema', 'config', 'rows'}`` as JSON, atomically (non-finite numbers become null)."""
    payload = {'schema': RESULTS_SCHEMA, 'config': _clean_value(config or {}), 'rows': [_clean_value(dict(r)) for r in rows]}
    return atomic_write_text(path, json.dumps(payload, indent=1, allow_nan=False) + '\n')


def read_results(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Read a results file written by :func:`write_results`.

    Returns:
        ``(rows, config)``.

    Raises:
        ValueError: not JSON, or not a timm-asap evaluation results file.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file: {e}") from None
    if not isinstance(payload, dict) or payload.get('schema') != RESULTS_SCHEMA or not isinstance(payload.get('rows'), list):
        raise ValueError(f"{path}: not a timm-asap evaluation results file (schema {RESULTS_SCHEMA!r})")
    return payload['rows'], payload.get('config') or {}


def format_eps(eps: float) -> str:
    """``8/255`` for multiples of 1/255, else up to 4 significant digits."""
    if eps == 0:
        return '0'
    k = eps * 255
    if eps < 1 and abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f'{int(round(k))}/255'
    return f'{eps:.4g}'


def _num(v, digits: int = 2) -> str:
    return '' if v is None else f'{v:.{digits}f}'


def _attack_label(r: dict) -> str:
    norm = 'L∞' if r['norm'] == 'linf' else 'L2'
    name = {'fgsm': 'FGSM', 'pgd': f"PGD-{r.get('steps')}", 'autoattack': 'AutoAttack (standard)'}[r['attack']]
    return f"{name} {norm} ε={format_eps(float(r['eps']))}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + [':---:'] * (len(header) - 1)) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in body]
    return '\n'.join(lines)


def markdown_report(rows: Sequence[dict], title: str | None = 'Robustness evaluation') -> str:
    """A Markdown report: a summary table (one row per model) and accuracy per corruption.

    Numbers are percentages with two decimals. The summary holds clean top-1/top-5, mean corruption
    accuracy (mCA), mCE (vs. the run's baseline and, on ImageNet-C, AlexNet), robust accuracy per
    attack and eps (FGSM/PGD/AutoAttack, all components combined) and shift consistency.
    """
    models = list(dict.fromkeys(r['model'] for r in rows if 'model' in r))
    clean = {r['model']: r for r in rows if r.get('task') == 'clean'}
    mean = {r['model']: r for r in rows if r.get('task') == 'corruption_summary' and r.get('corruption') == 'mean'}
    shift = {r['model']: r for r in rows if r.get('task') == 'shift'}
    attacks: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get('task') == 'attack' and r.get('component') is None:
            attacks[_attack_label(r)][r['model']] = r['robust_top1']
    header = ['Model']
    columns: list[tuple[str, Any]] = []
    if clean:
        columns += [('Clean top-1', lambda m: _num(clean.get(m, {}).get('top1'))),
                    ('Clean top-5', lambda m: _num(clean.get(m, {}).get('top5')))]
    if mean:
        columns.append(('mCA', lambda m: _num(mean.get(m, {}).get('mca'))))
        baseline = next((r.get('mce_baseline') for r in mean.values() if r.get('mce_baseline')), None)
        if any(r.get('mce') is not None for r in mean.values()):
            columns.append((f'mCE (vs {baseline})', lambda m: _num(mean.get(m, {}).get('mce'))))
        if any(r.get('relative_mce') is not None for r in mean.values()):
            columns.append((f'rel. mCE (vs {baseline})', lambda m: _num(mean.get(m, {}).get('relative_mce'))))
        if any(r.get('mce_alexnet') is not None for r in mean.values()):
            columns.append(('mCE (vs AlexNet)', lambda m: _num(mean.get(m, {}).get('mce_alexnet'))))
    for label in attacks:
        columns.append((label, lambda m, label=label: _num(attacks[label].get(m))))
    if shift:
        columns.append(('Shift consistency', lambda m: _num(shift.get(m, {}).get('consistency'))))
    header += [c[0] for c in columns]
    parts = [f'## {title}'] if title else []
    parts.append(_table(header, [[m] + [fn(m) for _, fn in columns] for m in models]))
    per_c: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get('task') == 'corruption_summary' and r.get('corruption') != 'mean':
            per_c[r['corruption']][r['model']] = r['top1']
    if per_c:
        order = [c for c in ALL_CORRUPTIONS if c in per_c]
        cmodels = [m for m in models if any(m in v for v in per_c.values())]
        parts.append('Top-1 accuracy (%) per corruption, mean over the evaluated severities'
                     + (' (extra corruptions marked *)' if any(c not in CORRUPTIONS for c in order) else '') + ':')
        parts.append(_table(['Corruption'] + cmodels,
                            [[c + ('*' if c not in CORRUPTIONS else '')] + [_num(per_c[c].get(m)) for m in cmodels]
                             for c in order]))
    info = next((r for r in rows if 'count' in r and r.get('task') == 'clean'), None)
    if info is not None:
        skipped = info.get('unreadable') or 0
        aa = next((r.get('library') for r in rows if r.get('attack') == 'autoattack'), None)
        parts.append(f"Data: {info.get('dataset', '?')}, {info['count']} images"
                     + (f" ({skipped} unreadable image{'s' if skipped != 1 else ''} skipped)" if skipped else '')
                     + f", seed {info.get('seed', '?')}; precision {info.get('precision', 'float32')} (attacks float32); "
                     f"timm-asap {info.get('version_timm_asap', '?')}, timm {info.get('version_timm', '?')}, "
                     f"torch {info.get('version_torch', '?')}, ART {info.get('version_art', '?')}"
                     + (f", {aa}" if aa else '') + '.')
    return '\n\n'.join(parts) + '\n'


def parse_markdown_tables(text: str) -> list[list[dict[str, Any]]]:
    """Parse the pipe tables of a Markdown text into lists of row dicts (numbers as floats, '' as None)."""
    tables: list[list[dict[str, Any]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith('|') and i + 1 < len(lines) and set(lines[i + 1].replace('|', '').strip()) <= set('-: '):
            header = [c.strip() for c in lines[i].strip().strip('|').split('|')]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith('|'):
                cells = [c.strip() for c in lines[i].strip().strip('|').split('|')]
                row = {}
                for key, cell in zip(header, cells):
                    if cell == '':
                        row[key] = None
                        continue
                    try:
                        row[key] = float(cell)
                    except ValueError:
                        row[key] = cell
                rows.append(row)
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


# ----------------------------------------------------------------------------------------------
# plots (matplotlib's Agg canvas, no global backend change)

def _figure(ncols: int, nrows: int, size=(3.2, 2.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    return path


def plot_corruptions(rows: Sequence[dict], path) -> Path | None:
    """Accuracy against severity (0 = clean), one panel per corruption, one line per model."""
    data: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    clean = {r['model']: r['top1'] for r in rows if r.get('task') == 'clean'}
    for r in rows:
        if r.get('task') == 'corruption':
            data[r['corruption']][r['model']][int(r['severity'])] = r['top1']
    if not data:
        return None
    names = [c for c in ALL_CORRUPTIONS if c in data]
    ncols = min(5, len(names))
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = _figure(ncols, nrows)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, names):
        for model, table in data[c].items():
            xs = sorted(table)
            ys = [table[s] for s in xs]
            if model in clean:
                xs, ys = [0] + xs, [clean[model]] + ys
            ax.plot(xs, ys, marker='o', ms=3, label=model)
        ax.set_title(c.replace('_', ' '), fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_xlabel('severity (0 = clean)', fontsize=8)
        ax.set_ylabel('top-1 (%)', fontsize=8)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def plot_attacks(rows: Sequence[dict], path) -> Path | None:
    """Robust accuracy against eps, one panel per (attack, norm), one line per model."""
    data: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get('task') == 'attack' and r.get('component') is None:
            key = _attack_label(r).rsplit(' ε=', 1)[0]
            data[key][r['model']][float(r['eps'])] = r['robust_top1']
    if not data:
        return None
    fig, axes = _figure(len(data), 1, size=(3.6, 2.8))
    for ax, (key, per_model) in zip(axes.flat, data.items()):
        for model, table in per_model.items():
            xs = sorted(table)
            ax.plot(xs, [table[e] for e in xs], marker='o', ms=3, label=model)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel('ε', fontsize=8)
        ax.set_ylabel('robust top-1 (%)', fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def plot_shift(rows: Sequence[dict], path) -> Path | None:
    """Agreement with the unshifted prediction against the diagonal shift, one line per model
    (the legend gives each model's random-pair consistency)."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    consistency = {r['model']: r['consistency'] for r in rows if r.get('task') == 'shift'}
    for r in rows:
        if r.get('task') == 'shift_curve':
            curves[r['model']][int(r['shift'])] = r['agreement']
    if not curves and not consistency:
        return None
    fig, axes = _figure(1, 1, size=(4.4, 3.2))
    ax = axes[0, 0]
    if curves:
        for model, table in curves.items():
            xs = sorted(table)
            label = f"{model} (consistency {consistency[model]:.1f}%)" if model in consistency else model
            ax.plot(xs, [table[d] for d in xs], marker='o', ms=3, label=label)
        ax.set_xlabel('diagonal shift (pixels)', fontsize=8)
        ax.set_ylabel('top-1 agreement with unshifted (%)', fontsize=8)
        ax.legend(fontsize=7)
    else:
        models = list(consistency)
        ax.bar(models, [consistency[m] for m in models])
        ax.set_ylabel('shift consistency (%)', fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title('Shift consistency', fontsize=9)
    return _save(fig, path)


def plot_aliasing(rows: Sequence[dict], path) -> Path | None:
    """Per downsampling layer: input energy above the new Nyquist and aliased output energy, per model."""
    per_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get('task') == 'aliasing':
            per_model[r['model']].append(r)
    if not per_model:
        return None
    # each model's layers in a block of their own, labelled by name: models need not have the same number
    # of downsampling layers (a shared pooling stands in for two strided ops), so bars are not paired by index
    positions, labels, start = {}, [], 0
    for model, layers in per_model.items():
        layers.sort(key=lambda r: r['index'])
        positions[model] = list(range(start, start + len(layers)))
        labels += [r['layer'] for r in layers]
        start += len(layers) + 1
    fig, axes = _figure(1, 2, size=(max(6.5, 0.35 * start), 3.2))
    for ax, key, title in ((axes[0, 0], 'input_high_energy', 'input energy above the new Nyquist'),
                           (axes[1, 0], 'output_alias_energy', 'aliased share of the output energy')):
        for model, layers in per_model.items():
            ax.bar(positions[model], [r[key] for r in layers], width=0.8, label=model)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel('fraction', fontsize=8)
        ax.grid(alpha=0.3, axis='y')
    axes[1, 0].set_xticks([x for model in per_model for x in positions[model]], labels, rotation=60, ha='right',
                          fontsize=6)
    axes[0, 0].set_xticks([])
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)
