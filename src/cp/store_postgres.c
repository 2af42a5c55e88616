/* PostgreSQL store: Kuma's `resources` table (one row per resource, spec as JSON text), a small
 * pool of connections shared by the API threads, and a listener thread that turns the
 * `resource_events` notifications of the table's trigger into store events, so that changes
 * made by any kuma-cp on the same database reach every instance.
 *
 * Outages: an operation on a dead connection fails with KM_EUNAVAIL and drops the connection;
 * the next operation reconnects. After a failed connect every operation fails at once for
 * PG_DOWN_HOLD_US, so a dead database costs the API one connect timeout, not one per call.
 * The listener reconnects by itself with a growing back-off and wakes up on a pipe when the
 * store is destroyed, so destroy() never waits for the network. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <km/cp/store.h>

#define PG_MOD              "store.postgres"
#define PG_POOL_MAX         8
#define PG_CHANNEL          "resource_events"
#define PG_DOWN_HOLD_US     500000
#define PG_DEFAULT_TIMEOUT  5
#define PG_BACKOFF_MIN_MS   100
#define PG_BACKOFF_MAX_MS   5000
#define PG_MIGRATE_LOCK_KEY "7049301733"   /* arbitrary constant for pg_advisory_xact_lock */
#define PG_MAX_PAYLOAD      8192           /* NOTIFY payloads are below 8000 bytes */

/* Schema migrations, applied in order by `kuma-cp migrate up`; schema_migrations keeps the
 * number of the last one (one row, with golang-migrate's columns). Never edit a released
 * entry: append a new one. */
struct pg_migration {
    int64_t version;
    const char *sql;
};

static const struct pg_migration pg_migrations[] = {
    {1,
     "CREATE TABLE IF NOT EXISTS resources (\n"
     "    name varchar(253) NOT NULL,\n"
     "    mesh varchar(100) NOT NULL,\n"
     "    type varchar(100) NOT NULL,\n"
     "    version integer NOT NULL,\n"
     "    spec text,\n"
     "    creation_time timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),\n"
     "    modification_time timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),\n"
     "    owner_name varchar(253),\n"
     "    owner_mesh varchar(100),\n"
     "    owner_type varchar(100),\n"
     "    labels jsonb,\n"
     "    status jsonb,\n"
     "    CONSTRAINT resources_pkey PRIMARY KEY (name, mesh, type),\n"
     "    CONSTRAINT owner_fk FOREIGN KEY (owner_name, owner_mesh, owner_type)\n"
     "        REFERENCES resources (name, mesh, type) ON DELETE CASCADE\n"
     ");\n"
     "CREATE INDEX IF NOT EXISTS resources_owner_idx\n"
     "    ON resources (owner_name, owner_mesh, owner_type);\n"
     "CREATE INDEX IF NOT EXISTS resources_type_idx ON resources (type, mesh);\n"
     "CREATE OR REPLACE FUNCTION notify_event() RETURNS trigger AS $body$\n"
     "DECLARE\n"
     "    row_name text;\n"
     "    row_mesh text;\n"
     "    row_type text;\n"
     "BEGIN\n"
     "    IF TG_OP = 'DELETE' THEN\n"
     "        row_name := OLD.name; row_mesh := OLD.mesh; row_type := OLD.type;\n"
     "    ELSE\n"
     "        row_name := NEW.name; row_mesh := NEW.mesh; row_type := NEW.type;\n"
     "    END IF;\n"
     "    PERFORM pg_notify('" PG_CHANNEL "', json_build_object(\n"
     "        'action', TG_OP,\n"
     "        'data', json_build_object('name', row_name, 'mesh', row_mesh,\n"
     "                                  'type', row_type))::text);\n"
     "    RETURN NULL;\n"
     "END;\n"
     "$body$ LANGUAGE plpgsql;\n"
     "DROP TRIGGER IF EXISTS resource_events ON resources;\n"
     "CREATE TRIGGER resource_events AFTER INSERT OR UPDATE OR DELETE ON resources\n"
     "    FOR EACH ROW EXECUTE FUNCTION notify_event();\n"
     "CREATE TABLE IF NOT EXISTS locks (\n"
     "    name varchar(255) NOT NULL PRIMARY KEY,\n"
     "    record_version_number bigint,\n"
     "    data bytea,\n"
     "    owner varchar(255)\n"
     ");\n"
     "CREATE SEQUENCE IF NOT EXISTS locks_rvn OWNED BY locks.record_version_number;\n"},
};
#define PG_SCHEMA_VERSION (pg_migrations[KM_ARRAY_LEN(pg_migrations) - 1].version)

/* Columns every read selects, in this order (see row_decode). */
#define PG_COLS                                                                                    \
    "name, mesh, version, spec, labels::text, status::text, "                                      \
    "(extract(epoch FROM creation_time) * 1000000)::bigint, "                                      \
    "(extract(epoch FROM modification_time) * 1000000)::bigint"
#define PG_ORDER " ORDER BY mesh COLLATE \"C\", name COLLATE \"C\""

/* libpq connection parameters (keywords and values), all owned here. */
#define PG_MAX_PARAMS 20
struct pg_conninfo {
    char *strs[PG_MAX_PARAMS]; /* owned copies of the values */
    const char *keys[PG_MAX_PARAMS + 1];
    const char *vals[PG_MAX_PARAMS + 1];
    size_t n;
    int timeout_s;
    char *where; /* owned, "host:port/db" for messages */
};

struct pg_slot {
    PGconn *conn; /* owned, NULL when not connected */
    bool busy;
};

