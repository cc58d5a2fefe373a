"""`rtgrid run-spec`, `sources convert` and `er fit` from the command line: output and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import error_line, run_cli

from workers import models


def _grid(tmp_path: Path, fixed: str, axes: str = "seed: [0]") -> str:
    path = tmp_path / "one.yaml"
    path.write_text(f"fixed: {{{fixed}}}\naxes: {{{axes}}}\n")
    return str(path)


TINY = "arch: tiny_resnet, method: finetune, epochs: 2, source: scratch, params: {input_size: 16, eval_images: 100}"


def test_run_spec_prints_per_epoch_metrics(tmp_path: Path) -> None:
    grid = _grid(tmp_path, f"{TINY}, dataset: digits, subset_size: 100, ood: noise-2")
    out = run_cli("run-spec", "--preset", grid, "--index", "0", "--threads", "1",
                  "--artifacts", str(tmp_path / "art")).stdout  # exit 0, else the message shows stderr
    lines = out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1", "2"]
    assert "test_acc=" in out and "ood_acc=" in out and lines[-1].startswith("final")


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        (f"{TINY}, dataset: cifar10", "cifar10"),  # missing from the data root: names the expected path
        (TINY.replace("tiny_resnet", "resnet9000") + ", dataset: digits", "resnet9000"),
        (TINY.replace("source: scratch", "source: scratch, blocks: 9") + ", dataset: digits",
         "blocks=9 but tiny_resnet has only 8 residual blocks"),
        (f"{TINY}, dataset: digits, ood: cifar10.1", "cifar10.1"),
        (TINY.replace("eval_images: 100", "eval_images: 100, attack_steps: 3, attack_eps: 0")
         .replace("source: scratch", "source: 'file:{ckpt}'") + ", dataset: digits", "budget"),
        (TINY.replace("source: scratch", "source: 'file:{bad_ckpt}'") + ", dataset: digits", "checkpoint"),
    ],
)
def test_run_spec_bad_input_is_one_line_exit_2(tmp_path: Path, fixed: str, message: str) -> None:
    ckpt = tmp_path / "tiny.pt"
    models.save_source_checkpoint(models.build_model("tiny_resnet", 10), ckpt, {"arch": "tiny_resnet"})
    bad_ckpt = tmp_path / "bad.pt"
    torch.save({"model": {"not.a.layer": torch.zeros(3)}}, bad_ckpt)
    grid = _grid(tmp_path, fixed.replace("{ckpt}", str(ckpt)).replace("{bad_ckpt}", str(bad_ckpt)))
    data_root = tmp_path / "data"
    data_root.mkdir()
    line = error_line(run_cli("run-spec", "--preset", grid, "--data-root", str(data_root), "--threads", "1",
                              "--artifacts", str(tmp_path / "art"), expect=2))
    assert message in line


def test_sources_convert_writes_a_weights_only_file(tmp_path: Path) -> None:
    state = models.build_model("tiny_resnet", 10).net.state_dict()
    robust = {f"module.model.{k}": v for k, v in state.items()}
    source = tmp_path / "robust.ckpt"
    torch.save({"model": robust, "epoch": 3}, source)
    out_path = tmp_path / "converted.pt"
    out = run_cli("sources", "convert", str(source), str(out_path)).stdout
    assert "sha256" in out
    loaded = models.load_source_model("tiny_resnet", str(out_path))
    assert torch.equal(loaded.net.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize(
    ("rows", "message"),
    [("id_acc,ood_acc\n0.5,0.4\n0.6,0.5\n", "at least 3"), ("id_acc,ood_acc\n0.5,0.4\n0.6,0.5\n1.7,0.9\n", "(0")],
)
def test_er_fit_bad_testbed_csv(tmp_path: Path, rows: str, message: str) -> None:
    csv = tmp_path / "testbed.csv"
    csv.write_text(rows)
    line = error_line(run_cli("er", "fit", "--id", "cifar10", "--ood", "cifar10.1", "--csv", str(csv),
                              "--db", f"sqlite:///{tmp_path / 'x.db'}", expect=2))
    assert message in line


def test_er_fit_published_and_csv(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    out = run_cli("er", "fit", "--id", "imagenet", "--ood", "imagenet-v2", "--published", "imagenet-v2",
                  "--db", db).stdout
    assert "slope 0.9232" in out and "intercept -0.4977" in out
    csv = tmp_path / "testbed.csv"
    csv.write_text("id_acc,ood_acc\n0.5,0.4\n0.6,0.5\n0.7,0.62\n0.8,0.71\n")
    out = run_cli("er", "fit", "--id", "cifar10", "--ood", "cifar10.1", "--csv", str(csv), "--db", db).stdout
    assert "n=4" in out
