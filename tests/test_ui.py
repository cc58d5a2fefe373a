"""`rtgrid ui` in a real headless Chromium (Debian's package, driven by Playwright with its executable path),
served by a real `rtgrid ui` process on a free loopback port over the results fixture database
(tests/results_data.py: real rows through the real planner and schema). What the pages show is checked
against plain SQL on the same database, and the database is byte-for-byte the same afterwards.

Skipped only when Chromium or Playwright is missing outside CI; in CI ($RTGRID_REQUIRE_PG or CI=true)
a missing browser fails. Screenshots go to $RTGRID_UI_SHOTS (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import error_line, run_cli
from db_fixtures import pg_required
from results_data import UTRERA_SOURCES, db_fingerprint, expected_label, raw_frame, t_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent


def _in_ci() -> bool:
    return pg_required() or os.environ.get("CI", "").lower() == "true"


def _need_browser() -> Any:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright; never `playwright install`)"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if missing:
        if _in_ci():
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_ui(url: str, *extra: str, port: int | None = None) -> tuple[subprocess.Popen[str], str]:
    port = port or _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", "ui", "--db", url,
                                "--port", str(port), "--refresh", "1", *extra],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rtgrid ui exited {process.returncode}: {process.stderr.read()}")  # type: ignore
        try:
            with urllib.request.urlopen(base + "/", timeout=2):
                return process, base
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    process.kill()
    raise AssertionError("rtgrid ui did not answer within 60 s")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("RTGRID_UI_SHOTS", tmp_path))
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def server(results_url: str) -> Iterator[tuple[str, str]]:
    process, base = _start_ui(results_url)
    try:
        yield results_url, base
    finally:
        process.terminate()
        process.wait(timeout=20)


def _cell_trials_sql(experiment: str) -> str:
    return ("SELECT t.id, t.status, t.kind, t.arch, t.source, t.dataset, t.ood, t.method, t.blocks, t.subset_size, "
            "t.epochs, t.test_acc FROM trials t JOIN experiment_trials et ON et.trial_id = t.id "
            f"JOIN experiments e ON e.id = et.experiment_id WHERE e.name = '{experiment}' ORDER BY t.id")


def _fields_of(trial: dict[str, Any], url: str) -> dict[str, str]:
    """A trial's cell fields as the heatmap spells them (None as –), computed here from the raw row."""
    def text(value: Any) -> str:
        if value is None or value != value:
            return "–"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    fields = {k: text(trial[k]) for k in ("kind", "arch", "method", "dataset", "ood", "blocks", "subset_size",
                                         "epochs")}
    return {**fields, "source_label": expected_label(trial["source"], url)}


def _click_heatmap_cell(page: Any, row: int, column: int) -> None:
    """Click the centre of heatmap square (row, column), found from plotly's own axes."""
    box = page.evaluate("""([row, column]) => {
        const gd = document.querySelector('#heatmap .js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(column), y: r.top + ya._offset + ya.l2p(row)};
    }""", [row, column])
    page.mouse.click(box["x"], box["y"])


def _table_text(page: Any, table_id: str) -> list[list[str]]:
    return page.evaluate("""(id) => Array.from(document.querySelectorAll('#' + id + ' tbody tr'))
        .map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))
        .filter(cells => cells.length > 0)""", table_id)


