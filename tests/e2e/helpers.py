"""Helpers shared by the end-to-end tests and the REST conformance runner.

Standard library only (plus PyYAML where the caller needs it): start a real kuma-cp on
ephemeral loopback ports, wait until it is ready, talk HTTP to it, stop it.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_dir():
    """Directory holding kuma-cp, kumactl, ...: $KM_BUILD_DIR or build/release."""
    d = os.environ.get("KM_BUILD_DIR")
    return Path(d) if d else REPO / "build" / "release"


def binary(name="kuma-cp"):
    return build_dir() / name


_given_ports = set()
_given_lock = threading.Lock()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
    out before (servers started in parallel must not get the same port)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with _given_lock:
            if port not in _given_ports:
                _given_ports.add(port)
                return port
    raise RuntimeError("no free TCP port left")


def http_request(method, url, body=None, headers=None, timeout=10.0):
    """One HTTP request. <body> may be bytes, str, or a JSON-able object.
    Returns (status, headers dict with lower-case names, body bytes)."""
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    hdrs = {"Accept": "application/json"}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    if headers:
        hdrs.update(headers)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def api(method, url, body=None, timeout=10.0):
    """HTTP request returning (status, parsed JSON | None when empty | raw text when not JSON)."""
    status, _, data = http_request(method, url, body, timeout=timeout)
    if not data.strip():
        return status, None
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode("utf-8", "replace")


class KumaCp:
    """A running `kuma-cp run` with its ports, environment and log file."""

    def __init__(self, workdir, env=None, config_file=None, args=None, ports=None,
                 binary_path=None, name="cp"):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = Path(binary_path).resolve() if binary_path else binary("kuma-cp").resolve()
        ports = dict(ports or {})
        for k in ("api", "diag", "dp", "https", "intercp", "kds", "mads"):
            ports.setdefault(k, free_port())
        self.ports = ports
        self.api = "http://127.0.0.1:%d" % ports["api"]
        self.diag = "http://127.0.0.1:%d" % ports["diag"]
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "KUMA_GENERAL_WORK_DIR": str(self.workdir / "kuma"),
            "KUMA_API_SERVER_HTTP_PORT": str(ports["api"]),
            "KUMA_API_SERVER_HTTP_INTERFACE": "127.0.0.1",
            "KUMA_API_SERVER_HTTPS_ENABLED": "false",
            "KUMA_API_SERVER_HTTPS_PORT": str(ports["https"]),
            "KUMA_DIAGNOSTICS_SERVER_PORT": str(ports["diag"]),
            "KUMA_DP_SERVER_PORT": str(ports["dp"]),
            "KUMA_INTER_CP_SERVER_PORT": str(ports["intercp"]),
            "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT": str(ports["kds"]),
            "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT": str(ports["mads"]),
            # proxies in most tests carry no dataplane token; token tests set dpToken
            "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE": "none",
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                e[k] = os.environ[k]
        e.update({k: str(v) for k, v in (env or {}).items() if v is not None})
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
        self.env = e
        self.args = ["run"] + (["--config-file", str(config_file)] if config_file else [])
        self.args += list(args or [])
        self.log_path = self.workdir / ("%s.log" % name)
        self.proc = None
        self._log = None

    def start(self, wait=True, timeout=15.0):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(self.binary)] + self.args, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(self.workdir))
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def logs(self):
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def ready_status(self):
        try:
            return http_request("GET", self.diag + "/ready", timeout=1.0)[0]
        except (OSError, http.client.HTTPException):
            return None

    def wait_ready(self, timeout=15.0):
        """Polls GET /ready on the diagnostics port until 200. Raises RuntimeError with the
        log tail when the process exits or the timeout passes."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("kuma-cp exited with %s before it was ready:\n%s"
                                   % (self.proc.returncode, self.logs[-4000:]))
            # /ready alone could be another server's answer when our port was taken (our
            # process then exits with a bind error): require our API port to answer too
            # and our own start line in our log: written only once every port was ours
            if (self.ready_status() == 200 and self._api_answers() and self.proc.poll() is None
                    and " started: API " in self.logs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("kuma-cp not ready after %.0f s:\n%s"
                                   % (timeout, self.logs[-4000:]))
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _api_answers(self):
        if self.env.get("KUMA_API_SERVER_HTTP_PORT") != str(self.ports["api"]):
            return True  # the API port comes from a config file: not ours to check
        try:
            http_request("GET", self.api + "/", timeout=1.0)
            return True
        except (OSError, http.client.HTTPException):
            return False

    def wait_exit(self, timeout=10.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends <sig>, waits for the exit (SIGKILL after <timeout>). Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def get(self, path):
        return api("GET", self.api + path)

    def put(self, path, body):
        return api("PUT", self.api + path, body)

    def delete(self, path):
        return api("DELETE", self.api + path)

    def metrics(self):
        status, _, data = http_request("GET", self.diag + "/metrics")
        assert status == 200, "GET /metrics -> %d" % status
        return data.decode("utf-8", "replace")


def parse_metrics(text):
    """Prometheus text -> {(name, frozenset(label items)): float}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        labels = {}
        if "{" in line:
            name, rest = line.split("{", 1)
            close = rest.rfind("}")
            if close < 0:
                continue
            lbl, tail = rest[:close], rest[close + 1:].split()
            for part in _split_labels(lbl):
                if "=" in part:
                    k, val = part.split("=", 1)
                    labels[k.strip()] = val.strip().strip('"')
        else:
            fields = line.split()
            name, tail = fields[0], fields[1:]
        if not tail:
            continue
        try:
            v = float(tail[0])
        except ValueError:
            continue
        out[(name.strip(), frozenset(labels.items()))] = v
    return out


def _split_labels(s):
    parts, cur, quoted, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def metric_sum(metrics, name, **labels):
    """Sum of every sample of <name> whose labels include <labels>."""
    total = 0.0
    found = False
    for (n, lbls), v in metrics.items():
        if n != name:
            continue
        d = dict(lbls)
        if all(d.get(k) == v2 for k, v2 in labels.items()):
            total += v
            found = True
    return total if found else None


def poll(fn, timeout=10.0, interval=0.05):
    """Calls fn() until it returns a truthy value; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
