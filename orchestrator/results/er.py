"""Effective-robustness baselines: fit (published, CSV testbed, or an experiment's random-init
testbed runs), store in `er_baselines` keyed by the evaluation protocol, and back-fill ER for the
trials of the one experiment the fit was asked for.

The evaluation protocol of a spec (the one definition, PROTOCOL_PARAMS below): its ID set, OOD set,
`input_size` and the generator / evaluation parameters that change what the ID and OOD accuracies
measure. A value equal to the catalog's default is left out, so a spec that writes the default and
one that omits it share a protocol. A fit never rewrites ER outside its target experiment, nor of a
trial of another protocol; every ER value records the baseline that produced it (er_baseline_id).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from db.models import protocol_key
from db.repository import Repository
from orchestrator.errors import UserError
from workers.trainable import (
    PUBLISHED_BASELINES,
    PUBLISHED_PAIRS,
    Baseline,
    catalog,
    effective_robustness,
    fit_baseline,
    load_testbed_csv,
)

# Spec params that define the ID/OOD task besides the two set names and input_size: the synthetic
# generator (num_classes, train_images), the transform recipe (augment: the test transform too) and
# the evaluation cap (eval_images: how many test / OOD images an accuracy is measured on).
PROTOCOL_PARAMS: tuple[str, ...] = ("num_classes", "train_images", "augment", "eval_images")
MIN_TESTBED = 8  # fewer testbed points than this: the fit is reported with a warning


Protocol = tuple[int | None, dict[str, Any]]


def protocol_of(params: Mapping[str, Any]) -> Protocol:
    """(input_size, generator params) of a spec's params; values equal to the catalog default are left out
    (input_size None = the kernel default)."""
    def given(name: str) -> Any:
        value = params.get(name)
        return None if value is None or value == catalog.PARAMS[name].default else value

    size = given("input_size")
    return (int(size) if size is not None else None,
            {name: given(name) for name in PROTOCOL_PARAMS if given(name) is not None})


def spec_protocol(spec_json: str) -> Protocol:
    return protocol_of(json.loads(spec_json).get("params") or {})


def key_of(protocol: Protocol) -> str:
    return protocol_key(*protocol)


def parse_protocol(text: str) -> Protocol:
    """A protocol as printed (its key, e.g. {"input_size":16,"num_classes":5}) -> (input_size, params)."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"--protocol must be JSON, e.g. {{\"input_size\":16}}; got {text!r}") from None
    if not isinstance(values, dict) or set(values) - {"input_size", *PROTOCOL_PARAMS}:
        raise UserError(f"--protocol takes input_size and {', '.join(PROTOCOL_PARAMS)}; got {text!r}")
    return protocol_of(values)


@dataclass(frozen=True)
class FitOutcome:
    id_dataset: str
    ood_dataset: str
    baseline_id: int
    protocol_key: str
    fit: Baseline  # slope, intercept, transform, n_points, r and the slope's 95% CI
    fitted_from: str
    testbed: str
    epochs_filled: int
    trials_filled: int
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        fit = self.fit
        ci = (f" (95% CI {fit.slope_ci_low:.4f}..{fit.slope_ci_high:.4f})"
              if fit.slope_ci_low is not None and fit.slope_ci_high is not None else "")
        r = f", r={fit.r:.3f}" if fit.r is not None else ""
        return (f"baseline {self.baseline_id}: {fit.transform} fit {self.id_dataset}->{self.ood_dataset} "
                f"protocol {self.protocol_key} from {self.fitted_from}: slope {fit.slope:.4f}{ci}, "
                f"intercept {fit.intercept:.4f}, n={fit.n_points}{r}; ER filled for {self.epochs_filled} "
                f"epoch rows and {self.trials_filled} trials")


def _warnings(fit: Baseline, circular: bool) -> tuple[str, ...]:
    out = []
    if circular:
        out.append("warning: circular ER fit: the testbed is the target experiment's own random-init runs "
                   "(their mean residual is zero by construction); use --testbed-experiment or --csv")
    if fit.n_points < MIN_TESTBED:
        out.append(f"warning: ER baseline fitted on n={fit.n_points} < {MIN_TESTBED} testbed points; "
                   "its slope is poorly determined")
    return tuple(out)


def _store_and_fill(repo: Repository, experiment_id: int | None, id_dataset: str, ood_dataset: str,
                    protocol: Protocol, fit: Baseline, fitted_from: str, testbed: str,
                    warnings: tuple[str, ...] = ()) -> FitOutcome:
    input_size, params = protocol
    baseline_id = repo.save_baseline(
        id_dataset=id_dataset, ood_dataset=ood_dataset, input_size=input_size, protocol=params,
        transform=fit.transform, slope=fit.slope, intercept=fit.intercept, n_points=fit.n_points, r=fit.r,
        slope_ci_low=fit.slope_ci_low, slope_ci_high=fit.slope_ci_high, fitted_from=fitted_from, testbed=testbed)
    key = key_of(protocol)
    epoch_er: list[tuple[int, int, float | None]] = []
    trial_er: list[tuple[int, float | None]] = []
    if experiment_id is not None:
        for target in repo.er_targets(experiment_id, id_dataset, ood_dataset):
            if key_of(spec_protocol(target.spec_json)) != key:
                continue
            epoch_er += [(row.trial_id, row.epoch, effective_robustness(row.test_acc, row.ood_acc, fit))
                         for row in target.epochs]
            if target.test_acc is not None and target.ood_acc is not None:
                trial_er.append((target.trial_id, effective_robustness(target.test_acc, target.ood_acc, fit)))
        repo.set_er(baseline_id, epoch_er, trial_er)
    return FitOutcome(id_dataset, ood_dataset, baseline_id, key, fit, fitted_from, testbed, len(epoch_er),
                      len(trial_er), warnings)


def _experiment_id(repo: Repository, experiment: str) -> int:
    experiment_id = repo.experiment_id(experiment)
    if experiment_id is None:
        raise UserError(f"unknown experiment {experiment!r}")
    return experiment_id


def fit_from_experiment(repo: Repository, experiment: str, id_dataset: str, ood_dataset: str,
                        transform: str = "logit", testbed_experiment: str | None = None) -> list[FitOutcome]:
    """Fit on the converged testbed runs of `testbed_experiment` (default: `experiment` itself, a
    circular fit that warns): its transfers with init = random (trained on the ID data alone from random
    weights: `retrain`, or any method from source 'scratch'; the distilled ones, Renofeation and DELTA-R,
    learn from a pre-trained teacher and are left out), their final accuracies; one baseline per
    evaluation protocol with at least 3 points, and ER filled for `experiment`'s trials of that
    protocol only."""
    experiment_id = _experiment_id(repo, experiment)
    testbed_name = testbed_experiment or experiment
    testbed_id = _experiment_id(repo, testbed_name)
    groups: dict[str, tuple[Protocol, list[tuple[float, float]]]] = {}
    for spec_json, test_acc, ood_acc in repo.testbed_points(testbed_id, id_dataset, ood_dataset):
        protocol = spec_protocol(spec_json)
        groups.setdefault(key_of(protocol), (protocol, []))[1].append((test_acc, ood_acc))
    usable = {key: group for key, group in groups.items() if len(group[1]) >= 3}
    if not usable:
        counts = ", ".join(f"{key}: {len(points)}" for key, (_, points) in groups.items()) or "none"
        raise UserError(f"experiment {testbed_name!r} has no evaluation protocol with at least 3 completed testbed "
                        f"(init = random) runs on {id_dataset}->{ood_dataset} (runs per protocol: {counts}); "
                        "a baseline needs at least 3")
    outcomes = []
    for key in sorted(usable):
        protocol, points = usable[key]
        fit = fit_baseline([p[0] for p in points], [p[1] for p in points], transform=transform)
        testbed = f"{fit.n_points} completed init = random transfers of experiment {testbed_name}"
        outcomes.append(_store_and_fill(repo, experiment_id, id_dataset, ood_dataset, protocol, fit,
                                        f"experiment:{testbed_name}", testbed,
                                        _warnings(fit, circular=testbed_name == experiment)))
    return outcomes


def _target_protocol(repo: Repository, experiment_id: int | None, id_dataset: str, ood_dataset: str,
                     protocol: str | None) -> Protocol:
    """The protocol a CSV or published baseline is stored for: --protocol, else the one protocol of the
    target experiment's trials on the pair, else the default protocol."""
    if protocol is not None:
        return parse_protocol(protocol)
    if experiment_id is None:
        return (None, {})
    found = {key_of(spec_protocol(t.spec_json)): spec_protocol(t.spec_json)
             for t in repo.er_targets(experiment_id, id_dataset, ood_dataset)}
    if len(found) > 1:
        raise UserError(f"the experiment's {id_dataset}->{ood_dataset} trials use {len(found)} evaluation protocols "
                        f"({'; '.join(sorted(found))}): choose one with --protocol")
    return next(iter(found.values())) if found else (None, {})


def fit_from_csv(repo: Repository, path: str, id_dataset: str, ood_dataset: str, transform: str = "logit",
                 experiment: str | None = None, protocol: str | None = None) -> FitOutcome:
    experiment_id = _experiment_id(repo, experiment) if experiment else None
    chosen = _target_protocol(repo, experiment_id, id_dataset, ood_dataset, protocol)
    id_acc, ood_acc = load_testbed_csv(path)
    fit = fit_baseline(id_acc, ood_acc, transform=transform)
    return _store_and_fill(repo, experiment_id, id_dataset, ood_dataset, chosen, fit, f"csv:{path}",
                           f"{fit.n_points} (id_acc, ood_acc) rows of {path}", _warnings(fit, circular=False))


def use_published(repo: Repository, name: str, id_dataset: str, ood_dataset: str, transform: str = "logit",
                  experiment: str | None = None, protocol: str | None = None, force: bool = False) -> FitOutcome:
    """Published coefficients; refused on a pair other than the one they were fitted on unless `force`."""
    table = PUBLISHED_BASELINES
    if name not in table:
        raise UserError(f"unknown published baseline {name!r} (known: {', '.join(table)})")
    pair = PUBLISHED_PAIRS[name]
    if (id_dataset, ood_dataset) != pair and not force:
        raise UserError(f"published baseline {name!r} was fitted on {pair[0]}->{pair[1]}, not "
                        f"{id_dataset}->{ood_dataset}; pass --force to use it anyway")
    experiment_id = _experiment_id(repo, experiment) if experiment else None
    chosen = _target_protocol(repo, experiment_id, id_dataset, ood_dataset, protocol)
    entry = table[name]
    fit = entry[transform] if isinstance(entry, dict) else entry
    return _store_and_fill(repo, experiment_id, id_dataset, ood_dataset, chosen, fit, f"published:{name}",
                           f"published coefficients {name} ({pair[0]}->{pair[1]}, n={fit.n_points})")


def baselines_for(repo: Repository, specs: Sequence[Any]) -> dict[tuple[str, str, str], Any]:
    """(dataset, ood, protocol key) -> the latest stored baseline of that protocol, for the specs' protocols."""
    found: dict[tuple[str, str, str], Any] = {}
    for spec in specs:
        if not spec.ood:
            continue
        protocol = protocol_of(spec.params)
        key = (spec.dataset, spec.ood, key_of(protocol))
        if key not in found:
            record = repo.get_baseline(spec.dataset, spec.ood, *protocol)
            if record is not None:
                found[key] = record
    return found