def test_dashboard_walk_matches_sql(server: tuple[str, str], shots: Path) -> None:
    """Experiments -> experiment grid -> a heatmap cell -> a trial -> a report and a figure; each shown
    number equals SQL on the same database; the database is unchanged by the whole walk."""
    sync_playwright = _need_browser()
    url, base = server
    before = db_fingerprint(url)
    experiment = "utrera-mini"
    trials = raw_frame(url, _cell_trials_sql(experiment))
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base + "/")
        page.wait_for_selector("#experiments tbody tr td")
        rows = {r[0]: r for r in _table_text(page, "experiments")}
        counts = raw_frame(url, "SELECT e.name, COUNT(et.trial_id) AS n, SUM(CASE WHEN t.status "
                                "IN ('completed', 'failed', 'cancelled') THEN 1 ELSE 0 END) AS f "
                                "FROM experiments e JOIN experiment_trials et ON et.experiment_id = e.id "
                                "JOIN trials t ON t.id = et.trial_id GROUP BY e.name")
        assert set(rows) == set(counts["name"])
        for name, total, finished in counts.itertuples(index=False):
            assert f"({int(finished)}/{int(total)})" in rows[name][3], rows[name]
        page.screenshot(path=str(shots / f"experiments-{backend}.png"))

        page.click(f"#experiments a:text-is('{experiment}')")
        page.wait_for_selector("#heatmap .js-plotly-plot .heatmaplayer")
        cells = trials.drop_duplicates(["kind", "arch", "source", "dataset", "ood", "method", "blocks",
                                        "subset_size", "epochs"])
        assert page.inner_text("#summary").startswith(f"{len(trials)} trials in {len(cells)} cells"), \
            page.inner_text("#summary")
        page.screenshot(path=str(shots / f"grid-{backend}.png"), full_page=True)
        page.locator(".rtgrid").screenshot(path=str(shots / f"dashboard-{backend}.png"))  # the README's image

        labels = page.evaluate("""() => { const gd = document.querySelector('#heatmap .js-plotly-plot');
            return {y: gd.data[0].y, x: gd.data[0].x, text: gd.data[0].text}; }""")
        row, column = next((r, c) for r in range(len(labels["y"])) for c in range(len(labels["x"]))
                           if labels["text"][r][c])
        _click_heatmap_cell(page, row, column)
        page.wait_for_url(re.compile(r".*/trials\?row=.*"))
        page.wait_for_selector("#trials tbody tr td")
        fields = dict(part.split("=", 1) for part in
                      (labels["y"][row] + " · " + labels["x"][column]).split(" · "))
        in_cell = trials[[{k: v for k, v in _fields_of(t, url).items() if k in fields} == fields
                          for t in trials.to_dict("records")]]
        assert page.inner_text("#trial-count") == f"{len(in_cell)} trials"
        shown_ids = [int(r[0]) for r in _table_text(page, "trials")]
        assert sorted(shown_ids) == sorted(int(i) for i in in_cell["id"])
        page.screenshot(path=str(shots / f"cell-{backend}.png"), full_page=True)

        trial_id = shown_ids[0]
        page.click(f"#trials a:text-is('{trial_id}')")
        page.wait_for_selector("#curves .js-plotly-plot .scatterlayer")
        epochs = raw_frame(url, f"SELECT epoch, test_acc FROM epoch_metrics WHERE trial_id = {trial_id} ORDER BY epoch")
        assert page.inner_text("#epoch-count") == f"{len(epochs)} epochs recorded"
        plotted = page.evaluate("""() => { const gd = document.querySelector('#curves .js-plotly-plot');
            const t = gd.data.find(d => d.name === 'test_acc'); return t ? Array.from(t.y) : null; }""")
        expected = [100 * float(v) for v in epochs["test_acc"]]
        assert plotted is not None and len(plotted) == len(expected)
        assert all(abs(a - b) < 1e-9 for a, b in zip(plotted, expected, strict=True))
        field_rows = {r[0]: r[1] for r in _table_text(page, "trial-fields")}
        assert float(field_rows["test_acc"]) == pytest.approx(float(trials.set_index("id").at[trial_id, "test_acc"]))
        page.screenshot(path=str(shots / f"trial-{backend}.png"), full_page=True)

        page.go_back()
        page.go_back()
        page.wait_for_selector("#reports-link")
        page.click("#reports-link")
        page.wait_for_selector("#report")
        page.click("#report")
        page.get_by_text("utrera-table7", exact=True).last.click()
        page.wait_for_selector("#report-title")
        page.wait_for_selector("#report-table-0 tbody tr td")
        _check_table7(page, url, experiment)
        page.click("#figure")
        page.get_by_text("accuracy-delta", exact=True).last.click()
        page.wait_for_selector("#report-figure .js-plotly-plot .scatterlayer")
        hover = page.evaluate("""() => { const gd = document.querySelector('#report-figure .js-plotly-plot');
            Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 0}]);
            return document.querySelector('#report-figure .hoverlayer').textContent; }""")
        assert re.search(r"n=\d+", hover) and "95% CI" in hover, hover
        page.screenshot(path=str(shots / f"report-{backend}.png"), full_page=True)
        browser.close()
    assert db_fingerprint(url) == before


def _check_table7(page: Any, url: str, experiment: str) -> None:
    """The table is the CLI's (`rtgrid report utrera-table7`), and its first natural cell is the mean ± CI
    of that cell's trials by plain SQL and the tests' own t-interval."""
    from orchestrator.results.reports import build_report

    header = page.evaluate("""() => Array.from(document.querySelectorAll('#report-table-0 th.dash-header'))
        .map(th => th.innerText.trim()).filter(h => h)""")
    shown = _table_text(page, "report-table-0")
    _caption, table = build_report("utrera-table7", experiment, url).tables[0]
    assert header == [str(c) for c in table.columns]
    assert shown == [[str(v) for v in row] for row in table.itertuples(index=False, name=None)]
    target, images, natural = shown[0][:3]
    assert header[:3] == ["target", "images", "natural"]
    rows = raw_frame(url, "SELECT t.source, t.subset_size, t.test_acc FROM trials t JOIN experiment_trials et "
                          "ON et.trial_id = t.id JOIN experiments e ON e.id = et.experiment_id "
                          f"WHERE e.name = '{experiment}' AND t.status = 'completed' AND t.kind = 'transfer' "
                          f"AND t.blocks = 3 AND t.dataset = '{target}' AND t.source = '{UTRERA_SOURCES['natural']}'")
    rows = rows[rows["subset_size"].map(lambda v: "full" if v is None or v != v else str(int(v))) == images]
    n, mean, ci = t_ci(rows["test_acc"].astype(float))
    assert n >= 2 and natural.startswith(f"{100 * mean:.1f} ± {100 * ci:.1f}"), (natural, n, mean, ci)


