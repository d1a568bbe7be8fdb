"""The one configuration type of a training run, and its validation.

A `Config` is built from CLI flags, a YAML file or a dict (a Ray Tune sample) through `Config.from_dict`,
which rejects unknown keys, wrong types and out-of-range values with a one-line `ConfigError` naming the
field, the bad value and what is allowed. Every other way of building one (`Config(...)`,
`dataclasses.replace`) validates too, so everything downstream receives a valid config.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeGuard

import yaml

METHODS = ("supcon", "simclr", "ce")
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")
NAMED_DATASETS = ("digits", "cifar10", "cifar100")
AUGMENTATIONS = (
    "crop_flip", "pad_crop_flip", "simclr_augment", "autoaugment", "randaugment", "simaugment", "stacked_randaugment"
)
PROJECTION_HEADS = ("mlp", "linear")
# TF RandAugment's level scale (google-research supcon/preprocessing -> autoaugment's _MAX_LEVEL = 10):
# magnitude M maps to M / 10 of each op's maximum (ShearX 0.3, Rotate 30 degrees).
RANDAUGMENT_MAX_MAGNITUDE = 10
OPTIMIZERS = ("sgd", "rmsprop", "lars")
SCHEDULES = ("cosine", "exponential", "step", "constant")
STEMS = ("auto", "cifar", "imagenet")
LOSS_VARIANTS = ("out", "in")
CONTRAST_MODES = ("all", "one")
# Where training augmentation runs: "cpu" (per image in the loader, study/augment.py), "device" (whole
# batches on the training device, study/batched_augment.py), "auto" (device on GPU runs, cpu otherwise).
DATA_PIPELINES = ("auto", "cpu", "device")


class ConfigError(ValueError):
    """A configuration value is invalid. The message is one line naming the field, value and what is allowed."""


# The `source` that prefixes the error messages of the Config being constructed: "config" unless
# `Config.from_dict` names where its values came from.
_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("config_source", default="config")


@dataclass(frozen=True)
class Config:
    """Everything one training run (one trial) needs. Defaults follow the paper's CIFAR recipe, scaled down
    so that the embedded `digits` dataset trains in about a minute on a 2-core CPU."""

    # What is trained
    method: Literal["supcon", "simclr", "ce"] = "supcon"
    dataset: str = "digits"  # digits | cifar10 | cifar100 | imagefolder:PATH
    data_root: str = "./data"
    download: bool = False  # torchvision datasets download only when asked
    image_size: int | None = None  # None: the dataset's native size (digits: 16)
    val_fraction: float = 0.1  # stratified hold-out from train, for model selection and tuning
    # Stratified fraction of the (post-hold-out) training split used for training: Sec. 4.2's comparison of
    # the losses on reduced training data. 1.0 uses all of it.
    train_fraction: float = 1.0
    model: str = "resnet18"
    width: float = 0.25  # channel-width multiplier; 1.0 is the standard ResNet
    stem: str = "auto"  # auto picks "cifar" below 64 px, "imagenet" otherwise
    projection_dim: int = 128
    # "mlp": Linear-ReLU-Linear (encoder width -> projection_dim), the authors' CIFAR head
    # (supcon/scripts/supcon_cifar10_resnet50.sh: projection_head_layers="2048,128"); "linear": one Linear
    # to projection_dim, the authors' ImageNet SupCon head (scripts/configs.sh SUPCON_FLAGS:
    # projection_head_layers=128).
    projection_head: Literal["mlp", "linear"] = "mlp"
    # L2-normalise the encoder's pooled output before the projection and classification heads. Sec. 4:
    # "the normalized activations of the final pooling layer are used as the representation"; the authors'
    # flag normalize_embedding is True in SUPCON_FLAGS (ImageNet) and False in their CIFAR-10 script.
    normalize_embedding: bool = False
    sync_batchnorm: bool = False

    # Contrastive stage (supcon/simclr) or the single cross-entropy stage (ce)
    epochs: int = 10
    batch_size: int = 128  # global, over all workers
    augmentation: str = "crop_flip"
    randaugment_n: int = 2
    randaugment_m: int = 9  # on the paper's TF scale 0..10 (RANDAUGMENT_MAX_MAGNITUDE), not torchvision's 0..30
    n_views: int = 2
    temperature: float = 0.1
    loss_variant: Literal["out", "in"] = "out"
    contrast_mode: Literal["all", "one"] = "all"
    # Multiply the contrastive loss by t. Sec. 4.5: "the gradient scales inversely with choice of temperature
    # t; therefore we rescale the loss by t during training for stability"; the authors' TF code does so
    # (supcon/scripts/configs.sh SUPCON_FLAGS: --scale_by_temperature=True). Learning rates here follow the
    # same TF convention (per 256 images, loss x t); see FIDELITY.md for the PyTorch reference's t/0.07.
    scale_by_temperature: bool = True
    max_positives: int | None = None
    loss_chunk_size: int | None = None  # rows per block for very large global batches (bounded memory)
    # A memory of past keys for the contrastive stage (Sec. 4.1: "with a memory size of 8192 ... a batch size
    # of 256 ... SupCon is able to achieve 79.1% top-1", citing MoCo, He et al. 2020): a momentum copy of
    # encoder + head embeds each batch again as keys, and the last `memory_size` keys with their labels join
    # the contrast set (study/memory.py, study/losses.py `supcon_loss_with_memory`). 0 turns it off.
    memory_size: int = 0
    memory_momentum: float = 0.999  # EMA of the momentum network (MoCo's m = 0.999)
    optimizer: str = "sgd"
    # Per 256 images, scaled linearly with the global batch (the TF code's base_learning_rate x batch/256,
    # supcon/hparams_flags.py). 0.5: the authors' CIFAR-10 SupCon rate (SGD momentum, loss x t;
    # supcon/scripts/supcon_cifar10_resnet50.sh --stage_1_base_learning_rate=0.5).
    lr: float = 0.5
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    lr_decay_rate: float = 0.97  # per epoch, for the exponential schedule
    lr_step_epochs: int = 30  # for the step schedule (x0.1 every this many epochs)

    # Linear stage (supcon/simclr always; ce only with ce_two_stage)
    linear_epochs: int = 5
    linear_batch_size: int = 128
    linear_augmentation: str = "crop_flip"
    linear_optimizer: str = "sgd"
    linear_lr: float = 5.0  # a linear probe on frozen features tolerates (and short probes need) a high rate
    linear_momentum: float = 0.9
    linear_weight_decay: float = 0.0
    linear_schedule: str = "cosine"
    ce_two_stage: bool = False

    # How it runs
    seed: int = 0
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    loader_workers: int = 0  # DataLoader processes per Train worker
    amp: bool = True  # bf16 autocast and channels_last, on GPU only
    # auto | cpu | device: where the training augmentation runs (DATA_PIPELINES above); auto is device on GPU
    # runs and cpu otherwise.
    data_pipeline: str = "auto"
    checkpoint_every: int = 1  # epochs between checkpoints

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        """Every construction validates: `Config(...)`, `dataclasses.replace` and `from_dict` (once, with its
        `source` in the message)."""
        self.validate(source=_SOURCE.get())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> Config:
        """Build a validated config from a mapping. `source` names where the values came from (a file, a
        space) and prefixes every error message."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: expected a mapping of config fields, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown key {key!r}{hint}; allowed keys: {', '.join(known)}")
            kwargs[key] = _coerce(key, value, hints[key], source)
        token = _SOURCE.set(source)
        try:
            return cls(**kwargs)  # validated by __post_init__, under `source`
        finally:
            _SOURCE.reset(token)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Config:
        """Load a YAML file of config fields (safe loader), apply `overrides`, validate."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got {type(values).__name__}")
        return cls.from_dict({**values, **(overrides or {})}, source=str(path))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some fields changed."""
        return Config.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # ------------------------------------------------------------------ validation
    def validate(self, *, source: str = "config") -> None:
        """Raise `ConfigError` on the first invalid field."""

        def fail(name: str, allowed: str) -> None:
            raise ConfigError(f"{source}: invalid {name}={getattr(self, name)!r}; allowed: {allowed}")

        # Types first, so that the range checks below compare numbers. `from_dict` has coerced its values
        # already; a direct `Config(...)` gets no coercion, only this check.
        for name, hint in _field_hints().items():
            value = getattr(self, name)
            expected = _expected_type(value, hint)
            if expected is not None:
                raise ConfigError(f"{source}: invalid {name}={value!r}; expected {expected}, "
                                  f"got {type(value).__name__}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                fail(name, " | ".join(options))

        choice("method", METHODS)
        if self.dataset not in NAMED_DATASETS and not (
            self.dataset.startswith("imagefolder:") and len(self.dataset) > len("imagefolder:")
        ):
            fail("dataset", " | ".join(NAMED_DATASETS) + " | imagefolder:PATH")
        choice("model", MODELS)
        choice("stem", STEMS)
        choice("projection_head", PROJECTION_HEADS)
        choice("augmentation", AUGMENTATIONS)
        choice("linear_augmentation", AUGMENTATIONS)
        choice("optimizer", OPTIMIZERS)
        choice("linear_optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("linear_schedule", SCHEDULES)
        choice("loss_variant", LOSS_VARIANTS)
        choice("contrast_mode", CONTRAST_MODES)
        choice("data_pipeline", DATA_PIPELINES)

        positive_floats = ("temperature", "lr", "linear_lr", "width", "lr_decay_rate")
        for name in positive_floats:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                fail(name, "a finite number > 0")
        if self.lr_decay_rate > 1:
            fail("lr_decay_rate", "a number in (0, 1]")
        for name in ("weight_decay", "linear_weight_decay", "momentum", "linear_momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                fail(name, "a finite number >= 0")
        if not 0 < self.val_fraction < 1:
            fail("val_fraction", "a number in (0, 1)")
        if not 0 < self.train_fraction <= 1:
            fail("train_fraction", "a number in (0, 1]")
        for name in ("batch_size", "linear_batch_size"):
            if getattr(self, name) < 2:
                fail(name, "an integer >= 2")
        for name in ("epochs", "projection_dim", "num_workers", "checkpoint_every", "lr_step_epochs"):
            if getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("linear_epochs", "warmup_epochs", "loader_workers", "seed", "randaugment_n"):
            if getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.method != "ce" and self.linear_epochs < 1:
            fail("linear_epochs", f"an integer >= 1 for method {self.method!r} (its classifier is the linear stage)")
        if self.ce_two_stage and self.linear_epochs < 1:
            fail("linear_epochs", "an integer >= 1 when ce_two_stage is true")
        if not 0 <= self.randaugment_m <= RANDAUGMENT_MAX_MAGNITUDE:
            fail("randaugment_m", f"an integer in 0..{RANDAUGMENT_MAX_MAGNITUDE} (the paper's TF RandAugment scale)")
        if self.n_views < 2 and self.method != "ce":
            fail("n_views", "an integer >= 2 for contrastive methods")
        if self.n_views < 1:
            fail("n_views", "an integer >= 1")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            fail("loss_chunk_size", "an integer >= 1, or null for the full matrix")
        if self.max_positives is not None and self.max_positives < 1:
            fail("max_positives", "an integer >= 1, or null for no cap")
        if self.memory_size < 0:
            fail("memory_size", "an integer >= 0 (0: no memory)")
        if not (math.isfinite(self.memory_momentum) and 0 <= self.memory_momentum < 1):
            fail("memory_momentum", "a number in [0, 1)")
        if self.memory_size > 0 and self.method == "ce":
            fail("memory_size", "0 for method 'ce' (the memory belongs to the contrastive stage)")
        if self.memory_size > 0 and self.max_positives is not None:
            fail("max_positives", "null when memory_size > 0 (the memory's loss has no positives cap)")
        if self.memory_size > 0 and self.loss_chunk_size is not None:
            fail("loss_chunk_size", "null when memory_size > 0 (the memory's loss is not chunked)")
        if self.image_size is not None and self.image_size < 8:
            fail("image_size", "an integer >= 8, or null for the dataset's native size")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            fail("warmup_epochs", f"an integer < epochs ({self.epochs})")
        if self.nesterov and (self.optimizer == "rmsprop" or self.momentum == 0):
            fail("nesterov", "false with optimizer 'rmsprop' or momentum 0 (Nesterov needs SGD/LARS momentum)")
        if self.sync_batchnorm and not self.use_gpu:
            fail("sync_batchnorm", "false without use_gpu (torch's SyncBatchNorm runs on GPUs only)")
        if self.batch_size % self.num_workers:
            fail("batch_size", f"a multiple of num_workers ({self.num_workers}); it is the global batch")

    # ------------------------------------------------------------------ derived values
    @property
    def is_contrastive(self) -> bool:
        return self.method in ("supcon", "simclr")

    @property
    def has_linear_stage(self) -> bool:
        return self.is_contrastive or self.ce_two_stage

    def scaled_lr(self, base_lr: float, batch_size: int) -> float:
        """Linear scaling rule: learning rates are given per 256 images."""
        return base_lr * batch_size / 256


def is_integer(value: object) -> TypeGuard[int]:
    """An integer, Python's or numpy's, but not a bool (a flag is never a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """A real number (integers and numpy scalars included), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@functools.cache
def _field_hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _is_optional(hint: Any) -> bool:
    """Whether a field's type hint admits None (`int | None`)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _plain_type(hint: Any) -> Any:
    """The one plain type behind a field's hint: `int | None` -> int, `Literal["a", "b"]` -> str."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        hint = type(typing.get_args(hint)[0])
    return hint


def _expected_type(value: Any, hint: Any) -> str | None:
    """None when `value` has the type `hint` asks for (ints pass for floats, numpy scalars for numbers, no
    strings for numbers); otherwise the expected type's name."""
    if value is None and _is_optional(hint):
        return None
    hint = _plain_type(hint)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = is_integer(value)
    elif hint is float:
        ok = is_real(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every field is covered above
        ok = True
    return None if ok else getattr(hint, "__name__", str(hint))


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check `value` against the field's type hint; accept ints for floats and numeric strings from YAML/CLI."""
    if value is None and _is_optional(hint):
        return None
    hint = _plain_type(hint)

    def bad() -> ConfigError:
        return ConfigError(
            f"{source}: invalid {name}={value!r}; expected {getattr(hint, '__name__', hint)}, "
            f"got {type(value).__name__}"
        )

    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad()
    if hint is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return math.trunc(value)  # integral by the test above; exact also beyond 2**53
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if hint is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad()
    return value  # pragma: no cover - every field is covered above
