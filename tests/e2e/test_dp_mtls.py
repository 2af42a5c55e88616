"""mTLS between two kuma-dp sidecars (issue 5, data plane side): kuma-cp with the builtin CA on
the mesh, a TrafficPermission allowing everyone, traffic through the sidecar pair is TLS on the
wire (a plaintext client and a TLS client without a mesh certificate are refused at the
inbound port), removing the permission refuses new connections within a second, PERMISSIVE
mode accepts plaintext at the inbound."""
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