# --- loopback by default; refusals --------------------------------------------------------------------

def _listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses (hex, as the kernel writes them) listening on `port` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_ui_binds_loopback_by_default(results_sqlite: str) -> None:
    """No --host: the server listens on 127.0.0.1 only (0100007F in /proc/net/tcp), nowhere else."""
    port = _free_port()
    process, _base = _start_ui(results_sqlite, port=port)
    try:
        assert _listening_addresses(port) == {"0100007F"}
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_ui_refuses_a_remote_bind_without_the_flag(results_sqlite: str) -> None:
    line = error_line(run_cli("ui", "--db", results_sqlite, "--host", "0.0.0.0", expect=2))
    assert "not a loopback address" in line and "--allow-remote" in line


def test_ui_refuses_a_database_it_cannot_read(tmp_path: Path, results_sqlite: str) -> None:
    """A missing database or one at another schema revision: one line, exit 2, nothing served or created."""
    import shutil
    import sqlite3

    missing = tmp_path / "missing.sqlite"
    assert "no rtgrid database at" in error_line(run_cli("ui", "--db", f"sqlite:///{missing}", expect=2))
    assert not missing.exists()
    newer = tmp_path / "newer.sqlite"
    shutil.copy(results_sqlite.removeprefix("sqlite:///"), newer)
    with sqlite3.connect(newer) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffffeeee0000'")
    assert "revision ffffeeee0000" in error_line(run_cli("ui", "--db", f"sqlite:///{newer}", expect=2))


def test_ui_warns_on_an_allowed_remote_bind(results_sqlite: str) -> None:
    """--allow-remote: it serves on all addresses, after a warning that there is no authentication."""
    port = _free_port()
    process, _base = _start_ui(results_sqlite, "--host", "0.0.0.0", "--allow-remote", port=port)
    try:
        assert _listening_addresses(port) == {"00000000"}
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=20)
    assert "warning: the dashboard has no authentication" in err


def test_ui_reaches_no_write(results_url: str) -> None:
    """Every way the dashboard could write is refused: its one database handle (the `rtgrid query` reader)
    refuses DML and DDL, the server answers only GET pages and Dash's own callback POSTs (an unknown
    callback is an error), and the database is unchanged afterwards."""
    from orchestrator.results.query import ReadOnlyDatabase
    from orchestrator.ui.app import create_app

    before = db_fingerprint(results_url)
    with ReadOnlyDatabase(results_url) as database:
        for statement in ("INSERT INTO experiments (name, grid) VALUES ('x', 'y')",
                          "UPDATE trials SET status = 'failed'", "DELETE FROM epoch_metrics",
                          "CREATE TABLE x (a INTEGER)", "DROP TABLE trials"):
            with pytest.raises(Exception, match=r"(?i)read.?only|readonly|not authorized|prohibited"):
                database.rows(statement)
        client = create_app(database, timeout_s=10.0, refresh_s=5.0).server.test_client()
        assert client.get("/").status_code == 200
        for method in ("put", "delete", "patch"):
            assert getattr(client, method)("/").status_code == 405
        forged = client.post("/_dash-update-component", json={
            "output": "page.children", "outputs": {"id": "page", "property": "children"},
            "inputs": [{"id": "url", "property": "sql", "value": "DELETE FROM trials"}], "changedPropIds": []})
        assert forged.status_code >= 400
    assert db_fingerprint(results_url) == before


