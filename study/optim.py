"""Optimizers (SGD, RMSProp, LARS) and per-step learning-rate schedules (cosine, exponential, step, constant).

Conventions, for every optimizer alike so that comparing optimizers varies only the update rule:

- Only parameters with `requires_grad` are optimised (the linear stage hands over a classifier whose
  encoder is frozen).
- Weight decay (coupled L2, added to the gradient) applies to weight matrices and conv kernels only;
  biases and normalisation parameters (every tensor with ndim <= 1) get none, as in the paper's TF code
  (which leaves out batch-norm variables) and SimCLR/timm. They sit in a second param group.
- `lr` is the absolute learning rate; the config's rates are per 256 images, see `scale_lr`.

The three update rules:

- "sgd": `torch.optim.SGD` with momentum, optionally Nesterov.
- "rmsprop": the paper's TF RMSProp (`tf.train.RMSPropOptimizer(lr, decay=0.9, momentum, epsilon)` in
  google-research supcon/utils.py `build_optimizer`), via `timm.optim.RMSpropTF`: epsilon inside the
  square root, mean square started at 1, learning rate inside the momentum buffer. The authors use two
  epsilons (supcon/hparams_flags.py): 1.0 for stage 1 (contrastive pre-training, or cross-entropy) and
  0.001 for stage 2 (the linear classifier). With epsilon 1.0 the denominator is >= 1 and about 1 for
  small gradients, so stage-1 RMSProp steps like momentum SGD and wants SGD-scale learning rates; with
  0.001 it divides by the gradient RMS and wants rates ~100x smaller (the authors' ImageNet linear stage:
  0.05 per 256, scripts/supcon_imagenet_resnet50.sh).
- "lars": `timm.optim.Lars` (trust coefficient 0.001 as the paper's TF code, no clipping). timm applies
  the layer-wise trust ratio to a group when its weight decay is non-zero or `always_adapt` is set, so
  the weight group gets `always_adapt=True` (adapted even when weight_decay is 0) and the ndim <= 1
  group gets `weight_decay=0, always_adapt=False`: plain momentum SGD, excluded from both adaptation and
  decay.

Schedules are `LambdaLR`s stepped once per optimizer step; their multiplier is a small callable object
whose state is a few numbers, so `scheduler.state_dict()` survives `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from timm.optim import Lars, RMSpropTF
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from study.config import OPTIMIZERS, SCHEDULES, is_integer, is_real

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LARS_TRUST_COEFFICIENT",
    "RMSPROP_DECAY",
    "RMSPROP_EPSILON",
    "LINEAR_RMSPROP_EPSILON",
    "LRMultiplier",
    "build_optimizer",
    "build_scheduler",
    "parameter_groups",
    "scale_lr",
]

RMSPROP_DECAY = 0.9  # running average of squared gradients (TF "decay", torch "alpha")
# Added inside the square root; supcon/hparams_flags.py stage_1_rmsprop_epsilon / stage_2_rmsprop_epsilon.
RMSPROP_EPSILON = 1.0
LINEAR_RMSPROP_EPSILON = 1e-3
LARS_TRUST_COEFFICIENT = 1e-3  # eta of the paper's (and SimCLR's) LARS
STEP_DECAY_FACTOR = 0.1


def scale_lr(lr_per_256: float, batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): the absolute learning rate for a global batch."""
    _check_positive("lr_per_256", lr_per_256)
    _check_count("batch_size", batch_size, minimum=1)
    return float(lr_per_256) * int(batch_size) / 256


