"""The study-space loader: validates a space file (`search_spaces/*.yaml` or any YAML file) and expands it
into trials (one_at_a_time, grid) or Optuna distributions (search).

The format, the designs, method applicability, trial order and names, and overrides are documented in
`search_spaces/README.md`. The loader validates the whole file and every trial config it implies (through
`study.config.Config.from_dict`) before anything runs; every error is one `ConfigError` line that names the
space file and the key, e.g.
``search_spaces/temperature.yaml: vary.temperature[3]: invalid temperature=-0.1; allowed: a finite number > 0``.

Example::

    >>> from study.spaces import load_space
    >>> space = load_space("quick")
    >>> len(space.trials({"epochs": 1}))
    8
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

import search_spaces
from study.config import METHODS, Config, ConfigError

__all__ = [
    "CE_ONLY",
    "CONTRASTIVE_ONLY",
    "DESIGNS",
    "LINEAR_STAGE",
    "METRICS",
    "SPACES_DIR",
    "Choice",
    "Distribution",
    "StudySpace",
    "TrialSpec",
    "VariedParameter",
    "applies_to",
    "list_spaces",
    "parse_space",
    "load_space",
]

SPACES_DIR = Path(search_spaces.__file__).resolve().parent  # the shipped YAML files (package data)
DESIGNS = ("one_at_a_time", "grid", "search")
METRICS = {"val_top1": "max", "val_top5": "max"}  # selection uses the validation split, never test
MODES = ("max", "min")
SCHEDULERS = ("none", "asha")
DISTRIBUTION_TYPES = ("float", "int", "categorical")
SEARCH_ONLY_KEYS = ("distributions", "num_samples", "sampler", "sampler_args", "scheduler")

# ---------------------------------------------------------------------------------- which method takes what
# Fields only the contrastive stage reads (ce has no projection head and one view).
CONTRASTIVE_ONLY = frozenset(
    {"temperature", "loss_variant", "contrast_mode", "max_positives", "n_views", "scale_by_temperature",
     "projection_dim", "projection_head", "loss_chunk_size", "memory_size", "memory_momentum"}
)  # fmt: skip
# Fields of the linear stage: supcon and simclr always, ce only with ce_two_stage.
LINEAR_STAGE = frozenset(
    {"linear_epochs", "linear_batch_size", "linear_augmentation", "linear_optimizer", "linear_lr",
     "linear_momentum", "linear_weight_decay", "linear_schedule"}
)  # fmt: skip
CE_ONLY = frozenset({"ce_two_stage"})
# Fields a space cannot vary: each has its own place, or belongs to how a sweep runs (the CLI's business).
NOT_VARIABLE = {
    "method": "list methods under `methods`",
    "seed": "list seeds under `seeds`",
    "data_root": "it says where data lives, pass it as an override",
    "download": "pass it as an override",
    "num_workers": "the sweep's --workers-per-trial sets it",
    "use_gpu": "the sweep's --gpus-per-worker sets it",
    "loader_workers": "it is a property of the machine, pass it as an override",
    "checkpoint_every": "pass it as an override",
}
CONFIG_FIELDS = tuple(f.name for f in fields(Config))
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def applies_to(name: str, config: Config) -> bool:
    """Whether the run described by `config` reads config field `name` (see the module docstring)."""
    if name in CONTRASTIVE_ONLY:
        return config.is_contrastive
    if name in LINEAR_STAGE:
        return config.has_linear_stage
    if name in CE_ONLY:
        return config.method == "ce"
    return True


def _why_not(name: str) -> str:
    if name in CONTRASTIVE_ONLY:
        return "it is read by contrastive methods only (supcon, simclr)"
    if name in LINEAR_STAGE:
        return "it belongs to the linear stage (supcon, simclr, and ce with ce_two_stage: true)"
    return "it is read by ce only"


# ---------------------------------------------------------------------------------- parsed pieces
@dataclass(frozen=True)
class Choice:
    """One listed value of a varied hyperparameter, with optional companion fields set alongside it
    (e.g. optimizer=rmsprop with its own lr). `key` locates it in the file for error messages."""

    value: Any
    companions: Mapping[str, Any]
    key: str


@dataclass(frozen=True)
class VariedParameter:
    """A hyperparameter of a one_at_a_time or grid design: its listed values and the methods it applies to."""

    name: str
    choices: tuple[Choice, ...]
    methods: tuple[str, ...]


@dataclass(frozen=True)
class Distribution:
    """A hyperparameter of a search design and the methods it applies to."""

    name: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()

    def to_optuna(self) -> Any:
        """The equivalent `optuna.distributions` object (what Ray Tune's OptunaSearch takes)."""
        from optuna import distributions

        if self.type in ("float", "int"):
            assert self.low is not None and self.high is not None  # numeric types have both (checked at load)
            if self.type == "float":
                return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
            # an int distribution's bounds and step are ints already (_check_distributions converts them)
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                 step=int(self.step or 1))
        return distributions.CategoricalDistribution(list(self.choices))

    def edge_values(self) -> list[tuple[str, Any]]:
        """(key suffix, value) pairs that validation builds configs at: the bounds, or every choice."""
        if self.type == "categorical":
            return [(f"choices[{i}]", choice) for i, choice in enumerate(self.choices)]
        return [("low", self.low), ("high", self.high)]


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a one_at_a_time or grid study.

    `varied` is the hyperparameter this trial changes from the base ("base" for the base combination,
    "grid" for grid designs); `params` the fields it sets (the varied values and their companions; empty
    for a base trial); `hyperparameters` the value, read from `config`, of every hyperparameter the space
    varies that applies to this method (the results table's columns)."""

    trial_name: str
    method: str
    varied: str
    params: dict[str, Any]
    seed: int
    config: Config
    hyperparameters: dict[str, Any]


class _TrialPlan(NamedTuple):
    """A trial of one method before its seed is set."""

    stem: str  # trial name without "-seed<N>"
    varied: str
    params: dict[str, Any]
    values: dict[str, Any]  # the config fields, seed left out
    hyperparameters: list[str]


# ---------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class StudySpace:
    """A validated study space. Build it with `load_space`."""

    name: str
    description: str
    design: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    metric: str
    mode: str
    base: Mapping[str, Any]
    method_overrides: Mapping[str, Mapping[str, Any]]
    vary: Mapping[str, VariedParameter]
    distributions: Mapping[str, Distribution]
    num_samples: int | None
    sampler: str | None
    sampler_args: Mapping[str, Any]
    scheduler: str  # none | asha (Ray Tune's ASHAScheduler)
    scheduler_options: Mapping[str, Any]  # ASHAScheduler keyword arguments: grace_period, reduction_factor
    path: Path
    label: str  # how errors name the file

    # ------------------------------------------------------------------ shared
    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """Names of the hyperparameters the space varies (vary or distributions), in file order."""
        return tuple(self.vary) if self.design != "search" else tuple(self.distributions)

    def _fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {key}: {message}")

    def _check_overrides(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        overrides = dict(overrides or {})
        companions = {
            key for parameter in self.vary.values() for choice in parameter.choices for key in choice.companions
        }
        for key in overrides:
            if key in ("method", "seed"):
                raise self._fail("overrides", f"{key!r} cannot be overridden; the space lists its {key}s")
            if key in self.vary or key in self.distributions:
                raise self._fail("overrides", f"{key!r} is a hyperparameter this space varies; drop the override")
            if key in companions:
                raise self._fail("overrides", f"{key!r} is set alongside a varied value in `vary`; drop the override")
        return overrides

    def _method_values(self, method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """base + method_overrides + overrides for `method`, each layer validated so errors blame it."""
        values: dict[str, Any] = {**self.base, "method": method}
        Config.from_dict(values, source=f"{self.label}: base (method {method})")
        if method in self.method_overrides:
            values.update(self.method_overrides[method])
            Config.from_dict(values, source=f"{self.label}: method_overrides.{method}")
        if overrides:
            values.update(overrides)
            Config.from_dict(values, source=f"{self.label}: overrides (method {method})")
        return values

    def base_config(self, method: str, seed: int | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
        """The validated base combination of `method` (seed defaults to the first of the space's seeds)."""
        self._check_method(method)
        values = self._method_values(method, self._check_overrides(overrides))
        seed = self.seeds[0] if seed is None else seed
        return Config.from_dict({**values, "seed": seed}, source=f"{self.label}: seed")

    def _check_method(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(
                f"{self.label}: method {method!r} is not in this space; its methods: {', '.join(self.methods)}"
            )

    def validate(self, overrides: Mapping[str, Any] | None = None) -> None:
        """Build and validate every config the space implies with these overrides (all trials for
        one_at_a_time/grid; the bounds, every choice and the all-low/all-high corners for search)."""
        if self.design == "search":
            self._validate_search(overrides)
        else:
            self.trials(overrides)

    # ------------------------------------------------------------------ one_at_a_time and grid
    def trials(self, overrides: Mapping[str, Any] | None = None) -> list[TrialSpec]:
        """Every trial of a one_at_a_time or grid study, each config validated, in a deterministic order."""
        if self.design == "search":
            raise ValueError(
                f"{self.label}: design 'search' has no fixed trial list; use search_space() and config_for()"
            )
        overrides = self._check_overrides(overrides)
        per_method = {method: self._method_trials(method, overrides) for method in self.methods}
        trials: list[TrialSpec] = []
        for seed in self.seeds:
            for method in self.methods:
                for plan in per_method[method]:
                    config = Config.from_dict({**plan.values, "seed": seed}, source=f"{self.label}: seeds")
                    trials.append(
                        TrialSpec(
                            trial_name=f"{plan.stem}-seed{seed}",
                            method=method,
                            varied=plan.varied,
                            params=dict(plan.params),
                            seed=seed,
                            config=config,
                            hyperparameters={n: getattr(config, n) for n in plan.hyperparameters},
                        )
                    )
        return trials

    def _method_trials(self, method: str, overrides: Mapping[str, Any]) -> list[_TrialPlan]:
        """The trials of one method, seed left out."""
        values = self._method_values(method, overrides)
        base = Config.from_dict(values, source=f"{self.label}: base (method {method})")
        parameters = [p for p in self.vary.values() if method in p.methods]
        hyper_names = [p.name for p in parameters]
        # Each value alone on the base, so that an invalid value is blamed on its own key.
        options: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
        for parameter in parameters:
            seen: dict[Any, str] = {}
            options[parameter.name] = []
            for choice in parameter.choices:
                params = {parameter.name: choice.value, **choice.companions}
                config = Config.from_dict({**values, **params}, source=f"{self.label}: {choice.key}")
                value = getattr(config, parameter.name)  # as the config reads it: "0.1" and 0.1 are one value
                if value in seen:
                    raise self._fail(choice.key, f"duplicate value {value!r} of {parameter.name} (also {seen[value]})")
                seen[value] = choice.key
                options[parameter.name].append((value, {**params, parameter.name: value}))

        rows: list[_TrialPlan] = []
        if self.design == "one_at_a_time" or not parameters:
            rows.append(_TrialPlan(f"{method}-base", "base", {}, values, hyper_names))
        if self.design == "one_at_a_time":
            for parameter in parameters:
                for value, params in options[parameter.name]:
                    if value == getattr(base, parameter.name):
                        continue  # the base combination already runs this value
                    name = f"{method}-{parameter.name}={_format_value(value)}"
                    rows.append(_TrialPlan(name, parameter.name, params, {**values, **params}, hyper_names))
        elif parameters:
            for combination in itertools.product(*(options[p.name] for p in parameters)):
                params = {}
                for _, choice_params in combination:
                    clash = set(params) & set(choice_params)
                    if clash:
                        raise self._fail("vary", f"companion fields {sorted(clash)} are set by two varied values")
                    params.update(choice_params)
                label = "-".join(
                    f"{p.name}={_format_value(v)}" for p, (v, _) in zip(parameters, combination, strict=True)
                )
                name = f"{method}-{label}"
                Config.from_dict({**values, **params}, source=f"{self.label}: vary (combination {name})")
                rows.append(_TrialPlan(name, "grid", params, {**values, **params}, hyper_names))
        names = [row.stem for row in rows]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self._fail("vary", f"values give identical trial names {duplicates}; make them distinct")
        return rows

    # ------------------------------------------------------------------ search
    def search_space(self, method: str | None = None) -> dict[str, Any]:
        """Name -> `optuna.distributions` object for a search design: the distributions that apply to
        `method` (all of them when None). Ray Tune's `OptunaSearch(space=...)` takes this dict."""
        self._require_search("search_space")
        if method is not None:
            self._check_method(method)
        return {
            name: distribution.to_optuna()
            for name, distribution in self.distributions.items()
            if method is None or method in distribution.methods
        }

    def config_for(
        self,
        method: str,
        sample: Mapping[str, Any],
        seed: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """The validated config of one searched trial: `method`'s base, the overrides, then the sampled
        values. Sampled names that do not apply to `method` are ignored; names the space does not
        search are an error. `seed` defaults to the space's first seed."""
        self._require_search("config_for")
        self._check_method(method)
        values = self._method_values(method, self._check_overrides(overrides))
        unknown = [key for key in sample if key not in self.distributions]
        if unknown:
            raise self._fail("distributions", f"sample has {unknown}, which this space does not search")
        chosen = {k: v for k, v in sample.items() if method in self.distributions[k].methods}
        seed = self.seeds[0] if seed is None else seed
        return Config.from_dict({**values, **chosen, "seed": seed}, source=f"{self.label}: distributions (sample)")

    def make_sampler(self, seed: int | None = None) -> Any:
        """An instance of the space's Optuna sampler with `sampler_args` (and `seed` where it takes one)."""
        self._require_search("make_sampler")
        import optuna.samplers

        assert self.sampler is not None  # every search space names one (TPESampler by default)
        cls = getattr(optuna.samplers, self.sampler)
        kwargs = dict(self.sampler_args)
        if seed is not None and "seed" in inspect.signature(cls).parameters:
            kwargs.setdefault("seed", seed)
        try:
            return cls(**kwargs)
        except ImportError as error:
            raise self._fail("sampler", f"{self.sampler} needs a package that is not installed ({error})") from None
        except (TypeError, ValueError) as error:
            raise self._fail("sampler_args", f"{self.sampler} rejected them: {error}") from None

    def _require_search(self, what: str) -> None:
        if self.design != "search":
            raise ValueError(
                f"{self.label}: {what}() needs design 'search'; this space is {self.design!r}, use trials()"
            )

    def _validate_search(self, overrides: Mapping[str, Any] | None) -> None:
        overrides = self._check_overrides(overrides)
        for method in self.methods:
            values = self._method_values(method, overrides)
            own = [d for d in self.distributions.values() if method in d.methods]
            for distribution in own:
                for suffix, value in distribution.edge_values():
                    Config.from_dict(
                        {**values, distribution.name: value},
                        source=f"{self.label}: distributions.{distribution.name}.{suffix}",
                    )
            numeric = [d for d in own if d.type != "categorical"]
            for corner in ("low", "high"):  # bounds that are valid alone may clash together
                Config.from_dict(
                    {**values, **{d.name: getattr(d, corner) for d in numeric}},
                    source=f"{self.label}: distributions (every {corner} bound together)",
                )
            epochs = Config.from_dict(values, source=f"{self.label}: base").epochs
            grace = self.scheduler_options.get("grace_period", 0)
            if grace > epochs:
                raise self._fail("scheduler.grace_period", f"{grace} exceeds epochs ({epochs}) of method {method}")


# ---------------------------------------------------------------------------------- loading
def list_spaces() -> list[str]:
    """Names of the spaces that ship in the search_spaces folder."""
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str) -> StudySpace:
    """Load and validate a study space: a shipped space by name (see `list_spaces`), or any YAML file by path.

    Raises `ConfigError` (a ValueError) naming the file and key of the first problem."""
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text)
        label = text
        if not path.is_file():
            raise ConfigError(f"{text}: no such space file")
    else:
        path = SPACES_DIR / f"{text}.yaml"
        label = f"search_spaces/{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown study space {text!r}; available: {', '.join(list_spaces())} (or pass a path to a .yaml file)"
            )
    return parse_space(path.read_text(), path, label)


def parse_space(text: str, path: Path, label: str) -> StudySpace:
    """Parse and validate a study space from its YAML text (`path` and `label` name it in the space and in
    errors). Sweep trials use it on the text the driver read, so they need no access to the file."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: not valid YAML ({str(error).splitlines()[0]})") from None
    space = _parse(document, Path(path), label)
    space.validate()
    return space


# ---------------------------------------------------------------------------------- the file's schema
# The shape of a space file, declared with pydantic: keys, types, allowed values and ranges, defaults.
# Every constraint carries its own one-line message; `_config_error` turns the first error into
# "<file>: <key path>: <message>". What needs the configs (validity per method, which method takes
# which field, companions) is checked after the schema, in `_parse`.
def _invalid(message: str, at: str | None = None) -> PydanticCustomError:
    """An error of the schema; `at` names a key below the location of the value being validated."""
    return PydanticCustomError("space", "{message}", {"message": message, "at": at or ""})


def _check(ok: Callable[[Any], bool], message: Callable[[Any], str]) -> BeforeValidator:
    """A constraint on the value as read from YAML, with the message that names what is allowed."""

    def validate(value: Any) -> Any:
        if not ok(value):
            raise _invalid(message(value))
        return value

    return BeforeValidator(validate)


def _one_of(what: str, allowed: Sequence[str], verb: str = "invalid") -> BeforeValidator:
    """One of the listed strings: `<verb> <what> <value>; allowed: a | b | c`."""
    listed = tuple(allowed)
    return _check(
        lambda v: isinstance(v, str) and v in listed, lambda v: f"{verb} {what} {v!r}; allowed: {' | '.join(listed)}"
    )


def _unique(what: str) -> AfterValidator:
    def validate(values: tuple) -> tuple:
        if len(set(values)) != len(values):
            raise _invalid(f"duplicate {what} in {list(values)!r}")
        return values

    return AfterValidator(validate)


def _mapping(expected: str) -> BeforeValidator:
    """A mapping; YAML's empty value (`base:`) counts as an empty one."""

    def validate(value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _invalid(f"expected a mapping of {expected}, got {type(value).__name__}")
        return value

    return BeforeValidator(validate)


def _optuna_samplers() -> list[str]:
    """The sampler classes a space may name: every concrete sampler in optuna.samplers."""
    import optuna.samplers

    def usable(candidate: str) -> bool:
        cls = getattr(optuna.samplers, candidate, None)
        return isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler) and not inspect.isabstract(cls)

    return sorted(name for name in dir(optuna.samplers) if usable(name))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _non_empty_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def _settable(name: Any) -> str:
    """A config field a space may vary (a key of `vary`, `distributions` or `with`)."""
    if name not in CONFIG_FIELDS:
        close = difflib.get_close_matches(str(name), CONFIG_FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _invalid(f"unknown hyperparameter {name!r}{hint}; allowed: config fields ({', '.join(CONFIG_FIELDS)})")
    if name in NOT_VARIABLE:
        raise _invalid(f"{name!r} cannot be varied: {NOT_VARIABLE[name]}")
    return name


def _bound(value: Any) -> float:
    """A bound or step of a float or int distribution. YAML reads 1e-6 (no dot) as a string: numeric strings count."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _invalid(f"expected a number, got {value!r}") from None
    if not _is_number(value) or not math.isfinite(value):
        raise _invalid(f"expected a finite number, got {value!r}")
    return float(value)


Hyperparameter = Annotated[str, BeforeValidator(_settable)]
Method = Annotated[str, _one_of("method", METHODS, verb="unknown")]
Methods = Annotated[
    tuple[Method, ...],
    _check(_non_empty_list, lambda v: f"expected a non-empty list of methods from {' | '.join(METHODS)}, got {v!r}"),
    _unique("methods"),
]
Seed = Annotated[int, _check(lambda v: _is_int(v) and v >= 0, lambda v: f"invalid seed {v!r}; allowed: integers >= 0")]
Seeds = Annotated[
    tuple[Seed, ...],
    _check(_non_empty_list, lambda v: f"expected a non-empty list of integers >= 0, got {v!r}"),
    _unique("seeds"),
]
SingleValue = Annotated[
    Any, _check(lambda v: not isinstance(v, (list, dict)), lambda v: f"expected a single value, got {v!r}")
]
Bound = Annotated[float, BeforeValidator(_bound)]
Fields = Annotated[dict[str, Any], _mapping("config fields")]


class _Schema(BaseModel):
    """A mapping of the file: unknown keys are an error that suggests the closest allowed key."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = [field.alias or name for name, field in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise _invalid(f"unknown key{hint}; allowed keys: {', '.join(allowed)}", at=str(key))
        return data


class _Metric(_Schema):
    name: Annotated[str, _one_of("metric", tuple(METRICS), verb="unknown")]
    mode: Annotated[str | None, _one_of("mode", MODES)] = None  # default: the metric's own (METRICS)


def _as_metric(value: Any) -> Any:
    if isinstance(value, str):
        if value not in METRICS:
            raise _invalid(f"unknown metric {value!r}; allowed: {' | '.join(METRICS)}")
        return {"name": value}
    if not isinstance(value, dict):
        raise _invalid(f"expected a metric name or {{name: ..., mode: max|min}}, got {value!r}")
    return value


class _Choice(_Schema):
    """One listed value of `vary`: `value` or `{value: ..., with: {field: value}}`."""

    value: SingleValue
    with_: Annotated[dict[Hyperparameter, Any], _mapping("config fields")] = Field(default_factory=dict, alias="with")


def _as_choice(item: Any) -> Any:
    if isinstance(item, dict):
        return item
    if isinstance(item, list):
        raise _invalid(f"expected a single value, got {item!r}")
    return {"value": item}


VALUES_EXPECTED = "a non-empty list of values"


class _Varied(_Schema):
    """A hyperparameter of `vary`: a list of values, or `{values: [...], methods: [...]}`."""

    values: Annotated[
        tuple[Annotated[_Choice, BeforeValidator(_as_choice)], ...],
        _check(_non_empty_list, lambda v: f"expected {VALUES_EXPECTED}, got {v!r}"),
    ]
    methods: Methods | None = None


def _as_varied(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry
    if not _non_empty_list(entry):
        raise _invalid(f"expected {VALUES_EXPECTED}, got {entry!r}")
    return {"values": entry}


DISTRIBUTION_KEYS = {
    "float": ("type", "low", "high", "log", "step", "methods"),
    "int": ("type", "low", "high", "log", "step", "methods"),
    "categorical": ("type", "choices", "methods"),
}


class _Distribution(_Schema):
    """A hyperparameter of `distributions`: float and int take low, high, log, step; categorical takes choices."""

    type: Annotated[str, _one_of("type", DISTRIBUTION_TYPES)]
    low: Bound | None = None
    high: Bound | None = None
    log: Annotated[bool, _check(lambda v: isinstance(v, bool), lambda v: f"expected true or false, got {v!r}")] = False
    step: Bound | None = None
    choices: Annotated[
        tuple[Annotated[Any, _check(lambda v: v is None or isinstance(v, (bool, int, float, str)),
                                    lambda v: f"invalid choice {v!r}; allowed: single values")], ...],
        _check(_non_empty_list, lambda v: f"expected a non-empty list, got {v!r}"),
    ] = ()  # fmt: skip
    methods: Methods | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> _Distribution:
        allowed = DISTRIBUTION_KEYS[self.type]
        extra = sorted(set(self.model_fields_set) - set(allowed))
        if extra:
            raise _invalid(f"unknown keys {extra} for type {self.type}; allowed: {', '.join(sorted(allowed))}")
        if self.type == "categorical":
            if not self.choices:
                raise _invalid(f"expected a non-empty list, got {None!r}", at="choices")
            return self
        for key in ("low", "high", "step"):
            value = getattr(self, key)
            if value is None and key != "step":
                raise _invalid(f"expected a finite number, got {value!r}", at=key)
            if self.type == "int" and value is not None and not value.is_integer():
                raise _invalid(f"expected an integer for type int, got {value!r}", at=key)
        assert self.low is not None and self.high is not None
        if not self.low < self.high:
            raise _invalid(f"bounds low={self.low!r}, high={self.high!r}; allowed: low < high")
        if self.log and self.low <= 0:
            raise _invalid(f"{self.low!r} with log: true; allowed: low > 0", at="low")
        if self.step is not None and self.step <= 0:
            raise _invalid(f"{self.step!r}; allowed: a number > 0", at="step")
        return self


DISTRIBUTION_SHAPE = _check(
    lambda v: isinstance(v, dict), lambda v: f"expected {{type: {' | '.join(DISTRIBUTION_TYPES)}, ...}}, got {v!r}"
)


class _Scheduler(_Schema):
    type: Annotated[str, _one_of("scheduler", SCHEDULERS, verb="unknown")]
    grace_period: Annotated[
        int, _check(lambda v: _is_int(v) and v >= 1, lambda v: f"invalid {v!r}; allowed: an integer >= 1 (epochs)")
    ] = 1
    reduction_factor: Annotated[
        float, _check(lambda v: _is_number(v) and v > 1, lambda v: f"invalid {v!r}; allowed: a number > 1")
    ] = 3.0

    @model_validator(mode="after")
    def _none_takes_nothing(self) -> _Scheduler:
        extra = sorted(set(self.model_fields_set) - {"type"})
        if self.type == "none" and extra:
            raise _invalid(f"unknown keys {extra} for scheduler none; allowed: type")
        return self


def _as_scheduler(value: Any) -> Any:
    if value is None:
        value = "none"
    if isinstance(value, str):
        return {"type": value}
    if not isinstance(value, dict):
        expected = "none | asha | {type: asha, grace_period: ..., reduction_factor: ...}"
        raise _invalid(f"expected {expected}, got {value!r}")
    return value


def _no_method_or_seed(values: dict) -> dict:
    for key in ("method", "seed"):
        if key in values:
            raise _invalid(NOT_VARIABLE[key], at=key)
    return values


class _SpaceFile(_Schema):
    """The top level of a space file (see search_spaces/README.md)."""

    name: Annotated[
        str | None,
        _check(lambda v: isinstance(v, str) and bool(_SAFE_NAME.match(v)),
               lambda v: f"invalid name {v!r}; allowed: letters, digits, _ . - (it names the study folder)"),
    ] = None  # fmt: skip
    description: Annotated[
        str, _check(lambda v: isinstance(v, str), lambda v: f"expected a string, got {type(v).__name__}")
    ] = ""
    design: Annotated[str, _one_of("design", DESIGNS)]
    methods: Methods
    seeds: Seeds = (0,)
    metric: Annotated[_Metric, BeforeValidator(_as_metric)] = _Metric(name="val_top1")
    base: Annotated[Fields, AfterValidator(_no_method_or_seed)] = Field(default_factory=dict)
    method_overrides: Annotated[
        dict[str, Fields], _mapping("method -> config fields")
    ] = Field(default_factory=dict)
    vary: Annotated[
        dict[Hyperparameter, Annotated[_Varied, BeforeValidator(_as_varied)]] | None,
        _check(lambda v: isinstance(v, dict) and bool(v),
               lambda v: "expected a non-empty mapping of hyperparameter -> list of values"),
    ] = None  # fmt: skip
    distributions: Annotated[
        dict[Hyperparameter, Annotated[_Distribution, DISTRIBUTION_SHAPE]] | None,
        _check(lambda v: isinstance(v, dict) and bool(v),
               lambda v: "expected a non-empty mapping of hyperparameter -> {type: ..., ...}"),
    ] = None  # fmt: skip
    num_samples: Annotated[
        int | None, _check(lambda v: _is_int(v) and v >= 1, lambda v: f"invalid {v!r}; allowed: an integer >= 1")
    ] = None
    sampler: Annotated[
        str,
        _check(lambda v: isinstance(v, str) and v in _optuna_samplers(),
               lambda v: f"unknown Optuna sampler {v!r}; allowed: {' | '.join(_optuna_samplers())}"),
    ] = "TPESampler"  # fmt: skip
    sampler_args: Annotated[dict[str, Any], _mapping("the sampler's keyword arguments")] = Field(default_factory=dict)
    scheduler: Annotated[_Scheduler, BeforeValidator(_as_scheduler)] = _Scheduler(type="none")

    @model_validator(mode="after")
    def _keys_of_the_design(self) -> _SpaceFile:
        given = self.model_fields_set
        if self.design == "search":
            if "vary" in given:
                raise _invalid("design 'search' takes `distributions`, not `vary`", at="vary")
            if "distributions" not in given:
                raise _invalid("required for design 'search'", at="distributions")
            if "num_samples" not in given:
                raise _invalid("required for design 'search' (trials per method and seed)", at="num_samples")
        else:
            for key in SEARCH_ONLY_KEYS:
                if key in given:
                    raise _invalid(f"only design 'search' takes it; this space is {self.design!r}", at=key)
            if "vary" not in given:
                raise _invalid(f"required for design {self.design!r}", at="vary")
        return self


REQUIRED = {  # (top-level key, missing key) -> what the message says is expected
    ("design", "design"): f"one of {' | '.join(DESIGNS)}",
    ("methods", "methods"): f"a list of methods from {' | '.join(METHODS)}",
    ("metric", "name"): f"one of {' | '.join(METRICS)}",
    ("vary", "value"): "the listed value, e.g. {value: rmsprop, with: {lr: 0.01}}",
    ("vary", "values"): VALUES_EXPECTED,
    ("distributions", "type"): " | ".join(DISTRIBUTION_TYPES),
    ("scheduler", "type"): " | ".join(SCHEDULERS),
}


def _key_path(location: Sequence[Any]) -> str:
    """A pydantic error location as the file's key path: `vary.optimizer[2].with`."""
    path = ""
    for index, part in enumerate(location):
        if part == "[key]":  # the error is in a key of a mapping: the key itself names it
            continue
        following = location[index + 1] if index + 1 < len(location) else None
        if part == "values" and location[0] == "vary" and isinstance(following, int):
            continue  # vary.lr[1], as trials name it, whether the file lists the values or uses {values: [...]}
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _config_error(error: ValidationError, label: str) -> ConfigError:
    """The first error of a space file as one line: file, key path, bad value and what is allowed."""
    detail = error.errors(include_url=False)[0]
    context = detail.get("ctx") or {}
    location = [*detail["loc"], *([context["at"]] if context.get("at") else [])]
    value = detail.get("input")
    if detail["type"] == "space":
        message = context["message"]
    elif detail["type"] == "missing":
        expected = REQUIRED.get((location[0], location[-1])) if location else None
        message = f"required: {expected}" if expected else "required"
    elif detail["type"] == "model_type" and not location:
        message = f"expected a mapping of space keys, got {type(value).__name__}"
    elif detail["type"] in ("model_type", "dict_type"):
        message = f"expected a mapping, got {value!r}"
    else:  # a type the schema's own checks let through: pydantic's message, with the value
        message = f"{detail['msg']}, got {value!r}"
    key = _key_path(location)
    return ConfigError(f"{label}: {key}: {message}" if key else f"{label}: {message}")


class _Blame:
    """Builds the one-line errors of one space file: `fail(key, message)` and `fail.source(key)` (the
    `source` Config.from_dict prefixes its own messages with)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {key}: {message}")

    def source(self, key: str) -> str:
        return f"{self.label}: {key}"


def _parse(document: Any, path: Path, label: str) -> StudySpace:
    """The schema first (shape, types, allowed values), then what needs the configs of the space's methods."""
    try:
        schema = _SpaceFile.model_validate(document)
    except ValidationError as error:
        raise _config_error(error, label) from None
    fail = _Blame(label)
    methods = schema.methods
    base = schema.base
    for method in methods:  # the shared recipe must be valid for each method alone, so errors blame `base`
        Config.from_dict({**base, "method": method}, source=fail.source(f"base (method {method})"))
    method_overrides = _check_method_overrides(schema.method_overrides, base, methods, fail)

    def method_config(method: str) -> Config:
        values = {**base, **method_overrides.get(method, {}), "method": method}
        key = f"method_overrides.{method}" if method in method_overrides else f"base (method {method})"
        return Config.from_dict(values, source=f"{label}: {key}")

    base_configs = {method: method_config(method) for method in methods}
    search = schema.design == "search"
    return StudySpace(
        name=schema.name or path.stem,
        description=schema.description,
        design=schema.design,
        methods=methods,
        seeds=schema.seeds,
        metric=schema.metric.name,
        mode=schema.metric.mode or METRICS[schema.metric.name],
        base=base,
        method_overrides=method_overrides,
        vary={} if search else _check_vary(schema, base_configs, fail),
        distributions=_check_distributions(schema, base_configs, fail) if search else {},
        num_samples=schema.num_samples if search else None,
        sampler=_check_sampler(schema.sampler, schema.sampler_args, fail) if search else None,
        sampler_args=dict(schema.sampler_args) if search else {},
        scheduler=schema.scheduler.type if search else "none",
        scheduler_options=(
            {"grace_period": schema.scheduler.grace_period, "reduction_factor": schema.scheduler.reduction_factor}
            if search and schema.scheduler.type != "none"
            else {}
        ),
        path=path,
        label=label,
    )


def _restricted(entry_methods: tuple[str, ...] | None, methods: tuple[str, ...], key: str, fail: _Blame) -> tuple:
    if entry_methods is None:
        return methods
    outside = [m for m in entry_methods if m not in methods]
    if outside:
        raise fail(f"{key}.methods", f"{outside} not in the space's methods ({', '.join(methods)})")
    return entry_methods


def _check_applies(
    name: str, methods: tuple[str, ...], base_configs: Mapping[str, Config], key: str, fail: _Blame
) -> None:
    for method in methods:
        if not applies_to(name, base_configs[method]):
            raise fail(
                key,
                f"method {method!r} cannot take {name} ({_why_not(name)}); restrict it with `methods: [...]`",
            )


def _check_method_overrides(value: dict, base: dict, methods: tuple[str, ...], fail: _Blame) -> dict:
    for method, overrides in value.items():
        key = f"method_overrides.{method}"
        if method not in methods:
            raise fail(key, f"method {method!r} is not in `methods` ({', '.join(methods)})")
        config = Config.from_dict({**base, **overrides, "method": method}, source=fail.source(key))
        for field_name in overrides:
            if field_name in ("method", "seed"):
                raise fail(f"{key}.{field_name}", NOT_VARIABLE[field_name])
            if field_name == "epochs":
                raise fail(f"{key}.epochs", "budgets are identical across methods; set epochs in `base`")
            if not applies_to(field_name, config):
                why = _why_not(field_name)
                raise fail(f"{key}.{field_name}", f"method {method!r} cannot take {field_name} ({why})")
    return {method: dict(overrides) for method, overrides in value.items()}


def _check_vary(schema: _SpaceFile, base_configs: Mapping[str, Config], fail: _Blame) -> dict:
    assert schema.vary is not None  # the schema requires it outside design 'search'
    parsed: dict[str, VariedParameter] = {}
    for name, entry in schema.vary.items():
        key = f"vary.{name}"
        restricted = _restricted(entry.methods, schema.methods, key, fail)
        _check_applies(name, restricted, base_configs, key, fail)
        choices = []
        for index, choice in enumerate(entry.values):
            item_key = f"{key}[{index}]"
            for companion in choice.with_:
                if companion == name:
                    raise fail(f"{item_key}.with", f"{companion!r} is the varied hyperparameter itself")
                if companion in schema.vary and schema.design == "grid":  # one_at_a_time never combines two
                    raise fail(f"{item_key}.with", f"{companion!r} is another axis of the grid; it cannot ride along")
                _check_applies(companion, restricted, base_configs, f"{item_key}.with", fail)
            choices.append(Choice(value=choice.value, companions=dict(choice.with_), key=item_key))
        parsed[name] = VariedParameter(name=name, choices=tuple(choices), methods=restricted)
    return parsed


def _check_distributions(schema: _SpaceFile, base_configs: Mapping[str, Config], fail: _Blame) -> dict:
    assert schema.distributions is not None  # the schema requires it for design 'search'
    parsed: dict[str, Distribution] = {}
    for name, spec in schema.distributions.items():
        key = f"distributions.{name}"
        restricted = _restricted(spec.methods, schema.methods, key, fail)
        _check_applies(name, restricted, base_configs, key, fail)
        if spec.type == "categorical":
            template = base_configs[restricted[0]].to_dict()
            normalised = tuple(  # as the config reads them (YAML's "1e-3" is a string)
                getattr(Config.from_dict({**template, name: c}, source=fail.source(f"{key}.choices[{i}]")), name)
                for i, c in enumerate(spec.choices)
            )
            if len(set(normalised)) != len(normalised):
                raise fail(f"{key}.choices", f"duplicate choices in {list(spec.choices)!r}")
            distribution = Distribution(name=name, type=spec.type, choices=normalised, methods=restricted)
        else:
            number = int if spec.type == "int" else float
            assert spec.low is not None and spec.high is not None  # _Distribution requires both for this type
            distribution = Distribution(
                name=name,
                type=spec.type,
                low=number(spec.low),
                high=number(spec.high),
                log=spec.log,
                step=None if spec.step is None else number(spec.step),
                methods=restricted,
            )
        try:
            distribution.to_optuna()
        except ValueError as error:
            raise fail(key, f"Optuna rejects it: {error}") from None
        parsed[name] = distribution
    return parsed


def _check_sampler(name: str, args: Mapping[str, Any], fail: _Blame) -> str:
    """The sampler takes `sampler_args` (the schema checked that it exists)."""
    import optuna.samplers

    try:
        inspect.signature(getattr(optuna.samplers, name)).bind(**args)
    except TypeError as error:
        raise fail("sampler_args", f"{name} does not take them: {error}") from None
    return name


def _format_value(value: Any) -> str:
    """A value as it appears in a trial name: short, readable, and safe in a folder name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)
