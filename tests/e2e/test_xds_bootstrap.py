"""POST /bootstrap of the DP server over HTTP/1.1 and HTTP/2, on the plaintext port (h2c by
prior knowledge) and on the TLS port (ALPN h2, self-signed certificate from the work dir), with
curl: the answer is an Envoy bootstrap for "<mesh>.<name>" whose ADS cluster points at the DP
server, an inline Dataplane registers it, bad requests get 4xx JSON naming the field."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))

import harness  # noqa: E402


def _curl(args, body, timeout=15):
    """curl -> (http status, http version, parsed JSON body)."""
    r = subprocess.run(["curl", "-sS", "-m", "10", "-X", "POST", "-H",
                        "content-type: application/json", "--data-binary", "@-",
                        "-w", "\n%{http_code} %{http_version}"] + args,
                       input=body if isinstance(body, str) else json.dumps(body),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, "curl %s failed: %s" % (args, r.stderr)
    text, _, tail = r.stdout.rpartition("\n")
    code, ver = tail.split()
    try:
        js = json.loads(text) if text.strip() else None
    except ValueError:
        js = text
    return int(code), ver, js


@pytest.fixture
def dpcp(xds):
    x = xds()
    x.crt = x.cp.workdir / "kuma" / "dp-server.crt"
    assert x.crt.exists(), "no generated DP server certificate at %s" % x.crt
    x.tls_port = x.cp.ports["dp"]
    x.ways = {
        "http1.1 plaintext": ["--http1.1", "http://127.0.0.1:%d/bootstrap" % x.plain_port],
        "h2c plaintext": ["--http2-prior-knowledge",
                          "http://127.0.0.1:%d/bootstrap" % x.plain_port],
        "h2 tls": ["--http2", "--cacert", str(x.crt),
                   "https://127.0.0.1:%d/bootstrap" % x.tls_port],
        "http1.1 tls": ["--http1.1", "--cacert", str(x.crt),
                        "https://127.0.0.1:%d/bootstrap" % x.tls_port],
    }
    return x


def _request(name, port=10100, inline=True):
    req = {"mesh": "default", "name": name, "proxyType": "dataplane", "dataplaneToken": "",
           "version": {"kumaDp": {"version": "2.14.3"}}}
    if inline:
        req["dataplaneResource"] = json.dumps(harness.echo_dataplane(name, port))
    return req


@pytest.mark.parametrize("way", ["http1.1 plaintext", "h2c plaintext", "h2 tls", "http1.1 tls"])
def test_bootstrap_registers_dataplane(dpcp, way):
    x = dpcp
    name = "dp-" + way.replace(" ", "-").replace(".", "")
    code, ver, js = _curl(x.ways[way], _request(name))
    assert code == 200, (code, js)
    assert ver == ("2" if way.startswith("h2") else "1.1"), ver
    b = js["bootstrap"]
    assert b["node"]["id"] == "default." + name, b["node"]
    assert b["node"]["cluster"] == "echo", b["node"]
    clusters = b["static_resources"]["clusters"]
    ads = [c for c in clusters if c["name"] == "ads_cluster"]
    assert ads, clusters
    sa = ads[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]
    assert sa["port_value"] == x.tls_port, sa  # proxies dial the TLS port
    assert sa["address"] == "127.0.0.1", sa
    assert ads[0]["transport_socket"]["typed_config"]["common_tls_context"][
        "validation_context"]["trusted_ca"]["inline_string"] == x.crt.read_text(), ads[0]
    adsc = b["dynamic_resources"]["ads_config"]
    assert adsc["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "ads_cluster", adsc
    assert adsc["api_type"] in ("GRPC", "DELTA_GRPC"), adsc
    # the inline Dataplane is registered
    st, dp = x.cp.get("/meshes/default/dataplanes/%s" % name)
    assert st == 200, (st, dp)
    assert dp["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "echo", dp
    # a second bootstrap of the same proxy replaces it (no conflict)
    code, _, js = _curl(x.ways[way], _request(name, port=10200))
    assert code == 200, (code, js)
    assert x.cp.get("/meshes/default/dataplanes/%s" % name)[1]["networking"]["inbound"][0][
        "port"] == 10200


def test_bootstrap_without_dataplane(dpcp):
    code, _, js = _curl(dpcp.ways["h2c plaintext"], _request("no-inline", inline=False))
    assert code == 200, js
    assert js["bootstrap"]["node"]["id"] == "default.no-inline"
    assert dpcp.cp.get("/meshes/default/dataplanes/no-inline")[0] == 404


def _fields(js):
    return [p.get("field") for p in (js or {}).get("invalid_parameters", [])]


@pytest.mark.parametrize("way", ["http1.1 plaintext", "h2 tls"])
def test_bootstrap_bad_requests(dpcp, way):
    x = dpcp
    args = x.ways[way]
    bad_dp = harness.echo_dataplane("bad-1", 10100)
    del bad_dp["networking"]["address"]
    cases = [
        ("not json", "{nope", 400, None),
        ("not an object", "[1]", 422, ""),
        ("bad proxyType", dict(_request("p1", inline=False), proxyType="bogus"), 422,
         "proxyType"),
        ("no name", {"mesh": "default"}, 422, "name"),
        ("unparsable dataplaneResource", dict(_request("p2", inline=False),
                                             dataplaneResource="{: ["), 422,
         "dataplaneResource"),
        ("name mismatch", dict(_request("p3"), name="other"), 422, "dataplaneResource.name"),
        ("invalid Dataplane", dict(_request("bad-1", inline=False),
                                   dataplaneResource=json.dumps(bad_dp)), 422,
         "networking.address"),
    ]
    failures = []
    for what, body, want, field in cases:
        code, _, js = _curl(args, body)
        if code != want or not isinstance(js, dict):
            failures.append("%s: got %s %r" % (what, code, js))
            continue
        if field is not None and field not in _fields(js):
            failures.append("%s: field %r not in %r" % (what, field, js))
    code, _, js = _curl(args, _request("p4", inline=False) | {"mesh": "nomesh"})
    if code != 404 or "nomesh" not in json.dumps(js):
        failures.append("unknown mesh: got %s %r" % (code, js))
    assert not failures, "\n".join(failures)
    for n in ("p1", "p2", "p3", "bad-1", "other"):
        assert x.cp.get("/meshes/default/dataplanes/%s" % n)[0] == 404, n
    # GET is refused; kuma-cp is still fine
    r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"] +
                       [a for a in args if a != "-X"][:-1] + [args[-1]],
                       capture_output=True, text=True, timeout=15)
    assert r.stdout == "405", r
    assert x.cp.ready_status() == 200
