"""The Dash app: one page per URL, every page built from orchestrator/ui/data.py over one read-only database.

Pages (the URL says everything a page shows; the refresh tick updates a page's live parts in place):
  /                               experiments with progress
  /experiment/NAME?metric=M       the grid as a heatmap of cells, coloured by status or a final metric
  /experiment/NAME/trials?row=&column=   the trial table (filter and sort in the header), optionally one cell
  /trial/ID                       one trial's fields and per-epoch curves
  /experiment/NAME/reports?report=R&figure=F   a report's tables (as `rtgrid report` prints them) and a figure
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.dash_table import DataTable
from plotly.subplots import make_subplots

from db.errors import DatabaseError
from db.models import FINAL_METRICS, STATUSES
from db.timeouts import read_time_limit
from orchestrator.errors import UserError
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.reports import REPORTS, build_report, pct
from orchestrator.ui import data

# The trial page's panels: (title, epoch metrics of db.models EPOCH_METRICS, scale); tests/test_ui.py checks them.
CURVES = (("accuracy (%)", ("train_acc", "test_acc", "ood_acc"), 100.0), ("ER (pp)", ("er",), 100.0),
           ("train loss", ("train_loss",), 1.0), ("learning rate", ("lr",), 1.0))


def create_app(database: ReadOnlyDatabase, timeout_s: float, refresh_s: float) -> Dash:
    app = Dash(__name__, serve_locally=True, title="rtgrid", suppress_callback_exceptions=True,
               update_title="")
    app.layout = html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=int(refresh_s * 1000)),
        html.Div([dcc.Link("rtgrid", href="/", className="brand"),
                  html.Span(f" {database.safe_url} (read-only)", className="db")], className="top"),
        html.Div(id="page"),
    ], className="rtgrid")

    def guarded(build: Callable[[], Any], fallback: Any = None) -> Any:
        """`build()` under the --timeout; a user-facing error is shown in place of the page (or, for a
        refresh, `fallback`: the page keeps what it shows)."""
        try:
            with read_time_limit(timeout_s):
                return build()
        except (UserError, DatabaseError) as exc:
            return html.Div(str(exc), className="error", id="error") if fallback is None else fallback

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def render_page(pathname: str | None, search: str | None) -> Any:
        parts = _parts(pathname)
        query = {k: v[0] for k, v in parse_qs((search or "").lstrip("?")).items()}
        if not parts:
            return guarded(lambda: experiments_page(database))
        if parts[0] == "experiment" and len(parts) == 2:
            return guarded(lambda: grid_page(database, parts[1], query.get("metric", data.STATUS_METRIC)))
        if parts[0] == "experiment" and len(parts) == 3 and parts[2] == "trials":
            return guarded(lambda: trials_page(database, parts[1], query.get("row"), query.get("column")))
        if parts[0] == "experiment" and len(parts) == 3 and parts[2] == "reports":
            return guarded(lambda: reports_page(database, parts[1], query.get("report"), query.get("figure")))
        if parts[0] == "trial" and len(parts) == 2 and parts[1].isdigit():
            return guarded(lambda: trial_page(database, int(parts[1])))
        return html.Div(f"no page at {pathname}", className="error", id="error")

    # The refresh tick updates the live parts of the page in place (never the layout, so a filter or a
    # dropdown keeps its state); a late answer for a page already left has no component to land on.
    @app.callback(Output("experiments", "data"), Input("tick", "n_intervals"), prevent_initial_call=True)
    def refresh_experiments(_tick: int) -> Any:
        return guarded(lambda: experiments_records(database), no_update)

    @app.callback(Output("heatmap", "figure"), Output("summary", "children"), Input("tick", "n_intervals"),
                  State("url", "pathname"), State("metric", "value"), prevent_initial_call=True)
    def refresh_grid(_tick: int, pathname: str, metric: str) -> Any:
        parts = _parts(pathname)
        if len(parts) != 2 or parts[0] != "experiment":
            return no_update, no_update
        return guarded(lambda: grid_content(database, parts[1], metric), (no_update, no_update))

    @app.callback(Output("curves", "figure"), Output("epoch-count", "children"), Output("epochs", "data"),
                  Output("trial-fields", "data"), Input("tick", "n_intervals"), State("url", "pathname"),
                  prevent_initial_call=True)
    def refresh_trial(_tick: int, pathname: str) -> Any:
        parts = _parts(pathname)
        if len(parts) != 2 or parts[0] != "trial" or not parts[1].isdigit():
            return no_update, no_update, no_update, no_update
        return guarded(lambda: _trial_records(trial_content(database, int(parts[1]))), (no_update,) * 4)

    @app.callback(Output("url", "search"), Input("metric", "value"), prevent_initial_call=True)
    def choose_metric(metric: str) -> str:
        return "?" + urlencode({"metric": metric})

    @app.callback(Output("url", "pathname"), Output("url", "search", allow_duplicate=True),
                  Input("heatmap", "clickData"), State("url", "pathname"), prevent_initial_call=True)
    def open_cell(click: dict[str, Any] | None, pathname: str) -> tuple[Any, Any]:
        if not click or not click.get("points"):
            return no_update, no_update
        point = click["points"][0]
        if point.get("z") is None and not point.get("text"):
            return no_update, no_update  # an empty square: no such cell
        return f"{pathname.rstrip('/')}/trials", "?" + urlencode({"row": point["y"], "column": point["x"]})

    @app.callback(Output("url", "search", allow_duplicate=True), Input("report", "value"), Input("figure", "value"),
                  prevent_initial_call=True)
    def choose_report(report: str | None, figure: str | None) -> str:
        return "?" + urlencode({k: v for k, v in (("report", report), ("figure", figure)) if v})

    return app


def _parts(pathname: str | None) -> list[str]:
    return [unquote(p) for p in (pathname or "/").strip("/").split("/") if p]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")  # type: ignore[no-any-return]


# --- pages ---------------------------------------------------------------------------------------------

def _link(text: Any, href: str) -> str:
    return f"[{text}]({href})"


def _table(frame: pd.DataFrame, table_id: str, markdown: tuple[str, ...] = (), **options: Any) -> Any:
    columns = [{"name": str(c), "id": str(c), **({"presentation": "markdown"} if c in markdown else {})}
               for c in frame.columns]
    return DataTable(id=table_id, columns=columns, data=_records(frame), markdown_options={"link_target": "_self"},
                                style_cell={"fontFamily": "monospace", "fontSize": "13px", "padding": "2px 8px",
                                            "textAlign": "left"},
                                style_header={"fontWeight": "bold"}, **options)


def experiments_shown(database: ReadOnlyDatabase) -> pd.DataFrame:
    frame = data.experiments_frame(database)
    return frame.assign(
        experiment=[_link(name, f"/experiment/{quote(name)}") for name in frame["name"]],
        progress=[f"{100 * p:.0f}% ({f}/{t})" for p, f, t in zip(frame["progress"], frame["finished"],
                                                                   frame["total"], strict=True)],
    )[["experiment", "grid", "created_at", "progress", *STATUSES]]


def experiments_records(database: ReadOnlyDatabase) -> list[dict[str, Any]]:
    return _records(experiments_shown(database))


def experiments_page(database: ReadOnlyDatabase) -> Any:
    return html.Div([html.H2("Experiments"),
                     _table(experiments_shown(database), "experiments", markdown=("experiment",))])


def _heatmap(cells: pd.DataFrame, metric: str) -> go.Figure:
    rows = sorted(cells["row"].unique())
    columns = sorted(cells["column"].unique())
    at = {(r, c): cell for r, c, cell in zip(cells["row"], cells["column"], cells.to_dict("records"), strict=True)}
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    hover: list[list[str]] = []
    for r in rows:
        z.append([])
        text.append([])
        hover.append([])
        for c in columns:
            cell = at.get((r, c))
            if cell is None:  # no such cell in the grid: an empty square
                z[-1].append(None)
                text[-1].append("")
                hover[-1].append("")
                continue
            finished = cell["trials"] * cell[data.STATUS_METRIC]
            value = cell[metric]
            z[-1].append(None if pd.isna(value) else float(value) * 100)
            text[-1].append(f"{finished:.0f}/{cell['trials']}" if metric == data.STATUS_METRIC else pct(value))
            counts = ", ".join(f"{s} {cell[s]}" for s in STATUSES if cell[s])
            hover[-1].append(f"{counts}<br>" + "<br>".join(
                f"{m} {pct(cell[m])}" for m in FINAL_METRICS if not pd.isna(cell[m])))
    figure = go.Figure(go.Heatmap(z=z, x=columns, y=rows, text=text, texttemplate="%{text}", customdata=hover,
                                  hovertemplate="%{y}<br>%{x}<br>%{customdata}<extra></extra>",
                                  colorscale="Greens" if metric == data.STATUS_METRIC else "Viridis",
                                  colorbar={"title": "% finished" if metric == data.STATUS_METRIC else f"{metric} (%)"},
                                  xgap=2, ygap=2, **({"zmin": 0, "zmax": 100} if metric == data.STATUS_METRIC else {})))
    figure.update_layout(height=max(320, 28 * len(rows) + 220), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         xaxis={"side": "top", "tickangle": -30, "automargin": True},
                         yaxis={"automargin": True, "autorange": "reversed"})
    return figure


def grid_content(database: ReadOnlyDatabase, experiment: str, metric: str) -> tuple[go.Figure, str]:
    """The heatmap and the one-line summary of an experiment's grid."""
    if metric not in (data.STATUS_METRIC, *FINAL_METRICS):
        raise UserError(f"unknown metric {metric!r} (known: {', '.join((data.STATUS_METRIC, *FINAL_METRICS))})")
    trials = data.trials_frame(database, experiment)
    cells = data.cells_frame(trials)
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in STATUSES)
    figure = _heatmap(cells, metric) if len(cells) else go.Figure()
    return figure, f"{len(trials)} trials in {len(cells)} cells: {summary}"