struct pg_store {
    struct pg_conninfo ci;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pg_slot slots[PG_POOL_MAX];
    int nslots;
    int query_timeout_ms;
    _Atomic int64_t down_until_us; /* fail fast until then (after a failed connect) */
    atomic_bool down;              /* last connect attempt failed (for logging once) */

    pthread_t listener;
    bool listener_started;
    atomic_bool stop;
    int wake[2];     /* self-pipe: destroy() writes to wake[1] */
    PGconn *lconn;   /* owned by the listener thread once started */
};

/* ------------------------------------------------------------------------------------------ */
/* Connection parameters                                                                      */

static void
conninfo_add(struct pg_conninfo *ci, const char *key, const char *val)
{
    if (!val || !*val || ci->n == PG_MAX_PARAMS)
        return;
    ci->strs[ci->n] = km_xstrdup(val);
    ci->keys[ci->n] = key;
    ci->vals[ci->n] = ci->strs[ci->n];
    ci->n++;
    ci->keys[ci->n] = NULL;
    ci->vals[ci->n] = NULL;
}

static void
conninfo_deinit(struct pg_conninfo *ci)
{
    for (size_t i = 0; i < ci->n; i++)
        KM_FREE(ci->strs[i]);
    ci->n = 0;
    KM_FREE(ci->where);
}

/* libpq's sslmode for Kuma's store.postgres.tls.mode; NULL when unknown. */
static const char *
pg_sslmode(const char *mode)
{
    if (!mode || !*mode || strcmp(mode, "disable") == 0)
        return "disable";
    if (strcmp(mode, "verifyNone") == 0)
        return "require";
    if (strcmp(mode, "verifyCa") == 0)
        return "verify-ca";
    if (strcmp(mode, "verifyFull") == 0)
        return "verify-full";
    return NULL;
}

static int
conninfo_init(struct pg_conninfo *ci, const struct km_pg_config *cfg, char *err, size_t errlen)
{
    char buf[32];
    memset(ci, 0, sizeof(*ci));
    const char *sslmode = pg_sslmode(cfg->tls_mode);
    if (!sslmode) {
        snprintf(err, errlen,
                 "store.postgres.tls.mode: unknown value \"%s\" (want disable, verifyNone, "
                 "verifyCa or verifyFull)",
                 cfg->tls_mode);
        return KM_EINVAL;
    }
    if (cfg->port < 0 || cfg->port > 65535) {
        snprintf(err, errlen, "store.postgres.port: %d is out of range 1-65535", cfg->port);
        return KM_EINVAL;
    }
    ci->timeout_s = cfg->connection_timeout_s > 0 ? cfg->connection_timeout_s : PG_DEFAULT_TIMEOUT;
    if (ci->timeout_s > 3600)
        ci->timeout_s = 3600;
    conninfo_add(ci, "host", cfg->host);
    if (cfg->port > 0) {
        snprintf(buf, sizeof(buf), "%d", cfg->port);
        conninfo_add(ci, "port", buf);
    }
    conninfo_add(ci, "user", cfg->user);
    conninfo_add(ci, "password", cfg->password);
    conninfo_add(ci, "dbname", cfg->db_name);
    conninfo_add(ci, "sslmode", sslmode);
    if (strcmp(sslmode, "disable") != 0) {
        /* With sslmode=require libpq verifies the CA when a root file is given: verifyNone
         * must not pass one. */
        if (strcmp(sslmode, "require") != 0)
            conninfo_add(ci, "sslrootcert", cfg->tls_ca_path);
        conninfo_add(ci, "sslcert", cfg->tls_cert_path);
        conninfo_add(ci, "sslkey", cfg->tls_key_path);
    }
    snprintf(buf, sizeof(buf), "%d", ci->timeout_s < 2 ? 2 : ci->timeout_s);
    conninfo_add(ci, "connect_timeout", buf);
    conninfo_add(ci, "application_name", "kuma-cp");
    conninfo_add(ci, "client_encoding", "UTF8");
    /* Find dead peers (pulled cable, killed VM) instead of waiting forever. */
    conninfo_add(ci, "keepalives", "1");
    conninfo_add(ci, "keepalives_idle", "10");
    conninfo_add(ci, "keepalives_interval", "5");
    conninfo_add(ci, "keepalives_count", "3");
    snprintf(buf, sizeof(buf), "%d", (ci->timeout_s < 5 ? 5 : ci->timeout_s) * 2000);
    conninfo_add(ci, "tcp_user_timeout", buf);
    ci->where = km_xasprintf("%s:%d/%s", cfg->host && *cfg->host ? cfg->host : "localhost",
                             cfg->port > 0 ? cfg->port : 5432,
                             cfg->db_name && *cfg->db_name ? cfg->db_name : "(default)");
    return 0;
}

