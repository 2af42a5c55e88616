/* PostgreSQL store against a real server.
 *
 * Environment (tests that need a server pass with a "skipped" note when KM_TEST_PG_PORT is
 * unset):
 *   KM_TEST_PG_PORT   port of a server started by `tests/pg/pgctl.sh start DIR PORT`
 *   KM_TEST_PG_HOST   default 127.0.0.1
 *   KM_TEST_PG_DIR    the DIR given to pgctl.sh: enables the outage test, which stops and
 *                     restarts that server
 *   KM_TEST_PGCTL     path of pgctl.sh, default tests/pg/pgctl.sh
 * User, password and database are `kuma`. The tests drop and recreate the schema. */
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/cp/store.h>

#include "test.h"

static const char *
pg_env(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static bool
pg_enabled(const char *test)
{
    if (getenv("KM_TEST_PG_PORT") && *getenv("KM_TEST_PG_PORT"))
        return true;
    fprintf(stderr, "  %s: skipped, KM_TEST_PG_PORT is not set\n", test);
    return false;
}

static struct km_pg_config
pg_cfg(void)
{
    struct km_pg_config c = {
        .host = pg_env("KM_TEST_PG_HOST", "127.0.0.1"),
        .port = atoi(pg_env("KM_TEST_PG_PORT", "5432")),
        .user = "kuma",
        .password = "kuma",
        .db_name = "kuma",
        .tls_mode = "disable",
        .max_open_connections = 4,
        .connection_timeout_s = 2,
    };
    return c;
}

/* Direct libpq connection for set-up and inspection. */
static PGconn *
pg_raw(void)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "host=%s port=%s user=kuma password=kuma dbname=kuma",
             pg_env("KM_TEST_PG_HOST", "127.0.0.1"), pg_env("KM_TEST_PG_PORT", "5432"));
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        KM_FAIL_AT("connect: %s", PQerrorMessage(c));
    return c;
}

