#!/usr/bin/env python
"""supcon-study: is SupCon better and more stable than cross-entropy on your data? Train, sweep, evaluate
corruption robustness, report.

    python run_study.py                      # the main job: the quick study on digits, end to end
    python run_study.py train --method supcon --dataset digits --epochs 5
    python run_study.py train --config my_run.yaml --num-workers 2

Every config field is a flag (`--linear-lr`, `--temperature`, ...). Invalid input exits with code 2 and a
one-line message before Ray starts or anything is written. This module only parses commands and builds
validated configs; the work happens in study/ and analysis/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from study.config import Config, ConfigError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (unknown flags and commands, typos) are one line and exit 2, like ours."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field. Values stay strings here; Config.from_dict converts and validates them."""
    group = parser.add_argument_group("run configuration (defaults: study/config.py)")
    hints = typing.get_type_hints(Config)
    for item in fields(Config):
        flag = "--" + item.name.replace("_", "-")
        if hints[item.name] is bool:
            group.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=f"(default: {item.default})")
        else:
            group.add_argument(flag, dest=item.name, default=argparse.SUPPRESS, metavar="VALUE",
                               help=f"(default: {item.default})")
    group.add_argument("--gpu", dest="use_gpu", action="store_true", default=argparse.SUPPRESS,
                       help="train on GPUs (same as --use-gpu)")


