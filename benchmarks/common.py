"""What every benchmark script shares: a header naming the machine and its load, aligned tables, a timed
local Ray runtime started as the product starts one, and a way to keep Ray's console output out of the
tables."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import torch

Column = tuple[str, str, str]  # (row key, header, format spec such as ".2f"; "" for str())


def print_header(title: str, details: str = "") -> None:
    """Title, date, machine and its current load: results from a shared machine mean little without them."""
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n== {title} ==")
    print(f"{date.today().isoformat()} | {platform.machine()} | {os.cpu_count()} CPUs | load average {load} | "
          f"torch {torch.__version__} | main-process torch threads {torch.get_num_threads()}")
    if details:
        print(details)


def format_cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    """Rows as a Markdown-compatible table (pastes into BENCHMARKS.md as is)."""
    cells = [[format_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (_, title, _) in enumerate(columns)]
    print("| " + " | ".join(title.ljust(width) for (_, title, _), width in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for line in cells:
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) + " |")


@contextlib.contextmanager
def quiet(what: str) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors, so Ray's and Tune's console output too) to a
    temporary log while `what` runs, keeping the tables readable; on an error, show the log's tail."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+", prefix="bench-log-") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            log.seek(0)
            tail = log.read().splitlines()[-60:]
            print(f"--- last lines of the console output of {what} ---", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def start_ray(num_cpus: int | None = None) -> float:
    """Start a local Ray runtime with `study.launch.connect_ray`, as the product does, with every core (or
    `num_cpus`). Returns the seconds it took: the runtime's fixed start-up cost."""
    from study.launch import connect_ray

    started = time.perf_counter()
    connect_ray(num_cpus=num_cpus or os.cpu_count())
    return time.perf_counter() - started


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass
class RayRuntime:
    """What `ray_runtime` measured: the seconds the runtime took to start."""

    seconds: float = 0.0


@contextlib.contextmanager
def ray_runtime(num_cpus: int | None = None) -> Iterator[RayRuntime]:
    """A local Ray runtime for the block: started by `start_ray` (timed), shut down at the end, with this
    process's console output held in a log throughout, since Ray streams its workers' lines to the driver
    some time after the call that caused them has returned. Print tables after the block."""
    runtime = RayRuntime()
    with quiet("the Ray part of this benchmark"):
        runtime.seconds = start_ray(num_cpus)
        try:
            yield runtime
        finally:
            stop_ray()