def test_ui_refreshes_while_a_grid_runs(results_sqlite: str, tmp_path: Path, shots: Path) -> None:
    """A trial that starts and completes while the grid page is open shows up without a reload (the
    --refresh tick) on the grid page's summary line. Writes go to a copy of the database
    through the Repository, as a running driver's would."""
    import sqlite3

    from db.repository import Repository
    from db.session import open_database

    sync_playwright = _need_browser()
    copy = tmp_path / "live.sqlite"
    with sqlite3.connect(results_sqlite.removeprefix("sqlite:///")) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    url = f"sqlite:///{copy}"
    pending = raw_frame(url, "SELECT t.spec_hash FROM trials t WHERE t.status = 'pending'")["spec_hash"].tolist()
    assert len(pending) == 1
    process, base = _start_ui(url)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(base + "/experiment/utrera-mini")
            page.wait_for_selector("#summary")
            assert "pending 1, running 0, completed 100" in page.inner_text("#summary")
            engine = open_database(url, create=False)
            repo = Repository(engine)
            repo.mark_started(pending[0])
            page.wait_for_function("() => document.querySelector('#summary').innerText.includes('running 1')")
            repo.complete(pending[0], {"test_acc": 0.5})
            page.wait_for_function("() => document.querySelector('#summary').innerText.includes('completed 101')")
            assert "pending 0, running 0, completed 101" in page.inner_text("#summary")
            engine.dispose()
            page.screenshot(path=str(shots / "refreshed.png"))
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_trial_curves_name_epoch_metrics() -> None:
    from db.models import EPOCH_METRICS
    from orchestrator.ui.app import CURVES

    drawn = [metric for _title, metrics, _scale in CURVES for metric in metrics]
    assert set(drawn) <= set(EPOCH_METRICS) and {"test_acc", "ood_acc", "er", "train_loss", "lr"} <= set(drawn)


def test_figure_points_are_the_trials_mean_and_ci(results_url: str) -> None:
    """Every point the reports page can draw carries n, mean and CI; for `blocks`, each point is the t-interval
    of its trials' final test accuracy by plain SQL (what the hover shows)."""
    from orchestrator.results.query import ReadOnlyDatabase
    from orchestrator.ui.data import FIGURES

    trials = raw_frame(results_url, "SELECT t.source, t.dataset, t.subset_size, t.blocks, t.test_acc FROM trials t "
                                    "JOIN experiment_trials et ON et.trial_id = t.id JOIN experiments e ON "
                                    "e.id = et.experiment_id WHERE e.name = 'utrera-mini' AND t.status = 'completed' "
                                    "AND t.kind = 'transfer' AND t.init = 'pretrained'")
    with ReadOnlyDatabase(results_url) as database:
        for name, (build, _y, _x) in FIGURES.items():
            frame = build(database, "utrera-mini")
            assert len(frame) and {"x", "series", "n", "mean", "ci95"} <= set(frame.columns), name
        points = FIGURES["blocks"][0](database, "utrera-mini")
    checked = 0
    for point in points.to_dict("records"):
        size = point["subset_size"]
        mine = trials[(trials["dataset"] == point["dataset"]) & (trials["blocks"] == point["blocks"])
                      & (trials["subset_size"].isna() if size is None or size != size
                         else trials["subset_size"] == size)]
        mine = mine[[expected_label(s, results_url) == point["source_label"] for s in mine["source"]]]
        n, mean, ci = t_ci(mine["test_acc"].astype(float))
        assert (point["n"], point["mean"]) == (n, pytest.approx(mean)), point
        assert point["ci95"] == pytest.approx(ci, nan_ok=True), point  # one seed: no interval
        checked += 1
    assert checked == len(points) > 0


def test_trial_table_filters_and_sorts(results_sqlite: str) -> None:
    """The all-trials table: the status filter keeps exactly the failed trials; sorting by test_acc puts the
    lowest completed trial first (both checked against SQL)."""
    sync_playwright = _need_browser()
    url = results_sqlite
    process, base = _start_ui(url)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(base + "/experiment/utrera-mini")
            page.click("#all-trials")
            page.wait_for_selector("#trials tbody tr td")
            headers = page.evaluate("""() => Array.from(document.querySelectorAll('#trials th.dash-header'))
                .map(th => th.innerText.trim())""")
            status_filter = page.locator("#trials th.dash-filter").nth(headers.index("status")).locator(
                "input[type=text]")
            status_filter.fill("failed")
            status_filter.press("Enter")
            page.wait_for_function("() => document.querySelectorAll('#trials tbody tr td').length < 60")
            failed = raw_frame(url, "SELECT t.id FROM trials t JOIN experiment_trials et ON et.trial_id = t.id "
                                    "JOIN experiments e ON e.id = et.experiment_id WHERE e.name = 'utrera-mini' "
                                    "AND t.status = 'failed'")
            assert sorted(int(r[0]) for r in _table_text(page, "trials")) == sorted(failed["id"].astype(int))
            status_filter.fill("completed")
            status_filter.press("Enter")
            sort = page.locator("#trials th.dash-header").nth(headers.index("test_acc")).locator(".column-header--sort")
            sort.click()
            lowest = raw_frame(url, "SELECT t.id FROM trials t JOIN experiment_trials et ON et.trial_id = t.id "
                                    "JOIN experiments e ON e.id = et.experiment_id WHERE e.name = 'utrera-mini' "
                                    "AND t.status = 'completed' ORDER BY t.test_acc ASC LIMIT 1")
            page.wait_for_function(f"""() => {{ const td = document.querySelector('#trials tbody tr td');
                return td && td.innerText.trim() === '{int(lowest['id'].iloc[0])}'; }}""")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