static void
pg_raw_exec(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        KM_FAIL_AT("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

static void
pg_reset(void)
{
    PGconn *c = pg_raw();
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    pg_raw_exec(c, "DROP TABLE IF EXISTS resources, schema_migrations, locks CASCADE");
    pg_raw_exec(c, "DROP FUNCTION IF EXISTS notify_event() CASCADE");
    PQfinish(c);
}

static struct km_store *
pg_fresh_store(void)
{
    struct km_pg_config cfg = pg_cfg();
    char err[512];
    int code = 0;
    pg_reset();
    ASSERT_INT_EQ(km_store_postgres_migrate(&cfg, err, sizeof(err)), 0);
    struct km_store *s = km_store_postgres_new(&cfg, err, sizeof(err), &code);
    if (!s)
        KM_FAIL_AT("km_store_postgres_new: %s (%d)", err, code);
    return s;
}

static struct km_store *
pg_open(void)
{
    struct km_pg_config cfg = pg_cfg();
    char err[512];
    int code = 0;
    struct km_store *s = km_store_postgres_new(&cfg, err, sizeof(err), &code);
    if (!s)
        KM_FAIL_AT("km_store_postgres_new: %s (%d)", err, code);
    return s;
}

static struct km_resource *
mk_mesh(const char *name)
{
    return km_resource_new(km_registry_mesh(), "", name);
}

static struct km_resource *
mk_mtp(const char *mesh, const char *name, const char *action)
{
    struct km_resource *r = km_resource_new(km_registry_find("MeshTrafficPermission"), mesh, name);
    json_decref(r->spec);
    r->spec = json_pack("{s:{s:s},s:[{s:{s:s,s:s},s:{s:s}}]}", "targetRef", "kind", "Mesh",
                        "from", "targetRef", "kind", "MeshService", "name", "backend", "default",
                        "action", action);
    ASSERT(r->spec);
    return r;
}

static void
create_ok(struct km_store *s, struct km_resource *r)
{
    int rc = km_store_create(s, r);
    if (rc)
        KM_FAIL_AT("create %s/%s: %d", r->mesh, r->name, rc);
    km_resource_free(r);
}

/* Unused local port: bind to port 0, read it back, close. */
static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ASSERT(fd >= 0);
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ASSERT(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- event collection ---- */

struct ev_log {
    pthread_mutex_t mu;
    char lines[256][160];
    size_t n;
};

static void
ev_collect(void *ctx, enum km_store_event_kind kind, const char *type, const char *mesh,
           const char *name)
{
    struct ev_log *l = ctx;
    static const char *const kinds[] = {"CREATE", "UPDATE", "DELETE"};
    pthread_mutex_lock(&l->mu);
    if (l->n < 256)
        snprintf(l->lines[l->n++], sizeof(l->lines[0]), "%s %s %s/%s", kinds[kind], type, mesh,
                 name);
    pthread_mutex_unlock(&l->mu);
}

static bool
ev_wait(struct ev_log *l, const char *want, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        pthread_mutex_lock(&l->mu);
        for (size_t i = 0; i < l->n; i++) {
            if (strcmp(l->lines[i], want) == 0) {
                pthread_mutex_unlock(&l->mu);
                return true;
            }
        }
        pthread_mutex_unlock(&l->mu);
        usleep(20000);
    }
    fprintf(stderr, "  event \"%s\" not received; got:\n", want);
    for (size_t i = 0; i < l->n; i++)
        fprintf(stderr, "    %s\n", l->lines[i]);
    return false;
}

/* ---- tests ---- */

KM_TEST(pg_schema_missing_says_migrate)
{
    if (!pg_enabled("pg_schema_missing_says_migrate"))
        return;
    struct km_pg_config cfg = pg_cfg();
    char err[512] = "";
    int code = 0;
    pg_reset();
    struct km_store *s = km_store_postgres_new(&cfg, err, sizeof(err), &code);
    ASSERT(s == NULL);
    ASSERT_INT_EQ(code, KM_ESCHEMA);
    ASSERT_STR_CONTAINS(err, "kuma-cp migrate up");
}

KM_TEST(pg_migrate_idempotent)
{
    if (!pg_enabled("pg_migrate_idempotent"))
        return;
    struct km_pg_config cfg = pg_cfg();
    char err[512] = "";
    pg_reset();
    ASSERT_INT_EQ(km_store_postgres_migrate(&cfg, err, sizeof(err)), 0);
    ASSERT_INT_EQ(km_store_postgres_migrate(&cfg, err, sizeof(err)), 0);
    PGconn *c = pg_raw();
    PGresult *res = PQexec(c, "SELECT version, dirty FROM schema_migrations");
    ASSERT_INT_EQ(PQntuples(res), 1);
    ASSERT_STR_EQ(PQgetvalue(res, 0, 0), "1");
    ASSERT_STR_EQ(PQgetvalue(res, 0, 1), "f");
    PQclear(res);
    res = PQexec(c, "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'resources' ORDER BY ordinal_position");
    ASSERT_INT_EQ(PQntuples(res), 12);
    ASSERT_STR_EQ(PQgetvalue(res, 0, 0), "name");
    ASSERT_STR_EQ(PQgetvalue(res, 10, 0), "labels");
    PQclear(res);
    PQfinish(c);
    int code = -1;
    struct km_store *s = km_store_postgres_new(&cfg, err, sizeof(err), &code);
    ASSERT(s != NULL);
    ASSERT_INT_EQ(code, 0);
    ASSERT_STR_EQ(s->ops->name, "postgres");
    ASSERT_INT_EQ(s->ops->ping(s), 0);
    km_store_free(s);
}

KM_TEST(pg_crud)
{
    if (!pg_enabled("pg_crud"))
        return;
    struct km_store *s = pg_fresh_store();
    const struct km_rtype *mtp = km_registry_find("MeshTrafficPermission");

    struct km_resource *m = mk_mesh("m1");
    m->labels = json_pack("{s:s,s:s}", "zeta", "1", "alpha", "2");
    ASSERT_INT_EQ(km_store_create(s, m), 0);
    ASSERT_INT_EQ(m->version, 1);
    ASSERT(m->creation_us > 0);
    ASSERT_INT_EQ(m->creation_us, m->modification_us);
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(s, km_registry_mesh(), NULL, "m1", &got), 0);
    ASSERT_INT_EQ(got->version, 1);
    ASSERT_INT_EQ(got->creation_us, m->creation_us);
    ASSERT_INT_EQ(got->modification_us, m->modification_us);
    ASSERT_STR_EQ(got->mesh, "");
    char *lj = json_dumps(got->labels, JSON_COMPACT);
    ASSERT_STR_EQ(lj, "{\"alpha\":\"2\",\"zeta\":\"1\"}");
    free(lj);
    km_resource_free(got);
    km_resource_free(m);

    /* A given creation time is kept to the microsecond. */
    struct km_resource *r = mk_mtp("m1", "b-policy", "Allow");
    r->creation_us = 1700000000123456LL;
    r->status = json_pack("{s:i}", "x", 1);
    ASSERT_INT_EQ(km_store_create(s, r), 0);
    ASSERT_INT_EQ(r->creation_us, 1700000000123456LL);
    ASSERT_INT_EQ(km_store_get(s, mtp, "m1", "b-policy", &got), 0);
    ASSERT_INT_EQ(got->creation_us, 1700000000123456LL);
    ASSERT_INT_EQ(got->modification_us, 1700000000123456LL);
    char *a = json_dumps(got->spec, JSON_COMPACT), *b = json_dumps(r->spec, JSON_COMPACT);
    ASSERT_STR_EQ(a, b);
    ASSERT_STR_EQ(a, "{\"targetRef\":{\"kind\":\"Mesh\"},\"from\":[{\"targetRef\":{\"kind\":"
                     "\"MeshService\",\"name\":\"backend\"},\"default\":{\"action\":\"Allow\"}}]}");
    free(a);
    free(b);
    ASSERT(got->labels == NULL);
    ASSERT(json_integer_value(json_object_get(got->status, "x")) == 1);
    km_resource_free(got);

    /* Exists already; mesh missing. */
    struct km_resource *dup = mk_mtp("m1", "b-policy", "Deny");
    ASSERT_INT_EQ(km_store_create(s, dup), KM_ECONFLICT);
    km_resource_free(dup);
    struct km_resource *orphan = mk_mtp("nope", "x", "Deny");
    ASSERT_INT_EQ(km_store_create(s, orphan), KM_ENOTFOUND);
    km_resource_free(orphan);

    /* Update: version and modification time move, creation time stays. */
    json_decref(r->spec);
    r->spec = json_pack("{s:s}", "changed", "yes");
    ASSERT_INT_EQ(km_store_update(s, r), 0);
    ASSERT_INT_EQ(r->version, 2);
    ASSERT_INT_EQ(r->creation_us, 1700000000123456LL);
    ASSERT(r->modification_us > r->creation_us);
    ASSERT_INT_EQ(km_store_get(s, mtp, "m1", "b-policy", &got), 0);
    ASSERT_INT_EQ(got->version, 2);
    ASSERT_INT_EQ(got->modification_us, r->modification_us);
    ASSERT_STR_EQ(json_string_value(json_object_get(got->spec, "changed")), "yes");
    km_resource_free(got);

    /* Stale version, missing resource. */
    r->version = 1;
    ASSERT_INT_EQ(km_store_update(s, r), KM_ECONFLICT);
    struct km_resource *ghost = mk_mtp("m1", "ghost", "Allow");
    ghost->version = 1;
    ASSERT_INT_EQ(km_store_update(s, ghost), KM_ENOTFOUND);
    km_resource_free(ghost);

    /* List sorted by (mesh, name), filtered by mesh; count. */
    create_ok(s, mk_mesh("m0"));
    create_ok(s, mk_mtp("m1", "a-policy", "Allow"));
    create_ok(s, mk_mtp("m1", "B-upper", "Allow"));
    create_ok(s, mk_mtp("m0", "z-policy", "Allow"));
    struct km_resource_list l;
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, mtp, NULL, &l), 0);
    ASSERT_INT_EQ(l.n, 4);
    ASSERT_STR_EQ(l.items[0]->mesh, "m0");
    ASSERT_STR_EQ(l.items[1]->name, "B-upper");
    ASSERT_STR_EQ(l.items[2]->name, "a-policy");
    ASSERT_STR_EQ(l.items[3]->name, "b-policy");
    km_resource_list_deinit(&l);
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, mtp, "m0", &l), 0);
    ASSERT_INT_EQ(l.n, 1);
    ASSERT_STR_EQ(l.items[0]->name, "z-policy");
    km_resource_list_deinit(&l);
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, km_registry_mesh(), "ignored-for-global", &l), 0);
    ASSERT_INT_EQ(l.n, 2);
    km_resource_list_deinit(&l);
    int64_t n = 0;
    ASSERT_INT_EQ(s->ops->count(s, mtp, &n), 0);
    ASSERT_INT_EQ(n, 4);

    /* Delete: stale version, any version, missing. */
    ASSERT_INT_EQ(km_store_remove(s, mtp, "m1", "b-policy", 1), KM_ECONFLICT);
    ASSERT_INT_EQ(km_store_remove(s, mtp, "m1", "b-policy", 2), 0);
    ASSERT_INT_EQ(km_store_remove(s, mtp, "m1", "b-policy", 0), KM_ENOTFOUND);
    ASSERT_INT_EQ(km_store_remove(s, mtp, "m1", "a-policy", 0), 0);
    ASSERT_INT_EQ(km_store_get(s, mtp, "m1", "a-policy", &got), KM_ENOTFOUND);
    ASSERT(got == NULL);
    km_resource_free(r);
    km_store_free(s);
}

