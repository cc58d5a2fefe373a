"""The transfer kernel end to end on a tiny source checkpoint the tests train (real torch, embedded data)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from image_folder import write_image_folder

from workers import catalog, data, models
from workers.context import KernelContext
from workers.errors import KernelInputError
from workers.kernels import resolve_transfer_params, run_transfer
from workers.training import BatchStream, make_optimizer, seed_everything, train_epoch

INPUT = 16
TARGET = "synthetic-target-a"


def train_tiny_source(path: Path, epochs: int, train_images: int = 1000, seed: int = 0) -> str:
    """A tiny_resnet trained on synthetic-source at 16 px; returns the checkpoint's sha256."""
    seed_everything(seed)
    ds = data.load_split("synthetic-source", True, params={"train_images": train_images})
    model = models.build_model("tiny_resnet", ds.num_classes)
    optimizer = make_optimizer(model.parameters(), 0.05, 0.9, 5e-4)
    stream = BatchStream(lambda s: data.make_train_loader(ds, range(len(ds)), 64, INPUT, seed=s), seed)
    for epoch in range(epochs):
        train_epoch(model, stream.loader(epoch * stream.batches_per_pass, stream.batches_per_pass), optimizer,
                    None, step=0, device="cpu")
    return models.save_source_checkpoint(model, path, {"arch": "tiny_resnet", "dataset": "synthetic-source"})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("source") / "tiny.pt"
    train_tiny_source(path, epochs=2)
    return str(path)


def make_spec(method: str, source: str | None, **overrides: Any) -> dict[str, Any]:
    params = {"input_size": INPUT, "batch_size": 32, "lr": 0.01, "head_init": "default", "eval_images": 100}
    params.update(overrides.pop("params", {}))
    spec = {
        "kind": "transfer", "arch": "tiny_resnet", "dataset": TARGET, "method": method, "seed": 7, "epochs": 2,
        "source": f"file:{source}" if source else "scratch", "source_checksum": None, "ood": None,
        "blocks": None, "subset_size": 60, "params": params, "kernel_version": "1",
    }
    spec.update(overrides)
    return spec


def run(spec: dict[str, Any], source: str | None, tmp_path: Path, resume: dict | None = None, **runtime: Any):
    """run_transfer's reports, final answer and saved states; runtime: KernelContext's data-path settings."""
    reports: list[tuple[int, dict[str, float]]] = []
    states: list[dict[str, Any]] = []

    def save(state: dict[str, Any]) -> None:
        buffer = io.BytesIO()  # the trainable checkpoints with torch.save and reloads with weights_only
        torch.save(state, buffer)
        buffer.seek(0)
        states.append(torch.load(buffer, weights_only=True))

    ctx = KernelContext(artifacts_dir=str(tmp_path / "artifacts"), source_path=source, resume_state=resume,
                        save_state=save, **runtime)
    final = run_transfer(spec, ctx, lambda epoch, metrics: reports.append((epoch, dict(metrics))))
    return reports, final, states


