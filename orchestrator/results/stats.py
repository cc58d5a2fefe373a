"""Confidence intervals, in ONE place: every report and plot computes them here.

Conventions:
- A 95% CI is the Student-t interval over seeds: mean ± t(0.975, n-1) · sd / sqrt(n), with the
  sample sd (ddof=1). One run has no interval (NaN half-width).
- A paired delta (e.g. robust - natural) pairs runs by seed inside a cell, so the seed's shared
  training subset cancels out; the CI is the t-interval of the per-seed differences.

ER binning (Andreassen et al.) is workers.metrics.binned_er, reached through
re-exported by workers.trainable (the driver's one door into workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import stdtrit

CONFIDENCE = 0.95


def t_half_width(n: np.ndarray | pd.Series | int, sd: np.ndarray | pd.Series | float,
                 confidence: float = CONFIDENCE) -> np.ndarray:
    """Half-width of the t-interval for samples of size n with sample sd; NaN where n < 2."""
    n_arr = np.asarray(n, dtype=float)
    sd_arr = np.asarray(sd, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = np.where(n_arr >= 2, n_arr - 1, np.nan)
        # = scipy.stats.t.ppf(q, dof), which evaluates exactly this; importing scipy.stats costs ~1 s per
        # CLI call, scipy.special a fraction of that (tests check the two agree)
        t_crit = stdtrit(dof, 0.5 + confidence / 2)
        return np.where(n_arr >= 2, t_crit * sd_arr / np.sqrt(n_arr), np.nan)


def mean_ci(values: Sequence[float] | np.ndarray | pd.Series, confidence: float = CONFIDENCE
            ) -> tuple[int, float, float]:
    """(n, mean, CI half-width) of the non-missing values."""
    arr = np.asarray(pd.Series(values, dtype=float).dropna())
    n = int(arr.size)
    if n == 0:
        return 0, float("nan"), float("nan")
    sd = float(arr.std(ddof=1)) if n > 1 else float("nan")
    return n, float(arr.mean()), float(t_half_width(n, sd, confidence))


def summarize(frame: pd.DataFrame, by: Sequence[str], value: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per group of `by`: n, mean, sd and the CI half-width (`ci95`) of column `value` (NaNs dropped)."""
    data = frame.dropna(subset=[value])
    grouped = data.groupby(list(by), dropna=False, sort=True)[value]
    out = grouped.agg(n="count", mean="mean", sd="std").reset_index()
    out["ci95"] = t_half_width(out["n"].to_numpy(), out["sd"].to_numpy(), confidence)
    return out


def from_moments(frame: pd.DataFrame, n: str = "n", total: str = "total", total_sq: str = "total_sq",
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """mean / sd / ci95 from per-group count, sum and sum of squares (aggregated in SQL).

    Accuracies lie in [0, 1], so the one-pass variance loses nothing that matters; tiny
    negative round-off is clipped to zero.
    """
    out = frame.copy()
    count = out[n].astype(float)
    out["mean"] = out[total] / count
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (out[total_sq] - count * out["mean"] ** 2) / (count - 1)
    out["sd"] = np.sqrt(np.clip(var.where(count >= 2), 0.0, None))
    out["ci95"] = t_half_width(count.to_numpy(), out["sd"].to_numpy(), confidence)
    return out.drop(columns=[total, total_sq])


def paired_deltas(frame: pd.DataFrame, cell: Sequence[str], arm: str, treated: str, control: str, value: str,
                  pair_on: str = "seed") -> pd.DataFrame:
    """Per-pair differences treated - control of `value`, paired by `pair_on` inside each cell.

    `arm` is the column that tells the two arms apart (e.g. the source label). Pairs where
    either arm is missing are dropped; two rows of one (cell, pair, arm) are an error, never
    averaged. Returns the cell columns, `pair_on` and `delta`.
    """
    keep = frame[frame[arm].isin([treated, control])].dropna(subset=[value])
    if keep.duplicated([*cell, pair_on, arm]).any():
        # averaging them would pair a mean with a single run: callers check with
        # orchestrator.results.frames.require_one_trial_per_seed first
        raise ValueError("paired_deltas: more than one row per (cell, pair, arm)")
    wide = keep.pivot_table(index=[*cell, pair_on], columns=arm, values=value, aggfunc="first", dropna=False)
    if treated not in wide or control not in wide:
        return pd.DataFrame(columns=[*cell, pair_on, "delta"])
    delta = (wide[treated] - wide[control]).dropna()
    return delta.rename("delta").reset_index()


def summarize_paired(frame: pd.DataFrame, cell: Sequence[str], arm: str, treated: str, control: str, value: str,
                     pair_on: str = "seed", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per cell: number of pairs, mean paired delta and its CI half-width."""
    deltas = paired_deltas(frame, cell, arm, treated, control, value, pair_on)
    if deltas.empty:
        return pd.DataFrame(columns=[*cell, "n", "mean", "sd", "ci95"])
    return summarize(deltas, cell, "delta", confidence)

