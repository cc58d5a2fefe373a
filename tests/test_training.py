"""Shared training pieces: schedules, losses, SWA, batches, state packing (real torch, tiny nets)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from workers import data, models
from workers.errors import KernelInputError
from workers.losses import fc_penalty, feature_distillation_loss, l2sp_penalty, snapshot_parameters
from workers.swa import WeightAverager, recalibrate_bn
from workers.training import (
    BatchStream,
    derive_seed,
    eval_epochs_of,
    evaluate,
    make_lr_schedule,
    make_optimizer,
    pack_state,
    rng_state,
    seed_everything,
    set_rng_state,
    train_epoch,
    unpack_state,
)

torch.set_num_threads(1)


def epoch_lrs(name: str, epochs: int, per_epoch: int = 3, base: float = 1.0) -> list[float]:
    schedule = make_lr_schedule(name, base, epochs, per_epoch)
    return [schedule.lr_for_epoch(e) for e in range(1, epochs + 1)]


def torch_epoch_lrs(scheduler_factory, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ------------------------------------------------------------------------------------------ schedules


def test_thirds_decays_at_a_third_and_two_thirds() -> None:
    lrs = epoch_lrs("thirds", 100)
    # MultiStepLR([33, 66]): 1-based epochs 1..33 at base, 34..66 ×0.1, 67..100 ×0.01
    assert lrs[32] == 1.0 and lrs[33] == pytest.approx(0.1) and lrs[65] == pytest.approx(0.1)
    assert lrs[66] == pytest.approx(0.01) and lrs[99] == pytest.approx(0.01)
    expected = torch_epoch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [33, 66], 0.1), 100)
    assert lrs == pytest.approx(expected)
    assert epoch_lrs("thirds", 9) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert epoch_lrs("thirds", 2) == [1.0, 0.1]  # ⌊2/3⌋ = 0: no decay before any training
    assert epoch_lrs("thirds", 1) == [1.0]


def test_step_every_third_matches_steplr() -> None:
    for epochs in (100, 150, 7, 2):
        expected = torch_epoch_lrs(
            lambda o, e=epochs: torch.optim.lr_scheduler.StepLR(o, step_size=max(1, e // 3), gamma=0.1), epochs
        )
        assert epoch_lrs("step-every-third", epochs) == pytest.approx(expected)
    assert epoch_lrs("step-every-third", 100)[99] == pytest.approx(1e-3)  # the code's third decay


def test_cosine_is_per_iteration_and_reaches_zero() -> None:
    schedule = make_lr_schedule("cosine", 0.01, epochs=4, iterations_per_epoch=5)
    lrs = [schedule.lr_at(step) for step in range(schedule.total_steps + 1)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # changes within an epoch
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20, eta_min=0.0)
    for step in range(20):
        assert schedule.lr_at(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        reference.step()


def test_constant_and_unknown_schedules() -> None:
    assert epoch_lrs("constant", 5, base=0.3) == [0.3] * 5
    with pytest.raises(KernelInputError):
        make_lr_schedule("linear-warmup", 0.1, 10, 10)
    optimizer = make_optimizer([nn.Parameter(torch.zeros(2))], 0.5, 0.9, 1e-4)
    assert make_lr_schedule("thirds", 0.5, 3, 2).apply(optimizer, 2) == pytest.approx(0.05)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4 and optimizer.param_groups[0]["momentum"] == 0.9


def test_eval_epochs_always_include_the_last() -> None:
    assert eval_epochs_of([], 4) == {1, 2, 3, 4}
    assert eval_epochs_of([1, 3, 99], 10) == {1, 3, 10}


# ------------------------------------------------------------------------------------------ losses


def tiny_classifier(num_classes: int = 5, seed: int = 0) -> models.Classifier:
    torch.manual_seed(seed)
    return models.build_model("tiny_resnet", num_classes)


def test_l2sp_is_zero_with_zero_gradient_at_the_pretrained_weights() -> None:
    model = tiny_classifier()
    w0 = snapshot_parameters(model)
    assert any("bn1.weight" in k for k in w0) and "net.fc.bias" in w0  # BN γ/β and fc included
    penalty = l2sp_penalty(model, w0)
    penalty.backward()
    assert penalty.item() == 0.0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    model.zero_grad()
    with torch.no_grad():
        model.net.fc.bias.add_(0.5)
        model.net.bn1.weight.add_(0.1)
    penalty = l2sp_penalty(model, w0)
    penalty.backward()
    expected = 0.25 * model.net.fc.bias.numel() + 0.01 * model.net.bn1.weight.numel()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)  # no ½ factor
    assert torch.allclose(model.net.fc.bias.grad, torch.full_like(model.net.fc.bias, 1.0))  # 2(w − w0)


def test_delta_loss_is_zero_when_student_equals_teacher() -> None:
    teacher = tiny_classifier().eval()
    student = copy.deepcopy(teacher).eval()
    x = torch.rand(4, 3, 16, 16)
    logits, stages = models.forward_with_stages(student, x)
    with torch.no_grad():
        target = models.stage_outputs(teacher, x)
    assert len(stages) == 4
    assert feature_distillation_loss(stages, target).item() == 0.0
    with torch.no_grad():
        student.net.layer1[0].conv1.weight.mul_(1.5)
    _, stages = models.forward_with_stages(student, x)
    loss = feature_distillation_loss(stages, target)
    manual = sum(((s - t) ** 2).mean() for s, t in zip(stages, target, strict=True))
    assert loss.item() > 0 and loss.item() == pytest.approx(manual.item(), rel=1e-6)  # unweighted sum of means


def test_fc_penalty_is_half_beta_squared_norm() -> None:
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(2.0)
    assert fc_penalty(head, 0.01).item() == pytest.approx(0.5 * 0.01 * (6 * 1 + 2 * 4))


def test_spatial_dropout_only_in_training_and_stages_before_dropout() -> None:
    model = tiny_classifier()
    plain = copy.deepcopy(model)
    models.set_spatial_dropout(model, 0.5)
    x = torch.rand(4, 3, 16, 16)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    model.train(), plain.train()
    torch.manual_seed(1)
    dropped = model(x)
    assert not torch.allclose(dropped, plain(x))
    # the stage-1 output handed to the distillation loss is the un-dropped one
    torch.manual_seed(1)
    _, stages = models.forward_with_stages(model, x)
    _, plain_stages = models.forward_with_stages(plain, x)
    assert torch.allclose(stages[0], plain_stages[0])


def test_reinitialised_model_shares_no_weights_with_the_source() -> None:
    source = tiny_classifier()
    with torch.no_grad():  # a "trained" source: BN γ/β away from their init values
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    student = copy.deepcopy(source)
    torch.manual_seed(123)
    models.reinitialize(student.net)
    source_params = dict(source.named_parameters())
    for name, param in student.named_parameters():
        assert param.data_ptr() != source_params[name].data_ptr()
        assert not torch.equal(param, source_params[name]), name


# ------------------------------------------------------------------------------------------ SWA


def test_swa_weights_are_the_mean_of_the_snapshots() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = make_optimizer(model.parameters(), 0.1, 0.9, 0.0)
    averager = WeightAverager(model, every=3)
    snapshots = []
    for step in range(1, 11):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        averager.after_step(step)
        if step % 3 == 0:
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
    assert averager.count == len(snapshots) == 3
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    averager.swap_in()
    for name, param in model.named_parameters():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(param, expected, atol=1e-6), name
    for name, buffer in model.named_buffers():  # only parameters are averaged
        assert torch.equal(buffer, buffers[name])
    restored = WeightAverager(model, every=1)
    restored.load_state_dict(averager.state_dict())
    assert restored.count == 3 and restored.every == 3


def test_bn_recalibration_is_a_cumulative_train_mode_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.eval()
    batches = [(torch.randn(8, 3) + i, torch.zeros(8, dtype=torch.long)) for i in range(4)]
    assert recalibrate_bn(model, batches, "cpu") == 1
    bn = model[0]
    expected = torch.stack([x.mean(0) for x, _ in batches]).mean(0)  # momentum None: equal weights
    assert torch.allclose(bn.running_mean, expected, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training and not bn.training


def test_bn_recalibration_keeps_eval_mode_layers() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].running_mean.fill_(7.0)

    def set_mode(m: nn.Module) -> None:
        m.train()
        m[0].eval()

    assert recalibrate_bn(model, [(torch.randn(8, 3), None)], "cpu", set_mode) == 1
    assert torch.all(model[0].running_mean == 7.0)


# ------------------------------------------------------------------------------------------ batches, epochs


def synthetic_stream(seed: int = 3, size: int = 50, batch: int = 16) -> BatchStream:
    ds = data.load_split("synthetic-target-a", True, params={"train_images": 200})
    indices = data.subset_indices(ds.targets, size, seed)
    return BatchStream(lambda s: data.make_train_loader(ds, indices, batch, 16, seed=s), seed)


def test_batch_stream_is_deterministic_and_random_access() -> None:
    stream = synthetic_stream()
    assert stream.batches_per_pass == 4  # 50 images, batches of 16: the last one is short
    sequential = [x for x, _ in stream.loader(0, 10)]
    assert [len(x) for x in sequential[:4]] == [16, 16, 16, 2]
    jumped = [x for x, _ in synthetic_stream().loader(5, 4)]  # crosses pass 1 → 2
    for a, b in zip(sequential[5:9], jumped, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(sequential[0], sequential[4][:16])  # a new pass reshuffles and re-augments


def test_train_epoch_hooks_and_evaluate() -> None:
    seed_everything(0)
    stream = synthetic_stream()
    model = tiny_classifier(num_classes=10)
    optimizer = make_optimizer(model.parameters(), 0.05, 0.9, 5e-4)
    schedule = make_lr_schedule("thirds", 0.05, 3, stream.batches_per_pass)
    calls = {"extra": 0, "perturb": 0, "after": []}

    def extra(x, y, logits, aux):
        calls["extra"] += 1
        assert aux == "aux"
        return logits.pow(2).mean() * 0.0

    def perturb(m, x, y):
        calls["perturb"] += 1
        return x.flip(-1)

    result = train_epoch(
        model, stream.loader(4, 4), optimizer, schedule, step=4, device="cpu",
        forward=lambda m, x: (m(x), "aux"), extra_loss=extra, perturb=perturb, after_step=calls["after"].append,
    )
    assert calls["extra"] == calls["perturb"] == 4 and calls["after"] == [5, 6, 7, 8]
    assert result.steps == 8 and result.lr == pytest.approx(0.005) and 0 <= result.train_acc <= 1
    assert math.isfinite(result.train_loss) and model.training
    test = data.load_split("synthetic-target-a", False)
    model.train()
    accuracy, loss = evaluate(model, data.make_eval_loader(test, range(100), 50, 16), "cpu")
    assert 0.0 <= accuracy <= 1.0 and loss > 0 and model.training


# ------------------------------------------------------------------------------------------ state


def test_state_round_trips_through_weights_only_load() -> None:
    seed_everything(5)
    model = tiny_classifier()
    optimizer = make_optimizer(model.parameters(), 0.1, 0.9, 0.0)
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    averager = WeightAverager(model, every=1)
    averager.fold()
    state = pack_state(model=model, optimizer=optimizer, epoch=3, step=30, swa=averager, extra={"kind": "x"})
    expected_draw = torch.rand(3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh = tiny_classifier(seed=9)
    fresh_optimizer = make_optimizer(fresh.parameters(), 0.1, 0.9, 0.0)
    fresh_averager = WeightAverager(fresh, every=7)
    epoch, step, extra = unpack_state(loaded, model=fresh, optimizer=fresh_optimizer, swa=fresh_averager)
    assert (epoch, step, extra) == (3, 30, {"kind": "x"})
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored to the pack time
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_averager.count == 1 and fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()[
        "state"
    ].keys()


def test_rng_state_and_derived_seeds() -> None:
    state = rng_state()
    first = (torch.rand(2), torch.randint(0, 100, (1,)))
    set_rng_state(state)
    assert torch.equal(torch.rand(2), first[0])
    assert derive_seed(1, "pass", 0) == derive_seed(1, "pass", 0) != derive_seed(1, "pass", 1)
    assert 0 <= derive_seed(2**40, "x") < 2**63
