#!/usr/bin/python3
"""Plays Kuma's own REST API test cases against kuma-cp and reports pass/fail per case.

The cases are read at run time from ../shared/conformance/kuma-rest/crud beside the repository
(format: README.md in that folder); they are never copied into the project.

Each case gets a fresh `kuma-cp run` on the memory store, on ephemeral loopback ports, without
the default mesh (cases run in parallel, -j). The case's YAML documents must exist before the
first action as if written straight into the store (Kuma's tests do that: no labels or other
defaults that the REST API adds). So they are written to a file offered to kuma-cp as
KM_CP_SEED_FILE; documents kuma-cp did not load from it are PUT through the REST API in file
order (--load rest: always). Then the case's actions are played and every answer is compared
with the golden file: status code exactly, body as JSON (key order ignored) after replacing the
server's host:port with {{address}} and every timestamp with 0001-01-01T00:00:00Z.

Usage: tests/conformance/run.py [--binary PATH] [--cases DIR] [-j N] [-v] [--logs DIR]
                                [--load auto|rest] [--min-pass-rate X] [NAME-SUBSTRING...]
Exit code: 0, or 1 when --min-pass-rate is given and not reached, 2 when the harness broke.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import helpers  # noqa: E402

try:
    import yaml
except ImportError:  # python3-yaml is a test dependency (scripts/deps.sh test)
    print("conformance: PyYAML missing (apt-get install python3-yaml)", file=sys.stderr)
    sys.exit(2)

ACTION_RE = re.compile(r"^#(/\S*)\s+(\d{3})(?:\s+method=([A-Za-z]+))?\s*$")
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
ZERO_TS = "0001-01-01T00:00:00Z"

# Used only when GET /_resources does not name a type: REST path segment per type name.
FALLBACK_PATHS = {
    "Mesh": "meshes",
    "Dataplane": "dataplanes",
    "ExternalService": "external-services",
    "GlobalSecret": "global-secrets",
    "Secret": "secrets",
    "TrafficRoute": "traffic-routes",
    "TrafficPermission": "traffic-permissions",
    "TrafficLog": "traffic-logs",
    "TrafficTrace": "traffic-traces",
    "HealthCheck": "health-checks",
    "CircuitBreaker": "circuit-breakers",
    "FaultInjection": "fault-injections",
    "RateLimit": "rate-limits",
    "Retry": "retries",
    "Timeout": "timeouts",
    "ZoneIngress": "zoneingresses",
    "ZoneEgress": "zoneegresses",
}
GLOBAL_TYPES = {"Mesh", "GlobalSecret", "ZoneIngress", "ZoneEgress", "Zone", "HostnameGenerator"}


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that keeps timestamps as strings (JSON has no dates)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Case:
    def __init__(self, cases_dir, name):
        self.dir = Path(cases_dir)
        self.name = name
        text = (self.dir / (name + ".input.yaml")).read_text("utf-8")
        self.actions = []
        for line in text.splitlines():
            m = ACTION_RE.match(line.strip())
            if m:
                self.actions.append((m.group(1), int(m.group(2)), (m.group(3) or "GET").upper()))
        self.docs = [d for d in yaml.load_all(text, Loader=_Loader) if d]

    def file(self, i, kind):
        """NAME_ii.kind.json for multi-action cases, NAME.kind.json otherwise; None if absent."""
        base = self.name if len(self.actions) == 1 else "%s_%02d" % (self.name, i)
        p = self.dir / ("%s.%s.json" % (base, kind))
        return p if p.exists() else None


def normalize(value, address):
    """Replaces the server's address and every timestamp in the strings of a JSON value."""
    if isinstance(value, dict):
        return {k: normalize(v, address) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, address) for v in value]
    if isinstance(value, str):
        for a in address:
            value = value.replace(a, "{{address}}")
        return TS_RE.sub(ZERO_TS, value)
    return value


def short(v, n=160):
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= n else s[:n] + "..."


