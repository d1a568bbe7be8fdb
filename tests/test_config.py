"""Config validation: every bad-input class is rejected with a one-line message naming field and value."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from study.config import Config, ConfigError

BAD_VALUES = [
    ({"method": "triplet"}, "method='triplet'", "supcon | simclr | ce"),
    ({"model": "vgg16"}, "model='vgg16'", "resnet50"),
    ({"dataset": "mnist"}, "dataset='mnist'", "imagefolder:PATH"),
    ({"dataset": "imagefolder:"}, "dataset='imagefolder:'", "imagefolder:PATH"),
    ({"augmentation": "mixup"}, "augmentation='mixup'", "stacked_randaugment"),
    ({"linear_augmentation": "cutout"}, "linear_augmentation='cutout'", "crop_flip"),
    ({"optimizer": "adam"}, "optimizer='adam'", "lars"),
    ({"linear_optimizer": "adagrad"}, "linear_optimizer='adagrad'", "rmsprop"),
    ({"schedule": "linear"}, "schedule='linear'", "cosine"),
    ({"stem": "tiny"}, "stem='tiny'", "cifar"),
    ({"temperature": 0}, "temperature=0.0", "> 0"),
    ({"temperature": -0.1}, "temperature=-0.1", "> 0"),
    ({"temperature": float("nan")}, "temperature=nan", "finite"),
    ({"lr": 0}, "lr=0.0", "> 0"),
    ({"linear_lr": -1}, "linear_lr=-1.0", "> 0"),
    ({"batch_size": 1}, "batch_size=1", ">= 2"),
    ({"epochs": 0}, "epochs=0", ">= 1"),
    ({"width": 0}, "width=0.0", "> 0"),
    ({"num_workers": 0}, "num_workers=0", ">= 1"),
    ({"loader_workers": -1}, "loader_workers=-1", ">= 0"),
    ({"val_fraction": 1.5}, "val_fraction=1.5", "(0, 1)"),
    ({"max_positives": 0}, "max_positives=0", ">= 1"),
    ({"randaugment_m": 11}, "randaugment_m=11", "0..10"),
    ({"batch_size": 5, "num_workers": 2}, "batch_size=5", "multiple of num_workers"),
    ({"method": "supcon", "linear_epochs": 0}, "linear_epochs=0", ">= 1"),
    ({"optimizer": "rmsprop", "nesterov": True}, "nesterov=True", "rmsprop"),
    ({"sync_batchnorm": True}, "sync_batchnorm=True", "use_gpu"),
    ({"epochs": "ten"}, "epochs='ten'", "expected int"),
    ({"temperature": "hot"}, "temperature='hot'", "expected float"),
    ({"download": "maybe"}, "download='maybe'", "expected bool"),
    ({"epochs": 2.5}, "epochs=2.5", "expected int"),
    ({"method": 3}, "method=3", "expected str"),
]


@pytest.mark.parametrize(("values", "names", "allowed"), BAD_VALUES, ids=[str(v[0]) for v in BAD_VALUES])
def test_bad_values_are_rejected_with_field_value_and_allowed(values, names, allowed):
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(values)
    message = str(caught.value)
    assert "\n" not in message
    assert names in message
    assert allowed in message


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(ConfigError, match=r"unknown key 'temprature' \(did you mean 'temperature'\?\)"):
        Config.from_dict({"temprature": 0.1})


def test_source_prefixes_the_message():
    with pytest.raises(ConfigError, match=r"^spaces/x.yaml: base: invalid lr"):
        Config.from_dict({"lr": -1}, source="spaces/x.yaml: base")


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match=r"^config: invalid lr=-1; allowed: a finite number > 0$"):
        Config(lr=-1)
    with pytest.raises(ConfigError, match=r"invalid batch_size=5; allowed: a multiple of num_workers"):
        Config(batch_size=5, num_workers=2)
    # No coercion outside from_dict: a wrong type is named, not compared (which would raise TypeError).
    with pytest.raises(ConfigError, match=r"invalid epochs='3'; expected int, got str"):
        Config(epochs="3")
    with pytest.raises(ConfigError, match=r"invalid use_gpu=1; expected bool, got int"):
        Config(use_gpu=1)
    assert Config(lr=1, batch_size=np.int64(64)).lr == 1  # ints for floats and numpy integers pass


def test_dataclasses_replace_validates():
    config = Config()
    with pytest.raises(ConfigError, match=r"invalid temperature=0; allowed: a finite number > 0"):
        dataclasses.replace(config, temperature=0)
    with pytest.raises(ConfigError, match=r"invalid warmup_epochs=10; allowed: an integer < epochs \(10\)"):
        dataclasses.replace(config, warmup_epochs=10)
    assert dataclasses.replace(config, lr=0.1).lr == 0.1
    with pytest.raises(ConfigError, match=r"^config: invalid lr=-1.0"):
        config.replace(lr=-1)


def test_from_dict_validates_once(monkeypatch):
    calls = []
    validate = Config.validate
    monkeypatch.setattr(Config, "validate", lambda self, **kw: (calls.append(kw), validate(self, **kw)))
    Config.from_dict({"lr": 0.2}, source="run.yaml")
    assert calls == [{"source": "run.yaml"}]
    Config(lr=0.2)  # the source is the default again outside from_dict, even after a failed from_dict
    with pytest.raises(ConfigError, match="^x.yaml: "):
        Config.from_dict({"lr": -1}, source="x.yaml")
    with pytest.raises(ConfigError, match="^config: "):
        Config(lr=-1)


def test_strings_and_numpy_scalars_are_coerced():
    config = Config.from_dict({"epochs": "3", "temperature": np.float64(0.5), "batch_size": np.int64(64),
                               "download": "false", "max_positives": None})
    assert (config.epochs, config.temperature, config.batch_size, config.download) == (3, 0.5, 64, False)
    assert isinstance(config.batch_size, int)


def test_round_trip_through_dict_and_yaml(tmp_path):
    config = Config.from_dict({"method": "ce", "ce_two_stage": True, "lr": 0.2})
    assert Config.from_dict(config.to_dict()) == config
    path = tmp_path / "run.yaml"
    path.write_text("method: ce\nce_two_stage: true\nlr: 0.2\n")
    assert Config.from_yaml(path) == config
    assert Config.from_yaml(path, {"lr": 0.3}).lr == 0.3


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        Config.from_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Config.from_yaml(listing)
    with pytest.raises(ConfigError, match="no such file"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_derived_values():
    supcon = Config()
    assert supcon.is_contrastive and supcon.has_linear_stage
    assert not Config(method="ce").has_linear_stage
    assert Config.from_dict({"method": "ce", "ce_two_stage": True}).has_linear_stage
    assert supcon.scaled_lr(0.5, 1024) == 2.0
