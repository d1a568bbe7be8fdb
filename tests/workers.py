"""Run a function in forked worker processes and collect what each returns: the harness of the
multi-process (gloo) tests."""

from __future__ import annotations

import traceback
from typing import Any, Callable

import torch.multiprocessing as mp


def _report(target: Callable[[int, str], Any], rank: int, store: str, results) -> None:
    try:
        results.put((rank, target(rank, store)))
    except BaseException:  # hand the failure to the test instead of leaving it waiting
        results.put((rank, traceback.format_exc()))


def run_workers(target: Callable[[int, str], Any], world: int, store: str, timeout: float = 120) -> dict[int, Any]:
    """`target(rank, store)` in `world` forked processes (no re-import of torch: seconds, not tens of seconds);
    returns {rank: result}. A worker's exception fails the calling test with that worker's traceback."""
    context = mp.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_report, args=(target, rank, store, results), daemon=True)
                 for rank in range(world)]
    for process in processes:
        process.start()
    try:
        outputs = dict(results.get(timeout=timeout) for _ in range(world))
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    failures = [output for output in outputs.values() if isinstance(output, str)]
    assert not failures, failures[0]
    return outputs