/* libpq messages end with a newline; copies <msg> without it. */
static void
copy_msg(char *dst, size_t len, const char *msg)
{
    if (!len)
        return;
    snprintf(dst, len, "%s", msg ? msg : "");
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == '\r' || dst[n - 1] == ' '))
        dst[--n] = '\0';
    for (char *p = dst; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

static void
pg_notice_quiet(void *arg, const char *message)
{
    char buf[512];
    copy_msg(buf, sizeof(buf), message);
    km_log_debug(PG_MOD, "server notice: %s", buf);
}

/* Blocking connect (bounded by connect_timeout). Returns NULL with a message in <err>. */
static PGconn *
pg_connect(const struct pg_conninfo *ci, char *err, size_t errlen)
{
    PGconn *c = PQconnectdbParams(ci->keys, ci->vals, 0);
    if (!c) {
        snprintf(err, errlen, "cannot connect to PostgreSQL at %s: out of memory", ci->where);
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        copy_msg(msg, sizeof(msg), PQerrorMessage(c));
        snprintf(err, errlen, "cannot connect to PostgreSQL at %s: %s", ci->where, msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, pg_notice_quiet, NULL);
    return c;
}

/* ------------------------------------------------------------------------------------------ */
/* Pool and query execution                                                                   */

static int
pool_acquire(struct pg_store *p)
{
    int idx = -1;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        for (int i = 0; i < p->nslots && idx < 0; i++)
            if (!p->slots[i].busy && p->slots[i].conn)
                idx = i;
        for (int i = 0; i < p->nslots && idx < 0; i++)
            if (!p->slots[i].busy)
                idx = i;
        if (idx >= 0)
            break;
        pthread_cond_wait(&p->cv, &p->mu);
    }
    p->slots[idx].busy = true;
    pthread_mutex_unlock(&p->mu);
    return idx;
}

static void
pool_release(struct pg_store *p, int idx)
{
    pthread_mutex_lock(&p->mu);
    p->slots[idx].busy = false;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Makes the slot's connection usable: drops a connection the server has closed (detected
 * without blocking: libpq sockets are non-blocking underneath) and reconnects. */
static int
slot_ready(struct pg_store *p, struct pg_slot *sl)
{
    if (sl->conn) {
        PQconsumeInput(sl->conn);
        if (PQstatus(sl->conn) != CONNECTION_OK || PQtransactionStatus(sl->conn) != PQTRANS_IDLE) {
            PQfinish(sl->conn);
            sl->conn = NULL;
        }
    }
    if (sl->conn)
        return 0;
    if (km_now_us() < atomic_load(&p->down_until_us))
        return KM_EUNAVAIL;
    char err[640];
    sl->conn = pg_connect(&p->ci, err, sizeof(err));
    if (!sl->conn) {
        atomic_store(&p->down_until_us, km_now_us() + PG_DOWN_HOLD_US);
        if (!atomic_exchange(&p->down, true))
            km_log_warn(PG_MOD, "%s", err);
        return KM_EUNAVAIL;
    }
    if (atomic_exchange(&p->down, false))
        km_log_info(PG_MOD, "PostgreSQL at %s is reachable again", p->ci.where);
    return 0;
}

static bool
state_is(const char *st, const char *want)
{
    return st && strcmp(st, want) == 0;
}

static bool
state_class(const char *st, const char *cls)
{
    return st && strncmp(st, cls, 2) == 0;
}

/* Maps a finished command to a KM_E* code. */
static int
pg_classify(PGconn *c, const PGresult *res)
{
    ExecStatusType es = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK)
        return 0;
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char msg[512];
    copy_msg(msg, sizeof(msg), res ? PQresultErrorMessage(res) : PQerrorMessage(c));
    int rc;
    if (PQstatus(c) == CONNECTION_BAD || !st || state_class(st, "08") || state_class(st, "53") ||
        state_is(st, "57P01") || state_is(st, "57P02") || state_is(st, "57P03") ||
        state_is(st, "57014"))
        rc = KM_EUNAVAIL;
    else if (state_is(st, "23505"))
        rc = KM_ECONFLICT; /* unique violation: exists */
    else if (state_is(st, "23503"))
        rc = KM_ENOTFOUND; /* foreign key: the owner (Mesh) does not exist */
    else if (state_is(st, "42P01") || state_is(st, "42703") || state_is(st, "42883"))
        rc = KM_ESCHEMA;
    else if (state_class(st, "22"))
        rc = KM_EINVAL; /* data exception: too long, bad encoding, bad JSON, out of range */
    else
        rc = KM_EIO;
    if (rc == KM_EUNAVAIL || rc == KM_EINVAL)
        km_log_debug(PG_MOD, "query failed (SQLSTATE %s): %s", st ? st : "-", msg);
    else if (rc != KM_ECONFLICT && rc != KM_ENOTFOUND)
        km_log_warn(PG_MOD, "query failed (SQLSTATE %s): %s", st ? st : "-", msg);
    return rc;
}

/* PQexecParams with a deadline: a server that accepts connections but does not answer
 * (stopped process, stuck storage) must not hold API threads forever. On timeout returns NULL
 * with *timed_out set; the connection is then unusable. */
