"""Safety: a local Ray runtime listens on localhost only, its dashboard (the State API Ray Train needs) too; the
project never unpickles its own files (checkpoints load with weights_only=True:
tests/faults/test_fault_checkpoint.py)."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys

from fault_helpers import REPO

# Started through the toolkit's own connect_ray, in a fresh process: report what the Ray processes listen on.
LOCAL_RUNTIME = """
import json, os, sys
sys.path.insert(0, {helpers!r})
from fault_helpers import command_line, descendants, listening_sockets
from study.launch import connect_ray
import ray
connect_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
from ray.util.state import list_nodes
# What Ray Train's controller polls; raises without the dashboard. The address is explicit because another
# local runtime (the test session's) may be running.
state_api_nodes = len(list_nodes(address=ray.get_runtime_context().gcs_address))
family = [os.getpid(), *descendants(os.getpid())]
print(json.dumps({{"listening": listening_sockets(family), "state_api_nodes": state_api_nodes,
                   "processes": [command_line(pid) for pid in family],
                   "gcs": ray.get_runtime_context().gcs_address,
                   "cluster_switch": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}}))
ray.shutdown()
"""


def test_a_local_runtime_listens_on_loopback_only_and_serves_the_state_api():
    done = subprocess.run([sys.executable, "-c", LOCAL_RUNTIME.format(helpers=str(REPO / "tests" / "faults"))],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    listening = report["listening"]
    assert len(listening) >= 3, listening  # the GCS, the raylet and a worker at least
    exposed = [entry for entry in listening if not _loopback(entry[0])]
    assert not exposed, f"listening beyond localhost: {exposed}"
    assert report["gcs"].startswith("127.0.0.1:")
    assert report["cluster_switch"] is None  # restored: a later `ray start` from this process may join clusters
    # The dashboard serves Ray's State API (without it Ray Train warns every second and can hang in Tune):
    # it answers, and it is one of the loopback-only listeners checked above.
    assert report["state_api_nodes"] == 1
    dashboards = [line for line in report["processes"] if "dashboard/dashboard.py" in line]
    assert dashboards and all("--host=127.0.0.1" in line for line in dashboards), dashboards


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


# What reads files the project wrote (or a user handed it) never unpickles: YAML through safe_load, tables through
# Parquet/CSV/JSON, arrays through np.load without allow_pickle, tensors through torch.load(weights_only=True).
UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "unpickling with pickle"),
    (re.compile(r"\bcloudpickle\.loads?\("), "unpickling with cloudpickle"),
    (re.compile(r"\bread_pickle\("), "pandas.read_pickle"),
    (re.compile(r"\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"\bjoblib\.load\("), "joblib.load"),
]


def test_project_code_never_unpickles_files():
    sources = [REPO / "run_study.py", *(REPO / "study").glob("*.py"), *(REPO / "analysis").glob("*.py"),
               *(REPO / "search_spaces").glob("*.py")]
    found = []
    for path in sources:
        text = path.read_text()
        for pattern, what in UNSAFE:
            found += [f"{path.relative_to(REPO)}: {what}" for _ in pattern.finditer(text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                found.append(f"{path.relative_to(REPO)}: {call.group(0)}")
    assert not found, found
    assert len(sources) > 10  # the scan saw the project