def first_diff(exp, got, path="$"):
    """The first difference between two JSON values as a message naming its JSON path."""
    if isinstance(exp, dict) and isinstance(got, dict):
        for k in exp:
            if k not in got:
                return "%s.%s: missing (expected %s)" % (path, k, short(exp[k]))
        for k in got:
            if k not in exp:
                return "%s.%s: unexpected %s" % (path, k, short(got[k]))
        for k in exp:
            d = first_diff(exp[k], got[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(exp, list) and isinstance(got, list):
        for i, (e, g) in enumerate(zip(exp, got)):
            d = first_diff(e, g, "%s[%d]" % (path, i))
            if d:
                return d
        if len(exp) != len(got):
            return "%s: expected %d items, got %d" % (path, len(exp), len(got))
        return None
    if type(exp) is not type(got) or exp != got:
        if isinstance(exp, bool) or isinstance(got, bool) or not (
                isinstance(exp, (int, float)) and isinstance(got, (int, float)) and exp == got):
            return "%s: expected %s, got %s" % (path, short(exp), short(got))
    return None


class Registry:
    """Type name -> (REST path segment, global?) from GET /_resources, with a fallback."""

    def __init__(self, descriptors):
        self.paths = {}
        for d in descriptors:
            if not isinstance(d, dict) or "name" not in d:
                continue
            path = d.get("path") or d.get("plural")
            if path:
                scope = str(d.get("scope", "")).lower()
                self.paths[d["name"]] = (path.strip("/"), scope == "global")

    @classmethod
    def fetch(cls, base):
        try:
            status, body = helpers.api("GET", base + "/_resources")
        except OSError:
            return cls([])
        if status != 200:
            return cls([])
        if isinstance(body, dict):
            body = body.get("resources") or body.get("items") or []
        return cls(body if isinstance(body, list) else [])

    def url_for(self, doc):
        t = doc.get("type", "")
        if t in self.paths:
            path, is_global = self.paths[t]
        else:
            path = FALLBACK_PATHS.get(t) or t.lower() + "s"
            is_global = t in GLOBAL_TYPES
        name = doc.get("name", "")
        if t == "Mesh":
            return "/meshes/%s" % name
        if is_global or not doc.get("mesh"):
            return "/%s/%s" % (path, name)
        return "/meshes/%s/%s/%s" % (doc["mesh"], path, name)


class Result:
    def __init__(self, name):
        self.name = name
        self.ok = False
        self.message = ""
        self.load_errors = []
        self.log = ""
        self.seconds = 0.0


def start_cp(binary, workdir, seed=None, attempts=3):
    """A fresh kuma-cp on new ports; retries when a port was taken in the meantime.
    <seed> (a YAML file) is offered through KM_CP_SEED_FILE: a kuma-cp that supports it
    loads the documents straight into its store at start, as Kuma's own tests do."""
    last = None
    env = {"KUMA_DEFAULTS_SKIP_MESH_CREATION": "true", "KUMA_STORE_TYPE": "memory",
           # an empty store: no admin token and signing key either (Kuma's own API tests
           # run without them)
           "KUMA_API_SERVER_AUTHN_TOKENS_BOOTSTRAP_ADMIN_TOKEN": "false"}
    if seed:
        env["KM_CP_SEED_FILE"] = str(seed)
    for i in range(attempts):
        cp = helpers.KumaCp(Path(workdir) / ("try%d" % i), binary_path=binary, name="kuma-cp",
                            env=env)
        try:
            cp.start(wait=True, timeout=15.0)
            return cp
        except RuntimeError as e:
            last = e
            cp.stop()
            if "in use" not in str(e).lower() and "bind" not in str(e).lower():
                break
    raise RuntimeError(str(last))


def play(case, binary, seed_mode):
    res = Result(case.name)
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="km-conf-")
    cp = None
    try:
        seed = None
        if case.docs and seed_mode:
            seed = Path(tmp) / "seed.yaml"
            seed.write_text(yaml.safe_dump_all(case.docs, sort_keys=False))
        try:
            cp = start_cp(binary, tmp, seed)
        except (RuntimeError, OSError) as e:
            res.message = "kuma-cp did not start: %s" % str(e).splitlines()[0]
            res.log = str(e)
            return res
        address = ["127.0.0.1:%d" % cp.ports["api"], "localhost:%d" % cp.ports["api"]]
        reg = Registry.fetch(cp.api)
        for doc in case.docs:
            url = reg.url_for(doc)
            if seed is not None:
                try:
                    if helpers.http_request("GET", cp.api + url)[0] == 200:
                        continue  # seeded by kuma-cp itself
                except OSError:
                    pass
            try:
                st, body = helpers.api("PUT", cp.api + url, doc)
            except OSError as e:
                st, body = None, str(e)
            if st not in (200, 201):
                detail = body.get("detail") if isinstance(body, dict) else body
                res.load_errors.append("PUT %s -> %s %s" % (url, st, short(detail, 200)))
        for i, (path, status, method) in enumerate(case.actions):
            req = case.file(i, "request")
            body = req.read_bytes() if req else None
            if body is None and method in ("PUT", "POST"):
                body = b""
            try:
                got_status, _, data = helpers.http_request(method, cp.api + path, body)
            except OSError as e:
                res.message = "action %d %s %s: %s" % (i, method, path, e)
                return res
            where = "action %d %s %s" % (i, method, path)
            text = data.decode("utf-8", "replace").strip()
            if got_status != status:
                res.message = "%s: status: expected %d, got %d %s" % (
                    where, status, got_status, text[:300].replace("\n", " "))
                return res
            golden = case.file(i, "golden")
            if golden is None:
                if text:
                    res.message = "%s: body: expected empty, got %s" % (where, text[:200])
                    return res
                continue
            exp = json.loads(golden.read_text("utf-8"))
            if not text:
                res.message = "%s: body: expected %s, got an empty body" % (where, short(exp))
                return res
            try:
                got = json.loads(text)
            except ValueError:
                res.message = "%s: body is not JSON: %s" % (where, text[:200])
                return res
            d = first_diff(normalize(exp, address), normalize(got, address))
            if d:
                res.message = "%s: %s" % (where, d)
                return res
        res.ok = True
        return res
    finally:
        if cp is not None:
            cp.stop()
            if not res.ok:
                res.log = cp.logs
        res.seconds = time.monotonic() - t0
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(REPO / "build" / "release" / "kuma-cp"))
    ap.add_argument("--cases", help="folder of *.input.yaml (default: "
                    "../shared/conformance/kuma-rest/crud beside the repository)")
    ap.add_argument("-j", "--jobs", type=int, default=min(8, os.cpu_count() or 2))
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print the server log of every failed case")
    ap.add_argument("--logs", help="write the server log of every failed case into this folder")
    ap.add_argument("--min-pass-rate", type=float,
                    help="exit 1 below this pass rate (0..1, or a percentage when > 1)")
    ap.add_argument("--load", choices=("auto", "rest"), default="auto",
                    help="auto: offer the case's documents to kuma-cp as KM_CP_SEED_FILE and "
                    "PUT through the REST API those it did not load; rest: PUT them all")
    ap.add_argument("names", nargs="*", help="run only cases whose name contains one of these")
    a = ap.parse_args()

    if a.cases:
        cases_dir = Path(a.cases)
        if not cases_dir.is_dir():
            print("conformance: %s is not a folder" % cases_dir, file=sys.stderr)
            return 2
    else:
        root = REPO.parent / "shared" / "conformance" / "kuma-rest"
        if not root.is_dir():
            print("conformance: skipped (no ../shared/conformance/kuma-rest)")
            return 0
        cases_dir = root / "crud"
    binary = Path(a.binary).resolve()
    if not os.access(binary, os.X_OK):
        print("conformance: %s is missing or not executable (build it first)" % binary,
              file=sys.stderr)
        return 2

    names = sorted(p.name[:-len(".input.yaml")] for p in cases_dir.glob("*.input.yaml"))
    if a.names:
        names = [n for n in names if any(s in n for s in a.names)]
    if not names:
        print("conformance: no cases in %s" % cases_dir, file=sys.stderr)
        return 2
    cases, broken = [], []
    for n in names:
        try:
            cases.append(Case(cases_dir, n))
        except (OSError, yaml.YAMLError, ValueError) as e:
            broken.append((n, e))
    for n, e in broken:
        print("conformance: cannot read case %s: %s" % (n, e), file=sys.stderr)
    if broken:
        return 2

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(lambda c: play(c, str(binary), a.load == "auto"), cases))
    elapsed = time.monotonic() - t0

    if all(r.log and r.message.startswith("kuma-cp did not start") for r in results):
        print("conformance: kuma-cp never started; first error:\n%s" % results[0].log[-3000:],
              file=sys.stderr)
        return 2
    passed = failed = 0
    for r in results:
        if r.ok:
            passed += 1
            print("PASS %s" % r.name)
            continue
        failed += 1
        msg = r.message
        if r.load_errors:
            msg += " [loading the case's resources failed: %s%s]" % (
                "; ".join(r.load_errors[:2]), "; ..." if len(r.load_errors) > 2 else "")
        print("FAIL %s: %s" % (r.name, msg))
        if a.verbose and r.log:
            print("---- kuma-cp log of %s ----" % r.name)
            print(r.log.rstrip()[-6000:])
            print("---- end of log ----")
        if a.logs:
            os.makedirs(a.logs, exist_ok=True)
            Path(a.logs, r.name + ".log").write_text(r.log)
    total = passed + failed
    rate = passed / total if total else 0.0
    print("conformance: %d passed, %d failed" % (passed, failed))
    print("conformance: pass rate %.1f%% (%d/%d cases, %.1f s)" % (100 * rate, passed, total,
                                                                   elapsed))
    if a.min_pass_rate is not None:
        need = a.min_pass_rate / 100 if a.min_pass_rate > 1 else a.min_pass_rate
        if rate + 1e-9 < need:
            print("conformance: pass rate below the required %.1f%%" % (100 * need))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
