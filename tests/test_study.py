"""The embedded study on real MNIST-10k (`rtgrid demo --reduced --target mnist`): it completes, and its
verdict table is computed from the database (changing the stored numbers flips a verdict)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.console.demo import DemoOptions
from orchestrator.plan.grids import study
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.study import NOT_REPRODUCED, REPRODUCED, verdict_frame

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _mnist_root() -> Path | None:
    """$RTGRID_SHARED_DATASETS/mnist-10k (default ../shared/datasets, as tests/test_data.py), if present."""
    shared = Path(os.environ.get("RTGRID_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
    root = shared / "mnist-10k"
    return root if (root / "MNIST" / "raw").is_dir() else None


MNIST = _mnist_root()


@pytest.fixture(scope="module")
def mnist_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, subprocess.CompletedProcess]:
    if MNIST is None:
        pytest.skip("real MNIST-10k not found ($RTGRID_SHARED_DATASETS/mnist-10k, default ../shared/datasets)")
    workdir = tmp_path_factory.mktemp("study")
    db_url = f"sqlite:///{workdir / 'study.sqlite'}"
    run = subprocess.run([sys.executable, "-m", "cli", "demo", "--quiet", "--reduced", "--target", "mnist",
                          "--data-root", str(MNIST), "--db", db_url, "--artifacts", str(workdir / "artifacts")],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)  # a hang guard only
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout)  # the verdict table on MNIST, shown with pytest -s
    return db_url, DemoOptions(target="mnist", scale="reduced").experiment, run


def _verdicts(db_url: str, experiment: str):  # type: ignore[no-untyped-def]
    with ReadOnlyDatabase(db_url) as database:
        return verdict_frame(database, experiment)


def test_mnist_study_completes_with_every_claim(mnist_study: tuple[str, str, subprocess.CompletedProcess]) -> None:
    db_url, experiment, run = mnist_study
    grid = study(0, "mnist", "reduced")
    assert f"ran {len(grid.specs)} trials" in run.stdout and "0 failed" in run.stdout
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM trials WHERE status <> 'completed'")).scalar_one() == 0
        # every MNIST run has its ASR (the attack covers the whole 2,000-image test set)
        missing = conn.execute(text("SELECT count(*) FROM trials WHERE dataset = 'mnist' AND asr IS NULL"))
        assert missing.scalar_one() == 0
    engine.dispose()
    frame = _verdicts(db_url, experiment)
    papers = set(frame["paper"])
    assert papers == {"Utrera", "Chin", "Andreassen"}, frame
    assert set(frame["verdict"]) <= {REPRODUCED, NOT_REPRODUCED}
    assert (frame["n"] >= 2).all()
    for row in frame.itertuples(index=False):  # the printed table is this frame
        assert f"{100 * row.effect:+.1f}" in run.stdout and row.claim in run.stdout
    for name in ("study-accuracy", "study-asr", "study-er"):
        assert f"{experiment}-{name}.png" in run.stdout


def test_verdicts_follow_the_database(mnist_study: tuple[str, str, subprocess.CompletedProcess]) -> None:
    """Rewrite the robust runs' stored accuracy in the MNIST Utrera cell: the verdict follows the rows."""
    db_url, experiment, _ = mnist_study
    engine = create_engine(db_url)
    robust_cell = ("SELECT t.id, t.seed FROM trials t JOIN trials s ON s.spec_hash = substr(t.source, 6) "
                   "WHERE t.dataset = 'mnist' AND t.method = 'finetune' AND t.subset_size = 100 "
                   "AND s.method = 'pgd-linf'")
    natural_acc = ("SELECT t.seed, t.test_acc FROM trials t JOIN trials s ON s.spec_hash = substr(t.source, 6) "
                   "WHERE t.dataset = 'mnist' AND t.method = 'finetune' AND t.subset_size = 100 "
                   "AND s.method = 'natural'")
    claim = "pgd-linf source > natural source (test accuracy)"

    def set_gap(gap: float) -> None:
        with engine.begin() as conn:
            natural = dict(conn.execute(text(natural_acc)).all())
            for index, (trial_id, seed) in enumerate(conn.execute(text(robust_cell)).all()):
                value = min(1.0, max(0.0, natural[seed] + gap + 0.001 * index))
                conn.execute(text("UPDATE trials SET test_acc = :v WHERE id = :id"), {"v": value, "id": trial_id})

    def row() -> tuple[float, str]:
        frame = _verdicts(db_url, experiment)
        found = frame[(frame["claim"] == claim) & frame["cell"].str.startswith("mnist, 100 images")]
        assert len(found) == 1, frame
        return float(found["effect"].iloc[0]), str(found["verdict"].iloc[0])

    set_gap(-0.2)
    effect, verdict = row()
    assert effect == pytest.approx(-0.199, abs=0.002) and verdict == NOT_REPRODUCED
    set_gap(0.2)
    effect, verdict = row()
    assert effect == pytest.approx(0.201, abs=0.002) and verdict == REPRODUCED
    engine.dispose()
    # the CLI report reads the same rows
    report = subprocess.run([sys.executable, "-m", "cli", "report", "study", "--experiment", experiment,
                             "--db", db_url], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    assert "+20.1" in report.stdout