def _add_ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster (HOST:PORT, ray://HOST:PORT or 'auto'); default: a local runtime")
    parser.add_argument("--storage", default="./runs",
                        help="where runs are stored: a local path, NFS, or an s3:// / gs:// URI (default ./runs)")


def _add_tracking_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking", action="append", default=[], metavar="TRACKER",
                        help="also log every trial to a tracker (repeatable): tensorboard, mlflow:URI "
                             "(e.g. mlflow:sqlite:////abs/mlflow.db, mlflow:http://HOST:5000), wandb (offline), "
                             "wandb:online")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="supcon-study", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train one model under Ray Train")
    train.add_argument("--config", type=Path, help="YAML file of config fields (flags override it)")
    train.add_argument("--name", help="run name under --storage; the same name resumes (default from the config)")
    train.add_argument("--max-failures", type=int, default=2, help="worker failures survived by restarting")
    _add_ray_flags(train)
    _add_config_flags(train)

    sweep = commands.add_parser("sweep", help="run (or resume) a study space with Ray Tune")
    sweep.add_argument("--space", default="quick",
                       help="a space name from search_spaces/ or a path to a space YAML file (default quick)")
    sweep.add_argument("--name", help="study folder name under --storage (default SPACE-DATASET)")
    sweep.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial")
    sweep.add_argument("--cpus-per-worker", type=int, default=1)
    sweep.add_argument("--gpus-per-worker", type=float, default=0)
    sweep.add_argument("--max-concurrent", type=int, default=None, help="cap on trials run at once")
    sweep.add_argument("--max-failures", type=int, default=1, help="retries of a failed trial (from its checkpoint)")
    sweep.add_argument("--optuna-storage", default=None, help="SQLAlchemy URL for search designs (default SQLite)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted study")
    sweep.add_argument("--verbose", action="store_true", help="also print Ray Tune's own trial tables")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the planned trials, resources and concurrency; start nothing, write nothing")
    sweep.add_argument("--format", choices=("text", "jsonl"), default=None,
                       help="--dry-run output: aligned text (default) or one JSON object per trial")
    _add_tracking_flag(sweep)
    _add_ray_flags(sweep)
    _add_config_flags(sweep)

    collect = commands.add_parser("collect", help="write the results tables of a (partial) study")
    collect.add_argument("--study", required=True, help="the study folder: a local path or an s3:// / gs:// URI")

    robustness = commands.add_parser("robustness", help="evaluate checkpoints on corrupted test data")
    source = robustness.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+", help="model.pt files (or run folders holding one); paths or URIs")
    source.add_argument("--study",
                        help="a study folder (path or s3:// / gs:// URI): every completed trial's checkpoint")
    robustness.add_argument("--dataset", help="dataset whose test split is corrupted (default: the checkpoint's)")
    robustness.add_argument("--data-root", default=None, help="dataset root (default: the checkpoint's)")
    robustness.add_argument("--corrupted", default=None,
                            help="a released CIFAR-10-C/CIFAR-100-C or ImageNet-C folder (default: generate one)")
    robustness.add_argument("--corruptions", default=None,
                            help="comma-separated subset of corruptions (default: all 15 benchmark ones)")
    robustness.add_argument("--output", default=None,
                            help="robustness table path (default: STUDY/robustness.parquet or ./robustness.parquet)")
    robustness.add_argument("--batch-size", type=int, default=256)
    robustness.add_argument("--seed", type=int, default=0, help="seed of generated corruptions")
    robustness.add_argument("--corruption-profile", default=None, metavar="cifar|imagenet",
                            help="constants of generated corruptions: 'cifar' (the released CIFAR-10-C's) or "
                                 "'imagenet' (ImageNet-C's); default by image size, cifar below 64 px")
    robustness.add_argument("--address", default=None, help="an existing Ray cluster (default: a local runtime)")

    report = commands.add_parser("report", help="write report.html and report.md for a study")
    report.add_argument("--study", required=True, help="the study folder: a local path or an s3:// / gs:// URI")
    report.add_argument("--diverged", choices=("chance", "apart"), default="chance",
                        help="count diverged trials as chance accuracy, or show them apart")
    report.add_argument("--num-classes", type=int, default=None, help="classes, for chance accuracy")
    report.add_argument("--baseline", default=None,
                        help="Corruption Error baseline: 'alexnet' or a model id (default: see report)")

    main_job = commands.add_parser("quickstart", help="the main job (what no arguments runs)")
    main_job.add_argument("--space", default="quick")
    main_job.add_argument("--corruptions", default=None, help=argparse.SUPPRESS)
    main_job.add_argument("--corruption-profile", default=None, metavar="cifar|imagenet",
                          help="constants of the generated corruptions (default by image size, cifar below 64 px)")
    _add_tracking_flag(main_job)
    _add_ray_flags(main_job)
    _add_config_flags(main_job)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The validated Config of a `train` command: YAML file first, flags on top."""
    overrides = {item.name: getattr(args, item.name) for item in fields(Config) if hasattr(args, item.name)}
    if args.config is not None:
        return Config.from_yaml(args.config, overrides)
    return Config.from_dict(overrides, source="command line")


def _check_max_failures(value: int) -> None:
    if value < 0:
        raise ConfigError(f"--max-failures {value}: expected an integer >= 0 (retries after a failure)")


def command_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # rejected here, before Ray starts or anything is written
    _check_max_failures(args.max_failures)
    from study.launch import check_address, check_run_name, check_storage, run_training

    if args.name is not None:
        check_run_name(args.name)
    if args.address:
        check_address(args.address)
    check_storage(args.storage)
    metrics = run_training(config, storage=args.storage, name=args.name, address=args.address,
                           max_failures=args.max_failures)
    print(json.dumps({key: value for key, value in metrics.items() if key != "config"}, indent=2, default=str))
    return 0 if metrics.get("status") == "completed" else 1


def sweep_options(args: argparse.Namespace):
    from study.sweep import SweepOptions

    for flag in ("workers_per_trial", "cpus_per_worker"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected an integer >= 1")
    if args.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker {args.gpus_per_worker}: expected a number >= 0")
    _check_max_failures(args.max_failures)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {args.max_concurrent}: expected an integer >= 1")
    return SweepOptions(storage=args.storage, name=args.name, address=args.address,
                        workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=args.gpus_per_worker, max_concurrent=args.max_concurrent,
                        max_failures=args.max_failures, optuna_storage=args.optuna_storage, resume=args.resume,
                        verbose=int(args.verbose), tracking=tuple(args.tracking))


def command_sweep(args: argparse.Namespace) -> int:
    from study.sweep import plan, run_sweep

    overrides = {item.name: getattr(args, item.name) for item in fields(Config) if hasattr(args, item.name)}
    if args.format is not None and not args.dry_run:
        raise ConfigError(f"--format {args.format}: applies to --dry-run only")
    options = sweep_options(args)
    if args.dry_run:
        planned = plan(args.space, overrides, options)
        if args.format == "jsonl":
            for trial in planned.trials:
                print(json.dumps(trial.to_json(), default=str))
        else:
            print("\n".join(plan_lines(planned)))
        return 0
    study_dir = run_sweep(args.space, overrides, options)
    print(f"study folder: {study_dir}")
    return 0


def _flags(overrides: dict) -> str:
    """Config overrides as they read on the command line."""
    words = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words.append(f"{flag} {value}")
    return " ".join(words) or "none"


def _resources(resources: dict) -> str:
    return ", ".join(f"{value:g} {key}{'s' if value != 1 else ''}" for key, value in resources.items())


def _short(value) -> str:
    if isinstance(value, float):
        text = repr(value)  # as trial names write it (1.0, 1e-06), unless it is long
        return text if len(text) <= 8 else f"{value:.4g}"
    return str(value)


def _planned_value(trial) -> str:
    """A plan line's value column: the varied value, a grid cell, or the searched distributions."""
    if trial.family == "search":
        parts = []
        for name, spec in trial.value.items():
            if spec["type"] == "categorical":
                parts.append(f"{name} in {{{', '.join(map(_short, spec['choices']))}}}")
            else:
                scale = "log " if spec["log"] else ""
                step = f" step {_short(spec['step'])}" if spec["step"] is not None else ""
                parts.append(f"{name} {spec['type']} {scale}[{_short(spec['low'])}, {_short(spec['high'])}]{step}")
        text = "; ".join(parts)
    elif isinstance(trial.value, dict):
        text = ", ".join(f"{key}={_short(value)}" for key, value in trial.value.items())
    else:
        text = "-" if trial.value is None and trial.family == "base" else _short(trial.value)
    if trial.companions:
        text += " (with " + ", ".join(f"{key}={_short(value)}" for key, value in trial.companions.items()) + ")"
    return text


