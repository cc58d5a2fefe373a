"""ER baselines keyed by the evaluation protocol (issue 11, items 2 and 3), SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from db.repository import Repository
from orchestrator.errors import UserError
from orchestrator.results import er as er_fits
from tests.test_db import planned, spec_row


def _row(i: int, params: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return spec_row(i, dataset="digits", ood="noise-2", arch="tiny_resnet", params=params or {}, **overrides)


def _run(repo: Repository, experiment: str, rows: list[dict[str, Any]], shift: float = 0.0) -> int:
    """Plan `rows` into `experiment` and complete each with two epochs of distinct accuracies."""
    experiment_id, _ = planned(repo, experiment, rows)
    for i, row in enumerate(rows):
        test_acc = 0.30 + 0.05 * i
        ood_acc = min(0.95, 0.20 + 0.04 * i + 0.01 * (i % 3) + shift)
        repo.mark_started(row["spec_hash"])
        repo.record_epoch(row["spec_hash"], 1, {"test_acc": test_acc - 0.05, "ood_acc": ood_acc - 0.03})
        repo.record_epoch(row["spec_hash"], 2, {"test_acc": test_acc, "ood_acc": ood_acc})
        repo.complete(row["spec_hash"], {"test_acc": test_acc, "ood_acc": ood_acc})
    return experiment_id


def _er(repo: Repository, experiment: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    trials = [(t.id, t.er, t.er_baseline_id) for t in repo.trial_rows(experiment)]
    with repo.engine.connect() as connection:
        epochs = [tuple(r) for r in connection.exec_driver_sql(
            "SELECT m.trial_id, m.epoch, m.er, m.er_baseline_id FROM epoch_metrics m JOIN experiment_trials et "
            "ON et.trial_id = m.trial_id JOIN experiments e ON e.id = et.experiment_id "
            f"WHERE e.name = '{experiment}' ORDER BY m.trial_id, m.epoch")]
    return trials, epochs


def test_a_fit_in_one_experiment_leaves_another_experiments_er(repo: Repository) -> None:
    """(a) Old code: `er fit` back-filled every trial of the (ID, OOD) pair, A's included."""
    _run(repo, "A", [_row(i, source="scratch", method="retrain") for i in range(8)])
    _run(repo, "B", [_row(100 + i, source="scratch", method="retrain") for i in range(8)], shift=0.1)
    [fit_a] = er_fits.fit_from_experiment(repo, "A", "digits", "noise-2", testbed_experiment="A")
    before = _er(repo, "A")
    assert all(er is not None and base == fit_a.baseline_id for _, er, base in before[0])
    assert all(row[2] is not None and row[3] == fit_a.baseline_id for row in before[1])
    [fit_b] = er_fits.fit_from_experiment(repo, "B", "digits", "noise-2")
    assert fit_b.baseline_id != fit_a.baseline_id
    assert _er(repo, "A") == before
    assert {base for _, _, base in _er(repo, "B")[0]} == {fit_b.baseline_id}


def test_b_each_protocol_gets_its_own_baseline(repo: Repository) -> None:
    """(b) Old code: one baseline per (ID, OOD) name pair, whatever the input size."""
    rows = [_row(i, {"input_size": 16 if i % 2 else 32}, source="scratch", method="retrain") for i in range(12)]
    _run(repo, "P", rows)
    fits = er_fits.fit_from_experiment(repo, "P", "digits", "noise-2")
    assert len(fits) == 2 and len({f.baseline_id for f in fits}) == 2
    by_key = {f.protocol_key: f.baseline_id for f in fits}
    assert set(by_key) == {'{"input_size":16}', '{"input_size":null}'}  # 32 is the kernel default
    for trial in repo.trial_rows("P"):
        size = 16 if '"input_size":16' in trial.spec_json else None
        assert trial.er_baseline_id == by_key['{"input_size":16}' if size else '{"input_size":null}']
    stored = {(b.id, b.input_size) for b in repo.baselines("digits", "noise-2")}
    assert stored == {(by_key['{"input_size":16}'], 16), (by_key['{"input_size":null}'], None)}


