"""Effective-robustness baselines: fit (published, CSV testbed, or the grid's own random-init
runs), store in `er_baselines`, and back-fill ER for every stored epoch of that (ID, OOD) pair."""

from __future__ import annotations

from dataclasses import dataclass

from db.repository import Repository
from orchestrator.errors import UserError
from workers.trainable import (
    PUBLISHED_BASELINES,
    Baseline,
    effective_robustness,
    fit_baseline,
    load_testbed_csv,
)


@dataclass(frozen=True)
class FitOutcome:
    id_dataset: str
    ood_dataset: str
    slope: float
    intercept: float
    transform: str
    n_points: int
    r: float | None
    fitted_from: str
    epochs_filled: int
    trials_filled: int


def _store_and_fill(repo: Repository, id_dataset: str, ood_dataset: str, fit: Baseline, fitted_from: str
                    ) -> FitOutcome:
    repo.save_baseline(id_dataset=id_dataset, ood_dataset=ood_dataset, transform=fit.transform, slope=fit.slope,
                       intercept=fit.intercept, n_points=fit.n_points, r=fit.r, fitted_from=fitted_from)
    epochs = repo.epoch_accuracies(id_dataset, ood_dataset)
    epoch_er = [(row.trial_id, row.epoch, effective_robustness(row.test_acc, row.ood_acc, fit)) for row in epochs]
    repo.set_epoch_er(epoch_er)
    trials = repo.trial_accuracies(id_dataset, ood_dataset)
    trial_er = [(row.trial_id, effective_robustness(row.test_acc, row.ood_acc, fit)) for row in trials]
    repo.set_trial_er(trial_er)
    return FitOutcome(id_dataset, ood_dataset, fit.slope, fit.intercept, fit.transform, fit.n_points, fit.r,
                      fitted_from, len(epoch_er), len(trial_er))


def fit_from_experiment(repo: Repository, experiment: str, id_dataset: str, ood_dataset: str,
                        transform: str = "logit") -> FitOutcome:
    """Fit on the experiment's converged testbed runs: its transfers with init = random (trained on
    the ID data alone from random weights: `retrain`, or any method from source 'scratch'; the
    distilled ones, Renofeation and DELTA-R, learn from a pre-trained teacher and are left out),
    their final accuracies."""
    experiment_id = repo.experiment_id(experiment)
    if experiment_id is None:
        raise UserError(f"unknown experiment {experiment!r}")
    rows = repo.testbed_points(experiment_id, id_dataset, ood_dataset)
    if len(rows) < 3:
        raise UserError(f"experiment {experiment!r} has {len(rows)} completed testbed (retrain) runs on "
                        f"{id_dataset}->{ood_dataset}; a baseline needs at least 3")
    fit = fit_baseline([r[0] for r in rows], [r[1] for r in rows], transform=transform)
    return _store_and_fill(repo, id_dataset, ood_dataset, fit, f"experiment:{experiment}")


def fit_from_csv(repo: Repository, path: str, id_dataset: str, ood_dataset: str, transform: str = "logit"
                 ) -> FitOutcome:
    id_acc, ood_acc = load_testbed_csv(path)
    fit = fit_baseline(id_acc, ood_acc, transform=transform)
    return _store_and_fill(repo, id_dataset, ood_dataset, fit, f"csv:{path}")


def use_published(repo: Repository, name: str, id_dataset: str, ood_dataset: str, transform: str = "logit"
                  ) -> FitOutcome:
    table = PUBLISHED_BASELINES
    if name not in table:
        raise UserError(f"unknown published baseline {name!r} (known: {', '.join(table)})")
    entry = table[name]
    fit = entry[transform] if isinstance(entry, dict) else entry
    return _store_and_fill(repo, id_dataset, ood_dataset, fit, f"published:{name}")
