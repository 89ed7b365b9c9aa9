"""Error bars: an estimate with its confidence interval, over images (bootstrap) or over seeds (t).

Two kinds of spread enter the study's numbers, and each gets the interval that fits it:

- **over training seeds** (an accuracy, a flipped fraction, one number per trained model): few values
  (3 on the laptop preset), so a bootstrap, which can only reshuffle those few, would be far too
  narrow. :func:`mean_std` gives mean and *sample* std (ddof 1: the seeds are a sample of the
  training randomness, and the std estimates its spread); :func:`t_ci` and :func:`welch_ci` the
  Student-t interval of a mean and of a difference of two means (Welch: unequal variances);
- **over images** (a latent distance, the queries of a flip; one value per image, tens to hundreds):
  :func:`bootstrap_ci`, the percentile bootstrap, and :func:`ratio_ci` for the ratio of two models'
  statistics, each model's images resampled independently (the models flip different images). Where
  the images come from several training seeds, pass one array per seed: the bootstrap then resamples
  seeds, then images within each seed (a two-stage bootstrap), so the spread between seeds is kept.

Every bootstrap draws from ``numpy.random.default_rng(SeedSequence([seed, stream]))``: the same
input, seed and stream give the same interval on any machine and rank; give each quantity its own
``stream`` so that one interval does not change when another quantity is added. Nothing is guessed:
an empty input gives NaNs with ``n = 0``, too few values for a spread give a NaN interval, and a NaN
in the input is an error unless ``nan="omit"`` asks to drop it (``n`` then counts what was kept).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 4000
# Bootstrap resamples drawn at once: bounds the (chunk, n) index array for large n.
_CHUNK_ELEMENTS = 4_000_000
# Statistics whose NaN-ignoring twin lets the bootstrap over several groups run vectorised.
_NAN_AWARE = {np.mean: np.nanmean, np.median: np.nanmedian}


class StatsError(ValueError):
    """Input a statistic cannot be computed from honestly (a NaN not asked to be dropped, a bad level)."""


@dataclass(frozen=True)
class Estimate:
    """A number with its uncertainty.

    value: the statistic on the data (a mean, a ratio of means, a difference of means).
    lo, hi: the confidence interval at ``level`` (NaN where it cannot be computed: n < 2).
    n: what the statistic rests on: the number of values (images or seeds); a pair (n_a, n_b) for a
        statistic of two samples (a ratio, a difference).
    std: the spread of the values where it means something (the sample std over seeds), else NaN.
    level: the interval's nominal coverage (0.95).
    method: how the interval was made: "bootstrap", "bootstrap (seeds, then images)", "t", "welch",
        "none".
    """

    value: float
    lo: float
    hi: float
    n: int | tuple[int, int]
    std: float = math.nan
    level: float = LEVEL
    method: str = "none"

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies in the closed interval [lo, hi] (False without an interval)."""
        return self.has_ci and self.lo <= x <= self.hi

    def to_json(self) -> dict:
        """Strict-JSON dict: {"value", "lo", "hi", "n" (an int, or [n_a, n_b]), "std", "level",
        "method"}; NaN and infinities become null."""
        n = list(self.n) if isinstance(self.n, tuple) else self.n
        return {"value": _json_float(self.value), "lo": _json_float(self.lo), "hi": _json_float(self.hi),
                "n": n, "std": _json_float(self.std), "level": self.level, "method": self.method}

    @classmethod
    def from_json(cls, d: dict) -> Estimate:
        n = d.get("n")
        return cls(_float(d.get("value")), _float(d.get("lo")), _float(d.get("hi")),
                   tuple(n) if isinstance(n, list) else n, _float(d.get("std")), d.get("level", LEVEL),
                   d.get("method", "none"))


