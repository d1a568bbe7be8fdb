"""Optimizers and learning-rate schedules: updates, weight-decay/adaptation exclusions, schedule shapes,
checkpoint round-trips, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from study import config
from study.optim import (
    LARS_TRUST_COEFFICIENT,
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    scale_lr,
)


def toy_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    inputs = torch.randn(32, 6)
    targets = torch.randint(0, 3, (32,))
    return model, inputs, targets


def loss_of(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(inputs), targets)


def save_and_load(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_names_match_config():
    assert OPTIMIZERS == config.OPTIMIZERS
    assert SCHEDULES == config.SCHEDULES


def test_scale_lr_is_linear_in_batch_size():
    assert scale_lr(0.5, 256) == pytest.approx(0.5)
    assert scale_lr(0.5, 1024) == pytest.approx(2.0)
    assert scale_lr(0.1, 128) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="batch_size=0"):
        scale_lr(0.1, 0)
    with pytest.raises(ValueError, match="lr_per_256=-1"):
        scale_lr(-1, 256)


@pytest.mark.parametrize(
    "name, nesterov", [(name, False) for name in OPTIMIZERS] + [("sgd", True), ("lars", True)]
)
def test_every_optimizer_reduces_a_toy_loss(name, nesterov):
    model, inputs, targets = toy_problem()
    lr = {"sgd": 0.1, "rmsprop": 0.1, "lars": 1.0}[name]
    optimizer = build_optimizer(name, model, lr=lr, momentum=0.9, nesterov=nesterov, weight_decay=1e-4)
    before = loss_of(model, inputs, targets).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss_of(model, inputs, targets).backward()
        optimizer.step()
    after = loss_of(model, inputs, targets).item()
    assert after < 0.9 * before


def test_parameter_groups_split_weights_from_biases_and_norms():
    model, _, _ = toy_problem()
    decayed, undecayed = parameter_groups(model, 0.5)
    assert decayed["weight_decay"] == 0.5 and undecayed["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in undecayed["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)
    }
    # an iterable of parameters works too; shared parameters appear once
    (only,) = parameter_groups([model[0].weight, model[0].weight], 0.5)
    assert only["params"] == [model[0].weight]


def test_only_trainable_parameters_are_optimised():
    model, inputs, targets = toy_problem()
    for param in model[:2].parameters():  # a frozen "encoder"
        param.requires_grad_(False)
    frozen = [p.detach().clone() for p in model[:2].parameters()]
    for name in OPTIMIZERS:
        optimizer = build_optimizer(name, model, lr=0.1, weight_decay=0.1)
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in model[3].parameters()}
        optimizer.zero_grad()
        loss_of(model, inputs, targets).backward()
        optimizer.step()
    for before, after in zip(frozen, model[:2].parameters()):
        assert torch.equal(before, after)
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        build_optimizer("sgd", model, lr=0.1)


def one_step_updates(name: str, weight_decay: float, lr: float = 0.1) -> tuple[torch.Tensor, ...]:
    """(weight, grad, update) and (bias, grad, update) after one step with fixed gradients."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 5))
    bias = nn.Parameter(torch.randn(4))
    weight.grad = torch.randn(4, 5) * 3
    bias.grad = torch.randn(4) * 3
    optimizer = build_optimizer(name, [weight, bias], lr=lr, momentum=0.9, weight_decay=weight_decay)
    weight_before, bias_before = weight.detach().clone(), bias.detach().clone()
    optimizer.step()
    return (
        weight_before, weight.grad, weight.detach() - weight_before,
        bias_before, bias.grad, bias.detach() - bias_before,
    )


def test_sgd_weight_decay_skips_biases():
    w, gw, dw, b, gb, db = one_step_updates("sgd", weight_decay=0.5)
    torch.testing.assert_close(dw, -0.1 * (gw + 0.5 * w))
    torch.testing.assert_close(db, -0.1 * gb)  # no decay


def test_lars_adapts_and_decays_weights_but_not_biases():
    w, gw, dw, b, gb, db = one_step_updates("lars", weight_decay=0.5)
    trust = LARS_TRUST_COEFFICIENT * w.norm() / (gw.norm() + 0.5 * w.norm())
    torch.testing.assert_close(dw, -0.1 * trust * (gw + 0.5 * w))
    # the bias gets the plain (first-step momentum) SGD update: no trust ratio, no decay
    torch.testing.assert_close(db, -0.1 * gb)


def test_lars_adapts_weights_even_without_weight_decay():
    w, gw, dw, b, gb, db = one_step_updates("lars", weight_decay=0.0)
    trust = LARS_TRUST_COEFFICIENT * w.norm() / gw.norm()
    torch.testing.assert_close(dw, -0.1 * trust * gw)
    torch.testing.assert_close(db, -0.1 * gb)
    assert trust < 0.01  # the adaptation is visible, not a no-op


def test_rmsprop_is_the_papers_tf_rmsprop():
    # TF: ms = 0.9 * 1 + 0.1 g^2 (ms starts at 1); mom = lr * g / sqrt(ms + 1.0); w -= mom
    w, gw, dw, b, gb, db = one_step_updates("rmsprop", weight_decay=0.0)
    torch.testing.assert_close(dw, -0.1 * gw / torch.sqrt(0.9 + 0.1 * gw**2 + 1.0))
    torch.testing.assert_close(db, -0.1 * gb / torch.sqrt(0.9 + 0.1 * gb**2 + 1.0))