def plan_lines(planned) -> list[str]:
    """The text of `sweep --dry-run`: a header (space, design, trials, overrides, resources, concurrency) and
    one aligned line per planned trial."""
    space, options, trials = planned.space, planned.options, planned.trials
    base = trials[0].config
    staged = [method for method in space.methods
              if any(t.config.has_linear_stage for t in trials if t.method == method)]
    linear = (f" (+{base.linear_epochs} linear" + ("" if len(staged) == len(space.methods) else
                                                   f" for {', '.join(staged)}") + ")") if staged else ""
    exists = "exists; --resume continues it" if options.resume else "new; a dry run creates nothing"
    workers = (f"{options.workers_per_trial} worker(s) x ({options.cpus_per_worker} CPU + {base.loader_workers} "
               f"loader) + 1 driver CPU" if options.workers_per_trial > 1 else
               f"trains in the trial process; {base.loader_workers} loader workers")
    if planned.concurrency is not None:
        concurrency = (f"{planned.concurrency} trials at a time on this machine ({_resources(planned.available)}"
                       + (f", --max-concurrent {options.max_concurrent}" if options.max_concurrent else "") + ")")
    else:
        cap = f" (at most {options.max_concurrent}, --max-concurrent)" if options.max_concurrent else ""
        concurrency = (f"not computed: --address {options.address} was not contacted; the sweep fits as many "
                       f"trials as the cluster's resources allow{cap}")
    if space.design == "search":
        count = (f"{planned.num_trials} trials ({space.num_samples} Optuna samples x {len(space.methods)} methods, "
                 f"seed {space.seeds[0]}, scheduler {space.scheduler})")
    else:
        count = (f"{planned.num_trials} trials (methods {', '.join(space.methods)}; "
                 f"seeds {', '.join(map(str, space.seeds))})")
    lines = [
        f"dry run: space {space.name} ({space.label}), design {space.design}, {count}",
        f"  overrides:   {_flags(planned.overrides)}",
        f"  budget:      {base.dataset}, {base.model} (width {base.width:g}), {base.epochs} epochs{linear}, "
        f"batch {base.batch_size}",
        f"  per trial:   {_resources(planned.per_trial)} ({workers})",
        f"  concurrency: {concurrency}",
        f"  study:       {planned.study_dir} ({exists})",
        "",
    ]
    header = ("#", "trial", "method", "seed", "family", "value")
    rows = [header] + [(str(number), trial.trial if trial.family != "search" else f"{trial.trial} x{trial.samples}",
                        trial.method, str(trial.seed), trial.family, _planned_value(trial))
                       for number, trial in enumerate(trials, 1)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        cells = [row[0].rjust(widths[0])] + [cell.ljust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if space.design == "search":
        lines.append("(each sample replaces the searched fields of its method's config; the rest is as listed)")
    return lines


def study_location(value: str, *, require_study_file: bool = True):
    """The `--study` folder as a `study.storage.Location`, refused (ConfigError, exit 2) when its storage cannot
    be opened or (with `require_study_file`) it holds no study.json."""
    from study.storage import Location
    from study.tables import STUDY_FILE

    try:
        study = Location.of(value)
        is_study = not require_study_file or (study / STUDY_FILE).is_file()
    except (ValueError, OSError) as error:
        raise ConfigError(f"--study {value}: {str(error).splitlines()[0] if str(error) else error!r}") from None
    if not is_study:
        raise ConfigError(f"--study {value}: not a study folder (no {STUDY_FILE})")
    return study


def command_collect(args: argparse.Namespace) -> int:
    from study.sweep import collect
    from study.tables import RESULTS_FILE

    study = study_location(args.study)
    results, history = collect(study)
    print(f"{study / RESULTS_FILE}: {len(results)} trials, {len(history)} epoch rows")
    return 0


def command_robustness(args: argparse.Namespace) -> int:
    from study.corrupted_sets import load_corrupted
    from study.launch import check_address, connect_ray
    from study.robustness import check_checkpoints, run_robustness, study_checkpoints
    from study.storage import Location, is_uri
    from study.tables import ROBUSTNESS_FILE

    corruptions = _corruption_list(args.corruptions)
    profile = _corruption_profile(args.corruption_profile)
    if profile is not None and args.corrupted is not None:
        raise ConfigError(f"--corruption-profile {profile} applies to generated sets only; "
                          f"--corrupted {args.corrupted} is used as it is")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    if args.corrupted is not None and is_uri(args.corrupted):
        raise ConfigError(f"--corrupted {args.corrupted}: corrupted sets are read from a local or shared "
                          "filesystem (memory-mapped by every task); copy the folder there and pass its path")
    if args.corrupted is not None and not Path(args.corrupted).is_dir():
        raise ConfigError(f"--corrupted {args.corrupted}: no such folder")
    study = study_location(args.study, require_study_file=False) if args.study else None
    try:
        checkpoints = study_checkpoints(study) if study is not None else list(args.checkpoint)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.checkpoint:
        for value in args.checkpoint:
            try:
                found = Location.of(value).exists()
            except (ValueError, OSError):
                found = False
            if not found:
                raise ConfigError(f"--checkpoint {value}: no such file")
    output = args.output or (study / ROBUSTNESS_FILE if study is not None else ROBUSTNESS_FILE)
    try:  # every input is read once before Ray starts, so a bad one fails here, in one line
        check_checkpoints(checkpoints)
        if args.corrupted is not None:
            load_corrupted(args.corrupted, corruptions)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.address:
        check_address(args.address)
    connect_ray(args.address)
    try:
        table = run_robustness(checkpoints, corrupted=args.corrupted, dataset=args.dataset, data_root=args.data_root,
                               corruptions=corruptions, output=output, seed=args.seed, profile=profile,
                               batch_size=args.batch_size)
    except ValueError as error:  # bad dataset/corrupted-set layouts, reported with their paths
        raise ConfigError(str(error).splitlines()[-1] if str(error) else repr(error)) from None
    print(f"robustness table: {output} ({len(table)} rows)")
    return 0


def _corruption_list(value: str | None) -> list[str] | None:
    from study.corruptions import ALL_CORRUPTIONS

    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"--corruptions {value!r}: unknown {unknown or 'empty list'}; "
                          f"allowed: {', '.join(ALL_CORRUPTIONS)}")
    return names


def _corruption_profile(value: str | None) -> str | None:
    from study.corruptions import PROFILES

    if value is not None and value not in PROFILES:
        raise ConfigError(f"--corruption-profile {value!r}: unknown profile; allowed: {', '.join(PROFILES)}")
    return value


def command_report(args: argparse.Namespace) -> int:
    from analysis.report import build_report

    study = study_location(args.study)
    html_path, markdown_path = build_report(study, diverged=args.diverged, num_classes=args.num_classes,
                                            baseline=args.baseline)
    _print_report(study, html_path, markdown_path)
    return 0


def _print_report(study, html_path: Path, markdown_path: Path) -> None:
    """Where the report is: beside the tables, and for a study on an object store the local copy to open."""
    if study.is_local:
        print(f"report: {html_path}\n        {markdown_path}")
    else:
        print(f"report: {study / html_path.name}\n        {study / markdown_path.name}\n"
              f"local copy to open: {html_path}")


def command_quickstart(args: argparse.Namespace) -> int:
    """The main job: the `quick` study end to end (sweep, corruption evaluation, report)."""
    from analysis.report import build_report
    from study.launch import check_storage
    from study.robustness import run_robustness, study_checkpoints
    from study.spaces import load_space
    from study.storage import Location
    from study.sweep import STUDY_FILE, SweepOptions, run_sweep, study_directory
    from study.tables import ROBUSTNESS_FILE

    overrides = {item.name: getattr(args, item.name) for item in fields(Config) if hasattr(args, item.name)}
    corruptions = _corruption_list(args.corruptions)
    profile = _corruption_profile(args.corruption_profile)
    space = load_space(args.space)
    options = SweepOptions(storage=args.storage, address=args.address)
    check_storage(args.storage)  # before Ray starts: a typo in a bucket name fails here, naming it
    _, study_dir = study_directory(space, overrides, options)
    resume = (study_dir / STUDY_FILE).is_file()  # a second run finishes (or just re-reports) the first
    print(f"== 1/3 sweep: space {space.name!r} ({space.description})", flush=True)
    study_dir = run_sweep(args.space, overrides, SweepOptions(storage=args.storage, address=args.address,
                                                              resume=resume, tracking=tuple(args.tracking)))
    print("== 2/3 corruption robustness of every completed trial", flush=True)
    run_robustness(study_checkpoints(study_dir), corruptions=corruptions, profile=profile,
                   output=study_dir / ROBUSTNESS_FILE)
    print("== 3/3 report", flush=True)
    html_path, markdown_path = build_report(study_dir)
    print()
    _print_report(Location.of(study_dir), html_path, markdown_path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv or ["quickstart"])
    handlers = {"train": command_train, "sweep": command_sweep, "collect": command_collect,
                "robustness": command_robustness, "report": command_report, "quickstart": command_quickstart}
    try:
        return handlers[args.command](args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