KM_TEST(pg_delete_mesh_cascades)
{
    if (!pg_enabled("pg_delete_mesh_cascades"))
        return;
    struct km_store *s = pg_fresh_store();
    const struct km_rtype *mtp = km_registry_find("MeshTrafficPermission");
    const struct km_rtype *zone = km_registry_find("Zone");
    create_ok(s, mk_mesh("gone"));
    create_ok(s, mk_mesh("stays"));
    create_ok(s, mk_mtp("gone", "p1", "Allow"));
    create_ok(s, mk_mtp("gone", "p2", "Allow"));
    create_ok(s, mk_mtp("stays", "p1", "Allow"));
    create_ok(s, km_resource_new(zone, "", "zone-1"));
    ASSERT_INT_EQ(km_store_remove(s, km_registry_mesh(), "", "gone", 0), 0);
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(s, mtp, "gone", "p1", &got), KM_ENOTFOUND);
    ASSERT_INT_EQ(km_store_get(s, mtp, "gone", "p2", &got), KM_ENOTFOUND);
    ASSERT_INT_EQ(km_store_get(s, mtp, "stays", "p1", &got), 0);
    km_resource_free(got);
    ASSERT_INT_EQ(km_store_get(s, zone, NULL, "zone-1", &got), 0);
    km_resource_free(got);
    int64_t n = 0;
    ASSERT_INT_EQ(s->ops->count(s, mtp, &n), 0);
    ASSERT_INT_EQ(n, 1);
    km_store_free(s);
}

