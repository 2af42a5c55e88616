"""kuma-cp's ADS server with hand-built messages (tests/e2e/xds/pbwire.py over python grpcio
with identity serializers): bad input of every kind gets a clear gRPC status, nothing crashes,
other proxies are unaffected; delta ADS serves the same resources as state of the world."""
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))

import harness  # noqa: E402
import pbwire as pb  # noqa: E402
from harness import count, sub_status, wait_for  # noqa: E402


def _status_of(x, msgs, method=pb.ADS_SOTW, timeout=10):
    """Opens a stream, sends <msgs>, returns how it ended: (code name, details)."""
    s = pb.RawStream(x.target(), method, timeout=timeout + 5)
    try:
        for m in msgs:
            s.send(m)
        code, details = s.end(timeout)
        assert code is not None, "stream not ended by the server within %s s" % timeout
        return code, details
    finally:
        s.close()


def test_bad_input_clear_status_others_unaffected(xds, free_port, procs):
    x = xds()
    x.start_echos(free_port)
    x.put_dp("echo-1")
    x.put_dp("echo-2")
    # a real client (gRPC C-core) stays connected through all of it
    c = harness.start_pyclient(x.bootstrap(), x.tmp)
    procs.append(c)
    assert c.wait_backends({"echo-1", "echo-2"}, 30), c.tail()
    t_bad = time.monotonic()

    cases = [
        ("malformed protobuf (truncated length)", [b"\x0a\xff\xff\xff\xff"],
         pb.ADS_SOTW, "INVALID_ARGUMENT", "malformed DiscoveryRequest"),
        ("malformed protobuf (bad tag)", [b"\xff\xff"], pb.ADS_SOTW, "INVALID_ARGUMENT",
         "malformed DiscoveryRequest"),
        ("malformed delta", [b"\x12\xff"], pb.ADS_DELTA, "INVALID_ARGUMENT",
         "malformed DeltaDiscoveryRequest"),
        ("unknown type_url", [pb.discovery_request("type.googleapis.com/foo.Bar",
                                                   node_id="default.bad-1")],
         pb.ADS_SOTW, "INVALID_ARGUMENT", 'unknown type_url "type.googleapis.com/foo.Bar"'),
        ("unknown type_url (delta)", [pb.delta_request("type.googleapis.com/foo.Bar",
                                                       node_id="default.bad-2")],
         pb.ADS_DELTA, "INVALID_ARGUMENT", "unknown type_url"),
        ("huge message", [pb.discovery_request(pb.LDS, ["a" * (5 << 20)],
                                               node_id="default.bad-3")],
         pb.ADS_SOTW, "RESOURCE_EXHAUSTED", "larger than max"),
        ("no node", [pb.discovery_request(pb.LDS)], pb.ADS_SOTW, "INVALID_ARGUMENT",
         "must carry node.id"),
        ("node id without a dot", [pb.discovery_request(pb.LDS, node_id="nodot")],
         pb.ADS_SOTW, "INVALID_ARGUMENT", 'node.id "nodot" is not of the form "<mesh>.<name>"'),
        ("node id with an empty name", [pb.discovery_request(pb.LDS, node_id="default.")],
         pb.ADS_SOTW, "INVALID_ARGUMENT", "is not of the form"),
        ("unknown mesh", [pb.discovery_request(pb.LDS, node_id="nomesh.x")], pb.ADS_SOTW,
         "NOT_FOUND", 'mesh "nomesh" of node.id does not exist'),
        ("unknown mesh (delta)", [pb.delta_request(pb.CDS, node_id="nomesh.y")], pb.ADS_DELTA,
         "NOT_FOUND", 'mesh "nomesh"'),
        ("too many resource names", [pb.discovery_request(pb.CDS, ["c%d" % i
                                                                   for i in range(10001)],
                                                          node_id="default.bad-4")],
         pb.ADS_SOTW, "RESOURCE_EXHAUSTED", "more than 10000 resource names"),
    ]
    failures = []
    for what, msgs, method, code, text in cases:
        got = _status_of(x, msgs, method)
        if got[0] != code or text not in (got[1] or ""):
            failures.append("%s: expected %s %r, got %s %r" % (what, code, text, got[0], got[1]))
        assert x.cp.running(), "kuma-cp died on: %s\n%s" % (what, x.cp.logs[-3000:])
    assert not failures, "\n".join(failures)

    # many bad streams at once
    errs = []

    def bad_stream():
        try:
            got = _status_of(x, [b"\x0a\xff\xff"])
            if got[0] != "INVALID_ARGUMENT":
                errs.append(got)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))
    ts = [threading.Thread(target=bad_stream) for _ in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errs, errs

    # a gRPC frame cut short, at the HTTP/2 level (curl): status in the trailers
    body = x.tmp / "trunc.bin"
    body.write_bytes(b"\x00\x00\x00\x00\x64\x0a\x02")  # announces 100 bytes, sends 2
    r = subprocess.run(["curl", "-sS", "-m", "10", "--http2-prior-knowledge", "-D", "-",
                        "-o", "/dev/null", "-H", "content-type: application/grpc",
                        "-H", "te: trailers", "--data-binary", "@%s" % body,
                        "http://%s%s" % (x.target(), pb.ADS_SOTW)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    hdrs = r.stdout.lower()
    assert "grpc-status:" in hdrs and "grpc-status: 0" not in hdrs, r.stdout
    assert "grpc-message:" in hdrs, r.stdout

    # a client that NACKs (raw): recorded with its message
    n = pb.SotwClient(x.target(), "default.nacker")
    try:
        r1 = n.subscribe(pb.CDS, ack=False)
        n.request(pb.CDS, version="", nonce=r1["nonce"], error=(3, "test NACK: no thanks"))
        st = wait_for(lambda: (lambda s: s if count(s, "responsesRejected") >= 1 else None)(
            sub_status(x.insight("nacker"), "cds")), 5)
        assert st and st.get("lastNackError") == "test NACK: no thanks", x.insight("nacker")
        # a stale nonce and a made-up one are ignored, the stream stays up
        n.request(pb.CDS, version="", nonce="not-a-nonce", error=(3, "stale"))
        n.request(pb.CDS, version=r1["version"], nonce="12345")
        time.sleep(0.3)
        assert not n.s.ended, (n.s.code, n.s.details)
        assert sub_status(x.insight("nacker"), "cds").get("lastNackError") == \
            "test NACK: no thanks"
    finally:
        n.close()

    # a stream that never ACKs stays served, and the others are unaffected
    q = pb.SotwClient(x.target(), "default.never-acks")
    try:
        lds = q.subscribe(pb.LDS, ["echo"], ack=False)
        assert [r["name"] for r in lds["resources"]] == ["echo"], lds
        rds = q.subscribe(pb.RDS, ["echo"], ack=False)
        assert [r["name"] for r in rds["resources"]] == ["echo"], rds
        q.subscribe(pb.CDS, ["echo"], ack=False)
        eds = q.subscribe(pb.EDS, ["echo"], ack=False)
        assert len(eds["resources"]) == 1, eds
        # a change: the real client follows it; the never-ACKing stream is still open
        t0 = time.monotonic()
        x.delete_dp("echo-2")
        assert c.wait_backends({"echo-1"}, 5, since=t0), c.tail()
        x.put_dp("echo-2")
        assert c.wait_backends({"echo-1", "echo-2"}, 5, since=time.monotonic()), c.tail()
        time.sleep(0.5)
        ins = wait_for(lambda: (lambda i: i if count(sub_status(i, "eds"), "responsesSent") >= 1
                                else None)(x.insight("never-acks")), 5)
        assert ins, x.insight("never-acks")
        for kind in ("lds", "rds", "cds", "eds"):
            assert count(sub_status(ins, kind), "responsesAcknowledged") == 0, ins
            assert count(sub_status(ins, kind), "responsesSent") >= 1, ins
    finally:
        q.close()

    # kuma-cp up throughout; the real client never saw an error
    assert x.cp.running() and x.cp.ready_status() == 200
    res, ok = c.calls_since(t_bad)
    assert res and len(ok) == len(res), "the real client saw errors:\n" + c.tail()
    # and a new normal client works after all of that
    c2 = harness.start_pyclient(x.bootstrap("default.client-2"), x.tmp, name="pyclient2")
    procs.append(c2)
    assert c2.wait_backends({"echo-1", "echo-2"}, 30), c2.tail()


def _collect_sotw(x, node_id):
    """LDS and CDS wildcard, EDS "echo" over state of the world: {type: {name: bytes}}."""
    s = pb.SotwClient(x.target(), node_id)
    try:
        out = {}
        for t, names in ((pb.LDS, ()), (pb.CDS, ()), (pb.EDS, ("echo",))):
            r = s.subscribe(t, names)
            out[t] = {res["name"]: res["value"] for res in r["resources"]}
            assert all(res["type_url"] == t for res in r["resources"]), r
        return out
    finally:
        s.close()


def test_delta_same_resources_as_sotw_and_removals(xds, free_port, procs):
    x = xds()
    x.start_echos(free_port)
    x.put_dp("echo-1")
    # echo-2 is the proxy: an inbound for its echo instance and an outbound to service echo
    p2 = x.echo_ports["echo-2"]
    ob_port = free_port()
    dp2 = harness.echo_dataplane("echo-2", p2)
    dp2["networking"]["outbound"] = [{"port": ob_port, "tags": {"kuma.io/service": "echo"}}]
    x.put_dp("echo-2", body=dp2)

    d = pb.DeltaClient(x.target(), "default.echo-2")
    try:
        got, versions = {}, {}
        for t, sub in ((pb.LDS, ()), (pb.CDS, ()), (pb.EDS, ("echo",))):
            d.request(t, subscribe=sub)
        end = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < end:
            r = d.recv(max(0.1, end - time.monotonic()))
            d.ack(r)
            got.setdefault(r["type_url"], {}).update(
                {res["name"]: res["value"] for res in r["resources"]})
            versions.update({(r["type_url"], res["name"]): res["version"]
                             for res in r["resources"]})
            assert r["removed"] == [], r
            assert all(res["type_url"] == r["type_url"] for res in r["resources"]), r
        assert set(got) == {pb.LDS, pb.CDS, pb.EDS}, got.keys()
        assert all(versions.values()), versions  # every delta resource carries a version

        # the same node over state of the world gets exactly the same resources
        sotw = _collect_sotw(x, "default.echo-2")
        for t in (pb.LDS, pb.CDS, pb.EDS):
            assert sorted(got[t]) == sorted(sotw[t]), (t, sorted(got[t]), sorted(sotw[t]))
            for name in sotw[t]:
                assert got[t][name] == sotw[t][name], "%s %s differs" % (t, name)
                pb.parse(got[t][name])  # decodes as protobuf
        lds, cds = set(got[pb.LDS]), set(got[pb.CDS])
        assert lds == {"inbound:127.0.0.1:%d" % p2, "outbound:127.0.0.1:%d" % ob_port}, lds
        assert cds == {"localhost:%d" % p2, "echo"}, cds
        eps = got[pb.EDS]["echo"]
        assert eps.count(b"127.0.0.1") == 2, eps  # echo-1 and echo-2

        # echo-2 deleted: its listeners and clusters come back as removed_resources
        x.delete_dp("echo-2")
        removed = {}
        end = time.monotonic() + 10
        while time.monotonic() < end and not (removed.get(pb.LDS) and removed.get(pb.CDS)):
            r = d.s.try_recv(max(0.1, end - time.monotonic()))
            if r is None:
                break
            r = pb.parse_delta_response(r)
            d.ack(r)
            removed.setdefault(r["type_url"], set()).update(r["removed"])
        assert removed.get(pb.LDS) == lds, removed
        assert removed.get(pb.CDS) == cds, removed
        assert not d.s.ended, (d.s.code, d.s.details)

        # the delta subscription is in the insight (the SotW one of the same node too)
        def delta_sub():
            subs = (x.insight("echo-2") or {}).get("subscriptions") or []
            ds = [sb for sb in subs if sb.get("deltaXds") is True]
            return ds and count(ds[-1]["status"].get("lds", {}), "responsesAcknowledged") >= 2
        assert wait_for(delta_sub, 5), x.insight("echo-2")
    finally:
        d.close()
