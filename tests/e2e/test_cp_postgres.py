"""kuma-cp on a real PostgreSQL (private server started by the `postgres` fixture)."""

import re
import threading

import pytest

import examples
import helpers
from helpers import metric_sum, parse_metrics, poll


def dp(name, mesh="default", service="web"):
    d = examples.example("Dataplane", mesh=mesh, name=name)
    d["networking"]["inbound"][0]["tags"]["kuma.io/service"] = service
    return d


@pytest.fixture
def db(postgres):
    """A fresh, unmigrated database; returns the KUMA_* environment pointing at it."""
    return postgres.env(postgres.new_database())


def migrate(kuma_cp, env):
    r = kuma_cp.run(["migrate", "up"], env=env, timeout=60)
    assert r.returncode == 0, "kuma-cp migrate up failed:\n%s%s" % (r.stdout, r.stderr)
    return r


def test_unmigrated_database_refused(kuma_cp, db):
    c = kuma_cp(env=db, wait=False)
    rc = c.wait_exit(20)
    assert rc is not None, "kuma-cp ran on an unmigrated database:\n" + c.logs
    assert rc != 0
    assert "kuma-cp migrate up" in c.logs, c.logs


def test_migrate_then_run(kuma_cp, db):
    migrate(kuma_cp, db)
    r2 = kuma_cp.run(["migrate", "up"], env=db, timeout=60)
    assert r2.returncode == 0, "a second migrate up must be a no-op:\n%s%s" % (r2.stdout,
                                                                               r2.stderr)
    c = kuma_cp(env=db)
    status, body = c.get("/meshes/default")
    assert status == 200, body


def test_migrate_on_unreachable_database_fails(kuma_cp, db, free_port):
    env = dict(db, KUMA_STORE_POSTGRES_PORT=str(free_port()),
               KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT="2")
    r = kuma_cp.run(["migrate", "up"], env=env, timeout=60)
    assert r.returncode != 0
    assert (r.stdout + r.stderr).strip()


