"""The papers' figures as PNG, PDF or SVG (matplotlib; no pyplot global state). Each plot function
returns its Figure; `save_plot` writes it. Numbers come from orchestrator.results.reports / stats.

accuracy-delta  Utrera Fig. 2b: robust − natural test accuracy vs training images, per target,
                mean ± 95% CI over seed-paired runs (x log scale)
learning-curve  Utrera Fig. 3: test accuracy vs epoch, per source
blocks          Utrera Fig. 4: test accuracy vs fine-tuned blocks, per source
asr-vs-clean    Renofeation: ASR against clean accuracy, per method and dataset
er              Andreassen Fig. 1c: ER vs ID accuracy over training (binned), per arch and init
study-accuracy  the embedded study (rtgrid demo): Utrera's accuracy vs training images per source, 95% CI
study-asr       the study: Chin's ASR vs clean accuracy per method, per budget, 95% CI in both
study-er        the study: Andreassen's binned ER vs ID accuracy, pre-trained vs random init
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import UserError
from orchestrator.results import stats
from orchestrator.results.frames import (
    NATURAL,
    add_source_labels,
    completed_transfers_sql,
    nullable_ints,
    require_experiment,
    require_one_trial_per_seed,
    require_rows,
    source_order,
    trial_frame,
    trial_specs,
)
from orchestrator.results.query import Database, ReadOnlyDatabase, reading
from orchestrator.results.reports import (
    DEFAULT_BLOCKS,
    METHOD_ORDER,
    blocks_frame,
    er_baseline_lines,
    er_baselines_frame,
    er_frame,
    renofeation_frame,
    subset_label,
)
from orchestrator.results.style import (
    ACCURACY_RANGE,
    DEFAULT_DPI,
    DELTA_RANGE,
    ER_RANGE,
    Style,
    n_text,
    output_format,
    styles,
)

Figure = Any  # matplotlib.figure.Figure (imported lazily: plotting is the only user of matplotlib)


def _figure(panels: int, width: float = 5.2, height: float = 4.0, max_columns: int = 3) -> tuple[Figure, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    columns = min(max(panels, 1), max_columns)
    rows = math.ceil(max(panels, 1) / columns)
    figure = MplFigure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _label_axes(ax: Any, title: str, xlabel: str, ylabel: str, legend_title: str | None = None,
                legend: bool = True) -> None:
    """The labelling every panel shares: title, axis labels, a small legend, a light grid."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize="small", title=legend_title)
    ax.grid(alpha=0.3)


def _band(ax: Any, x: Sequence[float], mean: np.ndarray, ci: np.ndarray, label: str, style: Style,
          limits: tuple[float, float], n: Sequence[int] | None = None, marker_size: float = 5.0) -> None:
    """A mean line with its CI band clipped to the metric's range; the label says on how many runs it rests."""
    text = f"{label} ({n_text(n)})" if n is not None else label
    ax.plot(x, mean, marker=style.marker, color=style.colour, markersize=marker_size, label=text)
    ci = np.nan_to_num(np.asarray(ci, dtype=float), nan=0.0)
    if np.any(ci > 0):
        low, high = np.clip(mean - ci, *limits), np.clip(mean + ci, *limits)
        ax.fill_between(x, low, high, color=style.colour, alpha=0.18, linewidth=0)


def _clipped_error(value: float, ci: float, limits: tuple[float, float]) -> list[list[float]]:
    """An error bar of ± ci around value that stays inside the metric's range (matplotlib's [[below], [above]])."""
    ci = 0.0 if not np.isfinite(ci) else float(ci)
    return [[min(ci, value - limits[0])], [min(ci, limits[1] - value)]]


def _subset_axis(ax: Any, sizes: Sequence[Any]) -> dict[Any, float]:
    """x positions of subset sizes on a log axis; the full set sits one doubling past the largest."""
    numeric = sorted(int(s) for s in sizes if not pd.isna(s))
    full_x = float(max(numeric) * 2) if numeric else 1.0
    positions = {s: (full_x if pd.isna(s) else float(s)) for s in sizes}
    ticks = sorted(set(positions.values()))
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels(["full" if t == full_x and any(pd.isna(s) for s in sizes) else str(int(t)) for t in ticks],
                       rotation=45)
    ax.minorticks_off()
    return positions


