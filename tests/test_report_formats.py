"""Report formats (table, markdown, latex, csv, json), --where on key columns with bound parameters, several
experiments side by side, n per cell; plots as PNG, PDF and SVG with --dpi, one style per series, clipped bands."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from cli_helpers import error_line, run_cli
from results_data import db_fingerprint, raw_trials
from sqlalchemy import create_engine, text

from db.session import normalise_url
from orchestrator.results.plots import PLOTS, make_plot
from orchestrator.results.reports import REPORTS, Report, render

CASES = {"utrera-table7": "utrera-mini", "utrera-blocks": "utrera-mini", "renofeation": "reno-mini",
         "er": "utrera-mini", "demo": "smoke-mini"}


def test_every_report_in_every_format_parses(results_sqlite: str) -> None:
    assert set(CASES) <= set(REPORTS)
    for name, experiment in CASES.items():
        def out(fmt: str, report: str = name, experiment: str = experiment) -> str:
            return run_cli("report", report, "-e", experiment, "--format", fmt, "--db", results_sqlite).stdout

        data = json.loads(out("json"))
        assert data["report"] == name and data["tables"][0]["rows"] and data["data"]
        for table in data["tables"]:  # (er's baseline table is empty here: the fixture stores ER, no fits)
            assert all(len(row) == len(table["columns"]) for row in table["rows"])
        frame = pd.read_csv(io.StringIO(out("csv")))
        assert len(frame) == len(data["data"]) and list(frame.columns) == list(data["data"][0])
        latex = out("latex")
        assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == len(data["tables"])
        for table, body in zip(data["tables"], latex.split(r"\midrule")[1:], strict=True):
            rows = body.split(r"\bottomrule")[0].strip().splitlines()
            assert len(rows) == len(table["rows"])
            assert all(row.count(" & ") == len(table["columns"]) - 1 for row in rows), name
        assert "|---|" in out("markdown")


def test_latex_golden() -> None:
    table = pd.DataFrame({"target": ["cifar_10", "svhn"], "natural": ["48.5 ± 2.1 (10)", "23.5 ± 4.0 (10) *"],
                          "l2-3": ["51.9 ± 1.0 (10) *", ""]})
    table.attrs["keys"] = ["target"]
    report = Report("t", "Table 7 — 100% & more", pd.DataFrame(), [("accuracy (%): mean ± CI", table)])
    assert render(report, "latex") == "\n".join([
        r"% Table 7 — 100\% \& more",
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{accuracy (\%): mean $\pm$ CI}",
        r"\begin{tabular}{lrr}",
        r"\toprule",
        r"target & natural & l2-3 \\",
        r"\midrule",
        r"cifar\_10 & 48.5 $\pm$ 2.1 (10) & 51.9 $\pm$ 1.0 (10) * \\",
        r"svhn & 23.5 $\pm$ 4.0 (10) * &  \\",
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ])


def test_table7_cells_show_n(results_sqlite: str) -> None:
    data = json.loads(run_cli("report", "utrera-table7", "-e", "utrera-mini", "--format", "json",
                              "--db", results_sqlite).stdout)
    cells = {(row[0], row[1]): row[2:] for row in data["tables"][0]["rows"]}
    columns = data["tables"][0]["columns"][2:]
    for record in data["data"]:
        size = "full" if record["subset_size"] is None else str(record["subset_size"])
        shown = cells[(record["dataset"], size)][columns.index(record["source_label"])]
        assert f"({record['n']})" in shown, (record, shown)


def test_where_filters_on_key_columns_with_bound_values(results_sqlite: str) -> None:
    args = ("report", "utrera-table7", "-e", "utrera-mini", "--format", "json", "--db", results_sqlite)
    data = json.loads(run_cli(*args, "--where", "dataset=svhn", "--where", "subset_size=100,full").stdout)
    assert {r["dataset"] for r in data["data"]} == {"svhn"}
    assert {r["subset_size"] for r in data["data"]} == {100, None}
    trials = raw_trials(results_sqlite, "utrera-mini")
    expected = trials[(trials["status"] == "completed") & (trials["kind"] == "transfer") & (trials["blocks"] == 3)
                      & (trials["dataset"] == "svhn") & ((trials["subset_size"] == 100) | trials["subset_size"].isna())
                      & trials["test_acc"].notna()]
    assert sum(r["n"] for r in data["data"]) == len(expected)
    assert "trials where dataset=svhn and subset_size=100,null" in data["notes"]
    negated = json.loads(run_cli(*args, "--where", "dataset!=svhn").stdout)
    assert {r["dataset"] for r in negated["data"]} == {"cifar10"}

    before = db_fingerprint(results_sqlite)
    for hostile in ("dataset=svhn' OR '1'='1", "dataset=svhn); DROP TABLE trials; --"):
        line = error_line(run_cli(*args, "--where", hostile, expect=2))  # a value that matches nothing
        assert "has no completed transfer trials" in line
    assert db_fingerprint(results_sqlite) == before
    assert "did you mean 'dataset'" in error_line(run_cli(*args, "--where", "datset=svhn", expect=2))
    assert "(key columns: kind, arch" in error_line(run_cli(*args, "--where", "test_acc=1", expect=2))
    assert "not an integer" in error_line(run_cli(*args, "--where", "seed=abc", expect=2))
    plot = Path(results_sqlite.removeprefix("sqlite:///")).with_name("where.png")
    run_cli("plot", "blocks", "-e", "utrera-mini", "--where", "dataset=svhn", "-o", str(plot), "--db", results_sqlite)
    assert plot.stat().st_size > 0


@pytest.fixture()
def two_experiments(results_sqlite: str, tmp_path: Path) -> str:
    """A copy of the results database with a second experiment holding utrera-mini's svhn trials only."""
    path = tmp_path / "two.sqlite"
    shutil.copy(results_sqlite.removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    engine = create_engine(normalise_url(url))
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO experiments (name, grid, created_at) VALUES ('svhn-only', 'g', "
                                "CURRENT_TIMESTAMP)"))
        connection.execute(text(
            "INSERT INTO experiment_trials (experiment_id, trial_id) SELECT e2.id, et.trial_id "
            "FROM experiment_trials et "
            "JOIN experiments e ON e.id = et.experiment_id JOIN trials t ON t.id = et.trial_id "
            "JOIN experiments e2 ON e2.name = 'svhn-only' WHERE e.name = 'utrera-mini' AND t.dataset = 'svhn'"))
    engine.dispose()
    return url