static PGresult *
exec_bounded(PGconn *c, const char *sql, int nparams, const char *const *vals, int timeout_ms,
             bool *timed_out)
{
    if (!PQsendQueryParams(c, sql, nparams, NULL, vals, NULL, NULL, 0))
        return NULL;
    int64_t deadline = km_now_us() + (int64_t)timeout_ms * 1000;
    PGresult *keep = NULL;
    for (;;) {
        while (PQisBusy(c)) {
            int64_t left = deadline - km_now_us();
            if (left <= 0) {
                *timed_out = true;
                PQclear(keep);
                return NULL;
            }
            struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
            int n = poll(&pfd, 1, (int)((left + 999) / 1000));
            if ((n < 0 && errno != EINTR) || (n > 0 && !PQconsumeInput(c)))
                return keep; /* broken: the caller sees the connection state */
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            break;
        ExecStatusType es = PQresultStatus(r);
        if (!keep || (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK)) {
            PQclear(keep);
            keep = r;
        } else {
            PQclear(r);
        }
        if (PQstatus(c) != CONNECTION_OK)
            break;
    }
    return keep;
}

/* Runs one parameterized statement on a pooled connection. *out receives the result (caller
 * clears) when the statement succeeded. <idempotent> allows one retry on a fresh connection
 * when the first one turned out to be dead. */
static int
pg_exec(struct pg_store *p, const char *sql, int nparams, const char *const *vals,
        bool idempotent, PGresult **out)
{
    *out = NULL;
    for (int attempt = 0;; attempt++) {
        int idx = pool_acquire(p);
        struct pg_slot *sl = &p->slots[idx];
        int rc = slot_ready(p, sl);
        if (rc) {
            pool_release(p, idx);
            return rc;
        }
        bool timed_out = false;
        PGresult *res = exec_bounded(sl->conn, sql, nparams, vals, p->query_timeout_ms,
                                     &timed_out);
        rc = timed_out ? KM_EUNAVAIL : pg_classify(sl->conn, res);
        bool dead = timed_out || PQstatus(sl->conn) != CONNECTION_OK;
        if (timed_out)
            km_log_warn(PG_MOD, "no answer from PostgreSQL at %s within %d ms; dropping the "
                        "connection", p->ci.where, p->query_timeout_ms);
        if (dead) {
            PQfinish(sl->conn);
            sl->conn = NULL;
        }
        pool_release(p, idx);
        if (rc == 0) {
            *out = res;
            return 0;
        }
        PQclear(res);
        if (!(rc == KM_EUNAVAIL && dead && !timed_out && idempotent && attempt == 0))
            return rc;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */

/* "YYYY-MM-DD HH:MM:SS.ffffff" in UTC for a timestamp parameter. */
static int
pg_time_param(int64_t us, char *buf, size_t len)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 1 || tm.tm_year + 1900 > 9999)
        return KM_EINVAL;
    snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d.%06d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
    return 0;
}

static bool
parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

/* JSON text for a column; NULL for a NULL json (SQL NULL). *bad is set when it cannot be
 * encoded. */
static char *
json_param(const json_t *j, bool *bad)
{
    if (!j)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        *bad = true;
    return s;
}

static int
key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* jsonb keeps object keys in its own order (shortest first): labels come back sorted by
 * key, the way Kuma's Go map marshalling prints them. */
static json_t *
labels_sorted(json_t *in)
{
    size_t n = json_object_size(in), i = 0;
    const char **keys = km_xcalloc(n ? n : 1, sizeof(*keys));
    const char *k;
    json_t *v;
    json_object_foreach (in, k, v)
        if (i < n)
            keys[i++] = k;
    qsort(keys, i, sizeof(*keys), key_cmp);
    json_t *out = json_object();
    if (!out)
        abort();
    for (size_t j = 0; j < i; j++)
        json_object_set(out, keys[j], json_object_get(in, keys[j]));
    free(keys);
    return out;
}

/* Parses a JSON object column; NULL column -> *out NULL. */
static int
column_json(const PGresult *res, int row, int col, const char *what, json_t **out)
{
    *out = NULL;
    if (PQgetisnull(res, row, col))
        return 0;
    json_error_t jerr;
    json_t *j = json_loadb(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), 0,
                           &jerr);
    if (!json_is_object(j)) {
        km_log_warn(PG_MOD, "stored %s of %s/%s is not a JSON object: %s", what,
                    PQgetvalue(res, row, 1), PQgetvalue(res, row, 0),
                    j ? "wrong type" : jerr.text);
        json_decref(j);
        return KM_EIO;
    }
    *out = j;
    return 0;
}

/* Builds a resource from a row selected with PG_COLS. */
static int
row_decode(const PGresult *res, int row, const struct km_rtype *t, struct km_resource **out)
{
    *out = NULL;
    if (PQnfields(res) != 8)
        return KM_EIO;
    struct km_resource *r = km_resource_new(t, PQgetvalue(res, row, 1), PQgetvalue(res, row, 0));
    json_t *spec = NULL, *labels = NULL, *status = NULL;
    int rc = KM_EIO;
    if (!parse_i64(PQgetvalue(res, row, 2), &r->version) ||
        !parse_i64(PQgetvalue(res, row, 6), &r->creation_us) ||
        !parse_i64(PQgetvalue(res, row, 7), &r->modification_us)) {
        km_log_warn(PG_MOD, "stored %s %s/%s has a malformed version or time", t->name,
                    r->mesh, r->name);
        goto fail;
    }
    if ((rc = column_json(res, row, 3, "spec", &spec)) ||
        (rc = column_json(res, row, 4, "labels", &labels)) ||
        (rc = column_json(res, row, 5, "status", &status)))
        goto fail;
    if (spec) {
        json_decref(r->spec);
        r->spec = spec;
        spec = NULL;
    }
    if (labels) {
        r->labels = labels_sorted(labels);
        json_decref(labels);
        labels = NULL;
    }
    r->status = status;
    *out = r;
    return 0;
fail:
    json_decref(spec);
    json_decref(labels);
    json_decref(status);
    km_resource_free(r);
    return rc ? rc : KM_EIO;
}

static const char *
scope_mesh(const struct km_rtype *t, const char *mesh)
{
    return t->scope == KM_SCOPE_GLOBAL || !mesh ? "" : mesh;
}

