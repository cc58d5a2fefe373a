"""`rtgrid demo` end to end (the smoke grid on embedded data, local Ray, a fresh SQLite file),
then again: the second run must run nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from results_data import assert_frames_agree, independent_demo_frames
from sqlalchemy import create_engine, text

from orchestrator.console.demo import DEMO_EXPERIMENT
from orchestrator.plan.grids import smoke
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.reports import demo_frames

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _demo(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "demo", "--quiet", "--db",
                           f"sqlite:///{workdir / 'demo.sqlite'}", "--artifacts", str(workdir / "artifacts")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_demo_completes_fills_everything_and_reruns_nothing(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    grid = smoke()
    assert f"ran {len(grid.specs)} trials" in first.stdout and "0 failed" in first.stdout
    assert "test accuracy (%) by source and training images" in first.stdout
    assert "rtgrid query" in first.stdout and "ASR" in first.stdout

    engine = create_engine(f"sqlite:///{tmp_path / 'demo.sqlite'}")
    with engine.connect() as conn:
        def scalar(sql: str) -> int:
            return int(conn.execute(text(sql)).scalar_one())

        assert scalar("SELECT count(*) FROM trials") == len(grid.specs)
        assert scalar("SELECT count(*) FROM trials WHERE status <> 'completed' OR test_acc IS NULL") == 0
        # Every transfer has its ASR: the retrain testbed carries the natural source for the attack.
        assert scalar("SELECT count(*) FROM trials WHERE kind = 'transfer' AND asr IS NULL") == 0
        assert scalar("SELECT count(*) FROM trials WHERE claimed_by IS NOT NULL") == 0
        expected_rows = sum(len(s.param("eval_epochs") or range(s.epochs)) for s in grid.specs)
        assert scalar("SELECT count(*) FROM epoch_metrics") == expected_rows
        assert scalar("SELECT count(*) FROM epoch_metrics WHERE ood_acc IS NULL") == 0
        assert scalar("SELECT count(*) FROM epoch_metrics e JOIN trials t ON t.id = e.trial_id "
                      "WHERE t.kind = 'transfer' AND e.er IS NULL") == 0
        assert scalar("SELECT count(*) FROM er_baselines") == 2
    engine.dispose()

    # The closing tables' numbers, recomputed independently from the raw rows of this real run.
    db_url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    with ReadOnlyDatabase(db_url) as database:
        accuracy, robustness, _ = demo_frames(database, DEMO_EXPERIMENT)
    independent = independent_demo_frames(db_url, DEMO_EXPERIMENT)
    assert_frames_agree(accuracy, independent["accuracy"], ["dataset", "source_label", "subset_size"])
    assert_frames_agree(robustness, independent["robustness"], ["dataset", "source_label"])
    for row in accuracy.itertuples(index=False):  # and those numbers are the ones printed
        assert f"{100 * row.mean:.1f} ± {100 * row.ci95:.1f}" in first.stdout

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ran 0 trials" in second.stdout