KM_TEST(pg_events_from_other_instance)
{
    if (!pg_enabled("pg_events_from_other_instance"))
        return;
    struct km_store *a = pg_fresh_store();
    struct km_store *b = pg_open();
    struct ev_log log = {.n = 0};
    pthread_mutex_init(&log.mu, NULL);
    b->on_event = ev_collect;
    b->event_ctx = &log;

    struct km_resource *m = mk_mesh("ev");
    ASSERT_INT_EQ(km_store_create(a, m), 0);
    ASSERT(ev_wait(&log, "CREATE Mesh /ev", 5000));
    ASSERT_INT_EQ(km_store_update(a, m), 0);
    ASSERT(ev_wait(&log, "UPDATE Mesh /ev", 5000));
    create_ok(a, mk_mtp("ev", "p", "Allow"));
    ASSERT(ev_wait(&log, "CREATE MeshTrafficPermission ev/p", 5000));
    /* Deleting the Mesh reports what the cascade removed too. */
    ASSERT_INT_EQ(km_store_remove(a, km_registry_mesh(), "", "ev", 0), 0);
    ASSERT(ev_wait(&log, "DELETE Mesh /ev", 5000));
    ASSERT(ev_wait(&log, "DELETE MeshTrafficPermission ev/p", 5000));
    km_resource_free(m);
    km_store_free(b);
    km_store_free(a);
    pthread_mutex_destroy(&log.mu);
}

KM_TEST(pg_unreachable_server)
{
    struct km_pg_config cfg = pg_cfg();
    cfg.port = free_port();
    char err[512] = "";
    int code = 0;
    int64_t t0 = km_now_us();
    struct km_store *s = km_store_postgres_new(&cfg, err, sizeof(err), &code);
    ASSERT(s == NULL);
    ASSERT_INT_EQ(code, KM_EUNAVAIL);
    ASSERT_STR_CONTAINS(err, "cannot connect to PostgreSQL");
    ASSERT_INT_EQ(km_store_postgres_migrate(&cfg, err, sizeof(err)), KM_EUNAVAIL);
    ASSERT(km_now_us() - t0 < 3000000);
}

