"""Corruption summaries: mean corruption accuracy (mCA), corruption error (CE), mCE and relative mCE.

Hendrycks & Dietterich (ICLR 2019): for a model f and corruption c,
``CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(baseline)`` over severities s (top-1 errors), and
``mCE`` is the mean of ``CE_c`` over the 15 benchmark corruptions (the four extra ones get a CE but
are not part of the mean). Relative CE uses the error increase over clean:
``sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(base) - E_clean(base))``. On ImageNet-C the
standard baseline is AlexNet, whose published per-corruption errors are in :data:`ALEXNET_ERR`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from timm_asap_lab.evaluation.corruptions import CORRUPTIONS, SEVERITIES

__all__ = ['ALEXNET_ERR', 'corruption_summary', 'standard_error']

#: AlexNet's ImageNet-C top-1 error per corruption, averaged over the five severities (fractions),
#: as published with the benchmark; the last four are the extra corruptions.
ALEXNET_ERR: dict[str, float] = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
    'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948, 'zoom_blur': 0.798360,
    'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324, 'brightness': 0.564592,
    'contrast': 0.853204, 'elastic_transform': 0.646056, 'pixelate': 0.717840, 'jpeg_compression': 0.606500,
    'speckle_noise': 0.845388, 'gaussian_blur': 0.787108, 'spatter': 0.717512, 'saturate': 0.658248,
}


def standard_error(percent: float, n: int | None) -> float | None:
    """Binomial standard error (in %) of a rate measured on ``n`` images (for a mean over corruptions, which
    are correlated per image, an upper bound); None without a count."""
    if not n:
        return None
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def _by_model(rows: Sequence[dict]) -> dict[str, dict[tuple[str, int], float]]:
    out: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for r in rows:
        if r.get('task') == 'corruption':
            out[r['model']][(r['corruption'], int(r['severity']))] = float(r['top1'])
    return out


def _clean(rows: Sequence[dict]) -> dict[str, float]:
    return {r['model']: float(r['top1']) for r in rows if r.get('task') == 'clean'}


def corruption_summary(rows: Sequence[dict], baseline: str | None = None, baseline_rows: Sequence[dict] | None = None,
                       alexnet: bool = False) -> list[dict]:
    """Per-corruption and mean summaries of ``task='corruption'`` rows.

    Args:
        rows: result rows of this run (``corruption`` rows, and ``clean`` rows for relative CE).
        baseline: the model name whose errors normalise CE (from ``rows`` or ``baseline_rows``); None: no
            baseline-normalised CE.
        baseline_rows: rows read from an earlier results file holding ``baseline``'s results.
        alexnet: also normalise by AlexNet's published ImageNet-C errors (only meaningful for ImageNet-C;
            needs all five severities).

    Returns:
        Rows with ``task='corruption_summary'``: one per (model, corruption) with ``top1`` (mean over
        severities), ``error``, ``ce``, ``relative_ce``, ``ce_alexnet``; and one per model with
        ``corruption='mean'``, ``mca`` (mean accuracy over the benchmark corruptions evaluated),
        ``mce``, ``relative_mce``, ``mce_alexnet``, ``n_corruptions``, ``mce_baseline``.

    Raises:
        ValueError: the baseline has no results for a corruption/severity a model has, or ``alexnet``
            with fewer than five severities.
    """
    acc = _by_model(rows)
    clean = _clean(rows)
    base_acc = base_clean = None
    if baseline is not None:
        pool = list(baseline_rows or []) + list(rows)
        base_acc = _by_model(pool).get(baseline)
        if not base_acc:
            raise ValueError(f"mCE baseline {baseline!r} has no corruption results "
                             f"(models with results: {sorted(_by_model(pool))})")
        base_clean = _clean(pool).get(baseline)
    out = []
    for model, table in acc.items():
        per_c: dict[str, list[int]] = defaultdict(list)
        for (c, s) in table:
            per_c[c].append(s)
        ces, rces, aces, means = [], [], [], []
        for c in sorted(per_c, key=lambda n: (n not in CORRUPTIONS, n)):
            sevs = sorted(per_c[c])
            err = [100.0 - table[(c, s)] for s in sevs]
            row = {'task': 'corruption_summary', 'model': model, 'corruption': c, 'severities': len(sevs),
                   'top1': float(np.mean([table[(c, s)] for s in sevs])), 'error': float(np.mean(err)),
                   'ce': None, 'relative_ce': None, 'ce_alexnet': None}
            if base_acc is not None:
                missing = [s for s in sevs if (c, s) not in base_acc]
                if missing:
                    raise ValueError(f"mCE baseline {baseline!r} has no result for {c} severities {missing}")
                base_err = [100.0 - base_acc[(c, s)] for s in sevs]
                if sum(base_err) > 0:
                    row['ce'] = sum(err) / sum(base_err)
                if model in clean and base_clean is not None:
                    denom = sum(e - (100.0 - base_clean) for e in base_err)
                    if denom > 0:
                        row['relative_ce'] = sum(e - (100.0 - clean[model]) for e in err) / denom
            if alexnet:
                if tuple(sevs) != SEVERITIES:
                    raise ValueError(f"AlexNet-normalised CE needs all five severities, got {sevs} for {c}")
                row['ce_alexnet'] = (np.mean(err) / 100.0) / ALEXNET_ERR[c]
            out.append(row)
            if c in CORRUPTIONS:
                means.append(row['top1'])
                if row['ce'] is not None:
                    ces.append(row['ce'])
                if row['relative_ce'] is not None:
                    rces.append(row['relative_ce'])
                if row['ce_alexnet'] is not None:
                    aces.append(row['ce_alexnet'])
        n = len(means)
        out.append({'task': 'corruption_summary', 'model': model, 'corruption': 'mean', 'n_corruptions': n,
                    'mca': float(np.mean(means)) if means else None,
                    'mce': 100.0 * float(np.mean(ces)) if ces and len(ces) == n else None,
                    'relative_mce': 100.0 * float(np.mean(rces)) if rces and len(rces) == n else None,
                    'mce_alexnet': 100.0 * float(np.mean(aces)) if aces and len(aces) == n else None,
                    'mce_baseline': baseline})
    return out