def grid_page(database: ReadOnlyDatabase, experiment: str, metric: str) -> Any:
    figure, summary = grid_content(database, experiment, metric)
    trials = data.trials_frame(database, experiment)
    base = f"/experiment/{quote(experiment)}"
    return html.Div([
        html.H2(f"Experiment {experiment}"),
        html.Div(summary, id="summary"),
        html.Div(data.constant_fields_text(trials), id="constant-fields", className="hint"),
        html.Div([dcc.Link("all trials", href=f"{base}/trials", id="all-trials"), " · ",
                  dcc.Link("reports and figures", href=f"{base}/reports", id="reports-link")], className="links"),
        html.Div(["colour by ", dcc.Dropdown(id="metric", options=[data.STATUS_METRIC, *FINAL_METRICS], value=metric,
                                              clearable=False, style={"width": "220px", "display": "inline-block"})]),
        html.Div("Click a cell for its trials. A cell is every key field but the seed; metric colours are the mean "
                 "over its completed trials.", className="hint"),
        dcc.Graph(id="heatmap", figure=figure,
                  config={"displaylogo": False}),
    ])


def trials_page(database: ReadOnlyDatabase, experiment: str, row: str | None, column: str | None) -> Any:
    trials = data.trials_frame(database, experiment)
    title = f"Trials of {experiment}"
    if row is not None and column is not None:
        trials = data.trials_in_cell(trials, row, column)
        title += f", cell {row} | {column}"
    shown = trials.assign(id=[_link(i, f"/trial/{i}") for i in trials["id"]])
    for metric in FINAL_METRICS:
        shown[metric] = shown[metric].astype(float).round(4)
    return html.Div([html.H2(title), html.Div(f"{len(trials)} trials", id="trial-count"),
                     html.Div("Type in a column's filter row (e.g. failed, >0.5); click a header to sort.",
                              className="hint"),
                     _table(shown, "trials", markdown=("id",), filter_action="native", sort_action="native",
                            sort_mode="multi", page_size=50)])