def _json_float(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _float(x) -> float:
    return math.nan if x is None else float(x)


# ------------------------------------------------------------------------------------------ inputs

def _values(values, nan: str) -> np.ndarray:
    """``values`` as a 1-d float64 array, NaNs dropped (``nan="omit"``) or refused (``"raise"``)."""
    if nan not in ("raise", "omit"):
        raise StatsError(f"nan must be 'raise' or 'omit', not {nan!r}")
    x = np.asarray(values, np.float64).reshape(-1)
    bad = np.isnan(x)
    if bad.any():
        if nan == "raise":
            raise StatsError(f"{int(bad.sum())} of {len(x)} values are NaN; pass nan='omit' to leave them out")
        x = x[~bad]
    return x


def _groups(values, nan: str) -> list[np.ndarray]:
    """One array per seed: a 1-d array is one group; a list of arrays is one group each (empty groups
    dropped: a seed that flipped nothing adds no image)."""
    if isinstance(values, np.ndarray) or not isinstance(values, Sequence) or not len(values) \
            or np.isscalar(values[0]):
        return [_values(values, nan)]
    groups = [_values(g, nan) for g in values]
    return [g for g in groups if len(g)] or [np.zeros(0)]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), not {level}")


def stream_of(*parts: str) -> int:
    """A stable stream number for a named quantity ("table2", "regular", "y10_y1"): CRC-32 of the
    parts, the same in every process (Python's ``hash`` of a string is not)."""
    return zlib.crc32("/".join(parts).encode())


def rng_for(seed: int, stream: int = 0) -> np.random.Generator:
    """The generator of one quantity's bootstrap: from (seed, stream), never from the rank."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


# --------------------------------------------------------------------------------------- bootstrap

def _replicates(groups: list[np.ndarray], statistic: Callable, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``statistic`` over the pooled values of ``groups``.

    One group: resample its values with replacement (vectorised: ``statistic`` gets ``axis=1``). Several:
    resample the groups, then the values inside each drawn group, and apply ``statistic`` to the pool.
    """
    if len(groups) == 1:
        x = groups[0]
        n = len(x)
        out = np.empty(n_boot)
        chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            out[start:start + m] = statistic(x[rng.integers(0, n, size=(m, n))], axis=1)
        return out
    nan_aware = _NAN_AWARE.get(statistic)
    if nan_aware is not None:
        return _two_stage(groups, nan_aware, n_boot, rng)
    out = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), size=len(groups))
        pool = np.concatenate([groups[g][rng.integers(0, len(groups[g]), size=len(groups[g]))] for g in picked])
        out[b] = statistic(pool)
    return out


def _two_stage(groups: list[np.ndarray], nan_statistic: Callable, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`_replicates` over several groups for a statistic with a NaN-ignoring twin, all replicates
    at once: each replicate's pool is a row, padded with NaN to the longest possible pool."""
    sizes = np.array([len(g) for g in groups])
    n_groups = len(groups)
    picked = rng.integers(0, n_groups, size=(n_boot, n_groups))
    pool = np.full((n_boot, n_groups * int(sizes.max())), np.nan)
    filled = np.zeros(n_boot, np.int64)
    for slot in range(n_groups):
        for g in range(n_groups):
            rows = np.flatnonzero(picked[:, slot] == g)
            n = int(sizes[g])
            if len(rows) == 0 or n == 0:
                continue
            cols = filled[rows, None] + np.arange(n)[None]
            pool[rows[:, None], cols] = groups[g][rng.integers(0, n, size=(len(rows), n))]
            filled[rows] += n
    return nan_statistic(pool, axis=1)


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    if not np.all(np.isfinite(reps)):
        return math.nan, math.nan  # a resample with an undefined statistic: no honest interval
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values, statistic: Callable = np.mean, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0, stream: int = 0, nan: str = "raise") -> Estimate:
    """``statistic`` of ``values`` with its percentile-bootstrap interval over the values (images).

    values: a 1-d array (one value per image), or a list of 1-d arrays, one per training seed (the
        statistic is of the pooled values; the bootstrap resamples seeds, then images).
    statistic: a numpy reduction taking ``axis`` (np.mean, np.median).
    Returns an :class:`Estimate`: value = statistic of all values; n = number of values; std = NaN.
    n = 0: value, lo and hi NaN; n = 1: a NaN interval (one value shows no spread).
    """
    _check_level(level)
    groups = _groups(values, nan)
    pool = np.concatenate(groups)
    n = len(pool)
    method = "bootstrap" if len(groups) == 1 else "bootstrap (seeds, then images)"
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level=level, method=method)
    value = float(statistic(pool))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n, level=level, method=method)
    lo, hi = _percentiles(_replicates(groups, statistic, n_boot, rng_for(seed, stream)), level)
    return Estimate(value, lo, hi, n, level=level, method=method)


