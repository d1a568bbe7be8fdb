"""Study spaces: YAML files that declare which trials a study runs, and the loader that expands them.

A study space is data, not code. Each `*.yaml` file in this folder is a named space (`load_space("quick")`);
any other file can be loaded by path (`load_space("my/space.yaml")`). The loader validates the whole file
and every trial config it implies (through `study.config.Config.from_dict`) before anything runs; every
error is one `ConfigError` line that names the space file and the key, e.g.
``search_spaces/temperature.yaml: vary.temperature[3]: invalid temperature=-0.1; allowed: a finite number > 0``.

File format (top-level keys; anything else is rejected)::

    name: paper_stability        # optional; defaults to the file name; letters, digits, _ . -
    description: one line        # optional
    design: one_at_a_time        # one_at_a_time | grid | search
    methods: [supcon, ce]        # required; any of supcon, simclr, ce
    seeds: [0, 1, 2]             # optional, default [0]; distinct ints >= 0; every trial runs once per seed
    metric: val_top1             # optional, default val_top1; or {name: val_top1, mode: max}
    base:                        # config fields shared by every method (see study/config.py),
      dataset: cifar10           #   including the budget: epochs, linear_epochs, batch_size ...
      epochs: 100
    method_overrides:            # optional, per-method config fields on top of `base`
      ce: {optimizer: sgd, lr: 0.2}

    # one_at_a_time and grid: the listed values of each varied hyperparameter (a config field)
    vary:
      lr: [0.01, 0.1, 1.0]                              # applies to every method of the space
      temperature: {values: [0.05, 0.1], methods: [supcon]}   # restricted to some methods
      optimizer: [lars, sgd, {value: rmsprop, with: {lr: 0.01}}]  # a value with companion fields

    # search: Optuna over distributions (run by study/sweep.py through Ray Tune's OptunaSearch)
    distributions:
      lr: {type: float, low: 0.01, high: 3.0, log: true}        # float: low, high, log, step
      randaugment_m: {type: int, low: 0, high: 10, step: 2}     # int: low, high, log, step
      batch_size: {type: categorical, choices: [128, 256]}      # categorical: choices
      temperature: {type: float, low: 0.03, high: 0.5, log: true, methods: [supcon]}
    num_samples: 30              # required for search: trials per method (and seed)
    sampler: TPESampler          # optional, default TPESampler; any sampler class in optuna.samplers (seeded
                                 #   with the first of `seeds` unless sampler_args gives a seed)
    sampler_args: {n_startup_trials: 8}   # optional keyword arguments of that sampler
    scheduler: asha              # optional: none (default) | asha | {type: asha, grace_period: 1, reduction_factor: 3}

Designs:

- `one_at_a_time` (the paper's stability design, Sec. 4.3): for each method and seed, the base combination
  (`varied="base"`), then for each varied hyperparameter each listed value that differs from the method's
  base value (`varied=<name>`). Budgets are the same for every method: `method_overrides` may not set
  `epochs`.
- `grid`: for each method and seed the full product of the values of the hyperparameters that apply to it
  (`varied="grid"`; a method with none of them runs its base combination, `varied="base"`).
- `search`: `StudySpace.search_space(method)` gives Optuna distributions, `StudySpace.config_for` turns a
  sample into a config; the bounds and every choice are validated as configs at load time.

Method applicability. Some fields mean something only to some methods (`CONTRASTIVE_ONLY`,
`LINEAR_STAGE`, `CE_ONLY` below; the linear stage exists for supcon/simclr, and for ce only with
`ce_two_stage: true`). Varying such a field (in `vary` or `distributions`) for a method that cannot take it
is an error: restrict it with `methods: [...]`. Setting it in `method_overrides.<method>` is an error too.
`base` is the shared recipe and may hold such fields; methods that cannot take them ignore them.

Trial order and names are deterministic: seeds outermost, then methods in file order, then varied
hyperparameters and their values in file order. Names read like `supcon-base-seed0`,
`ce-lr=0.1-seed2` and `supcon-optimizer=lars-linear_optimizer=rmsprop-seed0`.

Overrides (`trials(overrides)`, `config_for(..., overrides=...)`) are CLI-level config fields applied to
every trial (dataset, data_root, epochs, width ...) before validation; they win over `base` and
`method_overrides` but may not touch a varied field, `method` or `seed`.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import yaml

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

SPACES_DIR = Path(__file__).resolve().parent
DESIGNS = ("one_at_a_time", "grid", "search")
METRICS = {"val_top1": "max", "val_top5": "max"}  # selection uses the validation split, never test
MODES = ("max", "min")
SCHEDULERS = ("none", "asha")
DISTRIBUTION_TYPES = ("float", "int", "categorical")
TOP_LEVEL_KEYS = (
    "name", "description", "design", "methods", "seeds", "metric", "base", "method_overrides",
    "vary", "distributions", "num_samples", "sampler", "sampler_args", "scheduler",
)  # fmt: skip
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

        if self.type == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
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
                params: dict[str, Any] = {}
                for _, choice_params in combination:
                    clash = set(params) & set(choice_params)
                    if clash:
                        raise self._fail("vary", f"companion fields {sorted(clash)} are set by two varied values")
                    params.update(choice_params)
                label = "-".join(f"{p.name}={_format_value(v)}" for p, (v, _) in zip(parameters, combination))
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
    fail = _Blame(label)

    if not isinstance(document, dict):
        raise ConfigError(f"{label}: expected a mapping of space keys, got {type(document).__name__}")
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(str(key), f"unknown key{hint}; allowed keys: {', '.join(TOP_LEVEL_KEYS)}")

    name = document.get("name", path.stem)
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise fail("name", f"invalid name {name!r}; allowed: letters, digits, _ . - (it names the study folder)")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"expected a string, got {type(description).__name__}")

    design = document.get("design")
    if design not in DESIGNS:
        raise fail("design", f"invalid design {design!r}; allowed: {' | '.join(DESIGNS)}")
    if design == "search":
        if "vary" in document:
            raise fail("vary", "design 'search' takes `distributions`, not `vary`")
        if "distributions" not in document:
            raise fail("distributions", "required for design 'search'")
        if "num_samples" not in document:
            raise fail("num_samples", "required for design 'search' (trials per method and seed)")
    else:
        for key in SEARCH_ONLY_KEYS:
            if key in document:
                raise fail(key, f"only design 'search' takes it; this space is {design!r}")
        if "vary" not in document:
            raise fail("vary", f"required for design {design!r}")

    methods = _parse_methods(document.get("methods"), "methods", fail)
    seeds = _parse_seeds(document.get("seeds", [0]), fail)
    metric, mode = _parse_metric(document.get("metric", "val_top1"), fail)

    base = document.get("base") or {}
    if not isinstance(base, dict):
        raise fail("base", f"expected a mapping of config fields, got {type(base).__name__}")
    for key in ("method", "seed"):
        if key in base:
            raise fail(f"base.{key}", NOT_VARIABLE[key])
    for method in methods:  # the shared recipe must be valid for each method alone, so errors blame `base`
        Config.from_dict({**base, "method": method}, source=fail.source(f"base (method {method})"))
    method_overrides = _parse_method_overrides(document.get("method_overrides") or {}, base, methods, fail)

    def method_config(method: str) -> Config:
        values = {**base, **method_overrides.get(method, {}), "method": method}
        key = f"method_overrides.{method}" if method in method_overrides else f"base (method {method})"
        return Config.from_dict(values, source=f"{label}: {key}")

    base_configs = {method: method_config(method) for method in methods}

    vary: dict[str, VariedParameter] = {}
    distributions: dict[str, Distribution] = {}
    if design == "search":
        distributions = _parse_distributions(document["distributions"], methods, base_configs, fail)
    else:
        vary = _parse_vary(document["vary"], design, methods, base_configs, fail)

    num_samples = None
    sampler = None
    sampler_args: dict[str, Any] = {}
    scheduler, scheduler_options = "none", {}
    if design == "search":
        num_samples = document["num_samples"]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise fail("num_samples", f"invalid {num_samples!r}; allowed: an integer >= 1")
        sampler, sampler_args = _parse_sampler(
            document.get("sampler", "TPESampler"), document.get("sampler_args") or {}, fail
        )
        scheduler, scheduler_options = _parse_scheduler(document.get("scheduler", "none"), fail)

    return StudySpace(
        name=name,
        description=description,
        design=design,
        methods=methods,
        seeds=seeds,
        metric=metric,
        mode=mode,
        base=base,
        method_overrides=method_overrides,
        vary=vary,
        distributions=distributions,
        num_samples=num_samples,
        sampler=sampler,
        sampler_args=sampler_args,
        scheduler=scheduler,
        scheduler_options=scheduler_options,
        path=path,
        label=label,
    )


def _parse_methods(value: Any, key: str, fail: _Blame) -> tuple[str, ...]:
    if value is None:
        raise fail(key, f"required: a list of methods from {' | '.join(METHODS)}")
    if not isinstance(value, list) or not value:
        raise fail(key, f"expected a non-empty list of methods from {' | '.join(METHODS)}, got {value!r}")
    for method in value:
        if method not in METHODS:
            raise fail(key, f"unknown method {method!r}; allowed: {' | '.join(METHODS)}")
    if len(set(value)) != len(value):
        raise fail(key, f"duplicate methods in {value!r}")
    return tuple(value)


def _parse_seeds(value: Any, fail: _Blame) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise fail("seeds", f"expected a non-empty list of integers >= 0, got {value!r}")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise fail("seeds", f"invalid seed {seed!r}; allowed: integers >= 0")
    if len(set(value)) != len(value):
        raise fail("seeds", f"duplicate seeds in {value!r}")
    return tuple(value)


def _parse_metric(value: Any, fail: _Blame) -> tuple[str, str]:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or set(value) - {"name", "mode"}:
        raise fail("metric", f"expected a metric name or {{name: ..., mode: max|min}}, got {value!r}")
    name = value.get("name")
    if name not in METRICS:
        raise fail("metric", f"unknown metric {name!r}; allowed: {' | '.join(METRICS)}")
    mode = value.get("mode", METRICS[name])
    if mode not in MODES:
        raise fail("metric.mode", f"invalid mode {mode!r}; allowed: {' | '.join(MODES)}")
    return name, mode


def _check_settable(name: str, key: str, fail: _Blame) -> None:
    if name not in CONFIG_FIELDS:
        close = difflib.get_close_matches(str(name), CONFIG_FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise fail(key, f"unknown hyperparameter {name!r}{hint}; allowed: config fields ({', '.join(CONFIG_FIELDS)})")
    if name in NOT_VARIABLE:
        raise fail(key, f"{name!r} cannot be varied: {NOT_VARIABLE[name]}")


def _check_applies(
    name: str, methods: tuple[str, ...], base_configs: Mapping[str, Config], key: str, fail: _Blame
) -> None:
    for method in methods:
        if not applies_to(name, base_configs[method]):
            raise fail(
                key,
                f"method {method!r} cannot take {name} ({_why_not(name)}); restrict it with `methods: [...]`",
            )


def _parse_method_overrides(value: Any, base: dict, methods: tuple[str, ...], fail: _Blame) -> dict:
    if not isinstance(value, dict):
        raise fail("method_overrides", f"expected a mapping of method -> config fields, got {type(value).__name__}")
    parsed: dict[str, dict[str, Any]] = {}
    for method, overrides in value.items():
        key = f"method_overrides.{method}"
        if method not in methods:
            raise fail(key, f"method {method!r} is not in `methods` ({', '.join(methods)})")
        if not isinstance(overrides, dict):
            raise fail(key, f"expected a mapping of config fields, got {type(overrides).__name__}")
        config = Config.from_dict({**base, **overrides, "method": method}, source=fail.source(key))
        for field_name in overrides:
            if field_name in ("method", "seed"):
                raise fail(f"{key}.{field_name}", NOT_VARIABLE[field_name])
            if field_name == "epochs":
                raise fail(f"{key}.epochs", "budgets are identical across methods; set epochs in `base`")
            if not applies_to(field_name, config):
                why = _why_not(field_name)
                raise fail(f"{key}.{field_name}", f"method {method!r} cannot take {field_name} ({why})")
        parsed[method] = dict(overrides)
    return parsed


def _parse_vary(
    value: Any, design: str, methods: tuple[str, ...], base_configs: Mapping[str, Config], fail: _Blame
) -> dict:
    if not isinstance(value, dict) or not value:
        raise fail("vary", "expected a non-empty mapping of hyperparameter -> list of values")
    parsed: dict[str, VariedParameter] = {}
    for name, entry in value.items():
        key = f"vary.{name}"
        _check_settable(name, key, fail)
        restricted = methods
        if isinstance(entry, dict):
            extra = set(entry) - {"values", "methods"}
            if extra or "values" not in entry:
                expected = "a list of values or {values: [...], methods: [...]}"
                raise fail(key, f"expected {expected}, got keys {sorted(entry)}")
            if "methods" in entry:
                restricted = _parse_methods(entry["methods"], f"{key}.methods", fail)
                outside = [m for m in restricted if m not in methods]
                if outside:
                    raise fail(f"{key}.methods", f"{outside} not in the space's methods ({', '.join(methods)})")
            entry = entry["values"]
        if not isinstance(entry, list) or not entry:
            raise fail(key, f"expected a non-empty list of values, got {entry!r}")
        _check_applies(name, restricted, base_configs, key, fail)
        choices = []
        for index, item in enumerate(entry):
            item_key = f"{key}[{index}]"
            companions: dict[str, Any] = {}
            if isinstance(item, dict):
                if set(item) - {"value", "with"} or "value" not in item:
                    expected = "a value or {value: ..., with: {field: value}}"
                    raise fail(item_key, f"expected {expected}, got keys {sorted(item)}")
                companions = item.get("with") or {}
                if not isinstance(companions, dict):
                    raise fail(f"{item_key}.with", f"expected a mapping of config fields, got {companions!r}")
                for companion in companions:
                    _check_settable(companion, f"{item_key}.with", fail)
                    if companion == name:
                        raise fail(f"{item_key}.with", f"{companion!r} is the varied hyperparameter itself")
                    if companion in value and design == "grid":  # one_at_a_time never combines two families
                        message = f"{companion!r} is another axis of the grid; it cannot ride along"
                        raise fail(f"{item_key}.with", message)
                    _check_applies(companion, restricted, base_configs, f"{item_key}.with", fail)
                item = item["value"]
            if isinstance(item, (list, dict)):
                raise fail(item_key, f"expected a single value, got {item!r}")
            choices.append(Choice(value=item, companions=dict(companions), key=item_key))
        parsed[name] = VariedParameter(name=name, choices=tuple(choices), methods=restricted)
    return parsed


def _parse_distributions(
    value: Any, methods: tuple[str, ...], base_configs: Mapping[str, Config], fail: _Blame
) -> dict:
    if not isinstance(value, dict) or not value:
        raise fail("distributions", "expected a non-empty mapping of hyperparameter -> {type: ..., ...}")
    allowed_keys = {
        "float": {"type", "low", "high", "log", "step", "methods"},
        "int": {"type", "low", "high", "log", "step", "methods"},
        "categorical": {"type", "choices", "methods"},
    }
    parsed: dict[str, Distribution] = {}
    for name, spec in value.items():
        key = f"distributions.{name}"
        _check_settable(name, key, fail)
        if not isinstance(spec, dict):
            raise fail(key, f"expected {{type: float|int|categorical, ...}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in DISTRIBUTION_TYPES:
            raise fail(f"{key}.type", f"invalid type {kind!r}; allowed: {' | '.join(DISTRIBUTION_TYPES)}")
        extra = set(spec) - allowed_keys[kind]
        if extra:
            allowed = ", ".join(sorted(allowed_keys[kind]))
            raise fail(key, f"unknown keys {sorted(extra)} for type {kind}; allowed: {allowed}")
        restricted = methods
        if "methods" in spec:
            restricted = _parse_methods(spec["methods"], f"{key}.methods", fail)
            outside = [m for m in restricted if m not in methods]
            if outside:
                raise fail(f"{key}.methods", f"{outside} not in the space's methods ({', '.join(methods)})")
        _check_applies(name, restricted, base_configs, key, fail)
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise fail(f"{key}.choices", f"expected a non-empty list, got {choices!r}")
            for choice in choices:
                if choice is not None and not isinstance(choice, (bool, int, float, str)):
                    raise fail(f"{key}.choices", f"invalid choice {choice!r}; allowed: single values")
            template = base_configs[restricted[0]].to_dict()
            normalised = tuple(  # as the config reads them (YAML's "1e-3" is a string)
                getattr(Config.from_dict({**template, name: c}, source=fail.source(f"{key}.choices[{i}]")), name)
                for i, c in enumerate(choices)
            )
            if len(set(normalised)) != len(normalised):
                raise fail(f"{key}.choices", f"duplicate choices in {choices!r}")
            distribution = Distribution(name=name, type=kind, choices=normalised, methods=restricted)
        else:
            low = _number(spec.get("low"), kind, f"{key}.low", fail)
            high = _number(spec.get("high"), kind, f"{key}.high", fail)
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise fail(f"{key}.log", f"expected true or false, got {log!r}")
            step = None if spec.get("step") is None else _number(spec["step"], kind, f"{key}.step", fail)
            if not low < high:
                raise fail(key, f"bounds low={low!r}, high={high!r}; allowed: low < high")
            if log and low <= 0:
                raise fail(f"{key}.low", f"{low!r} with log: true; allowed: low > 0")
            if step is not None and step <= 0:
                raise fail(f"{key}.step", f"{step!r}; allowed: a number > 0")
            distribution = Distribution(
                name=name, type=kind, low=low, high=high, log=log, step=step, methods=restricted
            )
        try:
            distribution.to_optuna()
        except ValueError as error:
            raise fail(key, f"Optuna rejects it: {error}") from None
        parsed[name] = distribution
    return parsed


def _number(value: Any, kind: str, key: str, fail: _Blame) -> float | int:
    """A bound of a float or int distribution. YAML reads 1e-6 (no dot) as a string, so numeric strings count."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise fail(key, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise fail(key, f"expected a finite number, got {value!r}")
    if kind == "int":
        if not float(value).is_integer():
            raise fail(key, f"expected an integer for type int, got {value!r}")
        return int(value)
    return float(value)