/* Whether (type, mesh, name) exists: tells a stale version from a missing row. */
static int
row_exists(struct pg_store *p, const char *type, const char *mesh, const char *name)
{
    const char *vals[3] = {name, mesh, type};
    PGresult *res;
    int rc = pg_exec(p, "SELECT 1 FROM resources WHERE name = $1 AND mesh = $2 AND type = $3", 3,
                     vals, true, &res);
    if (rc)
        return rc;
    rc = PQntuples(res) > 0 ? KM_ECONFLICT : KM_ENOTFOUND;
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Store operations                                                                           */

static int
pg_create(struct km_store *s, struct km_resource *r)
{
    struct pg_store *p = s->impl;
    const char *mesh = scope_mesh(r->type, r->mesh);
    bool mesh_scoped = r->type->scope == KM_SCOPE_MESH;
    char ts[40];
    bool bad = false;
    int64_t created = r->creation_us ? r->creation_us : km_now_us();
    if (pg_time_param(created, ts, sizeof(ts)))
        return KM_EINVAL;
    char *spec = r->spec ? json_param(r->spec, &bad) : km_xstrdup("{}");
    char *labels = json_param(r->labels, &bad);
    char *status = json_param(r->status, &bad);
    int rc = KM_EINVAL;
    if (bad)
        goto out;
    const char *vals[10] = {
        r->name, mesh, r->type->name, spec, ts,
        mesh_scoped ? mesh : NULL, mesh_scoped ? "" : NULL, mesh_scoped ? "Mesh" : NULL,
        labels, status,
    };
    PGresult *res;
    rc = pg_exec(p,
                 "INSERT INTO resources (name, mesh, type, version, spec, creation_time, "
                 "modification_time, owner_name, owner_mesh, owner_type, labels, status) "
                 "VALUES ($1, $2, $3, 1, $4, $5::timestamp, $5::timestamp, $6, $7, $8, "
                 "$9::jsonb, $10::jsonb)",
                 10, vals, false, &res);
    if (rc)
        goto out;
    PQclear(res);
    r->version = 1;
    r->creation_us = created;
    r->modification_us = created;
out:
    free(spec);
    free(labels);
    free(status);
    return rc;
}

static int
pg_update(struct km_store *s, struct km_resource *r)
{
    struct pg_store *p = s->impl;
    const char *mesh = scope_mesh(r->type, r->mesh);
    char ts[40], ver[24];
    bool bad = false;
    if (pg_time_param(km_now_us(), ts, sizeof(ts)))
        return KM_EIO;
    snprintf(ver, sizeof(ver), "%" PRId64, r->version);
    char *spec = r->spec ? json_param(r->spec, &bad) : km_xstrdup("{}");
    char *labels = json_param(r->labels, &bad);
    char *status = json_param(r->status, &bad);
    int rc = KM_EINVAL;
    PGresult *res = NULL;
    if (bad)
        goto out;
    const char *vals[8] = {r->name, mesh, r->type->name, spec, labels, status, ts, ver};
    rc = pg_exec(p,
                 "UPDATE resources SET spec = $4, labels = $5::jsonb, status = $6::jsonb, "
                 "version = version + 1, modification_time = GREATEST($7::timestamp, "
                 "modification_time + interval '1 microsecond') "
                 "WHERE name = $1 AND mesh = $2 AND type = $3 AND version = $8::bigint "
                 "RETURNING version, (extract(epoch FROM creation_time) * 1000000)::bigint, "
                 "(extract(epoch FROM modification_time) * 1000000)::bigint",
                 8, vals, false, &res);
    if (rc)
        goto out;
    if (PQntuples(res) == 0) {
        rc = row_exists(p, r->type->name, mesh, r->name);
        goto out;
    }
    int64_t v, c, m;
    if (PQnfields(res) != 3 || !parse_i64(PQgetvalue(res, 0, 0), &v) ||
        !parse_i64(PQgetvalue(res, 0, 1), &c) || !parse_i64(PQgetvalue(res, 0, 2), &m)) {
        rc = KM_EIO;
        goto out;
    }
    r->version = v;
    r->creation_us = c;
    r->modification_us = m;
out:
    PQclear(res);
    free(spec);
    free(labels);
    free(status);
    return rc;
}

static int
pg_remove(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
          int64_t version)
{
    struct pg_store *p = s->impl;
    char ver[24];
    mesh = scope_mesh(t, mesh);
    snprintf(ver, sizeof(ver), "%" PRId64, version);
    const char *vals[4] = {name ? name : "", mesh, t->name, ver};
    PGresult *res;
    int rc = pg_exec(p,
                     "DELETE FROM resources WHERE name = $1 AND mesh = $2 AND type = $3 "
                     "AND ($4::bigint = 0 OR version = $4::bigint)",
                     4, vals, false, &res);
    if (rc)
        return rc;
    const char *n = PQcmdTuples(res);
    bool deleted = n && *n && strcmp(n, "0") != 0;
    PQclear(res);
    if (deleted)
        return 0;
    return row_exists(p, t->name, mesh, vals[0]);
}

static int
pg_get(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
       struct km_resource **out)
{
    struct pg_store *p = s->impl;
    const char *vals[3] = {name ? name : "", scope_mesh(t, mesh), t->name};
    PGresult *res;
    *out = NULL;
    int rc = pg_exec(p,
                     "SELECT " PG_COLS " FROM resources "
                     "WHERE name = $1 AND mesh = $2 AND type = $3",
                     3, vals, true, &res);
    if (rc)
        return rc;
    rc = PQntuples(res) == 0 ? KM_ENOTFOUND : row_decode(res, 0, t, out);
    PQclear(res);
    return rc;
}

static int
pg_list(struct km_store *s, const struct km_rtype *t, const char *mesh,
        struct km_resource_list *out)
{
    struct pg_store *p = s->impl;
    bool filter = mesh && t->scope == KM_SCOPE_MESH;
    const char *vals[2] = {t->name, filter ? mesh : NULL};
    PGresult *res;
    int rc = filter ? pg_exec(p, "SELECT " PG_COLS " FROM resources WHERE type = $1 AND mesh = $2"
                                 PG_ORDER, 2, vals, true, &res)
                    : pg_exec(p, "SELECT " PG_COLS " FROM resources WHERE type = $1" PG_ORDER,
                              1, vals, true, &res);
    if (rc)
        return rc;
    size_t first = out->n;
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct km_resource *r;
        if ((rc = row_decode(res, i, t, &r)) != 0) {
            while (out->n > first)
                km_resource_free(out->items[--out->n]);
            break;
        }
        km_resource_list_push(out, r);
    }
    PQclear(res);
    return rc;
}

