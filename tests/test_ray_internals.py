"""The Ray internals the code relies on are still where it expects them.

`pyproject.toml` caps Ray below the next minor release because `study/` reaches past Ray's public API in a
few places. When a newer Ray moves or changes one of them, the test of that internal fails naming it, the
code that uses it, and the bound to revisit: adapt the code, then raise the bound.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import ray
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def ray_requirement() -> SpecifierSet:
    """The version range of the `ray[...]` dependency in pyproject.toml."""
    match = re.search(r'"ray\[[^\]]*\]\s*([^";]*)', PYPROJECT.read_text())
    assert match, f"{PYPROJECT}: no ray[...] dependency"
    return SpecifierSet(match.group(1))


def upper_bound() -> str:
    bounds = [spec.version for spec in ray_requirement() if spec.operator == "<"]
    assert bounds, f"{PYPROJECT}: the ray dependency has no upper bound (<X.Y), though study/ relies on its internals"
    return bounds[0]


class Internal(NamedTuple):
    name: str  # what of Ray's is used
    used_by: str  # where, and for what
    check: Callable[[], None]  # raises when it is gone or changed


def _module(name: str):
    return importlib.import_module(name)


def _loopback_switch() -> None:
    constants = _module("ray._private.ray_constants")
    assert constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    assert isinstance(constants.ENABLE_RAY_CLUSTER, bool)
    # Read at call time (not copied at import), so that setting the constant takes effect.
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(_module("ray._private.services").get_node_ip_address)


def _uv_run_switch() -> None:
    constants = _module("ray._private.ray_constants")
    assert 'env_bool("RAY_ENABLE_UV_RUN_RUNTIME_ENV"' in inspect.getsource(constants)
    assert hasattr(constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV")


def _print_patch_switch() -> None:
    assert _module("ray.train.v2._internal.constants").ENABLE_PRINT_PATCH_ENV_VAR == "RAY_TRAIN_ENABLE_PRINT_PATCH"


def _train_storage_logger() -> None:
    storage = _module("ray.train._internal.storage")
    assert storage.logger.name == "ray.train._internal.storage"


def _train_console_handler() -> None:
    manager = _module("ray.train.v2._internal.logging.logging").LoggingManager
    source = inspect.getsource(manager._get_worker_logger_config_dict)
    assert '"ray.train"' in source and '"console"' in source


def _wrap_function() -> None:
    from ray.tune.trainable import Trainable, wrap_function
    from ray.tune.trainable import trainable as trainable_module

    wrapped = wrap_function(lambda config: None)
    assert isinstance(wrapped, type) and issubclass(wrapped, Trainable)
    assert list(inspect.signature(Trainable.restore).parameters) == ["self", "checkpoint_path"]
    # What Tune passes to `restore`, and what the override rebuilds: a result with a checkpoint and metrics.
    result = trainable_module._TrainingResult(checkpoint=None, metrics={"epoch": 1})
    assert result.checkpoint is None and result.metrics == {"epoch": 1}


def _trial_storage_and_error_file() -> None:
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.experiment import Trial

    assert isinstance(Trial.error_file, property) and "self.storage = " in inspect.getsource(Trial.__init__)
    assert isinstance(StorageContext.experiment_fs_path, property)
    assert "self.storage_filesystem, self.storage_fs_path = " in inspect.getsource(StorageContext.__init__)
    # Why the record lives in the study folder: Tune copies the experiment folder's *.json down on resume and
    # uploads them again with its snapshots, over a newer file of ours there.
    assert '.endswith(".json")' in inspect.getsource(_ExperimentCheckpointManager.sync_down_experiment_state)


def _cloudpickle_by_value() -> None:
    from ray import cloudpickle

    assert callable(cloudpickle.register_pickle_by_value)


INTERNALS = [
    Internal("ray._private.ray_constants.ENABLE_RAY_CLUSTER (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER)",
             "study/launch.py _loopback_only: a local runtime listens on 127.0.0.1 only", _loopback_switch),
    Internal("RAY_ENABLE_UV_RUN_RUNTIME_ENV (ray._private.ray_constants)",
             "study/launch.py connect_ray: no uv runtime env for the workers", _uv_run_switch),
    Internal("RAY_TRAIN_ENABLE_PRINT_PATCH (ray.train.v2._internal.constants)",
             "study/launch.py connect_ray: progress lines printed once, not twice", _print_patch_switch),
    Internal("the logger 'ray.train._internal.storage'",
             "study/launch.py quiet_ray_train_info: Train's per-epoch INFO lines off the console",
             _train_storage_logger),
    Internal("Train V2's 'console' handler on the 'ray.train' logger (ray.train.v2._internal.logging)",
             "study/launch.py quiet_ray_train_info", _train_console_handler),
    Internal("ray.tune.trainable.wrap_function, Trainable.restore(checkpoint_path: _TrainingResult)",
             "study/sweep.py _restoring_latest_available: resume past a checkpoint deleted behind Tune",
             _wrap_function),
    Internal("Trial.error_file, Trial.storage (StorageContext.experiment_fs_path, .storage_filesystem), and Tune's "
             "copying the experiment folder's *.json down on resume",
             "study/sweep.py _trial_errors_callback: the trials Tune errored, recorded in the study folder",
             _trial_storage_and_error_file),
    Internal("ray.cloudpickle.register_pickle_by_value",
             "tests/test_launch.py: the fault-injecting train loop travels to the Train worker", _cloudpickle_by_value),
]


@pytest.mark.parametrize("internal", INTERNALS, ids=[internal.name.split(" ")[0] for internal in INTERNALS])
def test_ray_internal_is_where_the_code_expects_it(internal):
    try:
        internal.check()
    except (ImportError, AttributeError, AssertionError, TypeError, OSError) as error:
        pytest.fail(
            f"Ray {ray.__version__} moved or changed {internal.name}, which {internal.used_by} relies on "
            f"({type(error).__name__}: {error}). Adapt that code to this Ray, then revisit the upper bound "
            f"ray<{upper_bound()} in pyproject.toml.",
            pytrace=False,
        )


def test_installed_ray_is_within_the_declared_range():
    requirement = ray_requirement()
    upper_bound()  # the bound exists
    assert Version(ray.__version__) in requirement, (
        f"Ray {ray.__version__} is installed but pyproject.toml declares ray{requirement}: the internals above "
        f"were checked against that range; run these tests under the new Ray and revisit the bound."
    )
