"""Paired statistics over seeds: the mean per-seed difference of two arms with a Student-t
confidence interval, and its Markdown cells.

Two arms of a comparison ran the same seeds; the difference ``a[s] - b[s]`` of each seed that
both ran with a result is one observation. With ``n`` such complete pairs the interval is
``mean ± t(1 - alpha/2, n - 1) · sd / sqrt(n)`` (``sd`` the sample std, ddof=1); with ``n < 2``
it is unknown ("n/a"). A seed with a result in one arm only cannot be paired: it is left out
and counted as ``dropped``. Values are accuracies (or recalls) in [0, 1]; cells show them in
percentage points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

LEVEL = 0.95
NA = "n/a"
MARK = "*"  # a pivot cell whose interval excludes 0


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy: a dependency of scikit-learn; imported when needed

    return float(t.ppf(q, df))


def t_interval(diffs: list[float] | pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of ``diffs``: the mean and its two-sided ``level`` Student-t interval
    (n - 1 degrees of freedom); ``lo`` / ``hi`` NaN for fewer than two values, all NaN for none."""
    values = pd.Series(diffs, dtype=float).dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Paired:
    """The paired difference of two arms over seeds (see the module docstring)."""

    mean: float  # mean of the per-seed differences; NaN without a complete pair
    lo: float  # the interval; NaN when n < 2
    hi: float
    n: int  # complete pairs
    dropped: int  # seeds with a result in one arm only

    @property
    def known(self) -> bool:
        """Whether the interval is known (n ≥ 2)."""
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def sign(self) -> int:
        """+1 when the interval lies above 0, -1 below 0, 0 when it includes 0 or is unknown."""
        if not self.known:
            return 0
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval excludes 0; None when it is unknown."""
        return self.sign != 0 if self.known else None


EMPTY = Paired(math.nan, math.nan, math.nan, 0, 0)


def per_seed(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` of ``frame`` indexed by ``seed``, trials without a value left out; a seed run
    more than once in ``frame`` counts once, with its mean."""
    if column not in frame.columns or frame.empty:
        return pd.Series(dtype=float)
    values = pd.Series(pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float),
                       index=frame["seed"].to_numpy()).dropna()
    return values.groupby(level=0).mean() if not values.index.is_unique else values


def paired(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Paired:
    """The paired difference ``a - b`` of two per-seed series (``per_seed``)."""
    a, b = a.dropna(), b.dropna()
    common = a.index.intersection(b.index)
    dropped = len(a.index.symmetric_difference(b.index))
    mean, lo, hi = t_interval(a.loc[common] - b.loc[common], level)
    return Paired(mean, lo, hi, len(common), dropped)


def paired_frames(a: pd.DataFrame, a_col: str, b: pd.DataFrame, b_col: str,
                  level: float = LEVEL) -> Paired:
    """``a[a_col] - b[b_col]`` paired by seed (``a`` and ``b`` per-trial rows of two arms)."""
    return paired(per_seed(a, a_col), per_seed(b, b_col), level)


# ----------------------------------------------------------------------------- cells


def _pp(value: float, digits: int) -> str:
    return f"{100 * value:+.{digits}f}"


def mean_cell(p: Paired, digits: int = 2) -> str:
    """``+2.00 pp``; ``–`` without a complete pair."""
    return "–" if math.isnan(p.mean) else f"{_pp(p.mean, digits)} pp"


def ci_cell(p: Paired, digits: int = 2) -> str:
    """``[+0.52, +3.48]`` (pp); ``n/a`` when n < 2."""
    return f"[{_pp(p.lo, digits)}, {_pp(p.hi, digits)}]" if p.known else NA


def sig_cell(p: Paired) -> str:
    """``yes`` when the interval excludes 0, ``no`` when it includes it, ``n/a`` when unknown."""
    return NA if p.excludes_zero is None else "yes" if p.excludes_zero else "no"


def cells(p: Paired, digits: int = 2) -> list[str]:
    """``[mean, 95% CI, sig., n, unpaired]`` cells of one comparison (``CELL_HEADER``)."""
    return [mean_cell(p, digits), ci_cell(p, digits), sig_cell(p), str(p.n), str(p.dropped)]


CELL_HEADER = ["paired Δ", f"{LEVEL:.0%} CI (pp)", "sig.", "n", "unpaired"]
CELL_ALIGN = ["---:", "---:", "---", "---:", "---:"]


def compact_cell(p: Paired, digits: int = 1) -> str:
    """``+1.2 pp [+0.3, +2.1]*`` (``*``: the interval excludes 0), ``+1.2 pp [n/a]`` when n < 2,
    ``–`` without a pair."""
    if math.isnan(p.mean):
        return "–"
    mark = MARK if p.excludes_zero else ""
    return f"{mean_cell(p, digits)} [{ci_cell(p, digits).strip('[]')}]{mark}"


def inline(p: Paired) -> str:
    """``+2.00 pp, 95% CI [+0.52, +3.48] pp, n = 3`` (and the unpaired seeds left out, if any)."""
    if math.isnan(p.mean):
        return "no seed ran in both"
    ci = f"{ci_cell(p)} pp" if p.known else "n/a (n < 2)"
    text = f"{mean_cell(p)}, {LEVEL:.0%} CI {ci}, n = {p.n}"
    return text + (f", {p.dropped} unpaired seed{'s' if p.dropped != 1 else ''} left out"
                   if p.dropped else "")


RULE = (f"Paired by seed: each difference is one seed's value in one arm minus the same seed's "
        f"in the other, within the same values of every other searched column; paired Δ is "
        f"their mean, n the number of seeds both arms ran with a result (seeds that ran in one "
        f"arm only are left out and counted as unpaired), {LEVEL:.0%} CI the Student-t interval "
        f"mean ± t({0.5 + LEVEL / 2:.3f}, n − 1)·sd/√n (n/a when n < 2), sig. whether it "
        f"excludes 0.")
