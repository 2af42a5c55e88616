"""End-to-end tests of kuma-cp's xDS server (DP server) with two real third-party xDS clients:
gRPC C-core (Debian's python3-grpcio, run with /usr/bin/python3) and @grpc/grpc-js-xds (node),
as proxyless gRPC clients of an echo service with two instances registered as Dataplanes.

Helpers live in tests/e2e/xds/: echo_server.py (backend), pyclient_loop.py and client_loop.js
(long-lived clients printing which backend answered each call), pbwire.py (raw ADS clients),
harness.py (processes and waits). Everything binds 127.0.0.1; every wait has a timeout.
"""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))

import harness  # noqa: E402
from harness import wait_for  # noqa: E402

CHANGE_S = 5.0  # a live change must reach the client within this


_sub_status = harness.sub_status
_n = harness.count


def live_changes_and_restart(x, client, postgres_env):
    """The shared scenario of the two real clients: both instances reached, live delete and
    re-add, kuma-cp restart with the same client process."""
    pid = client.proc.pid
    assert client.wait_backends({"echo-1", "echo-2"}, 30), \
        "client never reached both instances:\n" + client.tail()

    # live change: delete echo-2
    t0 = time.monotonic()
    x.delete_dp("echo-2")
    assert client.wait_backends({"echo-1"}, CHANGE_S, since=t0), \
        "still calling echo-2 %.0f s after its Dataplane was deleted:\n%s" % (CHANGE_S,
                                                                              client.tail())
    # add it back
    t0 = time.monotonic()
    x.put_dp("echo-2")
    assert client.wait_backends({"echo-1", "echo-2"}, CHANGE_S, since=t0), \
        "echo-2 not called again after it was added back:\n" + client.tail()

    # insights are written about once a second
    def acked():
        ins = x.insight()
        return ins if ins and all(_n(_sub_status(ins, k), "responsesAcknowledged") >= 1
                                  for k in ("lds", "rds", "cds")) and \
            _n(_sub_status(ins, "eds"), "responsesAcknowledged") >= 3 else None
    ins = wait_for(acked, 5)
    assert ins, "DataplaneInsight of client-1 does not show the ACKs: %s" % x.insight()
    for kind in ("lds", "rds", "cds", "eds"):
        assert _n(_sub_status(ins, kind), "responsesRejected") == 0, (kind, ins)

    # kuma-cp goes away: the client keeps serving from its last config
    x.cp.stop()
    t0 = time.monotonic()
    assert client.wait_backends({"echo-1", "echo-2"}, 10, since=t0), \
        "client stopped working while kuma-cp was down:\n" + client.tail()
    time.sleep(0.5)
    x.cp.start(wait=True, timeout=20)
    # the same process reconnects (a second "connected" line in the CP log)
    assert wait_for(lambda: x.cp.logs.count("default.client-1 connected") >= 2, 30), \
        "client did not reconnect after the restart:\n" + x.cp.logs[-3000:]
    if not postgres_env:
        # the memory store lost the Dataplanes: register them again
        x.put_dp("echo-1")
        x.put_dp("echo-2")
    assert client.wait_backends({"echo-1", "echo-2"}, 15), \
        "client not working after the restart:\n" + client.tail()
    # and the new stream is live: a change after the restart reaches it
    t0 = time.monotonic()
    x.delete_dp("echo-1")
    assert client.wait_backends({"echo-2"}, CHANGE_S, since=t0), \
        "change after the restart not followed:\n" + client.tail()
    t0 = time.monotonic()
    x.put_dp("echo-1")
    assert client.wait_backends({"echo-1", "echo-2"}, CHANGE_S, since=t0), client.tail()
    assert client.proc.pid == pid and client.running()
    ins = x.insight()
    subs = ins["subscriptions"]
    if postgres_env:
        assert len(subs) >= 2, ins  # the insight survived the restart with both streams
        assert subs[-1]["connectTime"] > subs[0]["connectTime"], ins
    assert "disconnectTime" not in subs[-1], ins