def ratio_ci(a, b, statistic: Callable = np.mean, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0,
             stream: int = 0, nan: str = "raise") -> Estimate:
    """statistic(b) / statistic(a) with its percentile-bootstrap interval, ``a`` and ``b`` resampled
    independently (two models' flipped images are different image sets).

    a, b: as ``values`` of :func:`bootstrap_ci` (1-d, or one array per seed). With a = regular and
    b = mmd this is Table 2's "mmd / regular" ratio. Returns an :class:`Estimate` with n = (n_a, n_b);
    NaN value when either side is empty or statistic(a) is 0; NaN interval when either side has fewer
    than two values or a resample of ``a`` has statistic 0 (the ratio is then unbounded).
    """
    _check_level(level)
    ga, gb = _groups(a, nan), _groups(b, nan)
    pa, pb = np.concatenate(ga), np.concatenate(gb)
    n = (len(pa), len(pb))
    method = "bootstrap" if len(ga) == len(gb) == 1 else "bootstrap (seeds, then images)"
    if min(n) == 0:
        return Estimate(math.nan, math.nan, math.nan, n, level=level, method=method)
    top, bottom = float(statistic(pb)), float(statistic(pa))
    value = top / bottom if bottom else math.nan
    if min(n) < 2:
        return Estimate(value, math.nan, math.nan, n, level=level, method=method)
    # Two child streams of this quantity's stream: a's resamples do not depend on b's size.
    ra = _replicates(ga, statistic, n_boot, np.random.default_rng(np.random.SeedSequence([seed, stream, 0])))
    rb = _replicates(gb, statistic, n_boot, np.random.default_rng(np.random.SeedSequence([seed, stream, 1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = rb / ra
    lo, hi = _percentiles(reps, level)
    return Estimate(value, lo, hi, n, level=level, method=method)


# ------------------------------------------------------------------------------------------- seeds

def mean_std(values, nan: str = "raise") -> Estimate:
    """Mean and sample standard deviation (ddof 1) of per-seed values, without an interval.

    The std is the sample std, an estimate of the seed-to-seed spread (the population std, ddof 0,
    would understate it by sqrt((n-1)/n): 18 % at 3 seeds). n = 0: NaNs; n = 1: std NaN (one seed
    shows no spread). Use :func:`t_ci` for the interval of the mean.
    """
    x = _values(values, nan)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, method="none")
    std = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return Estimate(float(x.mean()), math.nan, math.nan, len(x), std=std, method="none")


def _t_quantile(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def t_ci(values, level: float = LEVEL, nan: str = "raise") -> Estimate:
    """Mean of per-seed values with the Student-t interval mean ± t_(n-1) s / sqrt(n) (s: sample std).

    Assumes the seeds' values are roughly normal; with 3 seeds t_2 = 4.30 makes the interval wide,
    which is what three seeds can say. n < 2: NaN interval (std NaN too).
    """
    _check_level(level)
    est = mean_std(values, nan)
    if est.n < 2:
        return Estimate(est.value, math.nan, math.nan, est.n, est.std, level, "t")
    half = _t_quantile(level, est.n - 1) * est.std / math.sqrt(est.n)
    return Estimate(est.value, est.value - half, est.value + half, est.n, est.std, level, "t")


def welch_ci(a, b, level: float = LEVEL, nan: str = "raise") -> Estimate:
    """mean(b) - mean(a) over independent per-seed values, with Welch's t interval (unequal variances,
    Welch-Satterthwaite degrees of freedom). n = (n_a, n_b); NaN interval when either has fewer than
    two values; std NaN (a difference has no single spread). Both variances 0: a zero-width interval."""
    _check_level(level)
    ea, eb = mean_std(a, nan), mean_std(b, nan)
    n = (ea.n, eb.n)
    value = eb.value - ea.value if min(n) else math.nan
    if min(n) < 2:
        return Estimate(value, math.nan, math.nan, n, level=level, method="welch")
    va, vb = ea.std ** 2 / ea.n, eb.std ** 2 / eb.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(value, value, value, n, level=level, method="welch")
    df = (va + vb) ** 2 / (va ** 2 / (ea.n - 1) + vb ** 2 / (eb.n - 1))
    half = _t_quantile(level, df) * se
    return Estimate(value, value - half, value + half, n, level=level, method="welch")