KM_TEST(pg_bad_tls_mode)
{
    struct km_pg_config cfg = pg_cfg();
    cfg.tls_mode = "sometimes";
    char err[512] = "";
    int code = 0;
    ASSERT(km_store_postgres_new(&cfg, err, sizeof(err), &code) == NULL);
    ASSERT_INT_EQ(code, KM_EINVAL);
    ASSERT_STR_CONTAINS(err, "store.postgres.tls.mode");
}

KM_TEST(pg_corrupt_row_is_an_error)
{
    if (!pg_enabled("pg_corrupt_row_is_an_error"))
        return;
    struct km_store *s = pg_fresh_store();
    create_ok(s, mk_mesh("c"));
    PGconn *c = pg_raw();
    pg_raw_exec(c, "INSERT INTO resources (name, mesh, type, version, spec, owner_name, "
                   "owner_mesh, owner_type) VALUES ('bad', 'c', 'MeshTrafficPermission', 1, "
                   "'{not json', 'c', '', 'Mesh')");
    pg_raw_exec(c, "INSERT INTO resources (name, mesh, type, version, spec, owner_name, "
                   "owner_mesh, owner_type) VALUES ('arr', 'c', 'MeshTrafficPermission', 1, "
                   "'[1,2]', 'c', '', 'Mesh')");
    PQfinish(c);
    const struct km_rtype *mtp = km_registry_find("MeshTrafficPermission");
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(s, mtp, "c", "bad", &got), KM_EIO);
    ASSERT_INT_EQ(km_store_get(s, mtp, "c", "arr", &got), KM_EIO);
    ASSERT(got == NULL);
    struct km_resource_list l;
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, mtp, "c", &l), KM_EIO);
    ASSERT_INT_EQ(l.n, 0);
    km_resource_list_deinit(&l);
    /* Values the database refuses are invalid input, not a crash. */
    struct km_resource *longname = mk_mtp("c", "", "Allow");
    free(longname->name);
    longname->name = km_xcalloc(300, 1);
    memset(longname->name, 'a', 299);
    ASSERT_INT_EQ(km_store_create(s, longname), KM_EINVAL);
    km_resource_free(longname);
    km_store_free(s);
}

struct race_arg {
    struct km_store *s;
    int ok;
};

static void *
race_main(void *arg)
{
    struct race_arg *ra = arg;
    const struct km_rtype *mtp = km_registry_find("MeshTrafficPermission");
    for (int i = 0; i < 15; i++) {
        struct km_resource *r = NULL;
        if (km_store_get(ra->s, mtp, "race", "p", &r) != 0)
            continue;
        json_object_set_new(r->spec, "i", json_integer(i));
        if (km_store_update(ra->s, r) == 0)
            ra->ok++;
        km_resource_free(r);
    }
    return NULL;
}

KM_TEST(pg_concurrent_updates_never_lost)
{
    if (!pg_enabled("pg_concurrent_updates_never_lost"))
        return;
    struct km_store *s = pg_fresh_store();
    create_ok(s, mk_mesh("race"));
    create_ok(s, mk_mtp("race", "p", "Allow"));
    pthread_t th[6];
    struct race_arg ra[6];
    for (int i = 0; i < 6; i++) {
        ra[i] = (struct race_arg){.s = s, .ok = 0};
        ASSERT(pthread_create(&th[i], NULL, race_main, &ra[i]) == 0);
    }
    int ok = 0;
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        ok += ra[i].ok;
    }
    struct km_resource *r = NULL;
    ASSERT_INT_EQ(km_store_get(s, km_registry_find("MeshTrafficPermission"), "race", "p", &r), 0);
    ASSERT(ok > 0);
    ASSERT_INT_EQ(r->version, 1 + ok);
    km_resource_free(r);
    km_store_free(s);
}

