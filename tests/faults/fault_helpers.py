"""Shared pieces of the fault-injection tests: tiny configs and spaces, real subprocesses, and the process table.

The process table is read from /proc (no psutil): which processes descend from a driver we started, what
they are called (Ray renames its workers `ray::<Actor>`), and whether they are still alive. Tests only ever
signal processes they started or that descend from one they started, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from study.storage import Location

REPO = Path(__file__).resolve().parents[2]
TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "batch_size": 64, "linear_batch_size": 64,
        "augmentation": "crop_flip", "epochs": 1, "linear_epochs": 1}
# Hang guards, not speed assertions: far above what the steps take even on a loaded 2-core machine.
PATIENCE_SECONDS = 240.0

T = TypeVar("T")


def write_space(folder: Path, name: str, body: str, epochs: int = 3, **base_changes: object) -> Path:
    """A tiny space file on digits; `body` adds design, methods and vary."""
    base = {**TINY, "epochs": epochs, "lr": 0.5, **base_changes}
    lines = [f"name: {name}", "base:"] + [f"  {key}: {value}" for key, value in base.items()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n" + body)
    return path


def start(argv: list[str], log: Path, *, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python argv...` in its own session (so a signal to its group reaches what it starts, as a terminal's
    Ctrl-C does), with stdout and stderr in `log`."""
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})},
                            start_new_session=True)


def wait_for(condition: Callable[[], T], what: str, *, process: subprocess.Popen | None = None,
             log: Path | None = None, timeout: float = PATIENCE_SECONDS) -> T:
    """Poll `condition` until it returns something truthy; fail if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}) before {what}:\n{tail(log)}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")


def recorded_trials(experiment: Path | Location) -> list[dict[str, str | None]]:
    """Trials in Tune's newest experiment-state snapshot on storage (what a restore reads): their id, status,
    and the checkpoint folder of their last recorded result (None when it carried none). `experiment`: a
    local folder, or a `study.storage.Location` on an object store."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"), key=lambda path: path.name)
    if not snapshots:
        return []
    try:
        state = json.loads(snapshots[-1].read_text())
    except (OSError, ValueError):  # caught in the middle of a rewrite
        return []
    trials = []
    for trial, metadata in state.get("trial_data", []):
        trial = json.loads(trial) if isinstance(trial, str) else trial
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        last = metadata.get("last_result") or {}
        trials.append({"trial_id": trial["trial_id"], "status": trial["status"],
                       "checkpoint": last.get("checkpoint_dir_name")})
    return trials


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------------- process table
def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree, now."""
    table = _table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    state = _table().get(pid)
    return state is not None and state[1] != "Z"


def named(pids: list[int], prefix: str) -> list[int]:
    """The live processes among `pids` whose command line starts with `prefix` (e.g. 'ray::RayTrainWorker')."""
    return [pid for pid in pids if alive(pid) and command_line(pid).startswith(prefix)]


def reap(pids: list[int]) -> list[int]:
    """SIGKILL whichever of `pids` (processes a test started) outlived their parent; returns those pids."""
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of `pids` holds, IPv4 and IPv6."""
    owner = {}
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[len("socket:["):-1]] = pid
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            # The kernel prints the address as 32-bit words in host (little-endian) order.
            packed = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            found.append((socket.inet_ntop(family, packed), int(port, 16), owner[fields[9]]))
    return found