# --- accuracy-delta (Utrera Fig. 2b) ------------------------------------------------------------


def accuracy_delta_frame(db: ReadOnlyDatabase, experiment: str, blocks: int = DEFAULT_BLOCKS) -> pd.DataFrame:
    """Per (robust source, target, subset size): pairs, mean and CI of robust − natural final test
    accuracy, paired by seed. Columns: source_label, dataset, subset_size, n, mean, sd, ci95."""
    frame = trial_frame(db, experiment, "t.dataset, t.subset_size, t.source, t.seed, t.test_acc, t.spec_json",
                         f"AND {completed_transfers_sql()} AND t.blocks = :blocks "
                         "AND t.test_acc IS NOT NULL", {"blocks": int(blocks)})
    require_rows(frame, f"completed transfer trials with blocks = {blocks}", experiment)
    require_one_trial_per_seed(frame, ("dataset", "subset_size", "source"), "plot accuracy-delta")
    frame = add_source_labels(frame, db)
    if NATURAL not in set(frame["source_label"]):
        raise UserError(f"experiment {experiment!r} has no natural source at blocks = {blocks} to compare with")
    parts = []
    for label in sorted(set(frame["source_label"]) - {NATURAL}, key=source_order):
        summary = stats.summarize_paired(frame, ["dataset", "subset_size"], "source_label", label, NATURAL,
                                         "test_acc", pair_on="seed")
        summary.insert(0, "source_label", label)
        parts.append(summary)
    if not parts:
        raise UserError(f"experiment {experiment!r} has only the natural source: nothing to compare")
    return nullable_ints(pd.concat(parts, ignore_index=True), ("subset_size",))


def plot_accuracy_delta(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                        subset_size: int | str | None = None) -> Figure:
    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    data = accuracy_delta_frame(db, experiment, blocks)
    labels = sorted(data["source_label"].unique(), key=source_order)
    figure, axes = _figure(len(labels))
    look = styles(sorted(str(d) for d in data["dataset"].unique()))  # one style per target in every panel
    for ax, label in zip(axes, labels, strict=True):
        part = data[data["source_label"] == label]
        positions = _subset_axis(ax, part["subset_size"].unique().tolist())
        for dataset, rows in part.groupby("dataset", sort=True):
            rows = rows.assign(x=rows["subset_size"].map(positions)).sort_values("x")
            _band(ax, rows["x"].to_numpy(float), 100 * rows["mean"].to_numpy(float),
                  100 * rows["ci95"].to_numpy(float), str(dataset), look[str(dataset)], DELTA_RANGE,
                  rows["n"].tolist())
        ax.axhline(0, color="grey", linewidth=0.8)
        _label_axes(ax, f"{label} − natural, {blocks} fine-tuned blocks",
                    "training images (log scale)", "Δ test accuracy (pp)", "target")
    figure.suptitle(f"{experiment}: robust − natural source, mean ± 95% CI over seed-paired runs (n = pairs)")
    return figure


# --- learning-curve (Utrera Fig. 3) ----------------------------------------------------------------


def _default_subset(frame: pd.DataFrame, subset_size: int | str | None) -> Any:
    """The subset size to plot: the one asked for ("full" = the whole training set), else the smallest."""
    sizes = frame["subset_size"]
    if subset_size == "full":
        if not sizes.isna().any():
            raise UserError("no trials on the full training set (subset_size NULL)")
        return pd.NA
    if subset_size is not None:
        if not (sizes == subset_size).any():
            shown = ", ".join(subset_label(s) for s in sorted(sizes.dropna().unique())) or "none"
            raise UserError(f"no trials with subset_size = {subset_size} (have: {shown}"
                            f"{', full' if sizes.isna().any() else ''})")
        return subset_size
    numeric = sizes.dropna()
    return int(numeric.min()) if not numeric.empty else pd.NA


def _at_subset(frame: pd.DataFrame, size: Any) -> pd.DataFrame:
    return frame[frame["subset_size"].isna()] if pd.isna(size) else frame[frame["subset_size"] == size]


