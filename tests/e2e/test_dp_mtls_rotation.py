"""Identity certificate rotation under load (issue 5): kuma-cp with the builtin CA and a short
dpCert.rotation.expiration, two kuma-dp sidecars (web -> backend) over mTLS with an allow-all
TrafficPermission. While the certificates rotate several times, a keep-alive HTTP load, a
stream of new HTTP connections and a stream of new TCP connections (each one a fresh TLS
handshake between the sidecars) run through the pair: not a single request may fail, the
serial of every sidecar's identity certificate (from its admin /config_dump "sds" section)
must change at least 3 times, and the CP's DataplaneInsight must count the regenerations.

Timing: the CP backdates notBefore by 10 s, so with expiration E the lifetime is E + 10 s and
the rotation point (4/5 of it) comes 0.8 * E - 2 s after each issue: "8s" -> every ~4.4 s.
Loopback only, every wait bounded; the whole test takes about 30 s."""
import base64
import http.client
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "dp"))

import dpmesh  # noqa: E402
import helpers  # noqa: E402
from dpmesh import wait_for  # noqa: E402

EXPIRATION = "8s"
LOAD_SECONDS = 20.0
MIN_ROTATIONS = 3
SDS_IDENTITY = "identity_cert:secret:default"

ALLOW_ALL = {"_path": "traffic-permissions", "type": "TrafficPermission", "mesh": "default",
             "name": "allow-all-rotation", "sources": [{"match": {"kuma.io/service": "*"}}],
             "destinations": [{"match": {"kuma.io/service": "*"}}]}


@pytest.fixture
def mesh(kuma_cp, tmp_path):
    m = dpmesh.Mesh(kuma_cp, tmp_path)
    yield m
    m.close()


def _enable_mtls(mesh):
    st, resp = mesh.api("PUT", "/meshes/default", {
        "type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1",
                 "backends": [{"name": "ca-1", "type": "builtin",
                               "dpCert": {"rotation": {"expiration": EXPIRATION}}}]}})
    assert st in (200, 201), (st, resp)


def _find_pem(obj):
    """The first PEM certificate anywhere inside <obj> (a DataSource's inline_string, or its
    inline_bytes, base64 in the protobuf JSON mapping)."""
    if isinstance(obj, str):
        if "-----BEGIN CERTIFICATE-----" in obj:
            return obj
        try:
            raw = base64.b64decode(obj, validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        return raw if "-----BEGIN CERTIFICATE-----" in raw else None
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            p = _find_pem(v)
            if p:
                return p
    return None


def _serial(pem):
    """The serial number (hex) of the first certificate of <pem>, or None."""
    try:
        r = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(),
                           capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = r.stdout.decode("ascii", "replace").strip()
    return out.partition("=")[2] or None if r.returncode == 0 else None


def _identity_serial(sc):
    """Serial of the identity certificate <sc> holds right now (admin /config_dump)."""
    try:
        dump = sc.config_dump()
    except ValueError:
        return None
    if not dump:
        return None
    entry = (dump.get("sds") or {}).get(SDS_IDENTITY)
    pem = _find_pem(entry)
    return _serial(pem) if pem else None


def _handshakes(sc):
    return sum(v for k, v in sc.stats().items() if k.endswith(".ssl.handshake"))


class NewConnLoop:
    """One thread opening a new connection per request until stop(): HTTP GET with
    "Connection: close" (kind "http") or a TCP echo round trip (kind "tcp"). Every request that
    does not complete is a failure; nothing is retried."""

    def __init__(self, port, kind, pause=0.005, timeout=5.0):
        self.port, self.kind, self.pause, self.timeout = port, kind, pause, timeout
        self.ok = 0
        self.failed = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, n):
        if self.kind == "http":
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", "/echo", headers={"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or not body.startswith(b"{"):
                    return "status %d body %r" % (r.status, body[:100])
                return None
            finally:
                conn.close()
        payload = b"rotation-%d-" % n * 50
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
        return None if got == payload else "echo %d of %d bytes" % (len(got), len(payload))

    def _run(self):
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                err = self._one(n)
            except (OSError, http.client.HTTPException) as e:
                err = "%s: %s" % (type(e).__name__, e)
            if err:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append((time.monotonic(), err))
            else:
                self.ok += 1
            time.sleep(self.pause)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 2)
        return self

    def summary(self):
        return "%s: ok=%d failed=%d errors=%s" % (self.kind, self.ok, self.failed, self.errors)


