"""Ray at the edge: connect to a Ray runtime and run the training loop under Ray Train's `TorchTrainer`.

`RayContext` adapts the loop's `RunContext` to Ray's report/get_checkpoint functions, so the same class
serves Ray Train workers (here) and single-worker Ray Tune trials (`study.sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.checkpoint import MODEL_FILE
from study.config import Config, ConfigError
from study.storage import Location, ray_storage, write_json
from study.train import RunContext, format_progress, train

DEFAULT_STORAGE = "./runs"
CONNECT_TIMEOUT_SECONDS = 5.0


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail within seconds, with a clear message, when a Ray cluster address does not answer.

    `ray.init` itself retries for a long time before giving up on an unreachable GCS."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ConfigError(f"--address {address!r}: no Ray cluster answers there ({error.strerror or error})") from None


def check_storage(storage: str, *, probe: bool = True) -> None:
    """Refuse a storage location that cannot hold a study, before any compute starts.

    A local path: refused when it is a file or cannot be written (read-only, no permission, disk full). Leaves
    no trace: the probe file is written in a temporary folder inside the nearest existing folder on the path
    (where the run would create its own) and removed, so a command that fails a later check has written
    nothing. `probe=False` (a dry run) asks the permissions instead of writing.

    A URI (`s3://bucket/prefix?endpoint_override=...`): refused when pyarrow cannot open it, its bucket does
    not exist or cannot be reached, or (with `probe`) a probe object cannot be written and deleted there.
    `probe=False` only checks that the bucket exists. Every refusal is a ConfigError naming the URI."""
    if "://" in storage:
        _check_object_storage(storage, probe=probe)
        return
    path = Path(storage).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--storage {storage!r} is a file; expected a folder (created if missing) or a URI")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--storage {storage!r}: {existing} is a file, so the folder cannot be created")
    if not probe:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--storage {storage!r} is not writable ({existing}: permission denied)")
        return
    try:
        with tempfile.TemporaryDirectory(prefix=".write-probe-", dir=existing) as probe_dir:
            Path(probe_dir, "probe").write_bytes(b"ok")
    except OSError as error:
        raise ConfigError(f"--storage {storage!r} is not writable ({error.strerror or error})") from None


def _check_object_storage(storage: str, *, probe: bool) -> None:
    from pyarrow.fs import FileType

    try:
        location = Location.of(storage)
    except ValueError as error:
        raise ConfigError(f"--storage {storage!r}: {error}") from None
    if location.is_local:  # file://
        check_storage(location.path, probe=probe)
        return
    try:
        found = location.filesystem.get_file_info(location.bucket).type
    except OSError as error:
        raise ConfigError(f"--storage {storage!r}: the object store does not answer ({_first_line(error)})") from None
    if found != FileType.Directory:
        raise ConfigError(f"--storage {storage!r}: bucket {location.bucket!r} does not exist; create it first "
                          "(or fix the bucket name)")
    if not probe:
        return
    marker = location / f".write-probe-{uuid.uuid4().hex}"
    try:
        write_json(marker, {"probe": True})
        marker.filesystem.delete_file(marker.path)
    except OSError as error:
        raise ConfigError(f"--storage {storage!r} is not writable ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def check_dataset(config: Config) -> None:
    """Fail before Ray starts, naming the path, when a run's dataset is missing or laid out wrongly.

    Builds the dataset's index here (file lists and splits; images are decoded later). Call it only for a
    local runtime: on a cluster the data may live on the workers alone. Datasets the workers download are
    not checked."""
    if config.download:
        return
    from study.data import load_dataset

    try:
        load_dataset(config.dataset, root=config.data_root, download=False, image_size=config.image_size,
                     val_fraction=config.val_fraction, seed=0)
    except ValueError as error:
        raise ConfigError(f"dataset: {error}") from None


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at `address`, or start a local runtime bound to localhost.

    A local runtime listens on 127.0.0.1 only, its dashboard too. The dashboard is started because it serves
    Ray's State API, which Ray Train's controller needs: without it Train polls it and logs a warning every
    second or two for the whole run, and a multi-worker Tune trial that ASHA stops early hangs the sweep."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ray Train V2 routes print() in its workers through a logger that also echoes it: every progress line
    # would reach the console twice.
    runtime_env = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    if address and address != "local":
        check_address(address)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        with _loopback_only():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     runtime_env=runtime_env)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local runtime starts, make it listen on 127.0.0.1 alone.

    On Linux Ray takes the machine's routable address as the node address, even when given 127.0.0.1
    (`resolve_ip_for_localhost`), and its GCS, raylet and workers then listen on every interface. Ray uses
    the loopback address instead when clusters are disabled, which RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does
    despite its name: for the processes Ray starts (they inherit the variable) and, through the constant
    Ray read at import, for this one. Both are restored afterwards, so that a `ray start` this process runs
    later (which refuses to join a cluster with the variable at 0) is unaffected."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_variable, saved_constant = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_variable is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_variable


@dataclass
class RayContext:
    """RunContext over Ray's report/get_checkpoint (Ray Train's or Ray Tune's; they share a shape, but each
    wants checkpoints of its own `Checkpoint` class)."""

    world_rank: int
    world_size: int
    device: torch.device
    report_fn: Callable[..., None]
    get_checkpoint_fn: Callable[[], Any]
    prepare_fn: Callable[[nn.Module], nn.Module]
    checkpoint_class: type[Any]  # ray.train.Checkpoint or ray.tune.Checkpoint (Ray is imported lazily)
    print_progress: bool = True

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray

        metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}  # where it ran, for the table
        if self.print_progress and self.world_rank == 0 and metrics.get("stage") != "final":
            print(format_progress(metrics), flush=True)
        checkpoint = self.checkpoint_class.from_directory(checkpoint_dir) if checkpoint_dir else None
        self.report_fn(_plain(metrics), checkpoint=checkpoint)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self.get_checkpoint_fn()
        if checkpoint is None:
            return None
        # A local checkpoint is read in place; a remote one (S3, GCS) is downloaded first.
        if os.path.isdir(checkpoint.path):
            return Path(checkpoint.path)
        return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="supcon-resume-")))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return self.prepare_fn(model)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics Ray can serialise: floats, ints, strings and booleans."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float, str, bool))}


def quiet_ray_train_info() -> None:
    """Keep Ray Train's per-epoch INFO lines (checkpoint persisted, result reported, model moved to a device)
    off the driver's console; its warnings and errors still show, and Train V2 still writes all to its logs.
    Call it in the process that trains."""
    # Inside a Tune trial (Train V1 session): a plain logger propagating to Ray's handlers.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # A TorchTrainer worker (Train V2): `ray.train` logs to files and to a console handler shared with the
    # root logger, and some of its modules log through the root logger under their file name, so the console
    # handler filters by the source file of each record.
    for handler in logging.getLogger("ray.train").handlers:
        if handler.get_name() == "console":
            handler.addFilter(_console_without_ray_train_info)


_RAY_TRAIN_SOURCE = f"{os.sep}ray{os.sep}train{os.sep}"


def _console_without_ray_train_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _RAY_TRAIN_SOURCE not in record.pathname


TrainFn = Callable[[Config, RunContext], Any]
"""The loop one worker runs: `study.train.train` unless a caller passes another (tests wrap it to inject
faults). Ray pickles it to the workers: a module-level function, or a `functools.partial` of one."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The `train_loop_per_worker` of the TorchTrainer: one worker of a Ray Train run."""
    import ray.train
    import ray.train.torch

    config = Config.from_dict(loop_config["config"])
    context = ray.train.get_context()
    run_context = RayContext(
        world_rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        report_fn=ray.train.report,
        get_checkpoint_fn=ray.train.get_checkpoint,
        prepare_fn=ray.train.torch.prepare_model,
        checkpoint_class=ray.train.Checkpoint,
    )
    quiet_ray_train_info()
    train_fn: TrainFn = loop_config.get("train_fn") or train
    train_fn(config, run_context)


