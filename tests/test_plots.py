"""Every plot writes a PNG that opens, with the expected title and axis labels; the paired deltas
behind accuracy-delta equal an independent pandas + scipy computation."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from cli_helpers import error_line, run_cli
from results_data import expected_label, raw_trials, t_ci

from orchestrator.results.plots import PLOTS, accuracy_delta_frame, make_plot
from orchestrator.results.query import ReadOnlyDatabase

EXPERIMENT = {"accuracy-delta": "utrera-mini", "learning-curve": "utrera-mini", "blocks": "utrera-mini",
              "asr-vs-clean": "reno-mini", "er": "utrera-mini"}
EXPECTED = {  # first axes: (title contains, x label, y label)
    "accuracy-delta": ("l2-3 − natural, 3 fine-tuned blocks", "training images (log scale)", "Δ test accuracy (pp)"),
    "learning-curve": ("cifar10: 100 images, 3 fine-tuned blocks", "epoch", "test accuracy (%)"),
    "blocks": ("cifar10: 100 images", "fine-tuned residual blocks", "test accuracy (%)"),
    "asr-vs-clean": ("one point per (method, dataset)", "clean test accuracy (%)",
                     "attack success rate, ASR (%)"),
    "er": ("Effective robustness during training", "ID test accuracy (%)", "effective robustness (pp)"),
}


def test_every_plot_writes_a_readable_png(results_sqlite: str, tmp_path: Path) -> None:
    from orchestrator.console.demo import STUDY_PLOTS

    # the study's plots need a study experiment: tests/test_study_verdicts.py draws them
    assert set(PLOTS) == set(EXPERIMENT) | set(STUDY_PLOTS)
    for name in EXPERIMENT:
        target = tmp_path / f"{name}.png"
        run_cli("plot", name, "--experiment", EXPERIMENT[name], "-o", str(target), "--db", results_sqlite)  # exit 0
        image = matplotlib.image.imread(target)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.01  # not blank
        figure = make_plot(name, EXPERIMENT[name], results_sqlite)
        ax = figure.axes[0]
        title, xlabel, ylabel = EXPECTED[name]
        assert title in ax.get_title() and ax.get_xlabel() == xlabel and ax.get_ylabel() == ylabel, name
        assert ax.get_legend() is not None and ax.get_legend().get_texts()


def test_accuracy_delta_pairs_by_seed(results_url: str) -> None:
    trials = raw_trials(results_url, "utrera-mini")
    trials = trials[(trials["status"] == "completed") & (trials["kind"] == "transfer") & (trials["blocks"] == 3)]
    trials = trials.assign(label=[expected_label(s, results_url) for s in trials["source"]])
    with ReadOnlyDatabase(results_url) as database:
        frame = accuracy_delta_frame(database, "utrera-mini", blocks=3)
    assert set(frame["source_label"]) == {"l2-3", "linf-4"}
    for row in frame.itertuples(index=False):
        size = trials["subset_size"].isna() if pd.isna(row.subset_size) else trials["subset_size"] == row.subset_size
        cell = trials[(trials["dataset"] == row.dataset) & size]
        robust = cell[cell["label"] == row.source_label].set_index("seed")["test_acc"]
        natural = cell[cell["label"] == "natural"].set_index("seed")["test_acc"]
        deltas = (robust - natural).dropna()  # aligned on seed
        n, mean, ci = t_ci(deltas)
        assert row.n == n and math.isclose(row.mean, mean, abs_tol=1e-12)
        assert (math.isnan(ci) and math.isnan(row.ci95)) or math.isclose(row.ci95, ci, rel_tol=1e-9)
    # 3 seeds per subset size, 2 on the full set
    assert frame["n"].min() < frame["n"].max()


def test_plot_errors_are_one_line(results_sqlite: str, tmp_path: Path) -> None:
    cases = [
        ["accuracy-delta", "--experiment", "reno-mini", "-o", str(tmp_path / "a.png")],  # no natural at 3 blocks
        ["er", "--experiment", "nope", "-o", str(tmp_path / "b.png")],
        ["er", "--experiment", "utrera-mini", "-o", str(tmp_path / "c.jpg")],  # png, pdf or svg
        ["er", "--experiment", "utrera-mini", "-o", str(tmp_path / "missing" / "d.png")],
        ["learning-curve", "--experiment", "utrera-mini", "--subset-size", "123", "-o", str(tmp_path / "e.png")],
        ["blocks", "--experiment", "utrera-mini", "--subset-size", "lots", "-o", str(tmp_path / "f.png")],
    ]
    for args in cases:
        error_line(run_cli("plot", *args, "--db", results_sqlite, expect=2))
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("size", ["full", "400"])
def test_learning_curve_subset_choice(results_sqlite: str, size: str) -> None:
    figure = make_plot("learning-curve", "utrera-mini", results_sqlite, subset_size=size if size == "full" else 400)
    assert figure.axes[0].get_title().startswith(f"cifar10: {size} images")
