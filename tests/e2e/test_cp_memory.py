"""kuma-cp on the memory store, driven through its REST API and diagnostics server."""

import json
import re
import signal
import socket
import threading
import urllib.parse

import pytest

import examples
import helpers
from helpers import api, parse_metrics

SKIP_MESH = {"KUMA_DEFAULTS_SKIP_MESH_CREATION": "true"}


def is_subset(want, got, path="$"):
    """None when every field of <want> is in <got> with the same value, else the first
    difference (servers may add fields: creationTime, kri, labels, defaults)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return "%s: expected an object, got %r" % (path, got)
        for k, v in want.items():
            if k not in got:
                return "%s.%s: missing" % (path, k)
            d = is_subset(v, got[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return "%s: expected %r, got %r" % (path, want, got)
        for i, (w, g) in enumerate(zip(want, got)):
            d = is_subset(w, g, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    if want != got:
        return "%s: expected %r, got %r" % (path, want, got)
    return None


def assert_error_shape(body, status):
    assert isinstance(body, dict), "error body is not a JSON object: %r" % (body,)
    for k in ("type", "status", "title", "detail"):
        assert k in body, "error body lacks %r: %r" % (k, body)
    assert body["status"] == status, body


def fields_of(body):
    return [p.get("field") for p in (body or {}).get("invalid_parameters") or []]


@pytest.fixture(scope="module")
def cp(module_cp_factory):
    """One kuma-cp with the default mesh, shared by the read/CRUD tests of this module."""
    return module_cp_factory(name="shared")


@pytest.fixture(scope="module")
def descriptors(cp):
    status, body = cp.get("/_resources")
    assert status == 200, body
    items = body.get("resources") if isinstance(body, dict) else body
    assert isinstance(items, list) and items, body
    return {d["name"]: d for d in items}


def url_of(desc, doc):
    path = desc["path"].strip("/")
    if desc["name"] == "Mesh":
        return "/meshes/" + doc["name"]
    if str(desc.get("scope", "")).lower() == "global":
        return "/%s/%s" % (path, doc["name"])
    return "/meshes/%s/%s/%s" % (doc["mesh"], path, doc["name"])


def list_url_of(desc, mesh="default"):
    path = desc["path"].strip("/")
    if str(desc.get("scope", "")).lower() == "global":
        return "/" + path
    return "/meshes/%s/%s" % (mesh, path)


# ---------------------------------------------------------------------------- index, types

def test_index(cp):
    status, body = cp.get("/")
    assert status == 200, body
    for k in ("hostname", "product", "version", "instanceId", "clusterId"):
        assert k in body, "GET / lacks %r: %r" % (k, body)
    assert body["product"] == "Kuma"
    assert body["version"]
    assert body["hostname"] == socket.gethostname()


def test_resources_lists_required_types(descriptors):
    required = ["Mesh", "Dataplane", "Secret", "GlobalSecret", "Zone", "TrafficPermission",
                "TrafficRoute", "TrafficLog", "TrafficTrace", "HealthCheck", "CircuitBreaker",
                "FaultInjection", "Retry", "Timeout", "RateLimit", "MeshTrafficPermission",
                "MeshHTTPRoute", "MeshTCPRoute", "MeshTimeout", "MeshRetry",
                "MeshCircuitBreaker", "MeshHealthCheck", "MeshFaultInjection", "MeshRateLimit",
                "MeshAccessLog", "MeshTrace", "MeshLoadBalancingStrategy"]
    missing = [t for t in required if t not in descriptors]
    assert not missing, "GET /_resources lacks %s" % missing
    for name, d in descriptors.items():
        for k in ("name", "path", "scope"):
            assert k in d, "descriptor of %s lacks %r: %r" % (name, k, d)
        assert str(d["scope"]).lower() in ("global", "mesh"), d
    assert descriptors["Mesh"]["path"].strip("/") == "meshes"
    assert str(descriptors["Mesh"]["scope"]).lower() == "global"
    assert str(descriptors["Dataplane"]["scope"]).lower() == "mesh"
    assert descriptors["MeshTrafficPermission"]["path"].strip("/") == "meshtrafficpermissions"


def test_every_writable_type_has_an_example(descriptors):
    writable = [n for n, d in descriptors.items() if not d.get("readOnly")]
    missing = [n for n in writable if n not in examples.known_types()]
    assert not missing, ("writable types without an example in tests/e2e/examples.py "
                         "(add one): %s" % missing)


def test_default_mesh_created(cp):
    status, body = cp.get("/meshes/default")
    assert status == 200, body
    assert body["type"] == "Mesh" and body["name"] == "default"


def test_default_mesh_not_created_when_skipped(kuma_cp):
    c = kuma_cp(env=SKIP_MESH)
    status, body = c.get("/meshes/default")
    assert status == 404, body
    status, body = c.get("/meshes")
    assert status == 200 and body["total"] == 0 and body["items"] == [], body


# ---------------------------------------------------------------------------- CRUD per type

@pytest.mark.parametrize("type_name", examples.known_types())
def test_crud(cp, descriptors, type_name):
    if type_name not in descriptors:
        required = set(examples.known_types()) - {"ZoneIngress", "ZoneEgress",
                                                  "HostnameGenerator", "MeshService",
                                                  "MeshExternalService",
                                                  "MeshMultiZoneService", "Workload",
                                                  "MeshTrust", "ExternalService"}
        if type_name in required:
            pytest.fail("%s is not listed by GET /_resources" % type_name)
        pytest.skip("%s is not registered in this kuma-cp" % type_name)
    desc = descriptors[type_name]
    if desc.get("readOnly"):
        pytest.skip("%s is read-only" % type_name)
    doc = examples.example(type_name, mesh="default", name="crud-" + type_name.lower())
    url = url_of(desc, doc)

    status, body = cp.put(url, doc)
    assert status == 201, "PUT %s (create) -> %d %r" % (url, status, body)
    status, got = cp.get(url)
    assert status == 200, got
    assert got["type"] == type_name and got["name"] == doc["name"], got
    if "mesh" in doc:
        assert got.get("mesh") == doc["mesh"], got
    for k in ("creationTime", "modificationTime"):
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got.get(k, "")), got
    want = {k: v for k, v in doc.items() if k not in ("type", "name", "mesh")}
    diff = is_subset(want, got)
    assert diff is None, "GET %s does not return what was PUT: %s\n%s" % (
        url, diff, json.dumps(got, indent=1))

    doc2 = dict(doc, labels={"e2e": "v2"})
    status, body = cp.put(url, doc2)
    assert status == 200, "PUT %s (update) -> %d %r" % (url, status, body)
    status, got2 = cp.get(url)
    assert status == 200, got2
    assert (got2.get("labels") or {}).get("e2e") == "v2", got2
    assert got2["creationTime"] == got["creationTime"], (got, got2)

    lurl = list_url_of(desc)
    status, lst = cp.get(lurl + "?size=1000")
    assert status == 200, lst
    assert doc["name"] in [i["name"] for i in lst["items"]], lst
    assert lst["total"] >= 1

    status, body = cp.delete(url)
    assert status == 200, "DELETE %s -> %d %r" % (url, status, body)
    status, body = cp.get(url)
    assert status == 404, body
    assert_error_shape(body, 404)
    status, body = cp.delete(url)
    assert status == 404, body


def test_get_unknown_type_and_resource(cp):
    status, body = cp.get("/meshes/default/dataplanes/nope")
    assert status == 404
    assert_error_shape(body, 404)
    status, body = cp.get("/meshes/default/no-such-types")
    assert status == 404, body
    status, body = cp.get("/meshes/no-such-mesh/dataplanes/x")
    assert status == 404, body


# ---------------------------------------------------------------------------- pagination

def test_pagination(kuma_cp):
    c = kuma_cp(env=SKIP_MESH)
    names = ["page-%d" % i for i in range(5)]
    for n in names:
        status, body = c.put("/meshes/" + n, {"type": "Mesh", "name": n})
        assert status == 201, body
    status, body = c.get("/meshes?size=2")
    assert status == 200, body
    assert body["total"] == 5 and len(body["items"]) == 2, body
    assert body["next"], body
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(body["next"]).query)
    assert q.get("size") == ["2"], body["next"]
    seen = [i["name"] for i in body["items"]]
    nxt, pages = body["next"], 1
    while nxt:
        u = urllib.parse.urlsplit(nxt)
        status, body = c.get(u.path + "?" + u.query)
        assert status == 200, body
        assert body["total"] == 5
        seen += [i["name"] for i in body["items"]]
        nxt, pages = body["next"], pages + 1
        assert pages <= 5, "pagination does not end"
    assert sorted(seen) == names and len(seen) == 5, seen
    assert pages == 3
    status, body = c.get("/meshes?size=2&offset=4")
    assert status == 200 and [i["name"] for i in body["items"]] == ["page-4"], body
    assert body["next"] is None, body
    status, body = c.get("/meshes?size=0")
    assert status in (200, 400), body
    for q, field in (("size=abc", "size"), ("size=2000", "size"), ("offset=abc", None)):
        status, body = c.get("/meshes?" + q)
        assert status == 400, (q, body)
        assert_error_shape(body, 400)
        if field:
            assert field in fields_of(body), (q, body)


# ---------------------------------------------------------------------------- validation

def dp(name, mesh="default", **over):
    d = examples.example("Dataplane", mesh=mesh, name=name)
    d.update(over)
    return d


def test_validation_missing_service_tag(cp):
    d = dp("bad-1", networking={"address": "10.0.0.2",
                                "inbound": [{"port": 8080, "tags": {"app": "x"}}]})
    status, body = cp.put("/meshes/default/dataplanes/bad-1", d)
    assert status == 400, body
    assert_error_shape(body, 400)
    f = fields_of(body)
    assert any(x and x.startswith("networking.inbound[0].tags") for x in f), body
    for p in body["invalid_parameters"]:
        assert p.get("reason"), body


def test_validation_several_errors_and_paths(cp):
    d = dp("bad-2", networking={"address": "",
                                "inbound": [{"port": 70000,
                                             "tags": {"kuma.io/service": "web"}}]})
    status, body = cp.put("/meshes/default/dataplanes/bad-2", d)
    assert status == 400, body
    f = fields_of(body)
    assert "networking.address" in f, body
    assert "networking.inbound[0].port" in f, body


def test_validation_name_mismatch(cp):
    status, body = cp.put("/meshes/default/dataplanes/url-name", dp("body-name"))
    assert status == 400, body
    assert "name" in fields_of(body), body


def test_validation_policy(cp):
    bad = {"type": "MeshTrafficPermission", "mesh": "default", "name": "bad-mtp",
           "spec": {"targetRef": {"kind": "Nope"},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Maybe"}}]}}
    status, body = cp.put("/meshes/default/meshtrafficpermissions/bad-mtp", bad)
    assert status == 400, body
    assert_error_shape(body, 400)
    f = fields_of(body)
    assert any(x and x.startswith("spec.targetRef") for x in f), body
    assert any(x and x.startswith("spec.from[0].default.action") for x in f), body


def test_type_mismatch_with_url(cp):
    d = dp("typed")
    d["type"] = "Mesh"
    status, body = cp.put("/meshes/default/dataplanes/typed", d)
    assert status == 400, body


def test_mesh_not_found(cp):
    """Kuma answers 400 'Mesh is not found' with field `mesh` (not 409)."""
    status, body = cp.put("/meshes/ghost/dataplanes/dp-x", dp("dp-x", mesh="ghost"))
    assert status == 400, body
    assert_error_shape(body, 400)
    assert body["detail"] == "Mesh is not found", body
    params = body.get("invalid_parameters") or []
    assert {"field": "mesh", "reason": "mesh of name ghost is not found"} in [
        {"field": p.get("field"), "reason": p.get("reason")} for p in params], body


def test_malformed_json(cp):
    for raw in (b"{not json", b"[1,2", b"\"just a string\"", b"", b"\xff\xfe{}"):
        status, _, data = helpers.http_request("PUT", cp.api + "/meshes/default/dataplanes/mj",
                                               raw)
        assert status == 400, (raw, status, data)
        body = json.loads(data)
        assert_error_shape(body, 400)
    assert cp.running()


def test_huge_body(cp):
    """A body above the limit gets 413 (or 400), never a crash or a hang."""
    big = b'{"type":"Dataplane","name":"huge","mesh":"default","x":"' + b"a" * (8 << 20) + b'"}'
    s = socket.create_connection(("127.0.0.1", cp.ports["api"]), timeout=10)
    try:
        s.sendall(b"PUT /meshes/default/dataplanes/huge HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(big))
        try:
            s.sendall(big)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading it all
        resp = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                resp += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", resp)
    assert m, "no HTTP answer to a 8 MiB body: %r" % resp[:200]
    assert int(m.group(1)) in (413, 400), resp[:500]
    assert cp.running()
    assert cp.get("/meshes/default")[0] == 200


def test_unknown_fields_rejected_or_ignored(cp):
    d = dp("extra-field")
    d["networking"]["bogus"] = 1
    status, body = cp.put("/meshes/default/dataplanes/extra-field", d)
    assert status in (201, 400), body
    cp.delete("/meshes/default/dataplanes/extra-field")


def test_concurrent_updates_never_lost_or_crash(cp):
    """REST PUT carries no version, so a stale update cannot be expressed directly; many
    concurrent PUTs of one resource must each get 200/201 (or 409), exactly one 201, and the
    final state must be one of the writes."""
    url = "/meshes/default/dataplanes/race"
    results, lock = [], threading.Lock()

    def writer(i):
        d = dp("race")
        d["networking"]["inbound"][0]["tags"]["writer"] = str(i)
        st, _ = api("PUT", cp.api + url, d)
        with lock:
            results.append(st)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s in (200, 201, 409) for s in results), results
    assert results.count(201) == 1, results
    status, got = cp.get(url)
    assert status == 200
    w = got["networking"]["inbound"][0]["tags"]["writer"]
    assert w in {str(i) for i in range(24)}
    cp.delete(url)


# ---------------------------------------------------------------------------- ownership

def test_delete_mesh_deletes_owned(kuma_cp):
    c = kuma_cp(env=SKIP_MESH)
    assert c.put("/meshes/doomed", {"type": "Mesh", "name": "doomed"})[0] == 201
    assert c.put("/meshes/doomed/dataplanes/dp-1", dp("dp-1", mesh="doomed"))[0] == 201
    mtp = examples.example("MeshTrafficPermission", mesh="doomed", name="mtp-1")
    assert c.put("/meshes/doomed/meshtrafficpermissions/mtp-1", mtp)[0] == 201
    sec = examples.example("Secret", mesh="doomed", name="sec-1")
    assert c.put("/meshes/doomed/secrets/sec-1", sec)[0] == 201
    assert c.put("/meshes/keep", {"type": "Mesh", "name": "keep"})[0] == 201
    assert c.put("/meshes/keep/dataplanes/dp-1", dp("dp-1", mesh="keep"))[0] == 201

    status, body = c.delete("/meshes/doomed")
    assert status == 200, body
    assert c.get("/meshes/doomed")[0] == 404
    for u in ("/meshes/doomed/dataplanes/dp-1", "/meshes/doomed/meshtrafficpermissions/mtp-1",
              "/meshes/doomed/secrets/sec-1"):
        assert c.get(u)[0] == 404, u
    status, body = c.get("/dataplanes")
    if status == 200:
        assert [(i["mesh"], i["name"]) for i in body["items"]] == [("keep", "dp-1")], body
    # a mesh of the same name starts empty
    assert c.put("/meshes/doomed", {"type": "Mesh", "name": "doomed"})[0] == 201
    status, body = c.get("/meshes/doomed/dataplanes")
    assert status == 200 and body["total"] == 0, body
    assert c.get("/meshes/keep/dataplanes/dp-1")[0] == 200


def test_dataplanes_insights(cp):
    assert cp.put("/meshes/default/dataplanes/ov-1", dp("ov-1"))[0] == 201
    try:
        status, body = cp.get("/meshes/default/dataplanes+insights")
        assert status == 200, body
        assert {"total", "items", "next"} <= set(body), body
        item = [i for i in body["items"] if i["name"] == "ov-1"]
        assert item and "dataplane" in item[0], body
        assert item[0]["dataplane"]["networking"]["address"] == "10.0.0.1", item
    finally:
        cp.delete("/meshes/default/dataplanes/ov-1")


# ---------------------------------------------------------------------------- diagnostics

def test_ready_healthy(cp):
    for p in ("/ready", "/healthy"):
        status, _, _ = helpers.http_request("GET", cp.diag + p)
        assert status == 200, p


def test_metrics_store_counters_and_resource_counts(cp):
    before = parse_metrics(cp.metrics())
    assert before, "GET /metrics is empty"
    for i in range(3):
        assert cp.put("/meshes/default/dataplanes/met-%d" % i, dp("met-%d" % i))[0] == 201
        assert cp.get("/meshes/default/dataplanes/met-%d" % i)[0] == 200
    after = parse_metrics(cp.metrics())

    # store operation counters: some metric about the store grew
    def store_total(m):
        return sum(v for (n, _), v in m.items() if "store" in n and not n.endswith("_bucket"))
    assert store_total(after) > store_total(before), "no store metric changed:\n%s" % (
        cp.metrics()[:3000])

    def op_count(m, op):
        return sum(v for (n, lb), v in m.items()
                   if "store" in n and "error" not in n and dict(lb).get("operation") == op)
    assert op_count(after, "create") - op_count(before, "create") >= 3, cp.metrics()[:3000]
    assert op_count(after, "get") - op_count(before, "get") >= 3, cp.metrics()[:3000]

    # resource count per type: a sample labelled with the type Dataplane grew by 3
    def dp_samples(m):
        return {(n, lb): v for (n, lb), v in m.items()
                if "Dataplane" in dict(lb).values() and not n.endswith("_bucket")}
    b, a = dp_samples(before), dp_samples(after)
    grew = [k for k in a if a[k] - b.get(k, 0.0) == 3.0]
    assert grew, "no metric labelled Dataplane grew by 3:\n%s" % "\n".join(
        "%s %s %s" % (n, dict(lb), v) for (n, lb), v in a.items())
    for i in range(3):
        cp.delete("/meshes/default/dataplanes/met-%d" % i)
    final = dp_samples(parse_metrics(cp.metrics()))
    assert any(final.get(k) == b.get(k, 0.0) for k in grew), "resource count did not go down"


# ---------------------------------------------------------------------------- process

def test_second_instance_on_same_ports_fails(kuma_cp):
    a = kuma_cp()
    b = kuma_cp(ports=a.ports, wait=False)
    rc = b.wait_exit(10)
    assert rc is not None, "second kuma-cp on the same ports did not exit:\n" + b.logs
    assert rc != 0
    log = b.logs.lower()
    assert "in use" in log or "bind" in log, b.logs
    assert str(a.ports["api"]) in b.logs or str(a.ports["diag"]) in b.logs, b.logs
    assert a.running() and a.get("/")[0] == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_clean_exit(kuma_cp, sig):
    c = kuma_cp()
    assert c.put("/meshes/default/dataplanes/d1", dp("d1"))[0] == 201
    assert c.stop(sig, timeout=10) == 0, c.logs


def test_invalid_config_lists_every_problem(kuma_cp, free_port):
    r = kuma_cp.run(["run"], env={"KUMA_API_SERVER_HTTP_PORT": "abc",
                                   "KUMA_STORE_TYPE": "mongo",
                                   "KUMA_DIAGNOSTICS_SERVER_PORT": str(free_port()),
                                   "KUMA_DP_SERVER_PORT": str(free_port()),
                                   "KUMA_API_SERVER_HTTPS_ENABLED": "false"}, timeout=15)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "KUMA_API_SERVER_HTTP_PORT" in out or "apiServer.http.port" in out, out
    assert "KUMA_STORE_TYPE" in out or "store.type" in out, out
    assert "mongo" in out, out


def test_invalid_config_file(kuma_cp, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("store:\n  type: memory\napiServer:\n  http:\n    port: 99999\n")
    r = kuma_cp.run(["run", "--config-file", str(cfg)], timeout=15)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "apiServer.http.port" in out or "KUMA_API_SERVER_HTTP_PORT" in out, out
    cfg.write_text("store: [unclosed\n")
    r = kuma_cp.run(["run", "--config-file", str(cfg)], timeout=15)
    assert r.returncode != 0, r.stdout + r.stderr
    r = kuma_cp.run(["run", "--config-file", str(tmp_path / "missing.yaml")], timeout=15)
    assert r.returncode != 0


def test_config_file_is_used(kuma_cp, free_port):
    port = free_port()
    kuma_cp(config="apiServer:\n  http:\n    port: %d\n" % port,
                env={"KUMA_API_SERVER_HTTP_PORT": None})
    status, _ = api("GET", "http://127.0.0.1:%d/" % port)
    assert status == 200


def test_version_command(kuma_cp):
    r = kuma_cp.run(["version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "kuma-cp version printed nothing"


def test_version_matches_api(kuma_cp):
    c = kuma_cp()
    r = kuma_cp.run(["version"])
    status, body = c.get("/")
    assert body["version"] in r.stdout, (r.stdout, body)


def test_help(kuma_cp):
    r = kuma_cp.run(["--help"])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for word in ("run", "migrate", "version"):
        assert word in out, out
    r = kuma_cp.run(["run", "--help"])
    assert r.returncode == 0 and "--config-file" in r.stdout + r.stderr
    r = kuma_cp.run(["no-such-command"])
    assert r.returncode != 0