def test_cgrpc_client_live_changes_and_restart(xds, postgres, free_port, procs):
    x = xds(env=postgres.env(postgres.new_database()), migrate=True)
    x.start_echos(free_port)
    x.put_dp("echo-1")
    x.put_dp("echo-2")
    c = harness.start_pyclient(x.bootstrap(), x.tmp)
    procs.append(c)
    live_changes_and_restart(x, c, True)


def test_grpc_js_xds_client_live_changes_and_restart(xds, postgres, free_port, procs):
    err = harness.ensure_node_modules()
    if err:
        pytest.fail(err, pytrace=False)
    x = xds(env=postgres.env(postgres.new_database()), migrate=True)
    x.start_echos(free_port)
    x.put_dp("echo-1")
    x.put_dp("echo-2")
    c = harness.start_nodeclient(x.bootstrap(), x.tmp)
    procs.append(c)
    live_changes_and_restart(x, c, True)


def test_cgrpc_client_nack_keeps_last_good_config(xds, free_port, procs):
    """A resource the client rejects is recorded in DataplaneInsight and the client keeps
    serving with the last good config.

    Trigger: a MeshLoadBalancingStrategy that asks for Maglev on the echo service. kuma-cp
    writes lb_policy MAGLEV into the Cluster, which Envoy supports and gRPC C-core rejects
    (it only does round robin and ring hash), so the client NACKs the Cluster and keeps the
    previous one. Deleting the policy gets the next Cluster accepted again."""
    x = xds()
    x.start_echos(free_port)
    x.put_dp("echo-1")
    x.put_dp("echo-2")
    c = harness.start_pyclient(x.bootstrap(), x.tmp)
    procs.append(c)
    assert c.wait_backends({"echo-1", "echo-2"}, 30), c.tail()

    def cds():
        return _sub_status(x.insight(), "cds")
    assert wait_for(lambda: _n(cds(), "responsesAcknowledged") >= 1, 5), x.insight()
    acked_before = _n(cds(), "responsesAcknowledged")

    policy = {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "echo-maglev",
              "spec": {"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "echo"},
                               "default": {"loadBalancer": {"type": "Maglev"}}}]}}
    st, js = x.cp.put("/meshes/default/meshloadbalancingstrategies/echo-maglev", policy)
    assert st == 201, (st, js)
    t_nack = time.monotonic()
    st = wait_for(lambda: (lambda s: s if _n(s, "responsesRejected") >= 1 else None)(cds()), 10)
    assert st, "no NACK recorded in the DataplaneInsight: %s\n%s" % (x.insight(), c.tail())
    assert "lb_policy" in st.get("lastNackError", ""), st
    assert _n(st, "responsesAcknowledged") == acked_before, st
    for kind in ("lds", "rds", "eds"):
        assert _n(_sub_status(x.insight(), kind), "responsesRejected") == 0, x.insight()
    assert "rejected cds" in x.cp.logs

    # the last good config keeps serving: every call succeeds, on both endpoints
    assert wait_for(lambda: len(c.results(t_nack)) >= 30, 15), c.tail()
    res, ok = c.calls_since(t_nack)
    assert len(ok) == len(res), "calls failed after the NACK:\n" + c.tail()
    assert set(ok) == {"echo-1", "echo-2"}, c.tail()

    # without the policy the next Cluster is accepted again (ACK counted) and changes follow
    st, js = x.cp.delete("/meshes/default/meshloadbalancingstrategies/echo-maglev")
    assert st == 200, (st, js)
    st = wait_for(lambda: (lambda s: s if _n(s, "responsesAcknowledged") > acked_before
                           else None)(cds()), 5)
    assert st, x.insight()
    t0 = time.monotonic()
    x.delete_dp("echo-2")
    assert c.wait_backends({"echo-1"}, CHANGE_S, since=t0), c.tail()
    assert x.cp.ready_status() == 200
