"""mTLS between two kuma-dp sidecars (issue 5, data plane side): kuma-cp with the builtin CA on
the mesh, a TrafficPermission allowing everyone, traffic through the sidecar pair is TLS on the
wire (a plaintext client and a TLS client without a mesh certificate are refused at the
inbound port), removing the permission refuses new connections within a second, PERMISSIVE
mode accepts plaintext at the inbound; HTTP services answer 403 per request without a
permission and follow permission changes within a second."""
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "dp"))

import dpmesh  # noqa: E402
import helpers  # noqa: E402
from dpmesh import wait_for  # noqa: E402


@pytest.fixture
def mesh(kuma_cp, tmp_path):
    m = dpmesh.Mesh(kuma_cp, tmp_path)
    yield m
    m.close()


ALLOW_ALL = {"_path": "traffic-permissions", "type": "TrafficPermission", "mesh": "default",
             "name": "allow-all-e2e", "sources": [{"match": {"kuma.io/service": "*"}}],
             "destinations": [{"match": {"kuma.io/service": "*"}}]}


def _mesh_mtls(mesh, mode="STRICT"):
    st, resp = mesh.api("PUT", "/meshes/default", {
        "type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1",
                 "backends": [{"name": "ca-1", "type": "builtin", "mode": mode}]}})
    assert st in (200, 201), (st, resp)