static int
pg_count(struct km_store *s, const struct km_rtype *t, int64_t *out)
{
    struct pg_store *p = s->impl;
    const char *vals[1] = {t->name};
    PGresult *res;
    *out = 0;
    int rc = pg_exec(p, "SELECT count(*) FROM resources WHERE type = $1", 1, vals, true, &res);
    if (rc)
        return rc;
    if (PQntuples(res) != 1 || !parse_i64(PQgetvalue(res, 0, 0), out))
        rc = KM_EIO;
    PQclear(res);
    return rc;
}

static int
pg_ping(struct km_store *s)
{
    struct pg_store *p = s->impl;
    PGresult *res;
    int rc = pg_exec(p, "SELECT 1", 0, NULL, true, &res);
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Listener                                                                                   */

/* Waits for <events> on <fd> (-1: none) or for the stop pipe, at most <timeout_ms> (-1:
 * forever). 1 = fd ready, 0 = timeout, -1 = stop requested. */
static int
wait_fd(struct pg_store *p, int fd, short events, int timeout_ms)
{
    if (atomic_load(&p->stop))
        return -1;
    int64_t deadline = timeout_ms < 0 ? 0 : km_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        struct pollfd pfd[2] = {{.fd = p->wake[0], .events = POLLIN},
                                {.fd = fd, .events = events}};
        int wait_ms = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - km_now_us();
            wait_ms = left <= 0 ? 0 : (int)((left + 999) / 1000);
        }
        int n = poll(pfd, 2, wait_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 0;
        if (pfd[0].revents || atomic_load(&p->stop))
            return -1;
        if (n == 0)
            return 0;
        return 1;
    }
}

static int64_t
ms_left(int64_t deadline_us)
{
    int64_t left = deadline_us - km_now_us();
    return left <= 0 ? 0 : (left + 999) / 1000;
}

/* Connects without blocking (so that destroy() interrupts it) and runs LISTEN. */
static int
listener_open(struct pg_store *p, PGconn **out, char *err, size_t errlen)
{
    int64_t deadline = km_now_us() + (int64_t)p->ci.timeout_s * 1000000;
    PGconn *c = PQconnectStartParams(p->ci.keys, p->ci.vals, 0);
    *out = NULL;
    if (!c || PQstatus(c) == CONNECTION_BAD)
        goto fail;
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK) {
        if (ps == PGRES_POLLING_FAILED)
            goto fail;
        int w = wait_fd(p, PQsocket(c), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                        (int)ms_left(deadline));
        if (w <= 0) {
            snprintf(err, errlen, "cannot connect to PostgreSQL at %s: %s", p->ci.where,
                     w < 0 ? "stopped" : "timeout");
            PQfinish(c);
            return KM_EUNAVAIL;
        }
        ps = PQconnectPoll(c);
    }
    PQsetNoticeProcessor(c, pg_notice_quiet, NULL);
    if (!PQsendQuery(c, "LISTEN " PG_CHANNEL))
        goto fail;
    for (;;) {
        if (!PQconsumeInput(c))
            goto fail;
        if (!PQisBusy(c))
            break;
        if (wait_fd(p, PQsocket(c), POLLIN, (int)ms_left(deadline)) <= 0) {
            snprintf(err, errlen, "LISTEN on %s: timeout", p->ci.where);
            PQfinish(c);
            return KM_EUNAVAIL;
        }
    }
    int rc = 0;
    PGresult *res;
    while ((res = PQgetResult(c)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            char msg[512];
            copy_msg(msg, sizeof(msg), PQresultErrorMessage(res));
            snprintf(err, errlen, "LISTEN on %s: %s", p->ci.where, msg);
            rc = KM_EUNAVAIL;
        }
        PQclear(res);
    }
    if (rc) {
        PQfinish(c);
        return rc;
    }
    *out = c;
    return 0;
fail:
    if (c) {
        char msg[512];
        copy_msg(msg, sizeof(msg), PQerrorMessage(c));
        snprintf(err, errlen, "cannot connect to PostgreSQL at %s: %s", p->ci.where, msg);
        PQfinish(c);
    } else {
        snprintf(err, errlen, "cannot connect to PostgreSQL at %s: out of memory", p->ci.where);
    }
    return KM_EUNAVAIL;
}

/* One notification: {"action": "INSERT|UPDATE|DELETE", "data": {"name", "mesh", "type"}}. */
static void
listener_dispatch(struct km_store *s, const char *payload)
{
    size_t len = strnlen(payload, PG_MAX_PAYLOAD + 1);
    if (len > PG_MAX_PAYLOAD) {
        km_log_warn(PG_MOD, "ignoring an oversized notification");
        return;
    }
    json_t *j = json_loadb(payload, len, 0, NULL);
    json_t *data = json_object_get(j, "data");
    const char *action = json_string_value(json_object_get(j, "action"));
    const char *name = json_string_value(json_object_get(data, "name"));
    const char *mesh = json_string_value(json_object_get(data, "mesh"));
    const char *type = json_string_value(json_object_get(data, "type"));
    enum km_store_event_kind kind;
    if (!action || !name || !mesh || !type) {
        km_log_warn(PG_MOD, "ignoring a malformed notification");
        goto out;
    }
    if (strcmp(action, "INSERT") == 0)
        kind = KM_STORE_EV_CREATE;
    else if (strcmp(action, "UPDATE") == 0)
        kind = KM_STORE_EV_UPDATE;
    else if (strcmp(action, "DELETE") == 0)
        kind = KM_STORE_EV_DELETE;
    else
        goto out;
    const struct km_rtype *t = km_registry_find(type);
    if (!t) {
        km_log_debug(PG_MOD, "ignoring an event for unknown type %s", type);
        goto out;
    }
    km_store_emit(s, kind, t->name, mesh, name);
out:
    json_decref(j);
}

