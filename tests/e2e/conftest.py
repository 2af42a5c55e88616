"""pytest fixtures for the end-to-end tests: real kuma-cp processes and a private PostgreSQL.

Run with Debian's pytest: /usr/bin/python3 -m pytest tests/e2e
The binaries come from build/release (or $KM_BUILD_DIR).
"""

import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
from helpers import free_port as _free_port  # noqa: E402

PGCTL = helpers.REPO / "tests" / "pg" / "pgctl.sh"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the logs of the kuma-cp processes of a failed test to its report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for cp in getattr(item, "_km_cps", []):
            rep.sections.append(("kuma-cp %s log (%s)" % (cp.name, cp.log_path),
                                 cp.logs[-12000:]))


@pytest.fixture
def free_port():
    """free_port() -> a TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port


def _require_binary(name="kuma-cp"):
    b = helpers.binary(name)
    if not os.access(b, os.X_OK):
        pytest.fail("%s is missing: build it first (make VARIANT=release all) or set "
                    "KM_BUILD_DIR" % b, pytrace=False)
    return b


class _CpFactory:
    def __init__(self, base, node):
        self.base = Path(base)
        self.node = node
        self.cps = []
        self.counter = itertools.count(1)

    def __call__(self, env=None, config=None, args=None, wait=True, ports=None, timeout=15.0,
                 name=None, workdir=None):
        """Starts `kuma-cp run`. <config> is a path or the text of a YAML config file.
        Returns a helpers.KumaCp (.api, .diag, .proc, .logs, .stop(sig), .ports)."""
        _require_binary()
        n = name or "cp%d" % next(self.counter)
        wd = Path(workdir) if workdir else self.base / n
        wd.mkdir(parents=True, exist_ok=True)
        cfg = None
        if config is not None:
            if isinstance(config, Path) or (isinstance(config, str) and "\n" not in config
                                            and Path(config).exists()):
                cfg = Path(config)
            else:
                cfg = wd / "config.yaml"
                cfg.write_text(config)
        cp = helpers.KumaCp(wd, env=env, config_file=cfg, args=args, ports=ports, name=n)
        self.cps.append(cp)
        if self.node is not None:
            if not hasattr(self.node, "_km_cps"):
                self.node._km_cps = []
            self.node._km_cps.append(cp)
        cp.start(wait=False)
        if wait:
            try:
                cp.wait_ready(timeout)
            except RuntimeError as e:
                pytest.fail(str(e), pytrace=False)
        return cp

    def run(self, args, env=None, timeout=30.0):
        """Runs kuma-cp with <args> to completion (version, migrate, --help, bad configs).
        Returns subprocess.CompletedProcess with text stdout/stderr."""
        b = _require_binary()
        wd = self.base / ("run%d" % next(self.counter))
        wd.mkdir(parents=True, exist_ok=True)
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(wd),
             "KUMA_GENERAL_WORK_DIR": str(wd / "kuma")}
        e.update({k: str(v) for k, v in (env or {}).items()})
        return subprocess.run([str(Path(b).resolve())] + list(args), env=e, cwd=str(wd),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def close(self):
        for cp in self.cps:
            cp.stop(signal.SIGTERM, timeout=5)


@pytest.fixture
def kuma_cp(tmp_path, request):
    """Factory: kuma_cp(env={...}, config="yaml text", args=[...], wait=True) -> KumaCp.
    Every process started is terminated at teardown; logs are attached to failed tests."""
    f = _CpFactory(tmp_path, request.node)
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_cp_factory(tmp_path_factory, request):
    """Like kuma_cp, but for processes shared by the tests of one module."""
    f = _CpFactory(tmp_path_factory.mktemp("cp"), None)
    yield f
    f.close()


def _pg_bindir():
    env = os.environ.get("PG_BIN")
    if env and os.access(os.path.join(env, "pg_ctl"), os.X_OK):
        return env
    if shutil.which("pg_config"):
        try:
            b = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               check=True).stdout.strip()
            if os.access(os.path.join(b, "pg_ctl"), os.X_OK):
                return b
        except subprocess.CalledProcessError:
            pass
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for v in sorted(base.iterdir(), key=lambda p: [int(x) for x in p.name.split(".")
                                                        if x.isdigit()], reverse=True):
            if os.access(v / "bin" / "pg_ctl", os.X_OK):
                return str(v / "bin")
    return None


class Postgres:
    """A private PostgreSQL server on 127.0.0.1:<port>, user/password/db kuma."""

    def __init__(self, dir_, port, bindir):
        self.dir = Path(dir_)
        self.port = port
        self.host = "127.0.0.1"
        self.bindir = bindir
        self.counter = itertools.count(1)

    def _pgctl(self, *args):
        env = dict(os.environ, PG_BIN=self.bindir)
        r = subprocess.run(["sh", str(PGCTL)] + list(args), capture_output=True, text=True,
                           env=env, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("pgctl.sh %s failed (%d): %s%s" % (" ".join(args), r.returncode,
                                                                 r.stdout, r.stderr))
        return r

    def start(self):
        self._pgctl("start", str(self.dir), str(self.port))

    def stop(self):
        self._pgctl("stop", str(self.dir))

    def running(self):
        env = dict(os.environ, PG_BIN=self.bindir)
        return subprocess.run(["sh", str(PGCTL), "status", str(self.dir)], env=env,
                              capture_output=True).returncode == 0

    def psql(self, sql, db="kuma"):
        """Runs SQL as user kuma over TCP; returns stdout (unaligned, tuples only)."""
        env = dict(os.environ, PGPASSWORD="kuma", PGCONNECT_TIMEOUT="5")
        r = subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-tA",
                            "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
                            "-U", "kuma", "-d", db, "-c", sql],
                           capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("psql %r failed: %s" % (sql, r.stderr))
        return r.stdout

    def new_database(self, prefix="kuma_t"):
        """Creates an empty database owned by kuma and returns its name."""
        name = "%s%d_%d" % (prefix, os.getpid(), next(self.counter))
        self.psql('CREATE DATABASE "%s"' % name, db="kuma")
        return name

    def env(self, db="kuma"):
        """KUMA_* variables that point kuma-cp at this server and database <db>."""
        return {
            "KUMA_STORE_TYPE": "postgres",
            "KUMA_STORE_POSTGRES_HOST": self.host,
            "KUMA_STORE_POSTGRES_PORT": str(self.port),
            "KUMA_STORE_POSTGRES_USER": "kuma",
            "KUMA_STORE_POSTGRES_PASSWORD": "kuma",
            "KUMA_STORE_POSTGRES_DB_NAME": db,
            "KUMA_STORE_POSTGRES_TLS_MODE": "disable",
        }


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A private PostgreSQL for the whole session (tests/pg/pgctl.sh). Fails, never skips,
    when the server binaries are missing: `make check` installs them."""
    if not PGCTL.exists():
        pytest.fail("%s is missing" % PGCTL, pytrace=False)
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (pg_ctl, initdb, psql): install "
                    "the Debian package postgresql (make deps-test does) or set PG_BIN",
                    pytrace=False)
    d = tmp_path_factory.mktemp("pg")
    pg = Postgres(d, _free_port(), bindir)
    try:
        pg.start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield pg
    env = dict(os.environ, PG_BIN=bindir)
    subprocess.run(["sh", str(PGCTL), "destroy", str(d)], env=env, capture_output=True)


# ---- xDS end-to-end tests (test_xds*.py; helpers in tests/e2e/xds/) ----

@pytest.fixture
def procs():
    """A list of tests/e2e/xds/harness.LineProc (echo servers, xDS clients): all are stopped
    at teardown."""
    lst = []
    yield lst
    for p in reversed(lst):
        p.stop()


@pytest.fixture
def xds(kuma_cp, free_port, tmp_path, procs):
    """xds(env=None, migrate=False) -> harness.XdsSetup: a kuma-cp (env added to its
    environment; migrate runs `kuma-cp migrate up` first, for a postgres env) serving
    plaintext ADS (KUMA_DP_SERVER_PLAINTEXT_PORT) on a free port."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))
    import harness

    def make(env=None, migrate=False):
        if migrate:
            r = kuma_cp.run(["migrate", "up"], env=env, timeout=60)
            assert r.returncode == 0, "kuma-cp migrate up: %s%s" % (r.stdout, r.stderr)
        pt = free_port()
        e = {"KUMA_DP_SERVER_PLAINTEXT_PORT": str(pt)}
        e.update(env or {})
        return harness.XdsSetup(kuma_cp(env=e), pt, tmp_path, procs)
    return make
