"""End-to-end tests of kumactl against a real kuma-cp (memory store).

Every test runs kumactl with HOME set to its own temporary directory, so ~/.kumactl/config
is isolated. Uses the kuma_cp fixture of conftest.py."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import helpers

MESH_YAML = """\
type: Mesh
name: demo
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
"""

# Dataplane and policies written as Kuma's documentation shows them.
DP_TEMPLATE = """\
type: Dataplane
mesh: demo
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
  - port: 8080
    servicePort: 80
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
      version: v1
"""

POLICIES_YAML = """\
type: MeshTrafficPermission
mesh: demo
name: allow-all
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Allow
---
type: TrafficPermission
mesh: demo
name: allow-all-legacy
sources:
- match:
    kuma.io/service: '*'
destinations:
- match:
    kuma.io/service: '*'
"""

INVALID_DP_YAML = """\
type: Dataplane
mesh: demo
name: broken
networking:
  address: 10.0.0.9
  inbound:
  - port: 8080
    tags:
      version: v1
"""


class Kumactl:
    def __init__(self, home):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.binary = helpers.binary("kumactl").resolve()
        if not os.access(self.binary, os.X_OK):
            pytest.fail("%s is missing: build it first" % self.binary, pytrace=False)

    def __call__(self, *args, stdin=None, check=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        r = subprocess.run([str(self.binary)] + [str(a) for a in args], env=env,
                           cwd=str(self.home), input=stdin, capture_output=True, text=True,
                           timeout=30)
        if check is not None:
            assert r.returncode == check, "kumactl %s -> %d\nstdout:\n%s\nstderr:\n%s" % (
                " ".join(map(str, args)), r.returncode, r.stdout, r.stderr)
        return r


@pytest.fixture
def cp(kuma_cp):
    return kuma_cp()


@pytest.fixture
def kumactl(tmp_path):
    return Kumactl(tmp_path / "home")


@pytest.fixture
def ctl(cp, kumactl):
    """kumactl with the running kuma-cp added as control plane "e2e"."""
    kumactl("config", "control-planes", "add", "--name", "e2e", "--address", cp.api, check=0)
    return kumactl


def table(text):
    """Rows of a kumactl table split on runs of 3+ spaces (cells never contain them)."""
    import re
    return [re.split(r" {3,}", line.rstrip()) for line in text.splitlines() if line.strip()]


def test_default_config_written_on_first_use(kumactl):
    r = kumactl("config", "view", check=0)
    assert "currentContext: local" in r.stdout
    assert "url: http://localhost:5681" in r.stdout
    cfg = (kumactl.home / ".kumactl" / "config").read_text()
    assert "controlPlane: local" in cfg
    assert oct((kumactl.home / ".kumactl" / "config").stat().st_mode & 0o777) == "0o600"


def test_no_config_does_not_write(kumactl):
    kumactl("--no-config", "config", "control-planes", "list", check=0)
    assert not (kumactl.home / ".kumactl").exists()


def test_control_planes_add_list_switch_remove(cp, kumactl):
    r = kumactl("config", "control-planes", "add", "--name", "e2e", "--address", cp.api, check=0)
    assert 'added Control Plane "e2e"' in r.stdout
    assert 'switched active Control Plane to "e2e"' in r.stdout

    rows = table(kumactl("config", "control-planes", "list", check=0).stdout)
    assert rows[0] == ["ACTIVE", "NAME", "ADDRESS"]
    assert ["*", "e2e", cp.api] in rows
    assert any(row[-2:] == ["local", "http://localhost:5681"] for row in rows)

    r = kumactl("config", "control-planes", "add", "--name", "e2e", "--address", cp.api)
    assert r.returncode == 1 and "already exists" in r.stderr
    kumactl("config", "control-planes", "add", "--name", "e2e", "--address", cp.api,
            "--overwrite", "--headers", "x-a=1", check=0)
    assert "key: x-a" in kumactl("config", "view", check=0).stdout

    r = kumactl("config", "control-planes", "switch", "--name", "local", check=0)
    assert 'switched active Control Plane to "local"' in r.stdout
    assert ["*", "local", "http://localhost:5681"] in table(
        kumactl("config", "control-planes", "list", check=0).stdout)
    r = kumactl("config", "control-planes", "switch", "--name", "nope")
    assert r.returncode == 1 and 'there is no Control Plane with name "nope"' in r.stderr

    r = kumactl("config", "control-planes", "remove", "--name", "e2e", check=0)
    assert 'removed Control Plane "e2e"' in r.stdout
    rows = table(kumactl("config", "control-planes", "list", check=0).stdout)
    assert not any("e2e" in row for row in rows)


def test_add_checks_the_control_plane(kumactl):
    port = helpers.free_port()
    r = kumactl("config", "control-planes", "add", "--name", "x", "--address",
                "http://127.0.0.1:%d" % port)
    assert r.returncode == 1
    assert "http://127.0.0.1:%d" % port in r.stderr
    kumactl("config", "control-planes", "add", "--name", "x", "--address",
            "http://127.0.0.1:%d" % port, "--skip-check", check=0)
    r = kumactl("get", "meshes")
    assert r.returncode == 1
    assert "could not connect" in r.stderr and "127.0.0.1:%d" % port in r.stderr


def test_config_file_flag_and_bad_config(cp, kumactl, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    r = kumactl("--config-file", cfg, "config", "view")
    assert r.returncode == 1 and "Failed to access configuration file" in r.stderr
    cfg.write_text("controlPlanes:\n- name: a\n  coordinates:\n    apiServer: {}\n")
    r = kumactl("--config-file", cfg, "config", "view")
    assert r.returncode == 1
    assert "controlPlanes[0].coordinates.apiServer.url" in r.stderr


def test_apply_get_delete(ctl, cp, tmp_path):
    r = ctl("apply", "-f", "-", stdin=MESH_YAML, check=0)
    assert 'resource type="Mesh" mesh="" name="demo" Created' in r.stdout
    dp = tmp_path / "dp.yaml"
    dp.write_text(DP_TEMPLATE)
    r = ctl("apply", "-f", dp, "-v", "name=dp-1", "--var", "address=10.0.0.1", check=0)
    assert 'resource type="Dataplane" mesh="demo" name="dp-1" Created' in r.stdout
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "a.yaml").write_text(POLICIES_YAML)
    (pol / "ignored.txt").write_text("not: a resource\n")
    r = ctl("apply", "-f", pol, check=0)
    assert 'name="allow-all" Created' in r.stdout
    assert 'name="allow-all-legacy" Created' in r.stdout
    r = ctl("apply", "-f", "-", stdin=MESH_YAML, check=0)
    assert 'name="demo" Updated' in r.stdout

    # the server has what was applied, with variables substituted
    status, body = cp.get("/meshes/demo/dataplanes/dp-1")
    assert status == 200 and body["networking"]["address"] == "10.0.0.1"

    # tables
    rows = table(ctl("get", "meshes", check=0).stdout)
    assert rows[0] == ["NAME", "mTLS", "LOCALITY", "ZONEEGRESS", "AGE"]
    assert ["demo", "builtin/ca-1", "off", "off"] == rows[[r[0] for r in rows].index("demo")][:4]
    rows = table(ctl("get", "dataplanes", "-m", "demo", check=0).stdout)
    assert rows[0] == ["MESH", "NAME", "TAGS", "ADDRESS", "AGE"]
    assert rows[1][:4] == ["demo", "dp-1",
                           "kuma.io/protocol=http kuma.io/service=backend version=v1",
                           "10.0.0.1"]
    rows = table(ctl("get", "meshtrafficpermissions", "--mesh", "demo", check=0).stdout)
    assert rows[0] == ["MESH", "NAME", "AGE"] and rows[1][:2] == ["demo", "allow-all"]
    rows = table(ctl("get", "traffic-permissions", "-m", "demo", check=0).stdout)
    assert rows[1][:2] == ["demo", "allow-all-legacy"]
    rows = table(ctl("get", "dataplane", "dp-1", "-m", "demo", check=0).stdout)
    assert len(rows) == 2 and rows[1][1] == "dp-1"

    # json and yaml
    doc = json.loads(ctl("get", "dataplanes", "-m", "demo", "-o", "json", check=0).stdout)
    assert doc["total"] == 1 and doc["items"][0]["name"] == "dp-1"
    doc = json.loads(ctl("get", "meshtrafficpermission", "allow-all", "-m", "demo", "-o", "json",
                         check=0).stdout)
    assert doc["spec"]["from"][0]["default"]["action"] == "Allow"
    y = ctl("get", "mesh", "demo", "-o", "yaml", check=0).stdout
    assert "type: Mesh\n" in y and "name: demo\n" in y and "enabledBackend: ca-1" in y

    # pagination
    r = ctl("get", "meshes", "--size", "1", check=0)
    assert "Rerun command with --offset=" in r.stdout

    # delete
    r = ctl("delete", "dataplane", "dp-1", "-m", "demo", check=0)
    assert r.stdout.strip() == 'deleted Dataplane "dp-1"'
    r = ctl("delete", "dataplane", "dp-1", "-m", "demo")
    assert r.returncode == 1 and 'there is no Dataplane with name "dp-1"' in r.stderr
    r = ctl("get", "dataplane", "dp-1", "-m", "demo")
    assert r.returncode == 1 and "No resources found in demo mesh" in r.stderr
    r = ctl("get", "mesh", "nope")
    assert r.returncode == 1 and "No resources found" in r.stderr
    r = ctl("delete", "nosuchtype", "x")
    assert r.returncode == 1 and "unknown TYPE: nosuchtype" in r.stderr


def test_dry_run_sends_nothing(ctl, cp):
    r = ctl("apply", "--dry-run", "-f", "-", "-v", "name=dry,address=10.1.1.1",
            stdin=MESH_YAML + "---\n" + DP_TEMPLATE, check=0)
    assert "name: dry\n" in r.stdout and "address: 10.1.1.1" in r.stdout
    assert "---\n" in r.stdout
    status, _ = cp.get("/meshes/demo")
    assert status == 404
    status, body = cp.get("/meshes/demo/dataplanes")
    assert status == 404 or body["total"] == 0


def test_invalid_resources(ctl):
    ctl("apply", "-f", "-", stdin=MESH_YAML, check=0)
    r = ctl("apply", "-f", "-", stdin=INVALID_DP_YAML)
    assert r.returncode == 1
    assert "Resource is not valid" in r.stderr
    assert "* networking.inbound[0].tags" in r.stderr
    r = ctl("apply", "-f", "-", stdin="type: Nope\nname: x\n")
    assert r.returncode == 1 and 'unknown type "Nope"' in r.stderr
    r = ctl("apply", "-f", "-", stdin="type: Dataplane\nname: x\n")
    assert r.returncode == 1 and "mesh: cannot be empty" in r.stderr
    r = ctl("apply", "-f", "-", stdin="a: [\n")
    assert r.returncode == 1 and "line" in r.stderr
    r = ctl("apply", "-f", "-", stdin="")
    assert r.returncode == 1 and "no resource(s) passed to apply" in r.stderr


def test_inspect(ctl):
    ctl("apply", "-f", "-", stdin=MESH_YAML, check=0)
    ctl("apply", "-f", "-", "-v", "name=dp-1,address=10.0.0.1", stdin=DP_TEMPLATE, check=0)
    rows = table(ctl("inspect", "dataplanes", "-m", "demo", check=0).stdout)
    assert rows[0][:4] == ["MESH", "NAME", "TAGS", "STATUS"]
    assert rows[1][:2] == ["demo", "dp-1"] and rows[1][3] == "Offline"
    doc = json.loads(ctl("inspect", "dataplanes", "-m", "demo", "-o", "json", check=0).stdout)
    assert doc["items"][0]["name"] == "dp-1"
    rows = table(ctl("inspect", "meshes", check=0).stdout)
    assert rows[0][:3] == ["MESH", "DATAPLANES", "TRAFFIC PERMISSIONS"]
    demo = [r for r in rows if r[0] == "demo"][0]
    assert demo[1] == "0/1"


def test_help_and_usage_errors(kumactl):
    for args in (["--help"], ["get", "--help"], ["config", "control-planes", "add", "-h"],
                 ["inspect", "dataplanes", "--help"], ["help", "apply"], ["apply", "-h"],
                 ["delete", "--help"], ["version", "--help"], ["config"]):
        r = kumactl(*args, check=0)
        assert "Usage:" in r.stdout, args
    r = kumactl("frobnicate")
    assert r.returncode == 1 and 'unknown command "frobnicate"' in r.stderr
    r = kumactl("get", "meshes", "--nope")
    assert r.returncode == 1 and "unknown flag: --nope" in r.stderr
    r = kumactl("delete", "mesh")
    assert r.returncode == 1 and "accepts 2 arg(s)" in r.stderr
    r = kumactl("--api-timeout", "soon", "get", "meshes")
    assert r.returncode == 1 and "--api-timeout" in r.stderr


def test_version(ctl):
    r = ctl("version", check=0)
    assert r.stdout.startswith("Client: Kuma ")
    assert "Server: Kuma" in r.stdout
