"""Report speed: `rtgrid report utrera-table7` on a 14,400-trial database (15 epoch rows each)
against the same aggregation done naively in pandas from the raw rows.

    .venv/bin/python bench/report_speed.py                # SQLite in a temp dir
    .venv/bin/python bench/report_speed.py --db postgresql://postgres@127.0.0.1/bench_db   # an EMPTY database

The database is real: the utrera2021 preset's 14,400 TrialSpecs planned through the planner and
the Repository (the migrated schema), then random but plausible outcomes (final metrics and 15
epoch rows per trial, 216,000 rows) written in bulk. Prints the report time (cold: first call,
opening the database; warm: median of the next runs), the naive pandas time and their ratio,
and a cold `python -m`-style end-to-end CLI time (interpreter start and imports included).
Target: the report answers in < 1 s on SQLite.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.models import Base  # noqa: E402
from db.repository import Repository  # noqa: E402
from db.session import open_database  # noqa: E402
from orchestrator.plan.grids import utrera2021  # noqa: E402
from orchestrator.plan.planner import record_plan  # noqa: E402
from orchestrator.results.query import ReadOnlyDatabase  # noqa: E402
from orchestrator.results.reports import build_report, render  # noqa: E402

EXPERIMENT = "utrera2021"
EPOCH_ROWS = 15
LABEL_BONUS = {"torchvision:resnet50": 0.0, "robustness:imagenet_l2_3_0": 0.03,
               "robustness:imagenet_linf_4": 0.02, "robustness:imagenet_linf_8": 0.0}


def build(url: str) -> int:
    """Plan the 14,400-spec grid and fill outcomes; returns the number of epoch rows."""
    engine = open_database(url, create=True)
    grid = utrera2021()
    record_plan(Repository(engine), grid, EXPERIMENT)
    rng = np.random.default_rng(0)
    trials = Base.metadata.tables["trials"]
    epochs = Base.metadata.tables["epoch_metrics"]
    finals, rows = [], []
    with engine.begin() as connection:
        ids = dict(connection.execute(trials.select().with_only_columns(trials.c.spec_hash, trials.c.id)).all())
    for spec in grid.specs:
        size = spec.subset_size or 50_000
        final = float(np.clip(0.3 + 0.12 * math.log10(size) + LABEL_BONUS[spec.source or ""] + 0.01 * (spec.blocks or 0)
                              + rng.normal(0, 0.02), 0.01, 0.99))
        curve = np.clip(final * (0.5 + 0.5 * np.arange(1, EPOCH_ROWS + 1) / EPOCH_ROWS)
                        + rng.normal(0, 0.01, EPOCH_ROWS), 0.01, 0.99)
        curve[-1] = final
        trial_id = ids[spec.spec_hash]
        ood = np.clip(curve - 0.1, 0, 1)
        er = rng.normal(0.01, 0.01, EPOCH_ROWS)
        finals.append({"h": spec.spec_hash, "v_test_acc": final, "v_ood_acc": float(ood[-1]),
                       "v_asr": float(rng.uniform(0.3, 0.9)), "v_er": float(er[-1])})
        epoch_numbers = np.linspace(1, spec.epochs, EPOCH_ROWS).round().astype(int)
        for i, epoch in enumerate(epoch_numbers):
            rows.append({"trial_id": trial_id, "epoch": int(epoch), "train_loss": float(2 / (i + 1)),
                         "train_acc": float(min(curve[i] + 0.05, 1)), "test_acc": float(curve[i]),
                         "ood_acc": float(ood[i]), "er": float(er[i]), "lr": 0.1, "seconds": 30.0})
    from sqlalchemy import bindparam, update

    with engine.begin() as connection:
        connection.execute(
            update(trials).where(trials.c.spec_hash == bindparam("h")).values(
                status="completed", attempts=1, duration_s=100.0,
                **{name: bindparam(f"v_{name}") for name in ("test_acc", "ood_acc", "asr", "er")}),
            finals)
        for start in range(0, len(rows), 20_000):
            connection.execute(epochs.insert(), rows[start:start + 20_000])
    engine.dispose()
    return len(rows)


def naive(url: str, blocks: int = 3) -> pd.DataFrame:
    """The baseline: read the raw tables into pandas, find each trial's last epoch, aggregate."""
    with ReadOnlyDatabase(url) as db:
        trials = db.frame("SELECT * FROM trials")
        epochs = db.frame("SELECT * FROM epoch_metrics")
        links = db.frame("SELECT * FROM experiment_trials")
        experiments = db.frame("SELECT * FROM experiments")
    experiment_id = experiments.loc[experiments["name"] == EXPERIMENT, "id"].iloc[0]
    trials = trials[trials["id"].isin(links.loc[links["experiment_id"] == experiment_id, "trial_id"])]
    last = epochs.loc[epochs.groupby("trial_id")["epoch"].idxmax(), ["trial_id", "test_acc"]]
    merged = trials.drop(columns=["test_acc"]).merge(last, left_on="id", right_on="trial_id")
    merged = merged[(merged["kind"] == "transfer") & (merged["status"] == "completed") & (merged["blocks"] == blocks)]
    grouped = merged.groupby(["dataset", merged["subset_size"].fillna(-1), "source"])["test_acc"]
    out = grouped.agg(n="count", mean="mean", sd="std").reset_index()
    out["ci95"] = scipy_stats.t.ppf(0.975, out["n"] - 1) * out["sd"] / np.sqrt(out["n"])
    return out