static void
pgctl(const char *cmd)
{
    char line[1024];
    snprintf(line, sizeof(line), "%s %s '%s' %s >&2", pg_env("KM_TEST_PGCTL", "tests/pg/pgctl.sh"),
             cmd, getenv("KM_TEST_PG_DIR"),
             strcmp(cmd, "start") == 0 ? pg_env("KM_TEST_PG_PORT", "") : "");
    if (system(line) != 0)
        KM_FAIL_AT("%s failed", line);
}

/* A failed assertion must not leave the shared server down for the following tests. */
static void
pg_restart_at_exit(void)
{
    char line[2048];
    const char *ctl = pg_env("KM_TEST_PGCTL", "tests/pg/pgctl.sh");
    snprintf(line, sizeof(line), "%s status '%s' || %s start '%s' %s >&2", ctl,
             getenv("KM_TEST_PG_DIR"), ctl, getenv("KM_TEST_PG_DIR"),
             pg_env("KM_TEST_PG_PORT", ""));
    if (system(line) != 0)
        fprintf(stderr, "restarting the test server failed\n");
}

KM_TEST(pg_outage_and_recovery)
{
    if (!pg_enabled("pg_outage_and_recovery"))
        return;
    if (!getenv("KM_TEST_PG_DIR") || !*getenv("KM_TEST_PG_DIR")) {
        fprintf(stderr, "  pg_outage_and_recovery: skipped, KM_TEST_PG_DIR is not set\n");
        return;
    }
    struct km_store *a = pg_fresh_store();
    struct km_store *b = pg_open();
    struct ev_log log = {.n = 0};
    pthread_mutex_init(&log.mu, NULL);
    b->on_event = ev_collect;
    b->event_ctx = &log;
    create_ok(a, mk_mesh("before"));
    ASSERT(ev_wait(&log, "CREATE Mesh /before", 5000));

    struct km_store *c = pg_open();
    atexit(pg_restart_at_exit);
    pgctl("stop");
    int64_t t0 = km_now_us();
    /* Destroying a store whose listener is reconnecting does not wait for the network. */
    usleep(200000);
    km_store_free(c);
    ASSERT(km_now_us() - t0 < 1000000);
    t0 = km_now_us();
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(a, km_registry_mesh(), "", "before", &got), KM_EUNAVAIL);
    struct km_resource *m = mk_mesh("during");
    ASSERT_INT_EQ(km_store_create(a, m), KM_EUNAVAIL);
    km_resource_free(m);
    ASSERT_INT_EQ(a->ops->ping(a), KM_EUNAVAIL);
    ASSERT_INT_EQ(a->ops->ping(a), KM_EUNAVAIL);
    ASSERT(km_now_us() - t0 < 3000000);

    pgctl("start");
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        rc = a->ops->ping(a);
        if (rc)
            usleep(100000);
    }
    ASSERT_INT_EQ(rc, 0);
    ASSERT_INT_EQ(km_store_get(a, km_registry_mesh(), "", "before", &got), 0);
    km_resource_free(got);
    /* The listener of <b> reconnects by itself. */
    create_ok(a, mk_mesh("after"));
    bool seen = false;
    for (int i = 0; i < 3 && !seen; i++) {
        seen = ev_wait(&log, "CREATE Mesh /after", 3000);
        if (!seen) {
            /* The listener may have re-subscribed after the first change: change again. */
            struct km_resource *r = NULL;
            ASSERT_INT_EQ(km_store_get(a, km_registry_mesh(), "", "after", &r), 0);
            ASSERT_INT_EQ(km_store_update(a, r), 0);
            km_resource_free(r);
            seen = ev_wait(&log, "UPDATE Mesh /after", 3000);
        }
    }
    ASSERT(seen);
    km_store_free(b);
    km_store_free(a);
    pthread_mutex_destroy(&log.mu);
}

KM_TEST(pg_tls_mode_reaches_libpq)
{
    if (!pg_enabled("pg_tls_mode_reaches_libpq"))
        return;
    /* The test server has no TLS: verifyNone (sslmode=require) must refuse to go on in
     * clear text. */
    struct km_pg_config cfg = pg_cfg();
    cfg.tls_mode = "verifyNone";
    char err[512] = "";
    int code = 0;
    ASSERT(km_store_postgres_new(&cfg, err, sizeof(err), &code) == NULL);
    ASSERT_INT_EQ(code, KM_EUNAVAIL);
    ASSERT_STR_CONTAINS(err, "SSL");
}