def test_crud_and_restart_keeps_data(kuma_cp, db):
    migrate(kuma_cp, db)
    c = kuma_cp(env=db, name="first")
    assert c.put("/meshes/pg", {"type": "Mesh", "name": "pg"})[0] == 201
    for name in ("dp-1", "dp-2"):
        st, body = c.put("/meshes/pg/dataplanes/" + name, dp(name, mesh="pg"))
        assert st == 201, body
    mtp = examples.example("MeshTrafficPermission", mesh="pg", name="mtp-1")
    assert c.put("/meshes/pg/meshtrafficpermissions/mtp-1", mtp)[0] == 201
    gs = examples.example("GlobalSecret", name="gs-1")
    st, body = c.put("/global-secrets/gs-1", gs)
    assert st == 201, body
    # update, delete
    assert c.put("/meshes/pg/dataplanes/dp-2", dp("dp-2", mesh="pg", service="api"))[0] == 200
    assert c.delete("/meshes/pg/dataplanes/dp-1")[0] == 200
    assert c.get("/meshes/pg/dataplanes/dp-1")[0] == 404
    st, before = c.get("/meshes/pg/dataplanes/dp-2")
    assert st == 200
    assert before["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "api"
    st, lst = c.get("/meshes/pg/dataplanes")
    assert st == 200 and lst["total"] == 1, lst
    # pagination on postgres
    for i in range(4):
        assert c.put("/meshes/pg-%d" % i, {"type": "Mesh", "name": "pg-%d" % i})[0] == 201
    st, page = c.get("/meshes?size=2")
    assert st == 200 and page["total"] == 6 and len(page["items"]) == 2 and page["next"], page

    assert c.stop() == 0, c.logs
    c2 = kuma_cp(env=db, name="second")
    st, after = c2.get("/meshes/pg/dataplanes/dp-2")
    assert st == 200, after
    for k in ("networking", "creationTime", "modificationTime", "name", "mesh", "type"):
        assert after[k] == before[k], (k, before, after)
    assert c2.get("/meshes/pg/dataplanes/dp-1")[0] == 404
    assert c2.get("/meshes/pg/meshtrafficpermissions/mtp-1")[0] == 200
    assert c2.get("/global-secrets/gs-1")[0] == 200
    st, lst = c2.get("/meshes")
    assert st == 200 and lst["total"] == 6, lst
    # deleting the mesh removes what it owns, in the database too
    assert c2.delete("/meshes/pg")[0] == 200
    assert c2.get("/meshes/pg/dataplanes/dp-2")[0] == 404
    assert c2.get("/meshes/pg/meshtrafficpermissions/mtp-1")[0] == 404


def test_validation_and_conflicts_on_postgres(kuma_cp, db):
    migrate(kuma_cp, db)
    c = kuma_cp(env=db)
    st, body = c.put("/meshes/ghost/dataplanes/x", dp("x", mesh="ghost"))
    assert st == 400 and body["detail"] == "Mesh is not found", body
    bad = dp("bad")
    bad["networking"]["inbound"][0]["tags"] = {"version": "v1"}
    st, body = c.put("/meshes/default/dataplanes/bad", bad)
    assert st == 400, body
    assert any(p["field"].startswith("networking.inbound[0].tags")
               for p in body.get("invalid_parameters") or []), body


def _event_seen(cp, action, type_name, mesh, name):
    rx = re.compile(r"store event: %s %s %s/%s\b" % (action, re.escape(type_name),
                                                     re.escape(mesh), re.escape(name)))
    return rx.search(cp.logs) is not None


def _events_total(cp):
    return metric_sum(parse_metrics(cp.metrics()), "kuma_store_events_total") or 0.0


def test_two_instances_share_state_and_events(kuma_cp, db):
    migrate(kuma_cp, db)
    a = kuma_cp(env=db, name="a")
    b = kuma_cp(env=db, name="b")
    events_before = _events_total(b)

    st, body = a.put("/meshes/default/dataplanes/shared-1", dp("shared-1"))
    assert st == 201, body
    st, got = b.get("/meshes/default/dataplanes/shared-1")
    assert st == 200, "a PUT through A is not visible through B at once: %r" % (got,)
    assert got["networking"]["address"] == "10.0.0.1"

    assert poll(lambda: _event_seen(b, "create", "Dataplane", "default", "shared-1"), 5), (
        "B did not log the create event of A's write:\n" + b.logs[-3000:])
    assert poll(lambda: _events_total(b) > events_before, 5), "kuma_store_events_total " \
        "of B did not grow"

    # update through B, visible and signalled on A
    assert b.put("/meshes/default/dataplanes/shared-1",
                 dp("shared-1", service="api"))[0] == 200
    st, got = a.get("/meshes/default/dataplanes/shared-1")
    assert got["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "api"
    assert poll(lambda: _event_seen(a, "update", "Dataplane", "default", "shared-1"), 5), (
        a.logs[-3000:])

    # delete through A, signalled on B
    assert a.delete("/meshes/default/dataplanes/shared-1")[0] == 200
    assert b.get("/meshes/default/dataplanes/shared-1")[0] == 404
    assert poll(lambda: _event_seen(b, "delete", "Dataplane", "default", "shared-1"), 5), (
        b.logs[-3000:])

    # a global resource
    assert a.put("/meshes/other", {"type": "Mesh", "name": "other"})[0] == 201
    assert b.get("/meshes/other")[0] == 200
    assert poll(lambda: re.search(r"store event: create Mesh /?other\b", b.logs), 5), (
        b.logs[-3000:])


def test_concurrent_writers_on_two_instances(kuma_cp, db):
    """Creates of one resource through two instances at the same time: one 201, the other
    200 or 409, never a 5xx or a lost row."""
    migrate(kuma_cp, db)
    a = kuma_cp(env=db, name="a")
    b = kuma_cp(env=db, name="b")
    results = []

    def put(cp, i):
        results.append(cp.put("/meshes/default/dataplanes/race", dp("race", service="s%d" % i))[0])

    ts = [threading.Thread(target=put, args=((a, b)[i % 2], i)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(s in (200, 201, 409) for s in results), results
    assert results.count(201) == 1, results
    st, got = a.get("/meshes/default/dataplanes/race")
    assert st == 200
    st, lst = b.get("/meshes/default/dataplanes")
    assert [i["name"] for i in lst["items"]].count("race") == 1


def test_database_outage_and_recovery(kuma_cp, postgres, db):
    migrate(kuma_cp, db)
    c = kuma_cp(env=db)
    assert c.put("/meshes/default/dataplanes/before", dp("before"))[0] == 201
    postgres.stop()
    try:
        st, body = c.get("/meshes/default/dataplanes/before")
        assert st == 503, (st, body)
        assert isinstance(body, dict) and body.get("status") == 503, body
        text = (body.get("detail") or "") + " " + (body.get("title") or "")
        assert re.search(r"(?i)database|store|postgres", text), body
        st, body = c.put("/meshes/default/dataplanes/during", dp("during"))
        assert st == 503, (st, body)
        st, body = c.get("/meshes")
        assert st == 503, (st, body)
        assert c.running(), "kuma-cp exited when the database went away:\n" + c.logs
        # /healthy still answers: the process is alive (whether /ready reports the
        # outage is not specified)
        assert helpers.http_request("GET", c.diag + "/healthy")[0] == 200
    finally:
        postgres.start()
    assert poll(lambda: c.get("/meshes/default/dataplanes/before")[0] == 200, 15), (
        "kuma-cp did not recover after the database came back:\n" + c.logs[-3000:])
    st, body = c.put("/meshes/default/dataplanes/after", dp("after"))
    assert st == 201, body
    assert c.running()
