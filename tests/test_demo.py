"""`rtgrid demo` end to end (the reduced embedded study on generated data, local Ray, a fresh SQLite
file), then again: the second run must run nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.console.demo import TESTBED_SUFFIX, DemoOptions
from orchestrator.plan.grids import study, study_testbed
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.study import verdict_frame

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "demo", "--quiet", "--reduced", *extra, "--db",
                           f"sqlite:///{workdir / 'demo.sqlite'}", "--artifacts", str(workdir / "artifacts")],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)  # a hang guard only


def test_demo_completes_fills_everything_and_reruns_nothing(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    grid = study(0, "digits", "reduced")
    experiment = DemoOptions(scale="reduced").experiment
    assert f"ran {len(grid.specs)} trials" in first.stdout and "0 failed" in first.stdout
    assert "each claim: mean paired effect" in first.stdout
    assert f"rtgrid report study --experiment {experiment}" in first.stdout

    engine = create_engine(f"sqlite:///{tmp_path / 'demo.sqlite'}")
    with engine.connect() as conn:
        def scalar(sql: str) -> int:
            return int(conn.execute(text(sql)).scalar_one())

        assert scalar("SELECT count(*) FROM trials") == len(grid.specs)
        assert scalar("SELECT count(*) FROM trials WHERE status <> 'completed' OR test_acc IS NULL") == 0
        # the sources' shape/pattern-conflict diagnostic is stored (ood_acc on shape-conflict)
        assert scalar("SELECT count(*) FROM trials WHERE kind = 'source' AND ood = 'shape-conflict' "
                      "AND ood_acc IS NOT NULL") == 3
        # ASR on the whole digit test set for every digit-target run
        assert scalar("SELECT count(*) FROM trials WHERE dataset = 'digits' AND asr IS NULL") == 0
        # one ER baseline, fitted on the testbed experiment, which holds exactly the testbed's runs
        assert scalar("SELECT count(*) FROM er_baselines") == 1
        assert scalar(f"SELECT count(*) FROM er_baselines WHERE fitted_from = 'experiment:{experiment}"
                      f"{TESTBED_SUFFIX}'") == 1
        testbed = study_testbed(0, "digits", "reduced")
        assert scalar(f"SELECT count(*) FROM experiment_trials et JOIN experiments e ON e.id = et.experiment_id "
                      f"WHERE e.name = '{experiment}{TESTBED_SUFFIX}'") == len(testbed.specs)
        assert scalar("SELECT count(*) FROM epoch_metrics m JOIN trials t ON t.id = m.trial_id "
                      "WHERE t.dataset = 'shape-target' AND t.subset_size IS NULL AND m.er IS NULL") == 0
    engine.dispose()

    with ReadOnlyDatabase(f"sqlite:///{tmp_path / 'demo.sqlite'}") as database:
        verdicts = verdict_frame(database, experiment)
    assert set(verdicts["paper"]) == {"Utrera", "Chin", "Andreassen"}
    for row in verdicts.itertuples(index=False):
        assert row.verdict in first.stdout and f"{100 * row.effect:+.1f}" in first.stdout
    for name in ("study-accuracy", "study-asr", "study-er"):
        assert (tmp_path / "artifacts" / f"{experiment}-{name}.png").stat().st_size > 0

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ran 0 trials" in second.stdout


def test_demo_refuses_mnist_without_a_data_root(tmp_path: Path) -> None:
    run = _demo(tmp_path, "--target", "mnist")
    assert run.returncode == 2
    assert "give --data-root" in run.stderr
    assert not (tmp_path / "demo.sqlite").exists()