def build_trainer(config: Config, *, storage: str, name: str, max_failures: int = 2, callbacks: list | None = None,
                  train_fn: TrainFn | None = None):
    """A TorchTrainer for one run; the same `name` on the same `storage` resumes from its last checkpoint.

    `train_fn` replaces the loop each worker runs (default `study.train.train`), called as
    `train_fn(config, run_context)`; tests wrap the default to inject faults."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loop_config: dict[str, Any] = {"config": config.to_dict()}
    if train_fn is not None:
        loop_config["train_fn"] = train_fn
    # On a local disk, a filesystem that writes each file atomically: Train rewrites its run snapshot
    # (`checkpoint_manager_snapshot.json`, which a rerun resumes from) in place otherwise.
    storage_path, storage_filesystem = ray_storage(storage)
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": 1 + config.loader_workers, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=2),  # two, so a corrupt latest has a fallback
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )


def dataset_slug(dataset: str) -> str:
    """A dataset's name for folder names: `imagefolder:/data/imagenet/` gives `imagenet`."""
    return dataset.replace("imagefolder:", "").rstrip("/").split("/")[-1] or "data"


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


def check_run_name(name: str) -> str:
    """A run or study name is one folder name under --storage: letters, digits and _ . = + - (first a letter
    or digit), so no name can reach outside --storage (`..`, `/`) and overwrite another run on a shared
    bucket. Raises ConfigError naming the value."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(f"invalid --name {name!r}; allowed: one folder name (letters, digits and _ . = + -, "
                          "starting with a letter or digit, at most 200 characters), which stays under --storage")
    return name


def default_run_name(config: Config) -> str:
    return f"{config.method}-{dataset_slug(config.dataset)}-{config.model}-seed{config.seed}"


def run_training(config: Config, *, storage: str = DEFAULT_STORAGE, name: str | None = None,
                 address: str | None = None, max_failures: int = 2,
                 train_fn: TrainFn | None = None) -> dict[str, Any]:
    """Train one run under Ray Train and write `metrics.json` beside its checkpoints. Returns the metrics.

    `train_fn`: the loop each worker runs, as in `build_trainer` (default `study.train.train`).

    Example::

        >>> from study import Config, run_training
        >>> metrics = run_training(Config(method="ce", epochs=2), storage="./runs", name="ce-smoke")
        >>> metrics["status"], metrics["checkpoint"]  # doctest: +ELLIPSIS
        ('completed', '.../ce-smoke/.../model.pt')

    Without Ray, in this process: `study.train.train(config, study.train.LocalContext("runs/local"))`.
    """
    if not address or address == "local":
        check_dataset(config)  # the workers would fail on it after Ray started; on a cluster they may see other files
    connect_ray(address)
    name = check_run_name(name or default_run_name(config))
    result = build_trainer(config, storage=storage, name=name, max_failures=max_failures,
                           train_fn=train_fn).fit()
    if result.error is not None:
        raise result.error
    metrics = {key: value for key, value in (result.metrics or {}).items() if key in _FINAL_KEYS}
    metrics.update(name=name, run_path=result.path, config=config.to_dict())
    if result.checkpoint is not None:
        metrics["checkpoint"] = f"{result.checkpoint.path}/{MODEL_FILE}"
    # Beside the run's checkpoints, on the same storage (Ray's `result.path` is a path on that filesystem).
    write_json(Location.of(storage) / name / "metrics.json", metrics)
    return metrics


_FINAL_KEYS = ("status", "val_top1", "val_top5", "test_top1", "test_top5", "diverged_epoch", "epoch", "stage",
               "resumed_from", "epochs_run")
