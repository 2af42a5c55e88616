"""The proxy engine of kuma-dp end to end: kuma-cp + two kuma-dp sidecars + real backends.

Traffic goes client -> web's outbound listener (127.0.0.1:<port>) -> backend's inbound
listener -> the backend app, for a TCP echo server, an HTTP/1.1 server (keep-alive, chunked,
1 MB bodies), an HTTP/2 server and a gRPC server. Live changes (a second backend instance
added and removed, a MeshLoadBalancingStrategy changed) and a kuma-cp restart happen under a
running keep-alive load that must see zero failed requests. SIGTERM drains: an in-flight
request completes and kuma-dp exits 0 within the drain time. Helpers: tests/e2e/dp/."""
import hashlib
import http.client
import os
import shutil
import signal
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

# HTTP/2 and gRPC proxying (src/dp/http2_proxy.c) is being added: until it is, the two tests
# below run as non-strict xfail (an XPASS in the summary shows they already work). Set this to
# True when the HTTP/2 engine lands, so that they must pass.
H2_LANDED = True
H2_REASON = ("HTTP/2 and gRPC proxying (src/dp/http2_proxy.c) has not landed: the HTTP/2 "
             "codec of an HTTP connection manager is not served yet")


@pytest.fixture
def mesh(kuma_cp, tmp_path):
    m = dpmesh.Mesh(kuma_cp, tmp_path)
    yield m
    m.close()


def _pair(mesh, svc, proto, app_port, drain="1s", backend_name=None, web_name="web"):
    """web (outbound to <svc>) and <backend_name> (inbound <svc> -> app_port). Returns
    (web sidecar, backend sidecar, web's outbound port, backend's inbound port)."""
    out_port = helpers.free_port()
    in_port = helpers.free_port()
    be = mesh.sidecar(backend_name or (svc + "-1"),
                      inbounds=[(in_port, app_port, svc, proto)], drain=drain)
    web = mesh.sidecar(web_name, inbounds=[(helpers.free_port(), helpers.free_port(), "web",
                                            "http")],
                       outbounds=[(out_port, svc)], drain=drain)
    _wait_endpoints(web, svc, 1)
    assert dpmesh.wait_port(out_port), mesh.logs()
    return web, be, out_port, in_port


def _wait_endpoints(sc, cluster, n, timeout=15.0):
    eps = wait_for(lambda: (lambda e: e if len(e) == n and
                            all(v == "healthy" for v in e.values()) else None)(
                                sc.endpoints(cluster)), timeout)
    assert eps, "%s: cluster %s never had %d healthy endpoints: %s\n%s" % (
        sc.name, cluster, n, sc.endpoints(cluster), sc.logs[-3000:])
    return eps


# ---- TCP ----