static void *
listener_main(void *arg)
{
    struct km_store *s = arg;
    struct pg_store *p = s->impl;
    int backoff_ms = PG_BACKOFF_MIN_MS;
    bool warned = false;
    while (!atomic_load(&p->stop)) {
        if (!p->lconn) {
            char err[640];
            PGconn *c;
            if (listener_open(p, &c, err, sizeof(err)) != 0) {
                if (atomic_load(&p->stop))
                    break;
                if (!warned)
                    km_log_warn(PG_MOD, "change listener: %s (retrying)", err);
                warned = true;
                if (wait_fd(p, -1, 0, backoff_ms) < 0)
                    break;
                backoff_ms *= 2;
                if (backoff_ms > PG_BACKOFF_MAX_MS)
                    backoff_ms = PG_BACKOFF_MAX_MS;
                continue;
            }
            p->lconn = c;
            backoff_ms = PG_BACKOFF_MIN_MS;
            if (warned)
                km_log_info(PG_MOD, "change listener reconnected to %s", p->ci.where);
            warned = false;
        }
        int fd = PQsocket(p->lconn);
        if (fd >= 0 && wait_fd(p, fd, POLLIN, -1) < 0)
            break;
        if (fd < 0 || !PQconsumeInput(p->lconn) || PQstatus(p->lconn) != CONNECTION_OK) {
            char msg[512];
            copy_msg(msg, sizeof(msg), PQerrorMessage(p->lconn));
            km_log_warn(PG_MOD, "change listener lost its connection: %s", msg);
            warned = true;
            PQfinish(p->lconn);
            p->lconn = NULL;
            continue;
        }
        PGnotify *n;
        while ((n = PQnotifies(p->lconn)) != NULL) {
            if (n->relname && strcmp(n->relname, PG_CHANNEL) == 0 && n->extra)
                listener_dispatch(s, n->extra);
            PQfreemem(n);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Schema                                                                                     */

/* Checks that `kuma-cp migrate up` ran: 0, or KM_ESCHEMA / KM_EUNAVAIL with a message. */
static int
schema_check(PGconn *c, const char *where, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, "SELECT version, dirty FROM schema_migrations "
                              "ORDER BY version DESC LIMIT 1");
    int rc = 0;
    ExecStatusType es = PQresultStatus(res);
    if (es != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state_is(st, "42P01")) {
            snprintf(err, errlen,
                     "the database %s has no kuma-cp schema: run `kuma-cp migrate up` first",
                     where);
            rc = KM_ESCHEMA;
        } else {
            char msg[512];
            copy_msg(msg, sizeof(msg), PQresultErrorMessage(res));
            snprintf(err, errlen, "cannot read the schema version of %s: %s", where, msg);
            rc = PQstatus(c) == CONNECTION_OK ? KM_EIO : KM_EUNAVAIL;
        }
        goto out;
    }
    int64_t v = 0;
    if (PQntuples(res) != 1 || !parse_i64(PQgetvalue(res, 0, 0), &v)) {
        snprintf(err, errlen,
                 "the database %s has no kuma-cp schema version: run `kuma-cp migrate up`",
                 where);
        rc = KM_ESCHEMA;
    } else if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
        snprintf(err, errlen,
                 "the schema of %s is marked dirty at version %" PRId64
                 " (an earlier migration failed): fix it, then run `kuma-cp migrate up`",
                 where, v);
        rc = KM_ESCHEMA;
    } else if (v < PG_SCHEMA_VERSION) {
        snprintf(err, errlen,
                 "the schema of %s is at version %" PRId64 ", this kuma-cp needs %" PRId64
                 ": run `kuma-cp migrate up`",
                 where, v, (int64_t)PG_SCHEMA_VERSION);
        rc = KM_ESCHEMA;
    } else if (v > PG_SCHEMA_VERSION) {
        km_log_warn(PG_MOD, "the schema of %s (version %" PRId64 ") is newer than this kuma-cp "
                    "knows (%" PRId64 ")", where, v, (int64_t)PG_SCHEMA_VERSION);
    }
out:
    PQclear(res);
    return rc;
}

/* Runs a statement during migration; 0 or a message in <err>. */
static int
migrate_exec(PGconn *c, const char *sql, int nparams, const char *const *vals, PGresult **out,
             char *err, size_t errlen)
{
    PGresult *res = nparams ? PQexecParams(c, sql, nparams, NULL, vals, NULL, NULL, 0)
                            : PQexec(c, sql);
    ExecStatusType es = PQresultStatus(res);
    if (es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK) {
        if (out)
            *out = res;
        else
            PQclear(res);
        return 0;
    }
    char msg[512];
    copy_msg(msg, sizeof(msg), res ? PQresultErrorMessage(res) : PQerrorMessage(c));
    snprintf(err, errlen, "migration failed: %s", msg);
    PQclear(res);
    return PQstatus(c) == CONNECTION_OK ? KM_EIO : KM_EUNAVAIL;
}

