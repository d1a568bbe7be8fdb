"""Hold a multi-node Ray cluster on this machine, in a process of its own, for the test session.

A `ray.cluster_utils.Cluster` started inside pytest's process, beside the session's local runtime, left
drivers hanging at connect; this script holds it apart instead (the `two_node_cluster` fixture in
tests/conftest.py starts it with subprocess). It starts a head node and one worker node of 2 CPUs each,
listening on 127.0.0.1 only, prints ``ADDRESS <gcs address>`` and then ``NODES <head id> <worker id>``,
and takes one command per line on stdin, answering each with one line on stdout:

    add NUM_CPUS    start another worker node          -> ``NODE <node id>``
    kill NODE_ID    SIGKILL every process of that node  -> ``KILLED <node id>``
    quit            shut the cluster down and exit      -> ``BYE``

A bad command answers ``ERROR <why>`` and the holder goes on. End of input shuts the cluster down as
``quit`` does, so a test session that dies still takes its cluster with it.
"""

from __future__ import annotations

import os
import socket
import sys

CPUS_PER_NODE = 2
# Object stores small enough for three nodes beside the session's own runtime on a 24 GiB test machine.
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def _free_port() -> int:
    """A free loopback port for the head's GCS or dashboard (the session's local runtime may hold Ray's defaults)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    from ray.cluster_utils import Cluster

    from study.launch import _loopback_only

    # Every process of the nodes inherits RAY_ADDRESS, its own cluster's: Ray Train's placement-group cleaner
    # asks the State API whether its controller lives, and without an address that API picks one of the Ray
    # instances on this machine by Ray's address file; picking another one, it took a running trial's
    # controller for dead and freed its placement group (seen with pytest-xdist's second worker beside).
    gcs_port = _free_port()
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
    # Ray's cluster mode off while the nodes start: every node, and every process it starts, listens on
    # 127.0.0.1 alone (as `connect_ray` starts a local runtime). The nodes' processes inherit it.
    with _loopback_only():
        # The dashboard serves the State API, which Ray Train's controller needs (see study/launch.py).
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": CPUS_PER_NODE, "gcs_server_port": gcs_port, "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": _free_port()})
        first = cluster.add_node(num_cpus=CPUS_PER_NODE, object_store_memory=OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        nodes = {cluster.head_node.node_id: cluster.head_node, first.node_id: first}
        _say(f"ADDRESS {cluster.address}")
        _say(f"NODES {cluster.head_node.node_id} {first.node_id}")
        try:
            for line in sys.stdin:
                command, _, argument = line.strip().partition(" ")
                if command == "quit":
                    break
                if command == "add" and argument.isdigit():
                    node = cluster.add_node(num_cpus=int(argument), object_store_memory=OBJECT_STORE_BYTES)
                    cluster.wait_for_nodes()
                    nodes[node.node_id] = node
                    _say(f"NODE {node.node_id}")
                elif command == "kill" and argument in nodes and nodes[argument] is not cluster.head_node:
                    # No graceful shutdown: the node is lost, as a preempted machine is.
                    cluster.remove_node(nodes.pop(argument), allow_graceful=False)
                    _say(f"KILLED {argument}")
                else:
                    _say(f"ERROR unknown command {line.strip()!r}; expected 'add NUM_CPUS', 'kill WORKER_NODE_ID' "
                         "or 'quit'")
        finally:
            cluster.shutdown()
    _say("BYE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