def _parse_sampler(name: Any, args: Any, fail: _Blame) -> tuple[str, dict[str, Any]]:
    import optuna.samplers

    def usable(candidate: str) -> bool:
        cls = getattr(optuna.samplers, candidate, None)
        return isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler) and not inspect.isabstract(cls)

    available = sorted(n for n in dir(optuna.samplers) if usable(n))
    if not isinstance(name, str) or not usable(name):
        raise fail("sampler", f"unknown Optuna sampler {name!r}; allowed: {' | '.join(available)}")
    if not isinstance(args, dict):
        raise fail("sampler_args", f"expected a mapping of {name} keyword arguments, got {args!r}")
    try:
        inspect.signature(getattr(optuna.samplers, name)).bind(**args)
    except TypeError as error:
        raise fail("sampler_args", f"{name} does not take them: {error}") from None
    return name, dict(args)


def _parse_scheduler(value: Any, fail: _Blame) -> tuple[str, dict[str, Any]]:
    if value is None:
        value = "none"
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        expected = "none | asha | {type: asha, grace_period: ..., reduction_factor: ...}"
        raise fail("scheduler", f"expected {expected}, got {value!r}")
    kind = value.get("type")
    if kind not in SCHEDULERS:
        raise fail("scheduler.type", f"unknown scheduler {kind!r}; allowed: {' | '.join(SCHEDULERS)}")
    allowed = {"type"} if kind == "none" else {"type", "grace_period", "reduction_factor"}
    extra = set(value) - allowed
    if extra:
        listed = ", ".join(sorted(allowed))
        raise fail("scheduler", f"unknown keys {sorted(extra)} for scheduler {kind}; allowed: {listed}")
    grace = value.get("grace_period", 1)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise fail("scheduler.grace_period", f"invalid {grace!r}; allowed: an integer >= 1 (epochs)")
    factor = value.get("reduction_factor", 3)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 1:
        raise fail("scheduler.reduction_factor", f"invalid {factor!r}; allowed: a number > 1")
    if kind == "none":
        return kind, {}
    return kind, {"grace_period": grace, "reduction_factor": float(factor)}


def _format_value(value: Any) -> str:
    """A value as it appears in a trial name: short, readable, and safe in a folder name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)
