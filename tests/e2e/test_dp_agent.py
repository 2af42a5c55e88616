"""kuma-dp's agent against a real kuma-cp: self-registration through POST /bootstrap (plaintext
port and TLS port with --ca-cert-file), the Dataplane Online in dataplanes+insights with ACKed
LDS/CDS, delta and state-of-the-world ADS, reconnect after a kuma-cp restart, drain on SIGTERM,
and flag errors."""
import os
import signal
import subprocess
import time

import pytest

import helpers
from helpers import api

DP_TEMPLATE = """type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
  - port: {{ port }}
    servicePort: {{ svcport }}
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: {{ outport }}
    tags:
      kuma.io/service: backend
"""


class KumaDp:
    """A running `kuma-dp run` with its log."""

    def __init__(self, workdir, args, env=None, name="dp"):
        self.workdir = workdir
        self.log_path = workdir / ("%s.log" % name)
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
             "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "300ms"}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                e[k] = os.environ[k]
        e.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(helpers.binary("kuma-dp").resolve()), "run"] + args,
                                     env=e, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(workdir))

    @property
    def logs(self):
        return self.log_path.read_text("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def dps(tmp_path):
    lst = []

    def make(args, env=None, name="dp"):
        if "--admin-port" not in args:
            args = args + ["--admin-port", str(helpers.free_port())]
        d = KumaDp(tmp_path, args, env, name)
        lst.append(d)
        return d
    yield make
    for d in lst:
        d.stop(signal.SIGKILL)


@pytest.fixture
def cp(kuma_cp, free_port):
    pt = free_port()
    c = kuma_cp(env={"KUMA_DP_SERVER_PLAINTEXT_PORT": str(pt)})
    c.plain_port = pt
    return c


def _template(tmp_path, free_port):
    f = tmp_path / "dp.yaml"
    f.write_text(DP_TEMPLATE)
    return f, ["--dataplane-file", str(f), "--dataplane-var", "port=%d" % free_port(),
               "--dataplane-var", "svcport=%d" % free_port(),
               "--dataplane-var", "outport=%d" % free_port()]


def _insight(cp, name):
    st, body = api("GET", cp.api + "/meshes/default/dataplanes+insights")
    if st != 200:
        return None
    for it in body.get("items", []):
        if it.get("dataplane", {}) and it.get("name") == name:
            return it
    return None


def _sub_status(item, kind):
    subs = (item.get("dataplaneInsight") or {}).get("subscriptions") or []
    if not subs:
        return {}
    return (subs[-1].get("status") or {}).get(kind) or {}


def _online_and_acked(cp, name):
    it = _insight(cp, name)
    if not it:
        return None
    subs = (it.get("dataplaneInsight") or {}).get("subscriptions") or []
    if not subs or subs[-1].get("disconnectTime"):
        return None
    for k in ("lds", "cds"):
        if int(_sub_status(it, k).get("responsesAcknowledged", "0")) < 1:
            return None
    return it


def _wait(fn, timeout, interval=0.1):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


@pytest.mark.parametrize("mode", ["plaintext-delta", "tls-delta", "plaintext-sotw"])
def test_registers_and_acks(cp, dps, tmp_path, free_port, mode):
    _, targs = _template(tmp_path, free_port)
    name = "web-" + mode
    args = ["--dataplane-var", "name=" + name, "--drain-time", "1s"] + targs
    if mode.startswith("tls"):
        crt = cp.workdir / "kuma" / "dp-server.crt"
        args += ["--cp-address", "https://127.0.0.1:%d" % cp.ports["dp"],
                 "--ca-cert-file", str(crt)]
    else:
        args += ["--cp-address", "http://127.0.0.1:%d" % cp.plain_port]
    if mode.endswith("sotw"):
        args += ["--xds-sotw"]
    admin = free_port()
    args += ["--admin-port", str(admin)]
    dp = dps(args, name=name)
    it = _wait(lambda: _online_and_acked(cp, name), 15)
    assert it, "not Online with ACKed lds/cds: %s\n%s" % (_insight(cp, name), dp.logs[-3000:])
    for k in ("lds", "cds"):
        assert int(_sub_status(it, k).get("responsesRejected", "0")) == 0, (k, it)
    st, body = api("GET", cp.api + "/meshes/default/dataplanes/" + name)
    assert st == 200 and body["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "web"
    assert "config 1 applied" in dp.logs, dp.logs
    # the admin listener serves the raw xDS resources the agent holds
    st, dump = api("GET", "http://127.0.0.1:%d/config_dump" % admin)
    assert st == 200, (st, dump)
    assert set(dump) == {"lds", "rds", "cds", "eds", "sds"}, dump
    assert any(n.startswith("inbound:") for n in dump["lds"]), dump["lds"]
    assert all("resource" in r and r["version"] for r in dump["cds"].values()), dump["cds"]
    t0 = time.monotonic()
    assert dp.stop(signal.SIGTERM, timeout=10) == 0, dp.logs[-2000:]
    assert time.monotonic() - t0 < 5, "drain took longer than the 1s drain time"
    assert "drain finished" in dp.logs


def test_survives_cp_restart(cp, dps, tmp_path, free_port):
    _, targs = _template(tmp_path, free_port)
    dp = dps(["--cp-address", "http://127.0.0.1:%d" % cp.plain_port, "--dataplane-var",
              "name=web-1", "--drain-time", "500ms"] + targs)
    assert _wait(lambda: _online_and_acked(cp, "web-1"), 15), dp.logs[-3000:]
    cp.stop()
    time.sleep(1.0)
    assert dp.proc.poll() is None, "kuma-dp exited when the CP went away:\n" + dp.logs[-3000:]
    assert "keeping the last config" in dp.logs, dp.logs[-3000:]
    cp.start(wait=True, timeout=20)
    # the memory store lost the Dataplane: the agent registers it again and reconnects
    it = _wait(lambda: _online_and_acked(cp, "web-1"), 20)
    assert it, "not back Online after the CP restart:\n" + dp.logs[-3000:]
    assert dp.proc.poll() is None
    assert dp.stop(signal.SIGTERM) == 0


def test_cp_unreachable_at_start_then_up(kuma_cp, dps, tmp_path, free_port):
    pt = free_port()
    _, targs = _template(tmp_path, free_port)
    dp = dps(["--cp-address", "http://127.0.0.1:%d" % pt, "--dataplane-var", "name=web-2",
              "--drain-time", "500ms"] + targs)
    time.sleep(1.0)
    assert dp.proc.poll() is None, dp.logs
    assert "retrying" in dp.logs
    cp = kuma_cp(env={"KUMA_DP_SERVER_PLAINTEXT_PORT": str(pt)})
    assert _wait(lambda: _online_and_acked(cp, "web-2"), 20), dp.logs[-3000:]
    assert dp.stop(signal.SIGINT) == 0


def test_invalid_dataplane_exits_1(cp, dps, tmp_path):
    bad = ("type: Dataplane\nmesh: default\nname: bad\nnetworking:\n  address: 127.0.0.1\n"
           "  inbound:\n  - port: 70000\n    tags: {}\n")
    dp = dps(["--cp-address", "http://127.0.0.1:%d" % cp.plain_port, "--dataplane", bad])
    assert dp.proc.wait(15) == 1
    assert "bootstrap failed" in dp.logs and "HTTP 422" in dp.logs, dp.logs


def _run(args, env=None):
    e = {"PATH": "/usr/bin:/bin"}
    e.update(env or {})
    return subprocess.run([str(helpers.binary("kuma-dp").resolve())] + args, env=e,
                          capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("args,env,msg", [
    (["run", "--drain-time", "soon", "--name", "a", "--mesh", "m"], None, "--drain-time"),
    (["run", "--admin-port", "70000", "--name", "a"], None, "--admin-port"),
    (["run", "--cp-address", "ftp://x", "--name", "a"], None, "--cp-address"),
    (["run", "--bogus", "1"], None, "unknown flag --bogus"),
    (["run"], None, "--name: must be set"),
    (["run", "--name", "a"], {"KUMA_DATAPLANE_DRAIN_TIME": "x"}, "KUMA_DATAPLANE_DRAIN_TIME"),
    (["run", "--dataplane", "type: Dataplane\nname: {{#x}}"], None, "--dataplane: template"),
    (["run", "--dataplane-file", "/nonexistent.yaml"], None, "--dataplane-file"),
    (["nope"], None, "unknown command"),
])
def test_flag_errors(args, env, msg):
    r = _run(args, env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert msg in r.stderr, r.stderr


def test_version_and_help():
    r = _run(["version"])
    assert r.returncode == 0 and "Kuma 2.14.3" in r.stdout
    r = _run(["run", "--help"])
    assert r.returncode == 0 and "--cp-address" in r.stdout and "--dataplane-var" in r.stdout