def lr_sequence(name: str, steps: int, **kwargs) -> list[float]:
    parameter = nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = build_scheduler(name, optimizer, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_ramps_linearly_then_cosine_decays_to_zero():
    rates = lr_sequence("cosine", 50, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    warmup = rates[:10]
    assert warmup[0] == pytest.approx(2.0 / 10)
    assert warmup[-1] == pytest.approx(2.0)
    steps = [b - a for a, b in zip(warmup, warmup[1:])]
    assert steps == pytest.approx([0.2] * 9)
    decay = rates[10:]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    assert decay[0] == pytest.approx(2.0)
    assert rates[10 + 20] == pytest.approx(1.0)  # half-way through the decay: half the rate
    assert rates[-1] < 0.01


def test_cosine_without_warmup_starts_at_the_full_rate():
    rates = lr_sequence("cosine", 12, epochs=3, steps_per_epoch=4)
    assert rates[0] == pytest.approx(2.0)
    assert rates[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 11 / 12)))


def test_exponential_decays_by_the_rate_per_epoch():
    rates = lr_sequence("exponential", 40, epochs=10, steps_per_epoch=4, decay_rate=0.9)
    for step in range(0, 36):
        assert rates[step + 4] / rates[step] == pytest.approx(0.9)
    assert rates[0] == pytest.approx(2.0)
    assert all(b < a for a, b in zip(rates, rates[1:]))  # smooth: every step decays a little


def test_step_drops_tenfold_every_step_epochs():
    rates = lr_sequence("step", 30, epochs=10, steps_per_epoch=3, step_epochs=4)
    assert rates[:12] == pytest.approx([2.0] * 12)
    assert rates[12:24] == pytest.approx([0.2] * 12)
    assert rates[24:] == pytest.approx([0.02] * 6)


def test_constant_after_warmup():
    rates = lr_sequence("constant", 20, epochs=5, steps_per_epoch=4, warmup_epochs=1)
    assert rates[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert rates[4:] == pytest.approx([2.0] * 16)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_checkpoint_round_trip_restores_the_run(name, schedule):
    settings = dict(epochs=6, steps_per_epoch=3, warmup_epochs=1, decay_rate=0.8, step_epochs=2)

    def fresh():
        model, inputs, targets = toy_problem()
        optimizer = build_optimizer(name, model, lr=0.5, weight_decay=1e-3)
        return model, inputs, targets, optimizer, build_scheduler(schedule, optimizer, **settings)

    def train(model, inputs, targets, optimizer, scheduler, steps):
        rates = []
        for _ in range(steps):
            rates.extend(group["lr"] for group in optimizer.param_groups)
            optimizer.zero_grad()
            loss_of(model, inputs, targets).backward()
            optimizer.step()
            scheduler.step()
        return rates

    model, inputs, targets, optimizer, scheduler = fresh()
    expected = train(model, inputs, targets, optimizer, scheduler, 18)
    expected_weights = [p.detach().clone() for p in model.parameters()]

    model, inputs, targets, optimizer, scheduler = fresh()
    head = train(model, inputs, targets, optimizer, scheduler, 7)
    checkpoint = save_and_load(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    )
    # a different schedule in the fresh objects: the checkpoint must restore the saved one
    model, inputs, targets, optimizer, _ = fresh()
    scheduler = build_scheduler("constant", optimizer, epochs=1, steps_per_epoch=1)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    tail = train(model, inputs, targets, optimizer, scheduler, 11)

    assert head + tail == pytest.approx(expected)
    for got, want in zip(model.parameters(), expected_weights):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "adam"}, "optimizer='adam'"),
        ({"lr": 0}, "lr=0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"momentum": -0.1}, "momentum=-0.1"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
        ({"name": "rmsprop", "nesterov": True}, "nesterov=True"),
        ({"nesterov": True, "momentum": 0.0}, "momentum=0"),
    ],
)
def test_bad_optimizer_arguments_raise(kwargs, message):
    model, _, _ = toy_problem()
    arguments = {"name": "sgd", "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match="allowed") as error:
        build_optimizer(arguments.pop("name"), model, **arguments)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    if kwargs.get("name") == "adam":
        assert "sgd | rmsprop | lars" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "linear"}, "schedule='linear'"),
        ({"epochs": 0}, "epochs=0"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"warmup_epochs": 5}, "warmup_epochs=5"),
        ({"warmup_epochs": -1}, "warmup_epochs=-1"),
        ({"decay_rate": 0}, "decay_rate=0"),
        ({"decay_rate": 1.5}, "decay_rate=1.5"),
        ({"step_epochs": 0}, "step_epochs=0"),
    ],
)
def test_bad_scheduler_arguments_raise(kwargs, message):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    arguments = {"name": "cosine", "epochs": 5, "steps_per_epoch": 2, **kwargs}
    with pytest.raises(ValueError, match="allowed") as error:
        build_scheduler(arguments.pop("name"), optimizer, **arguments)
    assert message in str(error.value)
    if kwargs.get("name") == "linear":
        assert "cosine | exponential | step | constant" in str(error.value)
