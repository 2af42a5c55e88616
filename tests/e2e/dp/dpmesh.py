"""A small mesh for the data plane end-to-end tests: one kuma-cp (plaintext DP port), kuma-dp
sidecars started from Dataplane YAML, real backends (dp_backends.py, the gRPC echo server) and a
keep-alive HTTP load loop that counts every failed request.

Every wait is bounded; every process is stopped by Mesh.close() (the test fixture calls it)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
E2E = HERE.parent
sys.path.insert(0, str(E2E))
sys.path.insert(0, str(E2E / "xds"))

import helpers  # noqa: E402
import harness  # noqa: E402  (LineProc: a child whose stdout lines are collected)

PY = "/usr/bin/python3"


def wait_for(fn, timeout, interval=0.05):
    """fn() until it returns a true value or <timeout> seconds pass; returns the last value."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


def get(url, timeout=2.0):
    """(status, body bytes) or (None, b"") when nothing answers."""
    try:
        st, _, body = helpers.http_request("GET", url, timeout=timeout)
        return st, body
    except (OSError, http.client.HTTPException):
        return None, b""


class Sidecar:
    """A running `kuma-dp run` with its admin port and log."""

    def __init__(self, mesh, name, yaml_text, drain="1s", extra=None, env=None):
        self.name = name
        self.admin = helpers.free_port()
        self.workdir = mesh.workdir
        self.file = mesh.workdir / ("%s.yaml" % name)
        self.file.write_text(yaml_text)
        self.log_path = mesh.workdir / ("%s.log" % name)
        args = ["run", "--cp-address", "http://127.0.0.1:%d" % mesh.plain_port,
                "--dataplane-file", str(self.file), "--admin-port", str(self.admin),
                "--drain-time", drain, "--concurrency", "2"] + list(extra or [])
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(mesh.workdir),
             "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "300ms"}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                e[k] = os.environ[k]
        e.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(helpers.binary("kuma-dp").resolve())] + args, env=e,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(mesh.workdir))

    @property
    def logs(self):
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def admin_get(self, path):
        return get("http://127.0.0.1:%d%s" % (self.admin, path))

    def config_dump(self):
        st, body = self.admin_get("/config_dump")
        return json.loads(body) if st == 200 else None

    def endpoints(self, cluster):
        """{"127.0.0.1:1234": "healthy", ...} of <cluster> from /clusters."""
        st, body = self.admin_get("/clusters")
        out = {}
        if st != 200:
            return out
        for line in body.decode("utf-8", "replace").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                out[parts[1]] = parts[3]
        return out

    def stats(self):
        st, body = self.admin_get("/stats")
        out = {}
        for line in body.decode("utf-8", "replace").splitlines():
            k, _, v = line.partition(": ")
            try:
                out[k] = int(v)
            except ValueError:
                pass
        return out

    def wait_ready(self, timeout=15.0):
        ok = wait_for(lambda: self.proc.poll() is not None or self.admin_get("/ready")[0] == 200,
                      timeout)
        if not ok or self.proc.poll() is not None:
            raise AssertionError("kuma-dp %s not ready (exit %s):\n%s"
                                 % (self.name, self.proc.poll(), self.logs[-3000:]))

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def dataplane_yaml(name, inbounds=(), outbounds=()):
    """inbounds: [(port, service_port, service, protocol)], outbounds: [(port, service)]."""
    y = ["type: Dataplane", "mesh: default", "name: %s" % name, "networking:",
         "  address: 127.0.0.1"]
    if inbounds:
        y.append("  inbound:")
        for port, sport, svc, proto in inbounds:
            y += ["  - port: %d" % port, "    servicePort: %d" % sport, "    tags:",
                  "      kuma.io/service: %s" % svc, "      kuma.io/protocol: %s" % proto]
    if outbounds:
        y.append("  outbound:")
        for port, svc in outbounds:
            y += ["  - port: %d" % port, "    tags:", "      kuma.io/service: %s" % svc]
    return "\n".join(y) + "\n"