def _echo_roundtrip(port, payload, chunk=65536):
    """Sends <payload> while reading the echo in another thread, half-closes, reads to EOF."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = bytearray()

    def reader():
        while True:
            b = s.recv(262144)
            if not b:
                return
            got.extend(b)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for i in range(0, len(payload), chunk):
        s.sendall(payload[i:i + chunk])
    s.shutdown(socket.SHUT_WR)
    t.join(20)
    alive = t.is_alive()
    s.close()
    assert not alive, "no EOF after the half-close (%d of %d bytes back)" % (len(got),
                                                                           len(payload))
    return bytes(got)


def test_tcp_echo_through_the_pair(mesh):
    app = mesh.tcp_backend("echo-app")
    web, be, out, _ = _pair(mesh, "echo", "tcp", app)
    assert _echo_roundtrip(out, b"x") == b"x"
    big = os.urandom(8 * 1024 * 1024)
    back = _echo_roundtrip(out, big)
    assert len(back) == len(big) and hashlib.sha256(back).digest() == hashlib.sha256(big).digest()

    # several connections at once, each with its own bytes
    res = {}

    def one(i):
        p = (b"%08d" % i) * 8192 * 4
        res[i] = _echo_roundtrip(out, p) == p
    ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert res == {i: True for i in range(8)}, res
    # both sidecars counted the bytes
    sw, sb = web.stats(), be.stats()
    assert any(k.endswith("rx_bytes_total") and v >= len(big) for k, v in sw.items()), sw
    assert any(k.endswith("rx_bytes_total") and v >= len(big) for k, v in sb.items()), sb


# ---- HTTP/1.1 ----

def test_http1_through_the_pair(mesh):
    app = mesh.http_backend("backend-app")
    web, be, out, _ = _pair(mesh, "backend", "http", app)
    c = http.client.HTTPConnection("127.0.0.1", out, timeout=10)

    # status, body and headers both ways
    c.request("GET", "/echo?a=1", headers={"X-Test": "hello", "Host": "backend.mesh"})
    r = c.getresponse()
    doc = __import__("json").loads(r.read())
    assert r.status == 200
    assert r.getheader("X-Server") == "backend-app"
    assert doc["headers"]["x-test"] == "hello" and doc["path"] == "/echo?a=1"
    local = c.sock.getsockname()

    # keep-alive: 50 requests on the same client connection
    for i in range(50):
        c.request("GET", "/echo", headers={"X-N": str(i)})
        r = c.getresponse()
        assert r.status == 200 and __import__("json").loads(r.read())["headers"]["x-n"] == str(i)
    assert c.sock is not None and c.sock.getsockname() == local, "connection was not kept alive"

    # status codes and HEAD pass through
    for code in (201, 204, 404, 503):
        c.request("GET", "/status?code=%d" % code)
        r = c.getresponse()
        r.read()
        assert r.status == code
    c.request("HEAD", "/bytes?n=1000")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"" and r.getheader("Content-Length") == "1000"

    # 1 MB response, 1 MB request (Content-Length), chunked response, chunked request
    mb = 1024 * 1024
    c.request("GET", "/bytes?n=%d" % mb)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200 and body == dpmesh_pattern(mb)
    up = os.urandom(mb)
    c.request("POST", "/echo", body=up, headers={"Content-Type": "application/x-test"})
    r = c.getresponse()
    assert r.status == 200 and r.read() == up and r.getheader("Content-Type") == \
        "application/x-test"
    c.request("GET", "/chunked?n=300000&k=7")
    r = c.getresponse()
    assert r.status == 200 and r.read() == dpmesh_pattern(300000)

    def gen():
        for i in range(0, len(up), 100000):
            yield up[i:i + 100000]
    c.request("POST", "/echo", body=gen(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    assert r.status == 200 and r.read() == up
    assert c.sock.getsockname() == local, "connection was not kept alive"
    c.close()

    # both sidecars saw the requests
    sw, sb = web.stats(), be.stats()
    assert sw.get("cluster.backend.upstream_rq_total", 0) >= 58, sw
    assert sum(v for k, v in sb.items() if k.endswith("downstream_rq_total")) >= 58, sb


def dpmesh_pattern(n):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "dp"))
    import dp_backends
    return dp_backends.pattern(n)


def test_http1_concurrent_keepalive_load(mesh):
    app = mesh.http_backend("backend-app")
    _, _, out, _ = _pair(mesh, "backend", "http", app)
    load = dpmesh.LoadLoop(out, conns=8, pause=0).start()
    assert load.wait_more(2000, timeout=30), load.summary()
    load.stop()
    assert load.failed == 0, load.summary()
    assert load.reconnects == 8, "keep-alive connections were closed: " + load.summary()


# ---- HTTP/2 and gRPC ----

def _h2_xfail(request):
    """Until the HTTP/2 engine lands the test still runs (XPASS would show it works)."""
    if not H2_LANDED:
        request.applymarker(pytest.mark.xfail(reason=H2_REASON, strict=False))


def test_http2_h2c_through_the_pair(mesh, tmp_path, request):
    nghttpd = shutil.which("nghttpd")
    if nghttpd is None:
        pytest.fail("nghttpd is missing: install the Debian package nghttp2-server",
                    pytrace=False)
    _h2_xfail(request)
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "f").write_bytes(dpmesh_pattern(200000))
    port = helpers.free_port()
    p = dpmesh.harness.LineProc([nghttpd, "--no-tls", "-d", str(docroot),
                                 "--address=127.0.0.1", str(port)], name="nghttpd")
    mesh.backends.append(p)
    assert dpmesh.wait_port(port), p.tail()
    _, _, out, _ = _pair(mesh, "h2", "http2", port)
    r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", str(tmp_path / "got"),
                        "-w", "%{http_code} %{http_version}",
                        "http://127.0.0.1:%d/f" % out], capture_output=True, text=True,
                       timeout=20)
    assert r.stdout == "200 2", (r.stdout, r.stderr, mesh.logs())
    assert (tmp_path / "got").read_bytes() == dpmesh_pattern(200000)


def test_grpc_through_the_pair(mesh, request):
    grpc = pytest.importorskip("grpc", reason="python3-grpcio (make deps-test)")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))
    import pbwire
    _h2_xfail(request)
    app = mesh.grpc_backend("grpc-app")
    _, _, out, _ = _pair(mesh, "grpc-echo", "grpc", app)
    ch = grpc.insecure_channel("127.0.0.1:%d" % out)
    try:
        call = ch.unary_unary("/echo.Echo/Echo",
                              request_serializer=lambda d: pbwire.f_str(1, d),
                              response_deserializer=pbwire.decode_strings)
        for i in range(20):
            resp = call("hi %d" % i, timeout=10)
            assert resp.get(1) == "hi %d" % i and resp.get(2) == "grpc-app", resp
        # a gRPC error status travels back in the trailers
        bad = ch.unary_unary("/echo.Echo/Nope", request_serializer=lambda d: d,
                             response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as ei:
            bad(b"", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        ch.close()


# ---- live changes under load ----

MLBS = {"_path": "meshloadbalancingstrategies", "type": "MeshLoadBalancingStrategy",
        "mesh": "default", "name": "lb",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                         "default": {"loadBalancer": {"type": "LeastRequest"}}}]}}


def _lb_policy(sc, cluster):
    d = sc.config_dump() or {}
    res = ((d.get("cds") or {}).get(cluster) or {}).get("resource") or {}
    return res.get("lb_policy", "ROUND_ROBIN")


def test_live_changes_under_load_zero_failures(mesh):
    app1 = mesh.http_backend("backend-app-1")
    web, _, out, _ = _pair(mesh, "backend", "http", app1)
    load = dpmesh.LoadLoop(out, conns=4).start()
    try:
        assert load.wait_more(100), load.summary()

        # add a second instance: it gets traffic
        app2 = mesh.http_backend("backend-app-2")
        be2 = mesh.sidecar("backend-2", inbounds=[(helpers.free_port(), app2, "backend",
                                                   "http")])
        _wait_endpoints(web, "backend", 2)
        assert wait_for(lambda: load.snapshot()[2]["backend-app-2"] >= 50, 15), load.summary()

        # change the load balancer of the route to backend, twice
        for lb, envoy in (("LeastRequest", "LEAST_REQUEST"), ("Random", "RANDOM")):
            MLBS["spec"]["to"][0]["default"]["loadBalancer"]["type"] = lb
            mesh.apply(MLBS)
            assert wait_for(lambda: _lb_policy(web, "backend") == envoy, 15), \
                web.config_dump()
            assert load.wait_more(200), load.summary()
        before = load.snapshot()[2]
        assert load.wait_more(200), load.summary()
        after = load.snapshot()[2]
        assert after["backend-app-1"] > before["backend-app-1"] and \
            after["backend-app-2"] > before["backend-app-2"], (before, after)

        # remove the second instance: Dataplane deleted, then its sidecar drains and exits
        st, body = mesh.api("DELETE", "/meshes/default/dataplanes/backend-2")
        assert st == 200, (st, body)
        _wait_endpoints(web, "backend", 1)
        assert be2.stop(signal.SIGTERM, timeout=10) == 0, be2.logs[-2000:]
        mesh.backends[-1].stop()
        assert load.wait_more(300), load.summary()
        c1 = load.snapshot()[2]
        assert load.wait_more(200), load.summary()
        c2 = load.snapshot()[2]
        assert c2["backend-app-2"] == c1["backend-app-2"], (c1, c2)
    finally:
        load.stop()
    print(load.summary())
    assert load.failed == 0, load.summary() + "\n" + mesh.logs()


@pytest.mark.parametrize("store", ["memory", "postgres"])
def test_cp_restart_under_load_zero_failures(kuma_cp, tmp_path, request, store):
    env = None
    if store == "postgres":
        pg = request.getfixturevalue("postgres")
        db = pg.new_database()
        env = pg.env(db)
        r = kuma_cp.run(["migrate", "up"], env=env, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    m = dpmesh.Mesh(kuma_cp, tmp_path, cp_env=env)
    try:
        app = m.http_backend("backend-app")
        web, be, out, _ = _pair(m, "backend", "http", app)
        load = dpmesh.LoadLoop(out, conns=4).start()
        try:
            assert load.wait_more(100), load.summary()
            m.cp.stop()
            assert load.wait_more(300), "no traffic while kuma-cp is down: " + load.summary()
            print("with kuma-cp down:", load.summary())
            assert web.proc.poll() is None and be.proc.poll() is None, m.logs()
            m.cp.start(wait=True, timeout=20)
            for name in ("web", "backend-1"):
                assert wait_for(lambda: m.dataplane_online(name), 20), name + m.logs()
            assert wait_for(lambda: "config" in web.logs, 1)
            assert load.wait_more(300), load.summary()
            _wait_endpoints(web, "backend", 1)
        finally:
            load.stop()
        print(load.summary())
        assert load.failed == 0, load.summary() + "\n" + m.logs()
    finally:
        m.close()


# ---- drain ----

@pytest.mark.parametrize("which", ["web", "backend"])
def test_drain_on_sigterm(mesh, which):
    app = mesh.http_backend("backend-app")
    web, be, out, in_port = _pair(mesh, "backend", "http", app, drain="2s")
    sc = web if which == "web" else be
    res = {}

    def slow():
        try:
            c = http.client.HTTPConnection("127.0.0.1", out, timeout=10)
            c.request("GET", "/slow?ms=1200")
            r = c.getresponse()
            res["status"], res["body"] = r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            res["error"] = repr(e)
    t = threading.Thread(target=slow)
    t.start()
    # the request is in flight on both sidecars
    assert wait_for(lambda: sum(v for k, v in be.stats().items()
                                if k.endswith("downstream_rq_active")) >= 1, 5), be.stats()
    t0 = time.monotonic()
    sc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # no new connections on the draining sidecar's listener
    port = out if which == "web" else in_port
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    t.join(10)
    assert res.get("status") == 200 and res.get("body") == b"slow done", res
    try:
        rc = sc.proc.wait(2 + 2.5)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    assert rc == 0, "exit %s after %.1fs\n%s" % (rc, took, sc.logs[-3000:])
    assert took < 4.5, took
    assert "drain finished" in sc.logs
    assert refused, "the draining sidecar still accepted a new connection"


# ---- kumactl ----

def test_kumactl_inspect_dataplanes_shows_both_online(mesh, tmp_path):
    app = mesh.http_backend("backend-app")
    _pair(mesh, "backend", "http", app)
    for n in ("web", "backend-1"):
        assert wait_for(lambda: mesh.dataplane_online(n), 15), n
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    kc = str(helpers.binary("kumactl").resolve())
    r = subprocess.run([kc, "config", "control-planes", "add", "--name", "e2e", "--address",
                        mesh.cp.api], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([kc, "inspect", "dataplanes"], env=env, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()[1:] if ln.strip()]
    status = {row[1]: row for row in rows}
    assert set(status) == {"web", "backend-1"}, r.stdout
    for row in status.values():
        assert "Online" in row, r.stdout


# ---- the quick start ----

def test_demo_script(tmp_path):
    """scripts/demo.sh on ephemeral ports: the printed curl goes through both sidecars, the
    printed kumactl command shows both data planes online, Ctrl-C stops everything."""
    env = dict(os.environ, DEMO_SKIP_BUILD="1", DEMO_BIN_DIR=str(helpers.build_dir()),
               HOME=str(tmp_path))
    for k in ("KUMA_API_SERVER_HTTP_PORT", "KUMA_DIAGNOSTICS_SERVER_PORT", "KUMA_DP_SERVER_PORT",
              "KUMA_DP_SERVER_PLAINTEXT_PORT", "KUMA_API_SERVER_HTTPS_PORT",
              "KUMA_INTER_CP_SERVER_PORT", "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT",
              "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT", "DEMO_OUTBOUND_PORT", "DEMO_WEB_PORT",
              "DEMO_BACKEND_PORT", "DEMO_WEB_APP_PORT", "DEMO_BACKEND_APP_PORT",
              "DEMO_WEB_ADMIN", "DEMO_BACKEND_ADMIN"):
        env[k] = str(helpers.free_port())
    p = dpmesh.harness.LineProc(["bash", str(helpers.REPO / "scripts" / "demo.sh")], env=env,
                                name="demo", log_path=str(tmp_path / "demo.err"))
    try:
        curl = p.wait_line(lambda s: s.strip().startswith("curl "), 60)
        assert curl, p.tail()
        kctl = p.wait_line(lambda s: "kumactl" in s and "inspect dataplanes" in s, 5)
        assert kctl, p.tail()
        r = subprocess.run(curl.strip(), shell=True, capture_output=True, text=True,
                           timeout=20)
        doc = __import__("json").loads(r.stdout)
        assert doc["server"] == "backend", r.stdout
        assert str(env["DEMO_OUTBOUND_PORT"]) in curl
        r = subprocess.run(kctl.strip(), shell=True, capture_output=True, text=True,
                           timeout=20, env=env)
        assert r.returncode == 0, r.stderr
        online = [ln for ln in r.stdout.splitlines() if " Online " in ln]
        assert len(online) == 2 and any("web-01" in ln for ln in online) and \
            any("backend-01" in ln for ln in online), r.stdout
        work = [s for _, s in p.snapshot() if "logs in " in s][0].split("logs in ")[1].strip()
        # Ctrl-C: SIGINT to the whole process group, like a terminal does
        os.killpg(p.proc.pid, signal.SIGINT)
        assert p.proc.wait(20) == 130, p.tail()
        assert not Path(work).exists(), work
        for port in (env["DEMO_OUTBOUND_PORT"], env["KUMA_API_SERVER_HTTP_PORT"],
                     env["DEMO_BACKEND_APP_PORT"]):
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
    finally:
        p.stop()
