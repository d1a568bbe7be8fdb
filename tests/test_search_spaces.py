"""Study spaces: the shipped files load and expand to valid configs, the designs expand to the expected trial
lists, method applicability and overrides behave as documented, and every class of invalid space file is
rejected with one line naming the file and the key. Pure Python: no Ray."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import yaml

from study.config import AUGMENTATIONS, Config, ConfigError
from study.spaces import StudySpace, list_spaces, load_space

SHIPPED = (
    "paper_stability", "temperature", "batch_size", "randaugment_magnitude", "optimizer_pairs",
    "augmentation_pairs", "quick", "lr_search", "paper_stability_imagenet", "loss_variant", "positives_cap",
    "two_stage_ce", "pretrain_epochs", "train_fraction", "memory_bank",
)  # fmt: skip


def write_space(tmp_path: Path, document: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def small_space(**changes: Any) -> dict[str, Any]:
    """A valid one_at_a_time space; tests change one thing at a time."""
    document: dict[str, Any] = {
        "name": "small",
        "design": "one_at_a_time",
        "methods": ["supcon", "ce"],
        "seeds": [0, 1],
        "metric": "val_top1",
        "base": {"epochs": 2, "linear_epochs": 1, "lr": 0.5, "augmentation": "simaugment"},
        "method_overrides": {"ce": {"lr": 0.1}},
        "vary": {"lr": [0.1, 0.5, 1.0], "augmentation": ["simaugment", "crop_flip"]},
    }
    document.update(changes)
    return document


def search_space_doc(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "design": "search",
        "methods": ["supcon", "ce"],
        "seeds": [3],
        "base": {"epochs": 4, "linear_epochs": 1},
        "distributions": {
            "lr": {"type": "float", "low": 0.01, "high": 2.0, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64]},
            "randaugment_m": {"type": "int", "low": 0, "high": 10, "step": 2},
            "temperature": {"type": "float", "low": 0.05, "high": 0.5, "methods": ["supcon"]},
        },
        "num_samples": 4,
        "sampler": "TPESampler",
        "sampler_args": {"n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    }
    document.update(changes)
    return document


# ---------------------------------------------------------------------------------- shipped spaces
def test_list_spaces_names_every_shipped_file():
    assert set(SHIPPED) <= set(list_spaces())
    assert list_spaces() == sorted(list_spaces()) and "__init__" not in list_spaces()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_every_trial_config_is_valid(name: str):
    space = load_space(name)
    assert space.name == name and space.description
    assert space.metric == "val_top1" and space.mode == "max"
    if space.design == "search":
        for method in space.methods:
            assert space.search_space(method)
            config = space.config_for(method, {})
            assert config.method == method
        return
    trials = space.trials()
    assert trials
    names = [trial.trial_name for trial in trials]
    assert len(set(names)) == len(names)
    for trial in trials:
        assert isinstance(trial.config, Config)
        assert trial.config.method == trial.method and trial.config.seed == trial.seed
        # a config survives a round trip through its dict, i.e. it is valid as a Tune sample would carry it
        assert Config.from_dict(trial.config.to_dict()) == trial.config
        assert trial.trial_name.startswith(f"{trial.method}-") and trial.trial_name.endswith(f"-seed{trial.seed}")
    # identical budgets across methods (unless the budget is what the space studies, Fig. 4c)
    if "epochs" not in space.vary:
        assert len({trial.config.epochs for trial in trials}) == 1


def test_paper_stability_covers_the_paper_design():
    space = load_space("paper_stability")
    assert space.design == "one_at_a_time"
    assert {"supcon", "ce"} <= set(space.methods) and len(space.seeds) >= 3
    values = {name: [choice.value for choice in p.choices] for name, p in space.vary.items()}
    # Fig. 4a's four policies besides the CIFAR base's SimCLR-style views
    assert set(values["augmentation"]) == {"simclr_augment", "autoaugment", "randaugment", "simaugment",
                                           "stacked_randaugment"}
    assert set(values["optimizer"]) == {"lars", "sgd", "rmsprop"}
    rates = values["lr"]
    assert len(rates) >= 5 and math.log10(max(rates) / min(rates)) >= 2
    trials = space.trials()
    for method in ("supcon", "ce"):
        per_seed = [t for t in trials if t.method == method and t.seed == space.seeds[0]]
        varied = [t.varied for t in per_seed]
        assert varied.count("base") == 1 and varied.count("augmentation") == 4 and varied.count("optimizer") == 2
    # both losses get the same number of trials (each base lr is one of the listed rates)
    assert sum(t.method == "supcon" for t in trials) == sum(t.method == "ce" for t in trials)


def test_temperature_space_reaches_tiny_and_large_values_for_supcon_only():
    space = load_space("temperature")
    assert space.methods == ("supcon",)
    temperatures = sorted(c.value for c in space.vary["temperature"].choices)
    assert temperatures[0] <= 0.01 and temperatures[-1] >= 1.0


def test_pair_spaces_are_full_grids():
    optimizers = load_space("optimizer_pairs").trials()
    per_seed = {(t.config.optimizer, t.config.linear_optimizer) for t in optimizers if t.seed == 0}
    assert len(per_seed) == 9 and all(t.varied == "grid" for t in optimizers)
    augmentations = load_space("augmentation_pairs").trials()
    per_seed = {(t.config.augmentation, t.config.linear_augmentation) for t in augmentations if t.seed == 0}
    table_9 = ("autoaugment", "randaugment", "simaugment", "stacked_randaugment")  # Supp. Table 9's policies
    assert per_seed == {(a, b) for a in table_9 for b in table_9}


def test_quick_space_is_small_and_on_digits():
    space = load_space("quick")
    trials = space.trials()
    assert 8 <= len(trials) <= 12
    assert {t.method for t in trials} == {"supcon", "ce"}
    for trial in trials:
        config = trial.config
        assert config.dataset == "digits" and config.width <= 0.25 and (config.image_size or 16) <= 16
        assert config.epochs + (config.linear_epochs if config.has_linear_stage else 0) <= 13  # minutes on a CPU


def test_unknown_space_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown study space 'nope'.*paper_stability.*quick"):
        load_space("nope")


def test_space_loads_from_any_path_and_name_defaults_to_file_stem(tmp_path: Path):
    document = small_space()
    del document["name"]
    path = write_space(tmp_path, document, "my_study.yaml")
    space = load_space(str(path))
    assert isinstance(space, StudySpace) and space.name == "my_study" and space.path == path


# ---------------------------------------------------------------------------------- expansion
def test_one_at_a_time_expands_to_the_expected_trials(tmp_path: Path):
    space = load_space(str(write_space(tmp_path, small_space())))
    trials = space.trials()
    per_seed = [
        "supcon-base", "supcon-lr=0.1", "supcon-lr=1.0", "supcon-augmentation=crop_flip",
        "ce-base", "ce-lr=0.5", "ce-lr=1.0", "ce-augmentation=crop_flip",
    ]  # fmt: skip
    assert [t.trial_name for t in trials] == [f"{n}-seed{s}" for s in (0, 1) for n in per_seed]
    by_name = {t.trial_name: t for t in trials}

    base = by_name["ce-base-seed1"]
    assert (base.varied, base.params, base.seed, base.config.seed) == ("base", {}, 1, 1)
    assert base.config.lr == 0.1  # method_overrides
    assert base.hyperparameters == {"lr": 0.1, "augmentation": "simaugment"}

    trial = by_name["ce-augmentation=crop_flip-seed0"]
    assert trial.varied == "augmentation" and trial.params == {"augmentation": "crop_flip"}
    assert (trial.config.augmentation, trial.config.lr, trial.config.method) == ("crop_flip", 0.1, "ce")

    trial = by_name["supcon-lr=1.0-seed0"]
    assert trial.varied == "lr" and trial.params == {"lr": 1.0} and trial.config.lr == 1.0
    assert trial.config.augmentation == "simaugment" and trial.config.epochs == 2


def test_grid_expands_to_the_full_product_per_method(tmp_path: Path):
    document = small_space(
        design="grid",
        seeds=[0],
        vary={
            "optimizer": ["sgd", "lars"],
            "temperature": {"values": [0.05, 0.2], "methods": ["supcon"]},
        },
    )
    trials = load_space(str(write_space(tmp_path, document))).trials()
    assert [t.trial_name for t in trials] == [
        "supcon-optimizer=sgd-temperature=0.05-seed0",
        "supcon-optimizer=sgd-temperature=0.2-seed0",
        "supcon-optimizer=lars-temperature=0.05-seed0",
        "supcon-optimizer=lars-temperature=0.2-seed0",
        "ce-optimizer=sgd-seed0",
        "ce-optimizer=lars-seed0",
    ]
    assert all(t.varied == "grid" for t in trials)
    assert trials[2].params == {"optimizer": "lars", "temperature": 0.05}
    assert (trials[2].config.optimizer, trials[2].config.temperature) == ("lars", 0.05)
    # the restricted hyperparameter never reaches ce: its config keeps the default, no column for it
    assert trials[4].hyperparameters == {"optimizer": "sgd"} and trials[4].config.temperature == 0.1


def test_grid_method_with_no_applicable_axis_runs_its_base(tmp_path: Path):
    document = small_space(design="grid", seeds=[0], vary={"temperature": {"values": [0.05, 0.2], "methods": ["supcon"]}})
    trials = load_space(str(write_space(tmp_path, document))).trials()
    assert [(t.trial_name, t.varied) for t in trials] == [
        ("supcon-temperature=0.05-seed0", "grid"),
        ("supcon-temperature=0.2-seed0", "grid"),
        ("ce-base-seed0", "base"),
    ]


def test_companion_fields_ride_along_with_their_value(tmp_path: Path):
    document = small_space(seeds=[0], vary={"optimizer": ["sgd", {"value": "rmsprop", "with": {"lr": 0.002}}]})
    trials = {t.trial_name: t for t in load_space(str(write_space(tmp_path, document))).trials()}
    trial = trials["supcon-optimizer=rmsprop-seed0"]
    assert trial.params == {"optimizer": "rmsprop", "lr": 0.002}
    assert (trial.config.optimizer, trial.config.lr) == ("rmsprop", 0.002)
    assert trials["supcon-base-seed0"].config.lr == 0.5
    assert "supcon-optimizer=sgd-seed0" not in trials  # sgd is the base optimizer


def test_temperature_restricted_to_contrastive_methods_leaves_ce_alone(tmp_path: Path):
    document = small_space(
        seeds=[0], vary={"temperature": {"values": [0.05, 0.1, 0.5], "methods": ["supcon"]}, "lr": [0.1, 0.5]}
    )
    trials = load_space(str(write_space(tmp_path, document))).trials()
    ce = [t for t in trials if t.method == "ce"]
    assert [t.trial_name for t in ce] == ["ce-base-seed0", "ce-lr=0.5-seed0"]
    assert all("temperature" not in t.hyperparameters and t.config.temperature == 0.1 for t in ce)
    supcon = [t.trial_name for t in trials if t.method == "supcon"]
    assert "supcon-temperature=0.05-seed0" in supcon and "supcon-temperature=0.5-seed0" in supcon


def test_linear_stage_parameters_apply_to_ce_only_with_two_stages(tmp_path: Path):
    vary = {"linear_lr": [0.1, 1.0]}
    with pytest.raises(ConfigError, match="vary.linear_lr: method 'ce' cannot take linear_lr"):
        load_space(str(write_space(tmp_path, small_space(vary=vary))))
    document = small_space(vary=vary, method_overrides={"ce": {"ce_two_stage": True}}, seeds=[0])
    trials = load_space(str(write_space(tmp_path, document))).trials()
    assert "ce-linear_lr=0.1-seed0" in [t.trial_name for t in trials]


# ---------------------------------------------------------------------------------- overrides
def test_overrides_reach_every_trial(tmp_path: Path):
    space = load_space(str(write_space(tmp_path, small_space())))
    overrides = {"dataset": "cifar10", "data_root": "/data", "epochs": 1, "width": 0.5}
    trials = space.trials(overrides)
    assert len(trials) == len(space.trials())
    for trial in trials:
        for key, value in overrides.items():
            assert getattr(trial.config, key) == value


def test_overrides_are_validated_before_anything_runs(tmp_path: Path):
    path = write_space(tmp_path, small_space(base={"epochs": 4, "warmup_epochs": 2}))
    space = load_space(str(path))
    with pytest.raises(ConfigError, match=rf"^{path}: overrides \(method supcon\): invalid warmup_epochs=2"):
        space.trials({"epochs": 2})  # valid alone, clashes with the base's warm-up
    with pytest.raises(ConfigError, match=rf"^{path}: overrides: 'lr' is a hyperparameter this space varies"):
        space.trials({"lr": 0.2})
    with pytest.raises(ConfigError, match=rf"^{path}: overrides \(method supcon\): unknown key 'epoch'"):
        space.trials({"epoch": 2})
    with pytest.raises(ConfigError, match="overrides: 'seed' cannot be overridden"):
        space.trials({"seed": 3})


def test_overrides_may_not_touch_a_companion_field(tmp_path: Path):
    document = small_space(vary={"optimizer": ["sgd", {"value": "rmsprop", "with": {"momentum": 0.0}}]})
    space = load_space(str(write_space(tmp_path, document)))
    with pytest.raises(ConfigError, match="overrides: 'momentum' is set alongside a varied value"):
        space.trials({"momentum": 0.5})


# ---------------------------------------------------------------------------------- search design
def test_search_space_gives_optuna_distributions_per_method(tmp_path: Path):
    space = load_space(str(write_space(tmp_path, search_space_doc())))
    assert space.hyperparameters == ("lr", "batch_size", "randaugment_m", "temperature")
    supcon = space.search_space("supcon")
    assert supcon["lr"] == optuna.distributions.FloatDistribution(0.01, 2.0, log=True)
    assert supcon["batch_size"] == optuna.distributions.CategoricalDistribution([32, 64])
    assert supcon["randaugment_m"] == optuna.distributions.IntDistribution(0, 10, step=2)
    assert set(space.search_space("ce")) == {"lr", "batch_size", "randaugment_m"}
    assert set(space.search_space()) == set(supcon)
    assert (space.num_samples, space.scheduler) == (4, "asha")
    assert space.scheduler_options == {"grace_period": 1, "reduction_factor": 2.0}
    assert (space.sampler, space.sampler_args) == ("TPESampler", {"n_startup_trials": 2})


def test_search_samples_become_valid_configs(tmp_path: Path):
    space = load_space(str(write_space(tmp_path, search_space_doc())))
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler(seed=0))
    for method in space.methods:
        trial = study.ask(space.search_space(method))
        config = space.config_for(method, trial.params, seed=7, overrides={"dataset": "cifar10"})
        assert (config.method, config.seed, config.dataset, config.epochs) == (method, 7, "cifar10", 4)
        for name, value in trial.params.items():
            assert getattr(config, name) == value
    # a sample from the joint space: ce ignores the contrastive-only temperature
    ce = space.config_for("ce", {"lr": 0.3, "temperature": 0.07})
    assert (ce.lr, ce.temperature, ce.seed) == (0.3, 0.1, 3)
    with pytest.raises(ConfigError, match="sample has \\['momentum'\\], which this space does not search"):
        space.config_for("supcon", {"momentum": 0.5})
    with pytest.raises(ConfigError, match="overrides: 'lr' is a hyperparameter this space varies"):
        space.config_for("supcon", {}, overrides={"lr": 0.1})
    assert isinstance(space.make_sampler(seed=0), optuna.samplers.TPESampler)


def test_search_bounds_are_validated_as_configs(tmp_path: Path):
    document = search_space_doc()
    document["distributions"]["temperature"]["low"] = 0.0  # valid bounds for Optuna, not for the config
    path = write_space(tmp_path, document)
    with pytest.raises(ConfigError, match=rf"^{path}: distributions.temperature.low: invalid temperature=0.0"):
        load_space(str(path))
    document = search_space_doc()
    document["distributions"]["batch_size"]["choices"] = [1, 64]
    path = write_space(tmp_path, document)
    with pytest.raises(ConfigError, match=rf"^{path}: distributions.batch_size.choices\[0\]: invalid batch_size=1"):
        load_space(str(path))


def test_design_specific_methods_refuse_the_other_design(tmp_path: Path):
    grid = load_space(str(write_space(tmp_path, small_space(), "grid.yaml")))
    search = load_space(str(write_space(tmp_path, search_space_doc(), "search.yaml")))
    with pytest.raises(ValueError, match="has no fixed trial list"):
        search.trials()
    with pytest.raises(ValueError, match="needs design 'search'"):
        grid.search_space()
    with pytest.raises(ValueError, match="method 'simclr' is not in this space"):
        search.config_for("simclr", {})


# ---------------------------------------------------------------------------------- invalid spaces
def mutate(base: Callable[[], dict], change: Callable[[dict], None]) -> Callable[[], dict]:
    def build() -> dict:
        document = copy.deepcopy(base())
        change(document)
        return document

    return build


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _delete(key: str) -> Callable[[dict], None]:
    return lambda document: document.pop(key)


INVALID = [
    # (id, document builder, key the message names, words the message contains)
    ("unknown-design", mutate(small_space, _set("design", "random")), "design", "allowed: one_at_a_time | grid | search"),
    ("unknown-top-level-key", mutate(small_space, _set("seed", [0])), "seed", "did you mean 'seeds'"),
    ("empty-vary-list", mutate(small_space, _set("vary.lr", [])), "vary.lr", "non-empty list"),
    ("empty-vary", mutate(small_space, _set("vary", {})), "vary", "non-empty mapping"),
    ("unknown-hyperparameter", mutate(small_space, _set("vary.learning_rate", [0.1])), "vary.learning_rate", "unknown hyperparameter"),
    ("wrong-type-value", mutate(small_space, _set("vary.lr", [0.1, "fast"])), "vary.lr[1]", "invalid lr='fast'"),
    ("out-of-range-value", mutate(small_space, _set("vary.lr", [0.1, -1.0])), "vary.lr[1]", "invalid lr=-1.0"),
    ("temperature-for-ce", mutate(small_space, _set("vary.temperature", [0.05, 0.1])), "vary.temperature", "method 'ce' cannot take temperature"),
    ("temperature-override-for-ce", mutate(small_space, _set("method_overrides.ce.temperature", 0.2)), "method_overrides.ce.temperature", "cannot take temperature"),
    ("missing-methods", mutate(small_space, _delete("methods")), "methods", "required"),
    ("unknown-method", mutate(small_space, _set("methods", ["supcon", "triplet"])), "methods", "unknown method 'triplet'"),
    ("non-int-seed", mutate(small_space, _set("seeds", [0, 1.5])), "seeds", "invalid seed 1.5"),
    ("bool-seed", mutate(small_space, _set("seeds", [True])), "seeds", "invalid seed True"),
    ("duplicate-seed", mutate(small_space, _set("seeds", [0, 0])), "seeds", "duplicate seeds"),
    ("vary-method", mutate(small_space, _set("vary.method", ["ce"])), "vary.method", "list methods under `methods`"),
    ("duplicate-values", mutate(small_space, _set("vary.lr", [0.1, "0.1"])), "vary.lr[1]", "duplicate value 0.1"),
    ("base-invalid", mutate(small_space, _set("base.batch_size", 1)), "base (method supcon)", "invalid batch_size=1"),
    ("base-seed", mutate(small_space, _set("base.seed", 3)), "base.seed", "list seeds under `seeds`"),
    ("override-unlisted-method", mutate(small_space, _set("method_overrides.simclr", {"lr": 0.1})), "method_overrides.simclr", "not in `methods`"),
    ("override-epochs", mutate(small_space, _set("method_overrides.ce.epochs", 5)), "method_overrides.ce.epochs", "budgets are identical"),
    ("restricted-to-unlisted-method", mutate(small_space, _set("vary.lr", {"values": [0.1], "methods": ["simclr"]})), "vary.lr.methods", "not in the space's methods"),
    ("unknown-metric", mutate(small_space, _set("metric", "test_top1")), "metric", "allowed: val_top1 | val_top5"),
    ("search-key-in-grid", mutate(small_space, _set("num_samples", 4)), "num_samples", "only design 'search'"),
    ("grid-companion-on-axis", mutate(small_space, lambda d: d.update(design="grid", vary={"lr": [0.1], "optimizer": [{"value": "rmsprop", "with": {"lr": 0.01}}]})), "vary.optimizer[0].with", "another axis of the grid"),
    ("vary-in-search", mutate(search_space_doc, _set("vary", {"lr": [0.1]})), "vary", "takes `distributions`"),
    ("unknown-sampler", mutate(search_space_doc, _set("sampler", "HyperbandSampler")), "sampler", "unknown Optuna sampler 'HyperbandSampler'"),
    ("bad-sampler-args", mutate(search_space_doc, _set("sampler_args", {"n_startup": 3})), "sampler_args", "TPESampler does not take them"),
    ("unknown-scheduler", mutate(search_space_doc, _set("scheduler", "hyperband")), "scheduler.type", "allowed: none | asha"),
    ("bad-reduction-factor", mutate(search_space_doc, _set("scheduler.reduction_factor", 1)), "scheduler.reduction_factor", "a number > 1"),
    ("grace-beyond-epochs", mutate(search_space_doc, _set("scheduler.grace_period", 9)), "scheduler.grace_period", "exceeds epochs (4)"),
    ("low-above-high", mutate(search_space_doc, _set("distributions.lr.high", 0.001)), "distributions.lr", "allowed: low < high"),
    ("log-of-zero", mutate(search_space_doc, _set("distributions.lr.low", 0)), "distributions.lr.low", "log: true"),
    ("unknown-distribution-type", mutate(search_space_doc, _set("distributions.lr.type", "loguniform")), "distributions.lr.type", "float | int | categorical"),
    ("int-with-float-bound", mutate(search_space_doc, _set("distributions.randaugment_m.high", 7.5)), "distributions.randaugment_m.high", "integer"),
    ("empty-choices", mutate(search_space_doc, _set("distributions.batch_size.choices", [])), "distributions.batch_size.choices", "non-empty list"),
    ("temperature-distribution-for-ce", mutate(search_space_doc, lambda d: d["distributions"]["temperature"].pop("methods")), "distributions.temperature", "method 'ce' cannot take temperature"),
    ("missing-num-samples", mutate(search_space_doc, _delete("num_samples")), "num_samples", "required"),
]  # fmt: skip


@pytest.mark.parametrize("build, key, words", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_space_is_rejected_naming_file_and_key(tmp_path: Path, build, key: str, words: str):
    path = write_space(tmp_path, build(), "bad.yaml")
    with pytest.raises(ConfigError) as caught:
        load_space(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}"), message
    assert words in message and "\n" not in message, message


def test_invalid_yaml_and_non_mapping_files_are_rejected(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("design: [grid\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML"):
        load_space(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=rf"^{path}: expected a mapping"):
        load_space(str(path))
    with pytest.raises(ConfigError, match="no such space file"):
        load_space(str(tmp_path / "missing.yaml"))