def learning_curve_frame(db: ReadOnlyDatabase, experiment: str, blocks: int = DEFAULT_BLOCKS,
                         subset_size: int | str | None = None) -> tuple[pd.DataFrame, Any]:
    """Mean ± CI over seeds of the test accuracy at each epoch, per (target, source), at one subset
    size (default: the smallest). Returns (frame with dataset, source_label, epoch, n, mean, sd,
    ci95; the subset size used)."""
    require_experiment(db, experiment)
    sql = ("SELECT t.id AS trial_id, t.dataset, t.source, t.subset_size, t.seed, m.epoch, m.test_acc "
           "FROM epoch_metrics m "
           "JOIN trials t ON t.id = m.trial_id JOIN experiment_trials et ON et.trial_id = t.id "
           "JOIN experiments e ON e.id = et.experiment_id WHERE e.name = :experiment "
           f"AND {completed_transfers_sql()} AND t.blocks = :blocks AND m.test_acc IS NOT NULL")
    frame = nullable_ints(db.frame(sql, {"experiment": experiment, "blocks": int(blocks)}), ("subset_size", "epoch"))
    require_rows(frame, f"epoch metrics of completed transfers with blocks = {blocks}", experiment)
    size = _default_subset(frame, subset_size)
    frame = _at_subset(frame, size).copy()
    runs = frame.drop_duplicates("trial_id").merge(trial_specs(
        db, experiment, f"AND {completed_transfers_sql()} AND t.blocks = :blocks",
        {"blocks": int(blocks)}), on="trial_id")
    require_one_trial_per_seed(runs, ("dataset", "source", "subset_size"), "plot learning-curve")
    frame = add_source_labels(frame, db)
    return stats.summarize(frame, ["dataset", "source_label", "epoch"], "test_acc"), size