int
km_store_postgres_migrate(const struct km_pg_config *cfg, char *err, size_t errlen)
{
    struct pg_conninfo ci;
    PGresult *res = NULL;
    int rc = conninfo_init(&ci, cfg, err, errlen);
    if (rc)
        return rc;
    PGconn *c = pg_connect(&ci, err, errlen);
    if (!c) {
        conninfo_deinit(&ci);
        return KM_EUNAVAIL;
    }
    /* One transaction under an advisory lock: concurrent `migrate up` runs serialize and a
     * failed step leaves nothing behind. */
    if ((rc = migrate_exec(c, "BEGIN", 0, NULL, NULL, err, errlen)) ||
        (rc = migrate_exec(c, "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK_KEY ")", 0, NULL,
                           NULL, err, errlen)) ||
        (rc = migrate_exec(c,
                           "CREATE TABLE IF NOT EXISTS schema_migrations ("
                           "version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)",
                           0, NULL, NULL, err, errlen)) ||
        (rc = migrate_exec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL,
                           &res, err, errlen)))
        goto fail;
    int64_t cur = 0;
    if (PQntuples(res) != 1 || !parse_i64(PQgetvalue(res, 0, 0), &cur)) {
        snprintf(err, errlen, "migration failed: unreadable schema_migrations");
        rc = KM_EIO;
        goto fail;
    }
    PQclear(res);
    res = NULL;
    if (cur > PG_SCHEMA_VERSION) {
        km_log_warn(PG_MOD, "the schema of %s (version %" PRId64 ") is newer than this kuma-cp "
                    "knows (%" PRId64 "); nothing to do", ci.where, cur,
                    (int64_t)PG_SCHEMA_VERSION);
    }
    int64_t applied = cur;
    for (size_t i = 0; i < KM_ARRAY_LEN(pg_migrations); i++) {
        if (pg_migrations[i].version <= cur)
            continue;
        if ((rc = migrate_exec(c, pg_migrations[i].sql, 0, NULL, NULL, err, errlen)))
            goto fail;
        applied = pg_migrations[i].version;
    }
    if (applied != cur) {
        char ver[24];
        snprintf(ver, sizeof(ver), "%" PRId64, applied);
        const char *vals[1] = {ver};
        if ((rc = migrate_exec(c, "DELETE FROM schema_migrations", 0, NULL, NULL, err, errlen)) ||
            (rc = migrate_exec(c, "INSERT INTO schema_migrations (version, dirty) "
                                  "VALUES ($1::bigint, false)",
                               1, vals, NULL, err, errlen)))
            goto fail;
    }
    if ((rc = migrate_exec(c, "COMMIT", 0, NULL, NULL, err, errlen)))
        goto fail;
    if (applied != cur)
        km_log_info(PG_MOD, "schema of %s migrated from version %" PRId64 " to %" PRId64,
                    ci.where, cur, applied);
    else
        km_log_info(PG_MOD, "schema of %s is up to date (version %" PRId64 ")", ci.where, cur);
    PQfinish(c);
    conninfo_deinit(&ci);
    return 0;
fail:
    PQclear(res);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
    conninfo_deinit(&ci);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Life cycle                                                                                 */

static void
pg_store_free_impl(struct pg_store *p)
{
    if (p->listener_started) {
        atomic_store(&p->stop, true);
        ssize_t w;
        do {
            w = write(p->wake[1], "x", 1);
        } while (w < 0 && errno == EINTR);
        pthread_join(p->listener, NULL);
    }
    if (p->lconn)
        PQfinish(p->lconn);
    for (int i = 0; i < PG_POOL_MAX; i++)
        if (p->slots[i].conn)
            PQfinish(p->slots[i].conn);
    if (p->wake[0] >= 0)
        close(p->wake[0]);
    if (p->wake[1] >= 0)
        close(p->wake[1]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    conninfo_deinit(&p->ci);
    free(p);
}

static void
pg_destroy(struct km_store *s)
{
    pg_store_free_impl(s->impl);
    free(s);
}

static const struct km_store_ops pg_ops = {
    .name = "postgres",
    .create = pg_create,
    .update = pg_update,
    .remove = pg_remove,
    .get = pg_get,
    .list = pg_list,
    .count = pg_count,
    .ping = pg_ping,
    .destroy = pg_destroy,
};

struct km_store *
km_store_postgres_new(const struct km_pg_config *cfg, char *err, size_t errlen, int *code)
{
    struct pg_store *p = km_xcalloc(1, sizeof(*p));
    struct km_store *s = NULL;
    int rc;
    p->wake[0] = p->wake[1] = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if ((rc = conninfo_init(&p->ci, cfg, err, errlen)))
        goto fail;
    p->nslots = cfg->max_open_connections > 0 && cfg->max_open_connections < PG_POOL_MAX
                    ? cfg->max_open_connections
                    : PG_POOL_MAX;
    p->query_timeout_ms = (p->ci.timeout_s * 3 < 10 ? 10 : p->ci.timeout_s * 3) * 1000;
    if (pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        rc = KM_EIO;
        goto fail;
    }
    p->slots[0].conn = pg_connect(&p->ci, err, errlen);
    if (!p->slots[0].conn) {
        rc = KM_EUNAVAIL;
        goto fail;
    }
    if ((rc = schema_check(p->slots[0].conn, p->ci.where, err, errlen)))
        goto fail;
    /* LISTEN before returning: every change after new() produces an event. */
    if ((rc = listener_open(p, &p->lconn, err, errlen)))
        goto fail;
    s = km_xcalloc(1, sizeof(*s));
    s->ops = &pg_ops;
    s->impl = p;
    if (pthread_create(&p->listener, NULL, listener_main, s) != 0) {
        snprintf(err, errlen, "cannot start the change listener thread");
        rc = KM_EIO;
        goto fail;
    }
    p->listener_started = true;
    km_log_info(PG_MOD, "connected to PostgreSQL at %s (pool of %d, schema version %" PRId64 ")",
                p->ci.where, p->nslots, (int64_t)PG_SCHEMA_VERSION);
    if (code)
        *code = 0;
    return s;
fail:
    if (code)
        *code = rc;
    pg_store_free_impl(p);
    free(s);
    return NULL;
}
