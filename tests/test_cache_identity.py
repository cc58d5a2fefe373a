"""The adversarial-set cache names the clean images by content (issue 11, item 1).

Real files and tensors: ImageFolder trees written to tmp_path, a tiny source checkpoint, the transfer
kernel's attack step (transfer_asr) with a shared artifacts dir, as two trials on one worker use it.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers import data, models
from workers.attacks import normalised_images
from workers.context import KernelContext
from workers.io import save_atomically
from workers.kernels import transfer_asr

INPUT = 16
IMAGES = 24
NAME = "imagefolder:pets"  # relative: resolved against each trial's data root
PARAMS = {"attack_eps": 0.1, "attack_step": 0.01, "attack_steps": 3, "attack_m": 1000.0, "attack_clamp": 2.2,
          "attack_images": IMAGES, "input_size": INPUT}
SPEC = {"dataset": NAME}


def write_pets(root: Path, seed: int) -> Path:
    """<root>/pets/{train,test}/{cat,dog}/*.png of random pixels (seed): one name, different images per seed."""
    rng = np.random.default_rng(seed)
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / "pets" / split / cls
            folder.mkdir(parents=True)
            for i in range(IMAGES // 2):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def identity(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns): an atomic rewrite gives a new inode, so a read-back leaves both unchanged."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[models.Classifier, models.Classifier, str]:
    """(source, student, source checkpoint path): the student is a perturbed copy of the source."""
    torch.manual_seed(3)
    source = models.build_model("tiny_resnet", 6).eval()
    path = tmp_path_factory.mktemp("source") / "source.pt"
    models.save_source_checkpoint(source, path, {})
    student = copy.deepcopy(source)
    models.replace_head(student, 2, init="default")
    return source, student.eval(), str(path)


def attack(tiny: tuple[models.Classifier, models.Classifier, str], root: Path, artifacts: Path) -> dict[str, Any]:
    """transfer_asr of the test split of NAME under data root `root`, the way the kernel loads it."""
    source, student, path = tiny
    test_ds = data.load_split(NAME, False, str(root))
    ctx = KernelContext(artifacts_dir=str(artifacts), data_root=str(root), source_path=path)
    return transfer_asr(SPEC, ctx, PARAMS, source, student, test_ds, torch.device("cpu"))


def clean_images(source: models.Classifier, root: Path) -> torch.Tensor:
    """The normalised clean images the attack of root's test split is crafted from (same transform)."""
    test_ds = data.load_split(NAME, False, str(root))
    indices = data.eval_indices(len(test_ds), IMAGES)
    recipe = data.transform_recipe(NAME, None)
    return normalised_images(source, data.make_eval_loader(test_ds, indices, IMAGES, INPUT, recipe=recipe))


def distance_to_clean(adv: torch.Tensor, clean: torch.Tensor) -> float:
    """L∞ distance of the adversarial images from their clean images as the attack's box sees them
    (clamped to ±clamp: advertorch clamps last, so a clean value outside the box sits on its edge)."""
    box = PARAMS["attack_clamp"]
    return float((adv - clean.clamp(-box, box)).abs().max())


def stored(result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    [artifact] = result["artifacts"]
    path = Path(artifact["uri"])
    return path, torch.load(path, weights_only=True)


def test_two_data_roots_under_one_name_do_not_share_an_adversarial_set(tiny: Any, tmp_path: Path) -> None:
    root_a, root_b = write_pets(tmp_path / "a", seed=0), write_pets(tmp_path / "b", seed=1)
    shared = tmp_path / "artifacts"
    first = attack(tiny, root_a, shared)
    second = attack(tiny, root_b, shared)  # same name, classes and size; other images

    source = tiny[0]
    clean_a, clean_b = clean_images(source, root_a), clean_images(source, root_b)
    assert distance_to_clean(clean_a, clean_b) > 1.0  # the two roots' images really differ
    for result, clean in ((first, clean_a), (second, clean_b)):
        _, entry = stored(result)
        # each root's set is crafted from its own images: within the attack budget of them
        assert distance_to_clean(entry["adv"], clean) <= PARAMS["attack_eps"] + 1e-5
    assert second["artifacts"][0]["key_hash"] != first["artifacts"][0]["key_hash"]
    assert len(list((shared / "adv").glob("*.pt"))) == 2
    # and the second trial's numbers are those of root b attacked alone
    alone = attack(tiny, root_b, tmp_path / "alone")
    assert {k: second[k] for k in ("asr", "clean_acc", "adv_acc")} == {k: alone[k] for k in ("asr", "clean_acc",
                                                                                              "adv_acc")}
    assert second["artifacts"][0]["key_hash"] == alone["artifacts"][0]["key_hash"]


def test_same_images_reuse_the_set_and_images_changed_on_disk_do_not(tiny: Any, tmp_path: Path) -> None:
    root_a = write_pets(tmp_path / "a", seed=0)
    root_copy = tmp_path / "copy"
    shutil.copytree(root_a, root_copy)  # another data root holding the same image files
    shared = tmp_path / "artifacts"
    first = attack(tiny, root_a, shared)
    path, _ = stored(first)
    built = identity(path)
    again = attack(tiny, root_copy, shared)
    assert again["artifacts"][0]["key_hash"] == first["artifacts"][0]["key_hash"]
    assert identity(path) == built  # read back, not rebuilt: the cache still works
    assert {k: again[k] for k in ("asr", "clean_acc", "adv_acc")} == {k: first[k] for k in ("asr", "clean_acc",
                                                                                            "adv_acc")}

    # One test image of the copy changes on disk: a new set, crafted from the new images.
    from PIL import Image

    changed = sorted((root_copy / "pets" / "test" / "cat").glob("*.png"))[0]
    Image.fromarray(np.full((20, 20, 3), 255, dtype=np.uint8)).save(changed)
    third = attack(tiny, root_copy, shared)
    assert third["artifacts"][0]["key_hash"] != first["artifacts"][0]["key_hash"]
    assert identity(path) == built and len(list((shared / "adv").glob("*.pt"))) == 2
    _, entry = stored(third)
    assert distance_to_clean(entry["adv"], clean_images(tiny[0], root_copy)) <= PARAMS["attack_eps"] + 1e-5


@pytest.mark.parametrize("mismatch", ["digest", "shape"])
def test_a_stored_set_that_does_not_match_the_images_is_recomputed(
    tiny: Any, tmp_path: Path, mismatch: str, caplog: pytest.LogCaptureFixture
) -> None:
    root_a, root_b = write_pets(tmp_path / "a", seed=0), write_pets(tmp_path / "b", seed=1)
    shared = tmp_path / "artifacts"
    first = attack(tiny, root_a, shared)
    path, entry = stored(first)
    if mismatch == "digest":
        # a file of root b's images (its own digest) under root a's key: a stale or misplaced entry
        _, other = stored(attack(tiny, root_b, tmp_path / "other"))
        tampered = {**other, "key_hash": entry["key_hash"]}
    else:
        tampered = {**entry, "adv": entry["adv"][: IMAGES // 2].clone()}  # a truncated set
    save_atomically(tampered, path)
    written = identity(path)

    with caplog.at_level(logging.WARNING, logger="workers.attacks.cache"):
        again = attack(tiny, root_a, shared)
    assert identity(path) != written  # recomputed and rewritten, not used
    assert {k: again[k] for k in ("asr", "clean_acc", "adv_acc")} == {k: first[k] for k in ("asr", "clean_acc",
                                                                                            "adv_acc")}
    assert first["asr"] is not None  # a defined ASR: the numbers compared are real
    _, rebuilt = stored(again)
    assert torch.equal(rebuilt["adv"], entry["adv"])  # the same set as the first, fresh computation
    assert distance_to_clean(rebuilt["adv"], clean_images(tiny[0], root_a)) <= PARAMS["attack_eps"] + 1e-5
    assert any("does not match" in r.getMessage() for r in caplog.records)