def _insight_mtls(mesh, name):
    st, body = mesh.api("GET", "/meshes/default/dataplanes+insights/%s" % name)
    if st != 200:
        return {}
    return (body.get("dataplaneInsight") or {}).get("mTLS") or {}


def test_cert_rotation_under_load_zero_failures(mesh):
    mesh.apply(ALLOW_ALL)
    http_app = mesh.http_backend("http-app")
    tcp_app = mesh.tcp_backend("echo-app")
    out_http, out_tcp = helpers.free_port(), helpers.free_port()
    in_http, in_tcp = helpers.free_port(), helpers.free_port()
    be = mesh.sidecar("backend-1", inbounds=[(in_http, http_app, "backend", "http"),
                                             (in_tcp, tcp_app, "echo", "tcp")])
    web = mesh.sidecar("web-1", inbounds=[(helpers.free_port(), helpers.free_port(), "web",
                                           "http")],
                       outbounds=[(out_http, "backend"), (out_tcp, "echo")])
    assert dpmesh.wait_port(out_http) and dpmesh.wait_port(out_tcp), mesh.logs()

    _enable_mtls(mesh)

    def tls_on():
        st, _ = dpmesh.get("http://127.0.0.1:%d/echo" % out_http)
        return (st == 200 and _identity_serial(web) and _identity_serial(be)
                and _handshakes(web) > 0 and _handshakes(be) > 0)
    assert wait_for(tls_on, 20, 0.2), (web.stats(), be.stats(), mesh.logs())
    # the inbound really is TLS now: plaintext straight to it is refused
    with socket.create_connection(("127.0.0.1", in_tcp), timeout=3) as s:
        s.settimeout(3)
        try:
            s.sendall(b"plaintext")
            s.shutdown(socket.SHUT_WR)
            leaked = s.recv(100)
        except OSError:
            leaked = b""
    assert leaked != b"plaintext"

    regen0 = {n: _insight_mtls(mesh, n).get("certificateRegenerations", 0)
              for n in ("web-1", "backend-1")}
    serials = {"web": [_identity_serial(web)], "backend": [_identity_serial(be)]}
    hs0 = (_handshakes(web), _handshakes(be))

    keepalive = dpmesh.LoadLoop(out_http, conns=4, pause=0.002).start()
    new_http = NewConnLoop(out_http, "http").start()
    new_tcp = NewConnLoop(out_tcp, "tcp").start()
    t_end = time.monotonic() + LOAD_SECONDS
    try:
        while time.monotonic() < t_end:
            for key, sc in (("web", web), ("backend", be)):
                s = _identity_serial(sc)
                if s and s != serials[key][-1]:
                    serials[key].append(s)
            time.sleep(0.25)
    finally:
        keepalive.stop()
        new_http.stop()
        new_tcp.stop()
    hs1 = (_handshakes(web), _handshakes(be))
    regen1 = {n: _insight_mtls(mesh, n).get("certificateRegenerations", 0)
              for n in ("web-1", "backend-1")}

    report = "%s\n%s\n%s\nserials=%s regenerations %s -> %s handshakes %s -> %s" % (
        keepalive.summary(), new_http.summary(), new_tcp.summary(), serials, regen0, regen1,
        hs0, hs1)
    print(report)
    # zero failed requests, and a real amount of traffic in each stream
    assert keepalive.failed == 0 and new_http.failed == 0 and new_tcp.failed == 0, (
        report + "\n" + mesh.logs())
    assert keepalive.ok >= 500 and new_http.ok >= 100 and new_tcp.ok >= 100, report
    # every sidecar's identity certificate changed at least MIN_ROTATIONS times
    for key in ("web", "backend"):
        assert len(set(serials[key])) >= MIN_ROTATIONS + 1, report
    # the CP counted them
    for n in ("web-1", "backend-1"):
        assert regen1[n] - regen0[n] >= MIN_ROTATIONS, report
    # the new connections were TLS handshakes between the sidecars (with the rotated certs)
    assert hs1[0] - hs0[0] >= 100 and hs1[1] - hs0[1] >= 100, report
