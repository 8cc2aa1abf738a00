"""The statistics every comparison of the report rests on (pure: numbers in, numbers and text out).

Setups of one seed start from the same unlearned model and are scored on the same test images, so the
report compares them *paired*: per seed the difference of two setups, across seeds the mean difference
with its interval. What each function computes (docs/statistics.md has a worked example):

- :func:`paired` -- the mean of the per-seed differences ``a - b`` and its Student t interval, the same
  interval as ``scipy.stats.ttest_rel(a, b).confidence_interval()`` (a one-sample t on the differences);
  with fewer than 5 seeds that interval is wide (t = 12.71 at n = 2, 4.30 at n = 3, 2.78 at n = 5).
- :func:`interval` -- the interval of a mean that never leaves its range (accuracy in [0, 1], an AUC or a
  fraction in [0, 1], a difference of two of them in [-1, 1]): the t interval when it stays inside; when it
  would leave the range, a bootstrap interval (``scipy.stats.bootstrap``, percentile, fixed seed) from 5
  seeds on, and below 5 seeds the t interval cut at the range's edges (the true mean lies in the range, so
  the cut interval covers it as often as the whole one).
- :func:`mcnemar` -- the exact McNemar test of two models on the same test images: of the images exactly one
  of them classifies correctly (``b``: only the first, ``c``: only the second), under "equal accuracy" each
  is the first's with probability 1/2, so the p-value is ``scipy.stats.binomtest(b, b + c, 0.5)``'s.
- :func:`mde` -- the minimum detectable difference of a paired design with n seeds at 80% power and a
  two-sided alpha of 0.05: ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``, sd the standard
  deviation of the per-seed differences.
- :func:`collapsed` -- seeds whose accuracy is near chance: a mixture of collapsed and intact seeds is
  bimodal, and is shown as its per-seed values and a count, never as a mean and interval.
- n = 1 has no interval: :func:`summary` says "n = 1: no uncertainty".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: the confidence of every interval the report prints
CONFIDENCE = 0.95
#: the power and two-sided alpha of the minimum detectable difference
POWER, ALPHA = 0.8, 0.05
#: below this many seeds a t interval is wide, and a bounded interval is cut at the range instead of bootstrapped
FEW = 5
#: the seed of every bootstrap (the report is deterministic)
BOOTSTRAP_SEED = 0
#: resamples of a bootstrap
RESAMPLES = 9999
#: the range of an accuracy, AUC or fraction, and of a difference of two of them
UNIT, DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)
#: the range of a time or another non-negative figure
POSITIVE = (0.0, math.inf)
#: a model is collapsed when its accuracy is below chance (1 / classes) plus this margin
COLLAPSE_MARGIN = 0.1


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator); None below 2 values."""
    if len(values) < 2:
        return None
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Student t interval of the mean: mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n); None below 2 values."""
    s = sd(values)
    if s is None:
        return None
    half = t_quantile((1 + confidence) / 2, len(values) - 1) * s / math.sqrt(len(values))
    m = _mean(values)
    return m - half, m + half


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean (scipy.stats.bootstrap, seeded with BOOTSTRAP_SEED); it lies
    within [min, max] of the values, so within any range that holds them. None below 2 values."""
    if len(values) < 2:
        return None
    if max(values) == min(values):
        return float(values[0]), float(values[0])
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        confidence_level=confidence,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Interval:
    """An interval of a mean and how it was made: ``t``, ``t, cut at the range`` or ``bootstrap``."""

    low: float
    high: float
    kind: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def interval(values: Sequence[float], bounds: tuple[float, float] | None = UNIT) -> Interval | None:
    """The 95% interval of the mean of ``values``, never outside ``bounds`` (None: unbounded, always t).

    The t interval when it stays inside the range; otherwise a bootstrap interval from FEW seeds on, and below
    that the t interval cut at the range's edges. None for fewer than 2 values (n = 1: no uncertainty)."""
    ci = t_interval(values)
    if ci is None:
        return None
    if bounds is None or (bounds[0] <= ci[0] and ci[1] <= bounds[1]):
        return Interval(ci[0], ci[1], "t")
    if len(values) >= FEW:
        low, high = bootstrap_interval(values)
        return Interval(max(low, bounds[0]), min(high, bounds[1]), "bootstrap")
    return Interval(max(ci[0], bounds[0]), min(ci[1], bounds[1]), "t, cut at the range")


