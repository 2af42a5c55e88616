"""Processes and waits shared by the xDS end-to-end tests (test_xds*.py).

Every wait has a timeout; every process started here is killed by stop()/the fixtures."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PY = "/usr/bin/python3"  # Debian's python3-grpcio is only visible to the system python
NODE_DIR = REPO / "tests" / "xds"  # package.json + node_modules (tests/xds/setup.sh)


class LineProc:
    """A child process whose stdout lines are collected (with arrival times) by a thread."""

    def __init__(self, argv, env=None, name="proc", cwd=None, log_path=None):
        self.name = name
        e = dict(os.environ)
        e.update(env or {})
        self.lines = []  # (monotonic time, text)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.log_path = log_path
        self._log = open(log_path, "a") if log_path else None
        self.proc = subprocess.Popen(argv, env=e, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=self._log or subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def snapshot(self, since=0.0):
        with self._lock:
            return [(t, s) for t, s in self.lines if t >= since]

    def wait_line(self, pred, timeout, since=0.0):
        """The first line after <since> for which pred(line) is true; None on timeout/exit."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, s in self.lines:
                    if t >= since and pred(s):
                        return s
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._t.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def tail(self, n=30):
        out = "\n".join(s for _, s in self.snapshot()[-n:])
        if self.log_path and Path(self.log_path).exists():
            out += "\n--- stderr ---\n" + Path(self.log_path).read_text("utf-8", "replace")[-3000:]
        return out


class EchoClient(LineProc):
    """One long-lived xDS client process (pyclient_loop.py or client_loop.js)."""

    def results(self, since=0.0):
        return [s for _, s in self.snapshot(since)]

    def wait_backends(self, expected, timeout, streak=8, since=None):
        """Waits until <streak> consecutive calls (after <since>) all succeed and together reach
        exactly the backends in <expected>. Returns True/False."""
        expected = set(expected)
        since = time.monotonic() if since is None else since
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            res = self.results(since)
            if len(res) >= streak:
                last = res[-streak:]
                if all(r.startswith("OK ") for r in last) and \
                        {r[3:] for r in last} == expected:
                    return True
            if not self.running():
                return False
            time.sleep(0.1)
        return False

    def calls_since(self, since):
        res = self.results(since)
        ok = [r[3:] for r in res if r.startswith("OK ")]
        return res, ok


def write_bootstrap(path, port, node_id, locality=True):
    node = {"id": node_id, "cluster": "e2e"}
    if locality:
        node["locality"] = {}  # mandatory for grpc-js-xds
    b = {"xds_servers": [{"server_uri": "127.0.0.1:%d" % port,
                          "channel_creds": [{"type": "insecure"}],
                          "server_features": ["xds_v3"]}],
         "node": node}
    Path(path).write_text(json.dumps(b))
    return str(path)


def start_echo(port, name, logdir):
    p = LineProc([PY, str(HERE / "echo_server.py"), str(port), name], name=name,
                 log_path=str(Path(logdir) / ("%s.err" % name)))
    if p.wait_line(lambda s: s.startswith("listening"), 15) is None:
        p.stop()
        raise RuntimeError("echo server %s did not start: %s" % (name, p.tail()))
    return p


def start_pyclient(bootstrap, logdir, name="pyclient", target="xds:///echo", max_s=300):
    env = {"GRPC_XDS_BOOTSTRAP": str(bootstrap), "INTERVAL": "0.05"}
    return EchoClient([PY, str(HERE / "pyclient_loop.py"), target, str(max_s)], env=env,
                      name=name, log_path=str(Path(logdir) / ("%s.err" % name)))


def node_modules():
    return NODE_DIR / "node_modules"


def ensure_node_modules():
    """Installs tests/xds's pinned npm packages (tests/xds/setup.sh, npm ci). Returns an error
    text, or None when @grpc/grpc-js-xds is usable."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/deps.sh test installs nodejs npm)"
    setup = NODE_DIR / "setup.sh"
    if setup.exists():
        r = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return "tests/xds/setup.sh failed: %s%s" % (r.stdout[-2000:], r.stderr[-2000:])
    if not (node_modules() / "@grpc" / "grpc-js-xds" / "package.json").exists():
        return "%s has no @grpc/grpc-js-xds" % node_modules()
    return None


def start_nodeclient(bootstrap, logdir, name="nodeclient", target="xds:///echo", max_s=300):
    env = {"GRPC_XDS_BOOTSTRAP": str(bootstrap), "INTERVAL": "50",
           "NODE_PATH": str(node_modules())}
    return EchoClient(["node", str(HERE / "client_loop.js"), target, str(max_s)], env=env,
                      name=name, log_path=str(Path(logdir) / ("%s.err" % name)))


def echo_dataplane(name, port, address="127.0.0.1", service="echo", protocol="grpc",
                   mesh="default", **extra_inbound):
    inbound = {"port": port, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}
    inbound.update(extra_inbound)
    return {"type": "Dataplane", "mesh": mesh, "name": name,
            "networking": {"address": address, "inbound": [inbound]}}


def wait_for(fn, timeout, interval=0.1):
    """fn() until truthy or timeout; returns the last value."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


class XdsSetup:
    """A kuma-cp serving plaintext ADS, its echo backends and their Dataplanes."""

    def __init__(self, cp, plain_port, tmp, procs):
        self.cp = cp
        self.plain_port = plain_port
        self.tmp = Path(tmp)
        self.procs = procs
        self.echo_ports = {}

    def start_echos(self, free_port, names=("echo-1", "echo-2")):
        for n in names:
            p = free_port()
            self.procs.append(start_echo(p, n, self.tmp))
            self.echo_ports[n] = p

    def put_dp(self, name, body=None, **kw):
        if body is None:
            body = echo_dataplane(name, kw.pop("port", None) or self.echo_ports[name], **kw)
        st, js = self.cp.put("/meshes/default/dataplanes/%s" % name, body)
        assert st in (200, 201), "PUT dataplane %s -> %s %s" % (name, st, js)

    def delete_dp(self, name):
        st, js = self.cp.delete("/meshes/default/dataplanes/%s" % name)
        assert st == 200, "DELETE dataplane %s -> %s %s" % (name, st, js)

    def bootstrap(self, node_id="default.client-1"):
        return write_bootstrap(self.tmp / ("bootstrap-%s.json" % node_id), self.plain_port,
                               node_id)

    def insight(self, name="client-1"):
        st, js = self.cp.get("/meshes/default/dataplane-insights/%s" % name)
        return js if st == 200 else None

    def target(self):
        return "127.0.0.1:%d" % self.plain_port


def sub_status(ins, kind):
    """subscriptions[-1].status.<kind> of a DataplaneInsight ({} when absent)."""
    subs = (ins or {}).get("subscriptions") or []
    return ((subs[-1].get("status") or {}).get(kind) or {}) if subs else {}


def count(st, key):
    return int(st.get(key, 0) or 0)


if __name__ == "__main__":
    sys.exit("library module")