_TRIAL_FIELDS = ("status", "kind", "arch", "source_label", "source", "dataset", "ood", "method", "blocks",
                 "subset_size", "seed", "epochs", "attempts", "error", *FINAL_METRICS, "spec_hash")


def trial_content(database: ReadOnlyDatabase, trial_id: int) -> tuple[go.Figure, str, pd.DataFrame, pd.DataFrame]:
    """One trial's curves, epoch count line, epoch table and field table."""
    record = data.trial_record(database, trial_id)
    if record is None:
        raise UserError(f"no trial with id {trial_id}")
    epochs = data.epochs_frame(database, trial_id)
    fields = pd.DataFrame({"field": _TRIAL_FIELDS,
                           "value": [None if record.get(f) is None else str(record[f]) for f in _TRIAL_FIELDS]})
    figure = make_subplots(rows=len(CURVES), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                           subplot_titles=[title for title, _m, _s in CURVES])
    for index, (_title, metrics, scale) in enumerate(CURVES, start=1):
        for metric in metrics:
            values = epochs[metric].astype(float)
            if values.notna().any():
                figure.add_trace(go.Scatter(x=epochs["epoch"].tolist(), y=(values * scale).tolist(),
                                            mode="lines+markers", name=metric),
                                 row=index, col=1)
    figure.update_layout(height=720, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    figure.update_xaxes(title_text="epoch", row=len(CURVES), col=1)
    return figure, f"{len(epochs)} epochs recorded", epochs.round(4), fields


def _trial_records(content: tuple[go.Figure, str, pd.DataFrame, pd.DataFrame]) -> Any:
    figure, count, epochs, fields = content
    return figure, count, _records(epochs), _records(fields)


def trial_page(database: ReadOnlyDatabase, trial_id: int) -> Any:
    figure, count, epochs, fields = trial_content(database, trial_id)
    return html.Div([html.H2(f"Trial {trial_id}"), html.Div(count, id="epoch-count"),
                     html.Div([_table(fields, "trial-fields")], style={"maxWidth": "700px"}),
                     dcc.Graph(id="curves", figure=figure, config={"displaylogo": False}),
                     _table(epochs, "epochs")])


def _figure(frame: pd.DataFrame, y_title: str, x_title: str) -> go.Figure:
    figure = go.Figure()
    for series, part in frame.groupby("series", sort=True):
        figure.add_trace(go.Scatter(
            x=part["x"].astype(str).tolist(), y=(100 * part["mean"].astype(float)).tolist(), name=str(series),
            mode="lines+markers",
            error_y={"type": "data", "array": (100 * part["ci95"].astype(float)).tolist(), "visible": True},
            customdata=list(zip(part["n"].astype(int), (100 * part["ci95"].astype(float)).round(2), strict=True)),
            hovertemplate="%{fullData.name}<br>x=%{x}<br>mean %{y:.2f}<br>± %{customdata[1]} (95% CI)"
                          "<br>n=%{customdata[0]}<extra></extra>"))
    figure.update_layout(height=480, xaxis_title=x_title, yaxis_title=y_title, hovermode="closest",
                         margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return figure


def reports_page(database: ReadOnlyDatabase, experiment: str, report: str | None, figure: str | None) -> Any:
    data.trials_frame(database, experiment)  # an unknown experiment is one error line
    parts: list[Any] = [html.H2(f"Reports and figures of {experiment}"),
                        html.Div(["report ", dcc.Dropdown(id="report", options=list(REPORTS), value=report,
                                                          style={"width": "260px", "display": "inline-block"}),
                                  " figure ", dcc.Dropdown(id="figure", options=list(data.FIGURES), value=figure,
                                                           style={"width": "260px", "display": "inline-block"})])]
    if report:
        try:
            built = build_report(report, experiment, database)
        except UserError as exc:
            parts.append(html.Div(str(exc), className="error", id="report-error"))
        else:
            parts.append(html.H3(built.title, id="report-title"))
            for index, (caption, table) in enumerate(built.tables):
                parts += [html.H4(caption), _table(table, f"report-table-{index}")]
            parts += [html.Pre(built.sql, className="sql")] if built.sql else []
            parts += [html.Div(f"note: {note}", className="hint") for note in built.notes]
    if figure:
        build, y_title, x_title = data.FIGURES[figure]
        try:
            frame = build(database, experiment)
        except UserError as exc:
            parts.append(html.Div(str(exc), className="error", id="figure-error"))
        else:
            parts += [html.H3(f"{figure}: mean ± 95% CI (hover for n)"),
                      dcc.Graph(id="report-figure", figure=_figure(frame, y_title, x_title))]
    return html.Div(parts)