def plot_learning_curve(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                        subset_size: int | str | None = None) -> Figure:
    from matplotlib.ticker import MaxNLocator

    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    data, size = learning_curve_frame(db, experiment, blocks, subset_size)
    datasets = sorted(data["dataset"].unique())
    figure, axes = _figure(len(datasets))
    look = styles(sorted(data["source_label"].unique(), key=source_order))  # one style per source in every panel
    for ax, dataset in zip(axes, datasets, strict=True):
        part = data[data["dataset"] == dataset]
        for label in sorted(part["source_label"].unique(), key=source_order):
            rows = part[part["source_label"] == label].sort_values("epoch")
            _band(ax, rows["epoch"].to_numpy(float), 100 * rows["mean"].to_numpy(float),
                  100 * rows["ci95"].to_numpy(float), label, look[label], ACCURACY_RANGE, rows["n"].tolist(),
                  marker_size=3.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label_axes(ax, f"{dataset}: {subset_label(size)} images, {blocks} fine-tuned blocks",
                    "epoch", "test accuracy (%)", "source")
    figure.suptitle(f"{experiment}: test accuracy during fine-tuning, mean ± 95% CI over seeds (n = runs)")
    return figure


# --- blocks (Utrera Fig. 4) -----------------------------------------------------------------------


def plot_blocks(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                subset_size: int | str | None = None) -> Figure:
    data = blocks_frame(db, experiment, caller="plot blocks")
    size = _default_subset(data, subset_size)
    data = _at_subset(data, size)
    datasets = sorted(data["dataset"].unique())
    figure, axes = _figure(len(datasets))
    look = styles(sorted(data["source_label"].unique(), key=source_order))  # one style per source in every panel
    for ax, dataset in zip(axes, datasets, strict=True):
        part = data[data["dataset"] == dataset]
        for label in sorted(part["source_label"].unique(), key=source_order):
            rows = part[part["source_label"] == label].sort_values("blocks")
            _band(ax, rows["blocks"].to_numpy(float), 100 * rows["mean"].to_numpy(float),
                  100 * rows["ci95"].to_numpy(float), label, look[label], ACCURACY_RANGE, rows["n"].tolist())
        ax.set_xticks(sorted(part["blocks"].dropna().unique().astype(int).tolist()))
        _label_axes(ax, f"{dataset}: {subset_label(size)} images",
                    "fine-tuned residual blocks", "test accuracy (%)", "source")
    figure.suptitle(f"{experiment}: accuracy by number of fine-tuned blocks, mean ± 95% CI over seeds (n = runs)")
    return figure


# --- asr-vs-clean (Renofeation) --------------------------------------------------------------------

def plot_asr_vs_clean(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                      subset_size: int | str | None = None) -> Figure:
    data = renofeation_frame(db, experiment, caller="plot asr-vs-clean")
    data = data[data["dataset"] != "avg"]
    wide = data.pivot_table(index=["arch", "method", "dataset"], columns="metric", values="mean").reset_index()
    if "asr" not in wide or wide["asr"].isna().all():
        raise UserError(f"experiment {experiment!r} has no ASR values (run the attack: params.attack_steps > 0)")
    wide = wide.dropna(subset=["clean_acc", "asr"])
    runs = data[data["metric"] == "asr"].set_index(["arch", "method", "dataset"])["n"]
    methods = [m for m in dict.fromkeys(data["method"]) if m in set(wide["method"])]
    archs = sorted(wide["arch"].unique())
    look = styles(methods)  # one (colour, marker) per method in every architecture's panel
    figure, axes = _figure(len(archs), width=6.0, height=5.0, max_columns=2)
    for ax, arch in zip(axes, archs, strict=True):
        part = wide[wide["arch"] == arch]
        for method in methods:
            rows = part[part["method"] == method]
            if rows.empty:
                continue
            n = [int(runs.get((arch, method, d), 0)) for d in rows["dataset"]]
            ax.scatter(100 * rows["clean_acc"], 100 * rows["asr"], color=look[method].colour,
                       marker=look[method].marker, s=45, alpha=0.9, label=f"{method} ({n_text(n)})")
            for row in rows.itertuples(index=False):
                ax.annotate(str(row.dataset), (100 * row.clean_acc, 100 * row.asr), fontsize="xx-small",
                            xytext=(3, 3), textcoords="offset points", color="dimgrey")
        ax.set_xlim(*ACCURACY_RANGE)
        ax.set_ylim(*ACCURACY_RANGE)
        _label_axes(ax, f"{arch}: one point per (method, dataset)",
                    "clean test accuracy (%)", "attack success rate, ASR (%)", "method (n = seeds per point)")
    figure.suptitle(f"{experiment}: attack success rate vs clean accuracy, means over seeds (Renofeation)")
    return figure


# --- er (Andreassen Fig. 1c) ----------------------------------------------------------------------


def plot_er(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
            subset_size: int | str | None = None) -> Figure:
    data = er_frame(db, experiment, caller="plot er")
    figure, axes = _figure(1, width=8.0, height=5.5)
    ax = axes[0]
    # colour and marker: the architecture on its ID→OOD pair; line style: the init (solid = pre-trained)
    series = {(d, o, a): f"{a} ({d}→{o})" for d, o, a in
              data[["dataset", "ood", "arch"]].drop_duplicates().itertuples(index=False, name=None)}
    look = styles(sorted(series.values()))
    for (dataset, ood, arch, init), rows in data.groupby(["dataset", "ood", "arch", "init"], sort=True):
        rows = rows.sort_values("id_low")
        x = 100 * (rows["id_low"] + rows["id_high"]).to_numpy(float) / 2
        y = np.clip(100 * rows["mean_er"].to_numpy(float), *ER_RANGE)
        style = look[series[(dataset, ood, arch)]]
        ax.plot(x, y, marker=style.marker, markersize=3, color=style.colour,
                linestyle="-" if init == "pretrained" else "--",
                label=f"{series[(dataset, ood, arch)]}, {init} init ({int(rows['runs'].iloc[0])} runs)")
    ax.axhline(0, color="grey", linewidth=0.8)
    # The baselines behind the values, as a caption below the axes (the layout makes room for it).
    baselines = er_baseline_lines(er_baselines_frame(db, experiment))
    if baselines:
        caption = "\n".join(textwrap.fill(line, 120, subsequent_indent="    ") for line in baselines)
        figure.supxlabel(caption, x=0.01, ha="left", fontsize="x-small", family="monospace")
    _label_axes(ax, "Effective robustness during training (mean per 1% ID-accuracy bin)",
                "ID test accuracy (%)", "effective robustness (pp)")
    return figure


# --- the embedded study (rtgrid demo) ---------------------------------------------------------------


def plot_study_accuracy(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                        subset_size: int | str | None = None) -> Figure:
    """Utrera: fine-tuned test accuracy vs training images, one line per source, mean ± 95% CI over seeds."""
    from orchestrator.results.study import study_trials, utrera_trials

    data = utrera_trials(study_trials(db, experiment))
    require_rows(data, "fine-tuned transfers on a training subset", experiment)
    require_one_trial_per_seed(data, ("dataset", "source_label", "blocks", "subset_size"), "plot study-accuracy")
    summary = stats.summarize(data, ["dataset", "blocks", "source_label", "subset_size"], "test_acc")
    cells = list(summary.groupby(["dataset", "blocks"], sort=True))
    look = styles(sorted(summary["source_label"].unique(), key=source_order))  # one style per source everywhere
    figure, axes = _figure(len(cells), width=5.0, height=4.0)
    for ax, ((dataset, fine_tuned), rows) in zip(axes, cells, strict=True):
        positions = _subset_axis(ax, sorted(rows["subset_size"].unique()))
        for label in sorted(rows["source_label"].unique(), key=source_order):
            line = rows[rows["source_label"] == label].sort_values("subset_size")
            _band(ax, [positions[s] for s in line["subset_size"]], 100 * line["mean"].to_numpy(float),
                  100 * line["ci95"].to_numpy(float), str(label), look[label], ACCURACY_RANGE, line["n"].tolist())
        _label_axes(ax, f"{dataset}: fine-tuning the last {int(fine_tuned)} blocks",
                    "training images", "test accuracy (%), mean ± 95% CI", "source")
    figure.suptitle(f"Utrera et al.: robust vs natural sources — {experiment}")
    return figure


def plot_study_asr(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                   subset_size: int | str | None = None) -> Figure:
    """Chin: ASR against clean accuracy per method (mean ± 95% CI over seeds in both), one panel per budget."""
    from orchestrator.results.study import chin_trials, study_trials

    data = chin_trials(study_trials(db, experiment))
    require_rows(data, "transfers with an ASR next to Renofeation runs", experiment)
    require_one_trial_per_seed(data, ("dataset", "subset_size", "method"), "plot study-asr")
    acc = stats.summarize(data, ["dataset", "subset_size", "method"], "test_acc")
    asr = stats.summarize(data, ["dataset", "subset_size", "method"], "asr")
    both = acc.merge(asr, on=["dataset", "subset_size", "method"], suffixes=("_acc", "_asr"))
    cells = list(both.groupby(["dataset", "subset_size"], sort=True, dropna=False))
    methods = list(dict.fromkeys(m for m in METHOD_ORDER if m in set(both["method"])))
    look = styles(methods)  # one (colour, marker) per method in every panel
    figure, axes = _figure(len(cells), width=5.2, height=4.4)
    for ax, ((dataset, subset), rows) in zip(axes, cells, strict=True):
        for row in rows.itertuples(index=False):
            x, y = 100 * row.mean_acc, 100 * row.mean_asr
            ax.errorbar(x, y, xerr=_clipped_error(x, 100 * row.ci95_acc, ACCURACY_RANGE),
                        yerr=_clipped_error(y, 100 * row.ci95_asr, ACCURACY_RANGE), marker=look[row.method].marker,
                        color=look[row.method].colour, capsize=3, linestyle="", markersize=8,
                        label=f"{row.method} (n={int(row.n_acc)})")
        _label_axes(ax, f"{dataset}, {subset_label(subset)} training images",
                    "clean test accuracy (%)", "attack success rate, ASR (%)", "method")
    figure.suptitle(f"Chin et al.: the penultimate-layer attack from the natural source — {experiment}")
    return figure


STUDY_ER_BINS = 20  # 5%-wide ID-accuracy bins: a few runs of a few epochs each


def plot_study_er(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None,
                  subset_size: int | str | None = None) -> Figure:
    """Andreassen: per-epoch ER vs ID accuracy, binned (mean of the checkpoints per 5% bin), pre-trained vs
    random init, each run's trajectory faint behind; against the independent testbed's baseline."""
    from orchestrator.results.study import er_epochs
    from workers.trainable import binned_er

    data = er_epochs(db, experiment)
    require_rows(data, "runs with per-epoch ER (fit a baseline: rtgrid er fit)", experiment)
    require_one_trial_per_seed(data, ("dataset", "ood", "subset_size", "init"), "plot study-er")
    figure, axes = _figure(1, width=8.0, height=5.5)
    ax = axes[0]
    look = styles(str(init) for init in sorted(data["init"].unique()))
    for (dataset, ood, init), rows in data.groupby(["dataset", "ood", "init"], sort=True):
        colour, style = look[str(init)].colour, "-" if init == "pretrained" else "--"
        for _, run in rows.groupby("trial_id"):
            ax.plot(100 * run["test_acc"].to_numpy(float), 100 * run["er"].to_numpy(float), color=colour,
                    alpha=0.2, linewidth=0.8)
        bins = binned_er(rows["test_acc"].to_numpy(float), rows["er"].to_numpy(float), STUDY_ER_BINS)
        x = [100 * (low + high) / 2 for low, high, _, _ in bins]
        ax.plot(x, [100 * mean for _, _, mean, _ in bins], color=colour, linestyle=style,
                marker=look[str(init)].marker,
                label=f"{init} ({rows['trial_id'].nunique()} runs, {dataset}→{ood})")
    ax.axhline(0, color="grey", linewidth=0.8)
    baselines = er_baseline_lines(er_baselines_frame(db, experiment))
    if baselines:
        caption = "\n".join(textwrap.fill(line, 120, subsequent_indent="    ") for line in baselines)
        figure.supxlabel(caption, x=0.01, ha="left", fontsize="x-small", family="monospace")
    # the experiment goes in the figure's title, as in the other study plots: a long name overflowed the axes title
    _label_axes(ax, "Andreassen et al.: ER during fine-tuning, binned by ID accuracy",
                "ID test accuracy (%)", "effective robustness (pp)")
    figure.suptitle(experiment)
    return figure


# --- registry ---------------------------------------------------------------------------------------

PlotFunction = Callable[..., Figure]
PLOTS: dict[str, tuple[PlotFunction, str]] = {
    "accuracy-delta": (plot_accuracy_delta, "robust − natural test accuracy vs training images (Utrera Fig. 2b)"),
    "learning-curve": (plot_learning_curve, "test accuracy vs epoch (Utrera Fig. 3)"),
    "blocks": (plot_blocks, "test accuracy vs fine-tuned blocks (Utrera Fig. 4)"),
    "asr-vs-clean": (plot_asr_vs_clean, "ASR vs clean accuracy (Renofeation)"),
    "er": (plot_er, "ER vs ID accuracy over training (Andreassen Fig. 1c)"),
    "study-accuracy": (plot_study_accuracy, "the study: accuracy vs training images per source, 95% CI (Utrera)"),
    "study-asr": (plot_study_asr, "the study: ASR vs clean accuracy per method and budget, 95% CI (Chin)"),
    "study-er": (plot_study_er, "the study: ER vs ID accuracy, binned, pre-trained vs random init (Andreassen)"),
}


def make_plot(name: str, experiment: str, db: Database | Any = None, blocks: int | None = None,
              subset_size: int | str | None = None, where: Sequence[str] = ()) -> Figure:
    if name not in PLOTS:
        from orchestrator.results.reports import unknown_name_message

        raise UserError(unknown_name_message("plot", name, list(PLOTS)))
    from orchestrator.results.filters import FilteredDatabase, parse_where

    conditions = parse_where(where)
    with reading(db) as database:
        scoped = FilteredDatabase(database, conditions) if conditions else database
        return PLOTS[name][0](scoped, experiment, blocks=blocks, subset_size=subset_size)


def check_output(path: str | Path) -> Path:
    """A .png / .pdf / .svg path whose directory exists (checked before any work)."""
    target = Path(path)
    output_format(target)
    if not target.parent.exists():
        raise UserError(f"output directory {target.parent} does not exist")
    return target


def save_plot(figure: Figure, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write the figure in the format its extension names (dpi: raster resolution; PDF/SVG stay vector)."""
    target = check_output(path)
    figure.savefig(target, dpi=dpi, format=output_format(target))
    return target
