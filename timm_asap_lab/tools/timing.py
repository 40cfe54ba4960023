"""Paired timing ratios with their spread over rounds, and whether they support a verdict on a target.

The benchmarks time what they compare interleaved: round ``i`` runs each candidate once, so the times of one
round share the machine's state, and the ratio of round ``i`` (``numerator[i] / denominator[i]``) cancels
slow drifts. What does not cancel (another job's burst during one of the two calls) spreads the rounds'
ratios. A ratio is therefore reported with that spread: the minimum, median and maximum of the per-round
ratios.

A verdict on a target (``met`` / ``NOT met``) needs the median ratio to be pinned down on one side of the
target. :meth:`PairedRatio.verdict` says ``unreliable`` instead when

1. there are fewer than :data:`MIN_ROUNDS` rounds: no interval of the rounds' ratios holds their median
   with :data:`CONFIDENCE` confidence;
2. the rounds disagree: the interval that holds the median with :data:`CONFIDENCE` confidence (the
   distribution-free order-statistic interval ``[r_(k), r_(n+1-k)]`` of the sorted ratios; ``[min, max]``
   for 5 to 7 rounds) spans more than :data:`SPREAD_LIMIT` (its high end over its low end);
3. the target lies inside that interval: the measurement cannot tell which side the ratio is on.

More rounds narrow the interval (``k`` grows with the rounds), so a quiet machine settles a verdict with
enough rounds; a busy one gets ``unreliable`` rather than a verdict made of noise.

Example:
    >>> r = paired_ratio([100, 102, 98, 101, 99], [105, 104, 103, 106, 104])
    >>> r.describe()
    '0.952x (min 0.951, max 0.981 over 5 rounds)'
    >>> r.verdict(0.9, at_least=True)
    'met'
    >>> paired_ratio([2518, 530, 2954], [500, 520, 510]).verdict(0.9)
    'unreliable: 3 rounds, at least 5 are needed for a verdict'
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ['CONFIDENCE', 'MIN_ROUNDS', 'SPREAD_LIMIT', 'PairedRatio', 'paired_ratio', 'median_interval']

#: confidence with which :meth:`PairedRatio.interval` holds the median of the per-round ratios
CONFIDENCE = 0.9
#: largest high/low of that interval that still supports a verdict (the rounds agree within 20 %)
SPREAD_LIMIT = 1.2


def _rank(n: int, confidence: float = CONFIDENCE) -> int | None:
    """The largest ``k`` with ``P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2`` (None: no such k)."""
    tail, k, cumulative = (1 - confidence) / 2, None, 0.0
    for j in range(n // 2 + 1):
        cumulative += math.comb(n, j) / 2 ** n
        if cumulative > tail:
            break
        k = j + 1
    return k


#: fewest rounds for which an interval of the rounds' ratios holds their median with CONFIDENCE
MIN_ROUNDS = next(n for n in range(1, 100) if _rank(n) is not None)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free interval ``[v_(k), v_(n+1-k)]`` of the sorted values that holds their median
    with at least ``confidence`` (order statistics); None when there are too few values for one."""
    k = _rank(len(values), confidence)
    if k is None:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[len(values) - k]


@dataclass(frozen=True)
class PairedRatio:
    """Per-round ratios of two interleaved timings (see the module docstring).

    Attributes:
        ratios: ``numerator[i] / denominator[i]`` for each round ``i``, in round order.
    """

    ratios: tuple[float, ...]

    @property
    def rounds(self) -> int:
        return len(self.ratios)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    def interval(self) -> tuple[float, float] | None:
        """The interval holding the median ratio with :data:`CONFIDENCE` (None: too few rounds)."""
        return median_interval(self.ratios)

    def unreliable_because(self, target: float | None = None) -> str | None:
        """Why the rounds do not support a verdict (on ``target``, when given), or None when they do."""
        interval = self.interval()
        if interval is None:
            return f"{self.rounds} round{'s' if self.rounds != 1 else ''}, at least {MIN_ROUNDS} are needed for a verdict"
        lo, hi = interval
        if lo <= 0 or hi / lo > SPREAD_LIMIT:
            return (f"the rounds disagree: their ratios run from {self.low:.3g}x to {self.high:.3g}x, and the "
                    f"{CONFIDENCE:.0%} interval of the median, {lo:.3g}x to {hi:.3g}x, spans more than "
                    f"{SPREAD_LIMIT:g} (high / low)")
        if target is not None and lo <= target <= hi:
            return (f"the target {target:g}x lies inside the {CONFIDENCE:.0%} interval of the median, "
                    f"{lo:.3g}x to {hi:.3g}x")
        return None

    def verdict(self, target: float, at_least: bool = True) -> str:
        """``'met'``, ``'NOT met'`` or ``'unreliable: <why>'`` for the target ``ratio >= target``
        (``at_least``) or ``ratio <= target``."""
        why = self.unreliable_because(target)
        if why is not None:
            return f"unreliable: {why}"
        ok = self.median >= target if at_least else self.median <= target
        return 'met' if ok else 'NOT met'

    def describe(self, digits: int = 3) -> str:
        """E.g. ``'0.953x (min 0.910, max 1.020 over 9 rounds)'``."""
        return (f"{self.median:.{digits}f}x (min {self.low:.{digits}f}, max {self.high:.{digits}f} over "
                f"{self.rounds} round{'s' if self.rounds != 1 else ''})")

    def short(self) -> str:
        """E.g. ``'0.95x (0.91-1.02)'`` for table cells."""
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"

    def as_dict(self) -> dict:
        """JSON-ready: ``median``, ``min``, ``max``, ``rounds`` and the median's ``interval`` (None: too few)."""
        interval = self.interval()
        return {'median': round(self.median, 4), 'min': round(self.low, 4), 'max': round(self.high, 4),
                'rounds': self.rounds, 'interval': [round(v, 4) for v in interval] if interval else None}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> PairedRatio:
    """The per-round ratios ``numerator[i] / denominator[i]`` of two timings measured in the same rounds.

    For the throughput of B relative to A, pass A's times as the numerator and B's as the denominator.

    Raises:
        ValueError: the two have different or no rounds, or a time is not positive.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired timings need the same rounds on both sides, got {len(numerator)} and "
                         f"{len(denominator)} rounds")
    if min(min(numerator), min(denominator)) <= 0:
        raise ValueError(f"timings must be positive, got {list(numerator)} and {list(denominator)}")
    return PairedRatio(tuple(a / b for a, b in zip(numerator, denominator)))