def _roundtrip(port, payload=b"ping", timeout=3.0):
    """The echo of <payload> through 127.0.0.1:<port>, or None when the connection fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                b = s.recv(65536)
                if not b:
                    return None
                got += b
            return got
    except OSError:
        return None


def _pair(mesh, svc="echo"):
    app = mesh.tcp_backend("echo-app")
    out_port, in_port = helpers.free_port(), helpers.free_port()
    be = mesh.sidecar("echo-1", inbounds=[(in_port, app, svc, "tcp")])
    web = mesh.sidecar("web", inbounds=[(helpers.free_port(), helpers.free_port(), "web", "tcp")],
                       outbounds=[(out_port, svc)])
    assert dpmesh.wait_port(out_port), mesh.logs()
    return web, be, out_port, in_port, app


def _stat(sc, name):
    return sc.stats().get(name, 0)


def _tls_handshakes(web, be, in_port):
    return (_stat(web, "cluster.echo.ssl.handshake"),
            _stat(be, "listener.127.0.0.1_%d.ssl.handshake" % in_port))


def test_mtls_between_sidecars_and_permissions(mesh):
    mesh.apply(ALLOW_ALL)
    web, be, out, inp, app = _pair(mesh)
    assert wait_for(lambda: _roundtrip(out) == b"ping", 15), mesh.logs()
    before = _tls_handshakes(web, be, inp)
    assert before == (0, 0), before

    _mesh_mtls(mesh)
    # the sidecars get their certificates over SDS and switch to TLS
    def tls_on():
        if _roundtrip(out) != b"ping":
            return False
        h = _tls_handshakes(web, be, inp)
        return h[0] > 0 and h[1] > 0
    assert wait_for(tls_on, 20, 0.2), (_tls_handshakes(web, be, inp), mesh.logs())
    dump = be.config_dump()
    assert "identity_cert:secret:default" in dump["sds"], dump.get("sds")
    assert dump["sds"]["identity_cert:secret:default"]["resource"]["tls_certificate"][
        "private_key"] == "[redacted]"

    # many connections, several payloads
    for i in range(20):
        p = b"payload-%d-" % i * 100
        assert _roundtrip(out, p) == p

    # on the wire: a plaintext client is refused at the inbound port
    assert _roundtrip(inp, b"plaintext") is None
    # ... and so is a TLS client without a mesh certificate
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ok = False
    try:
        with socket.create_connection(("127.0.0.1", inp), timeout=3) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"x")
                ok = s.recv(10) == b"x"
    except (OSError, ssl.SSLError):
        ok = False
    assert not ok
    # the backend application itself still answers plaintext (it is not behind TLS)
    assert _roundtrip(app) == b"ping"

    # removing the permission: refused within a second
    st, resp = mesh.api("DELETE", "/meshes/default/traffic-permissions/allow-all-e2e")
    assert st == 200, (st, resp)
    t0 = time.monotonic()
    refused = wait_for(lambda: _roundtrip(out, timeout=1.0) is None, 5, 0.05)
    took = time.monotonic() - t0
    assert refused, mesh.logs()
    assert took <= 1.5, "refused only after %.2f s" % took
    assert wait_for(lambda: _stat(be, "inbound_127_0_0_1_%d.rbac.denied" % inp) > 0
                    or any(k.endswith("rbac.denied") and v > 0 for k, v in be.stats().items()),
                    5), be.stats()

    # and allowed again when it comes back
    mesh.apply(ALLOW_ALL)
    assert wait_for(lambda: _roundtrip(out) == b"ping", 5, 0.05), mesh.logs()


def test_mtls_permissive_accepts_plaintext(mesh):
    mesh.apply(ALLOW_ALL)
    web, be, out, inp, _ = _pair(mesh)
    _mesh_mtls(mesh, "PERMISSIVE")
    assert wait_for(lambda: _roundtrip(out) == b"ping" and
                    _tls_handshakes(web, be, inp)[1] > 0, 20, 0.2), mesh.logs()
    # plaintext straight to the inbound is fine in PERMISSIVE
    assert _roundtrip(inp, b"plain") == b"plain"


def test_mtls_http_through_the_pair(mesh):
    """An HTTP service: the HTTP connection managers on both sides run over the TLS pipes."""
    mesh.apply(ALLOW_ALL)
    app = mesh.http_backend("http-app")
    out_port, in_port = helpers.free_port(), helpers.free_port()
    be = mesh.sidecar("api-1", inbounds=[(in_port, app, "api", "http")])
    web = mesh.sidecar("web", inbounds=[(helpers.free_port(), helpers.free_port(), "web",
                                         "http")], outbounds=[(out_port, "api")])
    assert dpmesh.wait_port(out_port), mesh.logs()
    _mesh_mtls(mesh)

    def ok():
        st, body = dpmesh.get("http://127.0.0.1:%d/echo" % out_port)
        return st == 200 and _stat(web, "cluster.api.ssl.handshake") > 0
    assert wait_for(ok, 20, 0.2), (web.stats(), mesh.logs())
    for n in (0, 1, 100000, 3 * 1024 * 1024):
        st, body = dpmesh.get("http://127.0.0.1:%d/bytes?n=%d" % (out_port, n), timeout=10)
        assert st == 200 and len(body) == n
    assert any(k.endswith(".ssl.handshake") and v > 0 for k, v in be.stats().items())


def _http_status(port, path="/echo", timeout=1.0):
    st, body = dpmesh.get("http://127.0.0.1:%d%s" % (port, path), timeout=timeout)
    return st, body


def _rbac_stat(sc, counter):
    """The sum of the HTTP RBAC filter's <counter> over the sidecar's connection managers."""
    return sum(v for k, v in sc.stats().items()
               if k.startswith("http.") and k.endswith(".rbac." + counter))


def test_mtls_http_403_without_permission(mesh):
    """HTTP inbounds enforce traffic permissions per request with an HTTP RBAC filter: no
    permission -> 403 "RBAC: access denied"; an allow-all permission -> 200; removing it ->
    403 again in under a second (kept-alive pooled connections between the sidecars follow)."""
    app = mesh.http_backend("http-app")
    out_port, in_port = helpers.free_port(), helpers.free_port()
    be = mesh.sidecar("api-1", inbounds=[(in_port, app, "api", "http")])
    web = mesh.sidecar("web", inbounds=[(helpers.free_port(), helpers.free_port(), "web",
                                         "http")], outbounds=[(out_port, "api")])
    assert dpmesh.wait_port(out_port), mesh.logs()
    # no permission at all: 200 without mTLS (no identity, no RBAC) ...
    assert wait_for(lambda: _http_status(out_port)[0] == 200, 15), mesh.logs()
    _mesh_mtls(mesh)
    # ... and 403 once mTLS is on
    assert wait_for(lambda: _http_status(out_port)[0] == 403, 20, 0.1), (be.stats(),
                                                                         mesh.logs())
    assert wait_for(lambda: _stat(web, "cluster.api.ssl.handshake") > 0, 5), web.stats()
    st, body = _http_status(out_port)
    assert st == 403 and b"RBAC: access denied" in body, (st, body)
    assert _rbac_stat(be, "denied") >= 2, be.stats()
    # plaintext HTTP straight to the inbound is still refused (no TLS, no answer)
    assert _http_status(in_port)[0] is None

    mesh.apply(ALLOW_ALL)
    assert wait_for(lambda: _http_status(out_port)[0] == 200, 5, 0.05), mesh.logs()
    st, body = _http_status(out_port, "/echo")
    assert st == 200, (st, body)
    assert _rbac_stat(be, "allowed") >= 1, be.stats()

    # removing the permission: 403 again, measured from the moment the DELETE returned
    st, resp = mesh.api("DELETE", "/meshes/default/traffic-permissions/allow-all-e2e")
    assert st == 200, (st, resp)
    t0 = time.monotonic()
    took = None
    seen = []
    while time.monotonic() - t0 < 5.0:
        st, _ = _http_status(out_port, timeout=1.0)
        seen.append(st)
        if st == 403:
            took = time.monotonic() - t0
            break
        time.sleep(0.05)
    assert took is not None, (seen[-5:], mesh.logs())
    print("permission removed: 403 after %.3f s (%d polls)" % (took, len(seen)))
    assert took < 1.0, "403 only after %.3f s (%d polls)" % (took, len(seen))
    # every answer before the change was seen was a clean 200 (no errors in between)
    assert all(s == 200 for s in seen[:-1]), seen