def timed(func, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = func(*args)
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help="An empty database URL (default: SQLite in a temp dir).")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'report_speed.sqlite'}"
        build_s, n_rows = timed(build, url)
        print(f"built {url.split('://')[0]} database: 14,400 trials, {n_rows:,} epoch rows in {build_s:.1f} s")

        cold_s, report = timed(build_report, "utrera-table7", EXPERIMENT, url, 3)
        warm = [timed(build_report, "utrera-table7", EXPERIMENT, url, 3)[0] for _ in range(args.repeats)]
        naive_times = []
        for _ in range(max(1, args.repeats // 2)):
            seconds, baseline = timed(naive, url)
            naive_times.append(seconds)
        warm_s, naive_s = statistics.median(warm), statistics.median(naive_times)

        mine = report.data.assign(key=report.data["subset_size"].fillna(-1).astype(int))
        check = mine.merge(baseline.assign(key=baseline["subset_size"].astype(int)), on=["dataset", "key", "source"])
        assert len(check) == len(mine) == len(baseline), "report and naive baseline disagree on the cells"
        assert np.allclose(check["mean_x"], check["mean_y"]) and np.allclose(check["ci95_x"], check["ci95_y"])

        command = [sys.executable, "-c", "import sys; from cli import report; "
                   "sys.argv[0] = 'rtgrid report'; report()", "utrera-table7", "--experiment", EXPERIMENT,
                   "--db", url]
        cli_s = timed(lambda: subprocess.run(command, cwd=ROOT, capture_output=True, check=True))[0]

        print("\n".join(render(report, "table").splitlines()[4:7]) + "\n…")
        print(f"utrera-table7 report: cold {cold_s * 1000:.0f} ms, warm {warm_s * 1000:.0f} ms (median of "
              f"{args.repeats}); {len(report.data)} cells, one aggregating SQL query")
        print(f"naive pandas from the raw rows: {naive_s * 1000:.0f} ms (median of {len(naive_times)})")
        print(f"ratio naive / report (warm): {naive_s / warm_s:.1f}x; target: report < 1 s -> "
              f"{'OK' if warm_s < 1 and cold_s < 1 else 'MISSED'}")
        print(f"end to end CLI (new interpreter, imports included): {cli_s:.2f} s")
        others = {name: timed(build_report, name, EXPERIMENT, url, None)[0] for name in ("utrera-blocks", "er", "demo")}
        print("other reports on the same database: " + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in others.items()))


if __name__ == "__main__":
    main()