def without_time(reports: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    return [(epoch, {k: v for k, v in m.items() if k != "seconds"}) for epoch, m in reports]


def test_finetune_reports_eval_epochs_and_is_deterministic(source: str, tmp_path: Path) -> None:
    spec = make_spec("finetune", source, epochs=3, ood="noise-3", params={"eval_epochs": [1]})
    reports, final, states = run(spec, source, tmp_path)
    assert [epoch for epoch, _ in reports] == [1, 3] and [s["epoch"] for s in states] == [1, 3]
    for _, metrics in reports:
        assert {"train_loss", "train_acc", "test_acc", "ood_acc", "lr", "seconds"} <= metrics.keys()
        assert 0.0 <= metrics["test_acc"] <= 1.0 and 0.0 <= metrics["ood_acc"] <= 1.0
    assert final["test_acc"] == reports[-1][1]["test_acc"] and final["ood_acc"] == reports[-1][1]["ood_acc"]
    assert final["asr"] is None and final["artifacts"] == []
    again, final_again, _ = run(spec, source, tmp_path)
    assert without_time(again) == without_time(reports) and final_again == final


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ImageFolder of PNGs of varying sizes: a set decoded on demand, like the Renofeation photos."""
    return write_image_folder(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize(
    ("method", "overrides", "resume_after", "runtime"),
    [
        ("finetune", {"epochs": 3, "params": {"iterations_per_epoch": 3, "schedule": "cosine"}}, 1, {}),
        ("renofeation", {"epochs": 2, "params": {"lambda_feat": 1.0, "swa_epochs": 2, "swa_every": 2}}, 3, {}),
        # decoded photos: the resumed run has loader workers and their decoded-image caches, the
        # uninterrupted one neither (runtime settings, not spec params: the results must not change)
        ("finetune", {"epochs": 3, "dataset": "photos", "params": {"augment": "renofeation", "batch_size": 4}}, 1,
         {"data_workers": 2, "decode_cache_mb": 1}),
    ],
)
def test_resume_gives_the_uninterrupted_result(
    source: str, photos: str, tmp_path: Path, method: str, overrides: dict, resume_after: int, runtime: dict
) -> None:
    if overrides.get("dataset") == "photos":
        overrides = {**overrides, "dataset": photos, "subset_size": None}
    spec = make_spec(method, source, **overrides)
    reports, final, states = run(spec, source, tmp_path)
    total = len(reports)
    resumed_reports, resumed_final, _ = run(spec, source, tmp_path, resume=states[resume_after - 1], **runtime)
    assert without_time(resumed_reports) == without_time(reports[resume_after:])
    assert resumed_final == final
    # a state saved after the last epoch only replays the final answer
    done_reports, done_final, _ = run(spec, source, tmp_path, resume=states[total - 1])
    assert done_reports == [] and done_final == final


def test_linear_keeps_the_backbone_bit_identical(source: str, tmp_path: Path) -> None:
    _, _, states = run(make_spec("linear", source, params={"lr": 0.1}), source, tmp_path)
    trained = states[-1]["model"]
    original = models.load_state_dict_file(source)
    backbone = [k for k in original if not k.startswith("fc.")]
    assert backbone and all(torch.equal(trained[f"net.{k}"], original[k]) for k in backbone)  # incl. BN stats
    assert trained["net.fc.weight"].shape[0] == data.load_split(TARGET, True).num_classes


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_finetune_last_block_freezes_the_rest(source: str, tmp_path: Path, bn_mode: str) -> None:
    _, _, states = run(make_spec("finetune", source, blocks=1, params={"bn_mode": bn_mode}), source, tmp_path)
    trained, original = states[-1]["model"], models.load_state_dict_file(source)
    assert torch.equal(trained["net.layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    assert not torch.equal(trained["net.layer4.1.conv1.weight"], original["layer4.1.conv1.weight"])
    stats_kept = torch.equal(trained["net.layer1.0.bn1.running_mean"], original["layer1.0.bn1.running_mean"])
    assert stats_kept == (bn_mode == "eval")  # Utrera: frozen BN still tracks target batch statistics


def test_reinitialised_student_shares_no_weights_with_the_source(source: str, tmp_path: Path) -> None:
    # lr 0: the final weights are the re-initialised ones
    _, _, states = run(make_spec("retrain", source, epochs=1, params={"lr": 0.0}), source, tmp_path)
    trained, original = states[-1]["model"], models.load_state_dict_file(source)
    names = [name for name, _ in models.build_model("tiny_resnet", 2).net.named_parameters() if "fc." not in name]
    assert names and all(not torch.equal(trained[f"net.{n}"], original[n]) for n in names)


@pytest.mark.parametrize("method", catalog.methods("transfer"))
def test_every_method_runs_end_to_end(source: str, tmp_path: Path, method: str) -> None:
    params: dict[str, Any] = {
        "l2sp": {"lambda_sp": 0.01},
        "delta": {"lambda_feat": 1.0, "beta_fc": 0.01},
        "delta-r": {"lambda_feat": 1.0},
        "renofeation": {"lambda_feat": 1.0, "beta_fc": 0.01, "swa_every": 1, "schedule": "cosine"},
    }.get(method, {})
    reports, final, _ = run(make_spec(method, source, epochs=1, params=params), source, tmp_path)
    expected_epochs = [1, 2] if method == "renofeation" else [1]  # renofeation: + ⌊E/3⌋ ≥ 1 SWA epoch
    assert [epoch for epoch, _ in reports] == expected_epochs
    assert 0.0 <= final["test_acc"] <= 1.0 and final["ood_acc"] is None


def test_scratch_source_trains_and_skips_the_attack(tmp_path: Path) -> None:
    spec = make_spec("finetune", None, epochs=1, params={"attack_steps": 2})
    reports, final, _ = run(spec, None, tmp_path)
    assert len(reports) == 1 and final["asr"] is None and final["clean_acc"] is None


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("l2sp", {}, "lambda_sp"),
        ("finetune", {"params": {"lambda_feat": 1.0}}, "lambda_feat"),
        ("finetune", {"params": {"schedule": "warmup"}}, "schedule"),
        ("finetune", {"blocks": 99}, "blocks=99"),
        ("linear", {"blocks": 3}, "head only"),
        ("finetune", {"params": {"adv_steps": 3}}, "adv_eps"),
        ("finetune", {"params": {"attack_steps": 3, "attack_eps": 0.0}}, "attack budget"),
        ("renofeation", {"params": {"lambda_feat": 1.0, "swa_every": 10_000}}, "swa_every"),
    ],
)
def test_bad_input_is_a_one_line_kernel_input_error(
    source: str, tmp_path: Path, method: str, overrides: dict, message: str
) -> None:
    with pytest.raises(KernelInputError, match=message) as info:
        run(make_spec(method, source, **overrides), source, tmp_path)
    assert "\n" not in str(info.value)


def test_distillation_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(KernelInputError, match="pre-trained source"):
        run(make_spec("delta", None, params={"lambda_feat": 1.0}), None, tmp_path)


def test_asr_uses_one_cached_adversarial_set_of_the_source(source: str, tmp_path: Path) -> None:
    attack = {"attack_steps": 2, "attack_images": 40}
    _, finetuned, _ = run(make_spec("finetune", source, epochs=1, params=attack), source, tmp_path)
    built = Path(finetuned["artifacts"][0]["uri"]).stat()
    _, retrained, _ = run(make_spec("retrain", source, epochs=1, params=attack), source, tmp_path)
    for final in (finetuned, retrained):
        # Deterministic on CPU: both students get some of the 40 attack images right, so ASR is defined.
        clean_correct = round(final["clean_acc"] * 40)
        assert clean_correct >= 1 and final["asr"] is not None
        flipped = round(final["asr"] * clean_correct)
        assert final["asr"] == flipped / clean_correct  # a count of flipped clean-correct images
        assert round(final["adv_acc"] * 40) >= clean_correct - flipped  # the unflipped ones stay correct
        assert [a["kind"] for a in final["artifacts"]] == ["adversarial_set"]
    key = finetuned["artifacts"][0]["key_hash"]
    assert retrained["artifacts"][0]["key_hash"] == key
    # Built once: a rebuild replaces the file atomically (a new inode and mtime), the second trial read it.
    reused = Path(retrained["artifacts"][0]["uri"]).stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert [p.name for p in (tmp_path / "artifacts" / "adv").iterdir()] == [f"{key}.pt"]


def _changed(full: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    return {k: variant[k] for k in full if variant[k] != full[k]}


@pytest.mark.parametrize("dataset", ["flower", "indoor", "action", "bird", "dog"])
def test_renofeation2021_ablations_differ_from_the_full_method_only_in_the_ablated_part(dataset: str) -> None:
    from orchestrator.plan.grids import reno_variants, renofeation2021
    from orchestrator.plan.spec import normalise_params

    specs = [s.to_dict() for s in renofeation2021().specs if s.arch == "resnet18" and s.dataset == dataset]
    common = set.intersection(*(set(s["params"]) for s in specs))  # input size, batch, attack, ...
    resolved = {}
    for name, (method, epochs, raw) in reno_variants(dataset).items():
        params = normalise_params(raw)
        [spec] = [s for s in specs if (s["method"], s["epochs"]) == (method, epochs)  # the variant's preset spec
                  and set(s["params"]) == common | set(params) and all(s["params"][k] == params[k] for k in params)]
        resolved[name] = (method, resolve_transfer_params(spec))
    assert len(resolved) == len(specs) == 10
    full = resolved["renofeation"][1]
    assert (full["dropout"], full["swa_epochs"]) == (0.1, 30) and full["lambda_feat"] > 0
    for name, method, ablated in [("renofeation-no-dropout", "renofeation", {"dropout": 0.0}),
                                  ("renofeation-no-swa", "renofeation", {"swa_epochs": 0}),
                                  ("delta-r", "delta-r", {"dropout": 0.0, "swa_epochs": 0})]:
        assert resolved[name][0] == method and _changed(full, resolved[name][1]) == ablated, name


@pytest.mark.parametrize(("method", "extra"), [("finetune", {}), ("delta", {"lambda_feat": 1.0})])
def test_adversarial_finetuning_trains_on_pgd_examples(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, extra: dict[str, Any]
) -> None:
    from workers import attacks

    calls: list[dict[str, Any]] = []
    real_pgd = attacks.pgd

    def counting_pgd(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(attacks, "pgd", counting_pgd)
    # lr 0: both runs see the same weights at every step, so their losses differ only by the inputs
    base = {"lr": 0.0, "iterations_per_epoch": 2, **extra}
    clean, _, _ = run(make_spec(method, source, epochs=1, params=base), source, tmp_path)
    assert calls == []
    adv = {"adv_norm": "linf", "adv_eps": 8 / 255, "adv_step": 2 / 255, "adv_steps": 3}
    attacked, _, _ = run(make_spec(method, source, epochs=1, params={**base, **adv}), source, tmp_path)
    assert len(calls) == 2  # PGD-3 once per training step
    assert all((c["norm"], c["eps"], c["step"], c["steps"]) == ("linf", 8 / 255, 2 / 255, 3) for c in calls)
    assert attacked[0][1]["train_loss"] > clean[0][1]["train_loss"] + 0.05  # trained on harder inputs


@pytest.mark.slow
def test_finetuned_models_inherit_the_source_attack_retrained_ones_do_not(tmp_path: Path) -> None:
    """Renofeation's ordering: the penultimate attack crafted on the source fools a fine-tuned
    student much more often than a re-trained one (same target, same hyper-parameters). The student
    fine-tunes the last 3 of 8 blocks (the embedded study's Chin arm): fine-tuning the whole net on this
    synthetic pair kept too little of the source on some CPUs (ASR 0.116 vs 0.076 on an AMD EPYC)."""
    path = tmp_path / "source.pt"
    train_tiny_source(path, epochs=6, train_images=2000)
    params = {"lr": 0.01, "batch_size": 64, "eval_images": 500, "attack_steps": 40, "attack_eps": 0.1,
              "attack_step": 0.01, "attack_images": 500}
    results = {}
    for method in ("finetune", "retrain"):
        blocks = 3 if method == "finetune" else None
        spec = make_spec(method, str(path), epochs=8, subset_size=None, blocks=blocks, params=params)
        _, final, _ = run(spec, str(path), tmp_path)
        results[method] = final
        print(f"{method}: test_acc={final['test_acc']:.3f} clean_acc={final['clean_acc']:.3f} "
              f"adv_acc={final['adv_acc']:.3f} ASR={final['asr']:.3f}")
    assert results["finetune"]["asr"] > 1.5 * results["retrain"]["asr"] + 0.02