def parameter_groups(module_or_params: nn.Module | Iterable[torch.Tensor], weight_decay: float) -> list[dict]:
    """Trainable parameters split into [{weights, weight_decay}, {biases and norm params, weight_decay 0}].

    Empty groups are left out; parameters shared between modules appear once.
    """
    candidates: Iterable[torch.Tensor]
    if isinstance(module_or_params, nn.Module):
        candidates = module_or_params.parameters()
    elif isinstance(module_or_params, torch.Tensor):
        raise ValueError("invalid module_or_params=<Tensor>; allowed: an nn.Module or an iterable of parameters")
    else:
        candidates = module_or_params
    decayed: list[torch.Tensor] = []
    undecayed: list[torch.Tensor] = []
    seen: set[int] = set()
    for param in candidates:
        if not isinstance(param, torch.Tensor):
            raise ValueError(
                f"invalid parameter of type {type(param).__name__}; allowed: an nn.Module or an iterable of tensors"
            )
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (undecayed if param.ndim <= 1 else decayed).append(param)
    if not seen:
        raise ValueError(
            "invalid module_or_params: no parameter requires grad; allowed: at least one trainable parameter"
        )
    groups = [
        {"params": decayed, "weight_decay": float(weight_decay)},
        {"params": undecayed, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    name: str,
    module_or_params: nn.Module | Iterable[torch.Tensor],
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    rmsprop_epsilon: float = RMSPROP_EPSILON,
) -> torch.optim.Optimizer:
    """An optimizer by name (one of `OPTIMIZERS`) over the trainable parameters, `lr` already scaled.

    Weight decay skips biases and norm parameters; LARS also leaves them out of the trust-ratio adaptation.
    `nesterov` is for "sgd" and "lars" and needs momentum > 0. `rmsprop_epsilon` is RMSProp's epsilon:
    `RMSPROP_EPSILON` for pre-training and cross-entropy, `LINEAR_RMSPROP_EPSILON` for the linear stage.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"invalid optimizer={name!r}; allowed: {' | '.join(OPTIMIZERS)}")
    _check_positive("lr", lr)
    _check_non_negative("momentum", momentum)
    _check_non_negative("weight_decay", weight_decay)
    _check_positive("rmsprop_epsilon", rmsprop_epsilon)
    if nesterov and name == "rmsprop":
        raise ValueError("invalid nesterov=True for optimizer 'rmsprop'; allowed: nesterov only with sgd | lars")
    if nesterov and momentum == 0:
        raise ValueError("invalid nesterov=True with momentum=0; allowed: nesterov only with momentum > 0")
    groups = parameter_groups(module_or_params, weight_decay)
    lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)

    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay)
    if name == "rmsprop":
        return RMSpropTF(
            groups, lr=lr, alpha=RMSPROP_DECAY, eps=float(rmsprop_epsilon), momentum=momentum, weight_decay=weight_decay
        )
    # lars: adapt exactly the decayed group (see the module docstring for timm's rule)
    for group in groups:
        group["always_adapt"] = group["params"][0].ndim > 1
    return Lars(
        groups,
        lr=lr,
        momentum=momentum,
        nesterov=bool(nesterov),
        weight_decay=weight_decay,
        trust_coeff=LARS_TRUST_COEFFICIENT,
        trust_clip=False,
    )


class LRMultiplier:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up to 1, then the decay.

    A plain object with only numbers and a string as state, so LambdaLR checkpoints it.
    The decay clock starts when warm-up ends:
    - "cosine": 0.5 * (1 + cos(pi * t)), t going from 0 to 1 over the remaining steps (0 afterwards);
    - "exponential": decay_rate ** (steps since warm-up / steps_per_epoch), i.e. smooth, per step, and
      exactly x decay_rate per epoch;
    - "step": x0.1 after every `step_epochs` epochs;
    - "constant": 1.
    """

    def __init__(
        self,
        name: str,
        *,
        total_steps: int,
        warmup_steps: int,
        steps_per_epoch: int,
        decay_rate: float,
        step_epochs: int,
    ) -> None:
        self.name = name
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.steps_per_epoch = steps_per_epoch
        self.decay_rate = decay_rate
        self.step_epochs = step_epochs

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # reaches 1 on the last warm-up step, never 0 on the first
            return (step + 1) / self.warmup_steps
        since_warmup = step - self.warmup_steps
        if self.name == "cosine":
            progress = min(1.0, since_warmup / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "exponential":
            return self.decay_rate ** (since_warmup / self.steps_per_epoch)
        if self.name == "step":
            return STEP_DECAY_FACTOR ** (since_warmup // (self.step_epochs * self.steps_per_epoch))
        return 1.0


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    decay_rate: float = 0.97,
    step_epochs: int = 30,
) -> LRScheduler:
    """A per-step schedule by name (one of `SCHEDULES`); call `scheduler.step()` after every `optimizer.step()`.

    Warm-up (any schedule) ramps linearly over `warmup_epochs`; the decay runs over the remaining epochs.
    """
    if name not in SCHEDULES:
        raise ValueError(f"invalid schedule={name!r}; allowed: {' | '.join(SCHEDULES)}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"invalid optimizer of type {type(optimizer).__name__}; allowed: a torch.optim.Optimizer")
    _check_count("epochs", epochs, minimum=1)
    _check_count("steps_per_epoch", steps_per_epoch, minimum=1)
    _check_count("warmup_epochs", warmup_epochs, minimum=0)
    _check_count("step_epochs", step_epochs, minimum=1)
    if warmup_epochs and warmup_epochs >= epochs:
        raise ValueError(f"invalid warmup_epochs={warmup_epochs!r}; allowed: an integer < epochs ({epochs})")
    _check_positive("decay_rate", decay_rate)
    if decay_rate > 1:
        raise ValueError(f"invalid decay_rate={decay_rate!r}; allowed: a number in (0, 1]")
    multiplier = LRMultiplier(
        name,
        total_steps=int(epochs) * int(steps_per_epoch),
        warmup_steps=int(warmup_epochs) * int(steps_per_epoch),
        steps_per_epoch=int(steps_per_epoch),
        decay_rate=float(decay_rate),
        step_epochs=int(step_epochs),
    )
    return LambdaLR(optimizer, multiplier)


def _check_positive(name: str, value: object) -> None:
    if not (is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"invalid {name}={value!r}; allowed: a finite number > 0")


def _check_non_negative(name: str, value: object) -> None:
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"invalid {name}={value!r}; allowed: a finite number >= 0")


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if not (is_integer(value) and value >= minimum):
        raise ValueError(f"invalid {name}={value!r}; allowed: an integer >= {minimum}")