def mde(n: int, sd_diff: float | None, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The minimum detectable difference of a paired design: (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n),
    ``sd_diff`` the standard deviation of the per-seed differences; None below 2 seeds."""
    if n < 2 or sd_diff is None:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


@dataclass(frozen=True)
class Paired:
    """Paired differences ``a - b`` over seeds: their mean, interval (t, see :func:`interval`), p-value of the
    paired t test and minimum detectable difference."""

    differences: tuple[float, ...]
    interval: Interval | None
    p: float | None
    mde: float | None

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return _mean(self.differences) if self.differences else None

    @property
    def within_noise(self) -> bool | None:
        """Whether the paired interval contains 0 (None without an interval: n < 2)."""
        return None if self.interval is None else self.interval.contains(0.0)


def paired(a: Sequence[float], b: Sequence[float], bounds: tuple[float, float] | None = DIFFERENCE) -> Paired:
    """The paired comparison of ``a`` and ``b`` (one value per seed, same order): see :class:`Paired`. Its t
    interval and p-value equal ``scipy.stats.ttest_rel(a, b)``'s."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one value per seed on both sides, not {len(a)} and {len(b)}.")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    return differences(diffs, bounds)


def differences(diffs: Sequence[float], bounds: tuple[float, float] | None = DIFFERENCE) -> Paired:
    """:func:`paired` from the per-seed differences themselves."""
    diffs = tuple(float(d) for d in diffs)
    s = sd(diffs)
    p = None
    if s is not None:
        if s == 0:
            p = 1.0 if _mean(diffs) == 0 else 0.0
        else:
            from scipy.stats import t

            stat = _mean(diffs) / (s / math.sqrt(len(diffs)))
            p = float(2 * t.sf(abs(stat), len(diffs) - 1))
    return Paired(diffs, interval(diffs, bounds), p, mde(len(diffs), s))


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar: ``b`` images only the first model gets right, ``c`` only the second, the two-sided p."""

    b: int
    c: int
    p: float


def mcnemar_exact(b: int, c: int) -> McNemar:
    """The exact McNemar test on discordant counts: the p-value of scipy.stats.binomtest(b, b + c, 0.5)
    (1 when no image is discordant)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, not {b} and {c}.")
    if b + c == 0:
        return McNemar(0, 0, 1.0)
    from scipy.stats import binomtest

    return McNemar(int(b), int(c), float(binomtest(int(b), int(b) + int(c), 0.5).pvalue))


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """Exact McNemar of two models' per-image correctness on the same test images, in the same order."""
    if len(first) != len(second):
        raise ValueError(f"per-image results of different test sets: {len(first)} and {len(second)} images.")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    return mcnemar_exact(b, c)


def collapse_threshold(classes: int | None) -> float | None:
    """The accuracy below which a model counts as collapsed: chance (1 / classes) plus COLLAPSE_MARGIN."""
    return None if not classes or classes < 2 else 1.0 / classes + COLLAPSE_MARGIN


def collapsed(values: Sequence[float], threshold: float | None) -> int:
    """How many of ``values`` (accuracies) are below the collapse threshold (0 without a threshold)."""
    return 0 if threshold is None else sum(1 for v in values if v < threshold)


def bimodal(values: Sequence[float], threshold: float | None) -> bool:
    """Whether some seeds collapsed and others did not: a mixture, shown per seed and never averaged."""
    k = collapsed(values, threshold)
    return 0 < k < len(values)


@dataclass(frozen=True)
class Summary:
    """One printed figure over seeds: how it reads, and what it rests on."""

    values: tuple[float, ...]
    mean: float | None
    interval: Interval | None
    collapsed: int = 0
    mixed: bool = False  # collapsed and intact seeds: shown per seed
    notes: tuple[str, ...] = field(default=())

    def text(self, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
        """``88.48 [86.10, 90.86]``; ``88.48 (n = 1: no uncertainty)``; ``per seed 10.1, 95.2 (1 of 2
        collapsed)``; ``—`` without values."""
        if not self.values:
            return "—"
        fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
        if self.mixed:
            seeds = ", ".join(fmt.format(scale * v) for v in self.values)
            return f"per seed {seeds} ({self.collapsed} of {len(self.values)} collapsed)"
        text = fmt.format(scale * self.mean)
        if self.interval is None:
            return text + " (n = 1: no uncertainty)"
        return text + f" [{fmt.format(scale * self.interval.low)}, {fmt.format(scale * self.interval.high)}]"


def summary(
    values: Sequence[float], bounds: tuple[float, float] | None = UNIT, threshold: float | None = None
) -> Summary:
    """The figure ``values`` (one per seed) as the report prints it: mean and interval (:func:`interval`), or
    per-seed values and a collapse count when the seeds mix collapsed and intact models (``threshold``)."""
    values = tuple(float(v) for v in values)
    if not values:
        return Summary((), None, None)
    k = collapsed(values, threshold)
    mixed = 0 < k < len(values)
    return Summary(values, _mean(values), None if mixed else interval(values, bounds), k, mixed)