def test_several_experiments_side_by_side(two_experiments: str) -> None:
    args = ("report", "utrera-table7", "-e", "utrera-mini", "-e", "svhn-only", "--db", two_experiments)
    data = json.loads(run_cli(*args, "--format", "json").stdout)
    (table,) = data["tables"]
    assert table["columns"][:2] == ["target", "images"]
    assert "natural [utrera-mini]" in table["columns"] and "natural [svhn-only]" in table["columns"]
    rows = {(r[0], r[1]): dict(zip(table["columns"], r, strict=True)) for r in table["rows"]}
    assert rows[("svhn", "100")]["natural [utrera-mini]"] == rows[("svhn", "100")]["natural [svhn-only]"] != ""
    assert rows[("cifar10", "100")]["natural [svhn-only]"] == ""  # not in the second experiment
    frame = pd.read_csv(io.StringIO(run_cli(*args, "--format", "csv").stdout))
    assert set(frame["experiment"]) == {"utrera-mini", "svhn-only"} and list(frame.columns)[0] == "experiment"
    assert "svhn-only" in run_cli(*args).stdout
    error_line(run_cli("report", "utrera-table7", "-e", "a", "-e", "a", "--db", two_experiments, expect=2))


# --- plots ---------------------------------------------------------------------------------------------

EXPERIMENT = {"accuracy-delta": "utrera-mini", "learning-curve": "utrera-mini", "blocks": "utrera-mini",
              "asr-vs-clean": "reno-mini", "er": "utrera-mini"}