def test_c_published_baseline_on_another_pair_needs_force(repo: Repository) -> None:
    """(c) Old code: imagenet-v2 coefficients were stored for any pair."""
    _run(repo, "A", [_row(i) for i in range(3)])
    with pytest.raises(UserError, match="fitted on imagenet->imagenet-v2, not digits->noise-2; pass --force"):
        er_fits.use_published(repo, "imagenet-v2", "digits", "noise-2", experiment="A")
    assert repo.baselines() == []
    fit = er_fits.use_published(repo, "imagenet-v2", "digits", "noise-2", experiment="A", force=True)
    assert fit.trials_filled == 3 and fit.fitted_from == "published:imagenet-v2"
    assert er_fits.use_published(repo, "imagenet-v2", "imagenet", "imagenet-v2").trials_filled == 0


def test_d_circular_or_small_fits_warn(repo: Repository, tmp_path: Path) -> None:
    """(d) Old code: no warnings (FitOutcome had none)."""
    _run(repo, "A", [_row(i, source="scratch", method="retrain") for i in range(5)])
    _run(repo, "Y", [_row(50 + i, source="scratch", method="retrain") for i in range(9)])
    [circular] = er_fits.fit_from_experiment(repo, "A", "digits", "noise-2")
    assert any("circular" in w for w in circular.warnings) and any("n=5 < 8" in w for w in circular.warnings)
    [independent] = er_fits.fit_from_experiment(repo, "A", "digits", "noise-2", testbed_experiment="Y")
    assert independent.warnings == () and independent.fit.n_points == 9 and independent.trials_filled == 5
    assert independent.fit.slope_ci_low is not None and independent.fit.slope_ci_high is not None
    assert independent.fit.slope_ci_low < independent.fit.slope < independent.fit.slope_ci_high
    csv = tmp_path / "testbed.csv"
    csv.write_text("id_acc,ood_acc\n0.5,0.4\n0.6,0.48\n0.7,0.6\n")
    fit = er_fits.fit_from_csv(repo, str(csv), "digits", "noise-2", experiment="A")
    assert fit.warnings == ("warning: ER baseline fitted on n=3 < 8 testbed points; its slope is poorly determined",)


def test_e_er_report_shows_the_baseline(repo: Repository) -> None:
    """(e) Old code: the er report showed no baseline."""
    from orchestrator.results.reports import build_report, render

    rows = [_row(i, source="scratch", method="retrain", kind="transfer") for i in range(9)]
    _run(repo, "A", rows)
    _run(repo, "Y", [_row(50 + i, source="scratch", method="retrain") for i in range(9)])
    [fit] = er_fits.fit_from_experiment(repo, "A", "digits", "noise-2", testbed_experiment="Y")
    text = render(build_report("er", "A", repo.engine.url.render_as_string(hide_password=False)))
    half = (fit.fit.slope_ci_high - fit.fit.slope_ci_low) / 2  # type: ignore[operator]
    assert f"{fit.fit.slope:.3f} ± {half:.3f}" in text
    line = next(line for line in text.splitlines() if "experiment:Y" in line)
    assert str(fit.baseline_id) in line and " 9 " in f" {line} " and f"{fit.fit.r:.3f}" in line


def test_f_testbed_is_init_random(repo: Repository) -> None:
    """The testbed is main's one rule, `trials.init = 'random'`: retrain or source scratch count; a distilled
    (renofeation: random weights, pre-trained teacher) or fine-tuned transfer does not, though it gets ER."""
    rows = [_row(i, source="scratch", method="retrain") for i in range(2)]
    rows.append(_row(2, method="retrain", source="torchvision:resnet18"))
    rows += [_row(10 + i, method="renofeation", source="torchvision:resnet18") for i in range(4)]
    rows += [_row(20 + i, method="finetune", source="torchvision:resnet18") for i in range(2)]
    _run(repo, "T", rows)
    [fit] = er_fits.fit_from_experiment(repo, "T", "digits", "noise-2")
    assert fit.fit.n_points == 3 and fit.trials_filled == len(rows)
    assert "init = random" in fit.testbed
