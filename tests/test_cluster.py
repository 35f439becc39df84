"""Clustered mode (issue #7): (1) every node of a three-node cluster serves every RPC; (2) a node with
the wrong cluster password is refused. Losing a node under load is in
tests/test_cluster_failover.py; the harness in tests/cluster_support.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid

import pytest

from tests import cluster_support
from tests.cluster_support import (
    DELIVERY_TIMEOUT,
    SERVING,
    Cluster,
    establish,
    expect,
    free_ports,
    get_all,
    publish,
    save,
    tails,
)
from tests.support import wait_for
from tests.test_concurrency import Write, new_events, verify

# Fixtures of tests/cluster_support.py, bound to names of this module so that pytest finds them here.
cluster = cluster_support.cluster


# --- 1. Every node serves every RPC -------------------------------------------------------------


@pytest.mark.timeout(240)
def test_three_nodes_form_a_cluster_and_every_node_serves(cluster: Cluster) -> None:
    print(f"three clustered nodes serving {cluster.start():.1f}s after they were started")
    a, b, c = cluster.nodes
    followers = [cluster.follow(f"follower on {n.name}", [n]) for n in cluster.nodes]
    # Through a, b and c in turn, one after another: their order is the commit order.
    writes = [save(cluster, cluster.nodes[i % 3], Write(f"order-{i % 4}", -2, new_events(1 + i % 3, i % 3), i % 3))
              for i in range(60)]
    everything = get_all(cluster, a)
    verify(everything, writes)
    assert [e.event_id for e in everything] == [i for w in writes for i in w.ids], "not in commit order"
    assert [e.position.prepare_position for e in everything] == list(range(1, len(everything) + 1))
    for node in (b, c):
        assert get_all(cluster, node) == everything, f"GetEvents on {node.name} differs from {a.name}"
    for follower in followers:
        expect(follower, everything, cluster.nodes)

    # subscriber_name: one holder in the whole cluster, the name free again once it has gone.
    holder = cluster.follow("holder of 'projector' on a", [a], name="projector")
    wait_for(lambda: len(holder.items()) == len(everything), DELIVERY_TIMEOUT, "the holder to catch up")
    for node in (b, c, a):
        rival = cluster.follow(f"rival on {node.name}", [node], name="projector")
        wait_for(rival.stopped, 15, f"{rival.label} to be refused")
        assert rival.items() == [] and (rival.error or "").startswith("StatusCode.ALREADY_EXISTS"), rival.error
    holder.close()

    def successor_accepted() -> bool:
        successor = cluster.follow("successor on c", [c], name="projector")
        wait_for(lambda: successor.items() or successor.stopped(), DELIVERY_TIMEOUT, "the successor's answer")
        return bool(successor.items())

    wait_for(successor_accepted, 15, "the name 'projector' to be free on c after its holder on a left")

    # Pub/sub: competing consumers on a and c share what is published through b.
    subject = f"cluster.jobs-{uuid.uuid4().hex[:8]}"
    workers = [cluster.consume(f"worker on {n.name}", [n], subject, "workers") for n in (a, c)]
    probes = establish(cluster.stub(b), subject, workers, cluster.nodes)
    ids = [str(uuid.uuid4()) for _ in range(100)]
    for n, message_id in enumerate(ids):
        publish(cluster.stub(b), subject, message_id, f'{{"n": {n}}}')
    with contextlib.suppress(AssertionError):  # the assertions below say what is missing
        wait_for(lambda: set(ids) <= {i for w in workers for i in w.ids()}, DELIVERY_TIMEOUT, "every message")
    got = [[i for i in w.ids() if i not in probes] for w in workers]
    print(f"competing consumers on a and c got {len(got[0])} and {len(got[1])} of {len(ids)} messages")
    for worker in workers:
        assert worker.error is None, f"{worker.label} failed: {worker.error}\n{tails(cluster.nodes)}"
    assert sorted(got[0] + got[1]) == sorted(ids), "a message was lost, duplicated or unexpected"
    assert got[0] and got[1], "the competing consumers on two nodes did not share the messages"


# --- 2. Wrong cluster password ------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_node_with_the_wrong_cluster_password_is_refused(cluster: Cluster) -> None:
    cluster.start()
    ports = free_ports(3)
    intruder = cluster.node("x", ports[:2], ports[2], [*cluster.routes, f"nats://127.0.0.1:{ports[2]}"],
                            password="wrong-password", timeout="5s")
    cluster.nodes.append(intruder)  # stopped with the others should it still run
    began = time.monotonic()
    proc = intruder.start().proc
    assert proc is not None
    try:
        status = proc.wait(5 + 25)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the node with the wrong password still runs after 30s\n{intruder.tail()}") from None
    print(f"the node with the wrong cluster password exited with {status} after {time.monotonic() - began:.1f}s")
    log = intruder.log()
    assert status == 1, intruder.tail()
    assert "ORISUN_NATS_CLUSTER" in log, intruder.tail()
    assert SERVING not in log and "Traceback" not in log, intruder.tail()
    for node in cluster.nodes[:3]:  # the cluster is unharmed: all three still write and read
        assert not node.exited(), node.tail()
        save(cluster, node, Write(f"after-intruder-{node.name}", -1, new_events(1)))
    assert len(get_all(cluster, cluster.nodes[0])) == 3