def test_every_plot_as_png_pdf_and_svg(results_sqlite: str, tmp_path: Path) -> None:
    # The study's plots need a study's trials: tests/test_study_verdicts.py draws them; every other plot is here.
    assert set(PLOTS) == set(EXPERIMENT) | {name for name in PLOTS if name.startswith("study-")}
    for name in EXPERIMENT:
        for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")):
            target = tmp_path / f"{name}{suffix}"
            run_cli("plot", name, "-e", EXPERIMENT[name], "-o", str(target), "--db", results_sqlite)
            assert target.read_bytes()[:4] == magic[:4], (name, suffix)
        assert b"<svg" in (tmp_path / f"{name}.svg").read_bytes()[:400]
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    for target, dpi in ((small, "50"), (large, "100")):
        run_cli("plot", "blocks", "-e", "utrera-mini", "-o", str(target), "--dpi", dpi, "--db", results_sqlite)
    width_small = matplotlib.image.imread(small).shape[1]
    width_large = matplotlib.image.imread(large).shape[1]
    assert abs(width_large - 2 * width_small) <= 2


def _series(figure: object) -> list[tuple[str, str, str]]:
    """(label without its n, colour, marker) of every line with a label, over all panels."""
    found = []
    for ax in figure.axes:  # type: ignore[attr-defined]
        for line in ax.get_lines():
            label = line.get_label()
            if not label.startswith("_"):
                found.append((label.split(" (n=")[0], str(line.get_color()), str(line.get_marker())))
    return found


@pytest.mark.parametrize("name", ["learning-curve", "blocks", "accuracy-delta", "er"])
def test_one_style_per_series_in_every_panel(results_sqlite: str, name: str) -> None:
    series = _series(make_plot(name, EXPERIMENT[name], results_sqlite))
    styles: dict[str, set[tuple[str, str]]] = {}
    for label, colour, marker in series:
        styles.setdefault(label, set()).add((colour, marker))
    assert all(len(s) == 1 for s in styles.values()), styles  # the same look in every panel
    looks = [next(iter(s)) for label, s in styles.items() if "random init" not in label]
    assert len(set(looks)) == len(looks)  # no two series share colour and marker


def test_asr_plot_keeps_methods_apart_and_shows_n(results_sqlite: str) -> None:
    figure = make_plot("asr-vs-clean", "reno-mini", results_sqlite)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 2  # one panel per architecture
    looks: dict[str, set[tuple[str, str]]] = {}
    for ax in figure.axes:
        for collection in ax.collections:
            label = collection.get_label()
            assert "(n=" in label
            colour = tuple(np.round(collection.get_facecolor()[0], 3))
            looks.setdefault(label.split(" (n=")[0], set()).add((str(colour), str(collection.get_paths()[0])))
    assert all(len(v) == 1 for v in looks.values())
    assert len({next(iter(v)) for v in looks.values()}) == len(looks)


def test_ci_bands_stay_in_the_metric_range_and_legends_show_n(results_sqlite: str) -> None:
    figure = make_plot("learning-curve", "utrera-mini", results_sqlite)
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        for band in ax.collections:
            for path in band.get_paths():
                y = path.vertices[:, 1]
                assert y.min() >= 0.0 and y.max() <= 100.0
        assert all("(n=" in t.get_text() for t in ax.get_legend().get_texts())


def test_a_band_that_would_leave_the_range_is_clipped(tmp_path: Path) -> None:
    """Two runs at 2% and 99%: the t-interval runs far below 0 and above 100; the drawn band does not."""
    from matplotlib.figure import Figure

    from orchestrator.results.plots import _band
    from orchestrator.results.style import ACCURACY_RANGE, styles

    mean, ci = np.array([50.5, 50.5]), np.array([620.0, 620.0])
    ax = Figure().subplots()
    _band(ax, [1.0, 2.0], mean, ci, "x", styles(["x"])["x"], ACCURACY_RANGE, [2, 2])
    (band,) = ax.collections
    y = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert y.min() == 0.0 and y.max() == 100.0
    assert ax.get_lines()[0].get_label() == "x (n=2)"
