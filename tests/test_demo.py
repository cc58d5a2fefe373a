"""`rtgrid demo` end to end (the smoke grid on embedded data, local Ray, a fresh SQLite file),
then again: the second run must run nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.grids import smoke

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
        # Every transfer from a pre-trained source has its ASR (from-scratch runs have no source to attack).
        assert scalar("SELECT count(*) FROM trials WHERE kind = 'transfer' AND source <> 'scratch' "
                      "AND asr IS NULL") == 0
        expected_rows = sum(len(s.param("eval_epochs") or range(s.epochs)) for s in grid.specs)
        assert scalar("SELECT count(*) FROM epoch_metrics") == expected_rows
        assert scalar("SELECT count(*) FROM epoch_metrics WHERE ood_acc IS NULL") == 0
        assert scalar("SELECT count(*) FROM epoch_metrics e JOIN trials t ON t.id = e.trial_id "
                      "WHERE t.kind = 'transfer' AND e.er IS NULL") == 0
        assert scalar("SELECT count(*) FROM er_baselines") == 2
    engine.dispose()

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ran 0 trials" in second.stdout