class Mesh:
    """kuma-cp + sidecars + backends, all on 127.0.0.1 ephemeral ports."""

    def __init__(self, kuma_cp, workdir, cp_env=None):
        self.workdir = Path(workdir)
        self.plain_port = helpers.free_port()
        env = {"KUMA_DP_SERVER_PLAINTEXT_PORT": str(self.plain_port)}
        env.update(cp_env or {})
        self.cp = kuma_cp(env=env)
        self.sidecars = []
        self.backends = []

    def sidecar(self, name, inbounds=(), outbounds=(), drain="1s", extra=None, wait=True):
        sc = Sidecar(self, name, dataplane_yaml(name, inbounds, outbounds), drain, extra)
        self.sidecars.append(sc)
        if wait:
            sc.wait_ready()
        return sc

    def backend(self, argv, name):
        """Starts a backend (argv after the python interpreter) and waits for "listening"."""
        p = harness.LineProc([PY] + argv, name=name,
                             log_path=str(self.workdir / ("%s.log" % name)))
        self.backends.append(p)
        if p.wait_line(lambda s: s.startswith("listening"), 15) is None:
            raise AssertionError("backend %s did not start: %s" % (name, p.snapshot()))
        return p

    def http_backend(self, name):
        port = helpers.free_port()
        self.backend([str(HERE / "dp_backends.py"), "http", str(port), name], name)
        return port

    def tcp_backend(self, name):
        port = helpers.free_port()
        self.backend([str(HERE / "dp_backends.py"), "tcp-echo", str(port)], name)
        return port

    def grpc_backend(self, name):
        port = helpers.free_port()
        self.backend([str(E2E / "xds" / "echo_server.py"), str(port), name], name)
        return port

    def api(self, method, path, body=None):
        return helpers.api(method, self.cp.api + path, body)

    def apply(self, doc):
        path = "/meshes/%s/%s/%s" % (doc.get("mesh", "default"), doc["_path"], doc["name"])
        body = {k: v for k, v in doc.items() if k != "_path"}
        st, resp = self.api("PUT", path, body)
        assert st in (200, 201), (st, resp)

    def dataplane_online(self, name):
        st, body = self.api("GET", "/meshes/default/dataplanes+insights")
        if st != 200:
            return False
        for it in body.get("items", []):
            if it.get("name") != name:
                continue
            subs = (it.get("dataplaneInsight") or {}).get("subscriptions") or []
            return bool(subs) and not subs[-1].get("disconnectTime")
        return False

    def close(self):
        for sc in reversed(self.sidecars):
            sc.stop(signal.SIGKILL, timeout=5)
        for b in reversed(self.backends):
            b.stop()

    def logs(self):
        out = []
        for sc in self.sidecars:
            out.append("---- kuma-dp %s (exit %s) ----\n%s"
                       % (sc.name, sc.proc.poll(), sc.logs[-4000:]))
        return "\n".join(out)


def wait_port(port, timeout=10.0):
    def ok():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False
    return wait_for(ok, timeout)


class LoadLoop:
    """<conns> threads, each with one keep-alive HTTP/1.1 connection to 127.0.0.1:<port>,
    sending GET <path> back to back (with a short pause) until stop(). Every request that does
    not end in a 200 with the expected body is a failure; nothing is retried."""

    def __init__(self, port, path="/echo", conns=4, pause=0.002, timeout=5.0):
        self.port, self.path, self.conns, self.pause, self.timeout = (port, path, conns, pause,
                                                                     timeout)
        self.ok = 0
        self.failed = 0
        self.errors = []
        self.servers = Counter()
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def _run(self, idx):
        conn = None
        n = 0
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                with self._lock:
                    self.reconnects += 1
            n += 1
            err = None
            try:
                conn.request("GET", self.path, headers={"X-Load": "%d-%d" % (idx, n)})
                r = conn.getresponse()
                body = r.read()
                srv = r.getheader("X-Server") or "?"
                if r.status != 200 or not body.startswith(b"{"):
                    err = "status %d body %r" % (r.status, body[:100])
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                err = "%s: %s" % (type(e).__name__, e)
                conn.close()
                conn = None
            with self._lock:
                if err:
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append((time.monotonic(), err))
                else:
                    self.ok += 1
                    self.servers[srv] += 1
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def start(self):
        for i in range(self.conns):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def snapshot(self):
        with self._lock:
            return self.ok, self.failed, Counter(self.servers)

    def wait_more(self, n, timeout=10.0):
        """Waits until <n> more requests succeeded."""
        start = self.snapshot()[0]
        return wait_for(lambda: self.snapshot()[0] >= start + n, timeout)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 2)
        return self

    def summary(self):
        return ("ok=%d failed=%d reconnects=%d servers=%s errors=%s"
                % (self.ok, self.failed, self.reconnects, dict(self.servers), self.errors))
