/* Resource store: a vtable with a memory backend (embedded default) and a PostgreSQL backend.
 *
 * Every backend is thread safe: the API server calls it from several threads. Versions give
 * optimistic concurrency: update() and delete() of a stale version fail with KM_ECONFLICT.
 * Backends report changes through the event callback, including changes made by another
 * kuma-cp instance on the same database. */
#ifndef KM_CP_STORE_H
#define KM_CP_STORE_H

#include <stdatomic.h>

#include <km/cp/resource.h>

enum km_store_event_kind { KM_STORE_EV_CREATE = 0, KM_STORE_EV_UPDATE, KM_STORE_EV_DELETE };

/* Called from a store thread; must be quick and must not call back into the store. */
typedef void (*km_store_event_fn)(void *ctx, enum km_store_event_kind kind, const char *type,
                                  const char *mesh, const char *name);

struct km_resource_list {
    struct km_resource **items; /* owned, each owned */
    size_t n;
    size_t cap;
};
void km_resource_list_init(struct km_resource_list *l);
void km_resource_list_push(struct km_resource_list *l, struct km_resource *r); /* takes r */
void km_resource_list_deinit(struct km_resource_list *l);

struct km_store;

struct km_store_ops {
    const char *name; /* "memory", "postgres" */
    /* Stores a new resource; sets version 1 and both times (when creation_us is 0).
     * KM_ECONFLICT when it exists, KM_ENOTFOUND when its mesh does not exist. */
    int (*create)(struct km_store *s, struct km_resource *r);
    /* Replaces a resource whose stored version equals r->version, then increments
     * r->version and sets modification_us. KM_ENOTFOUND / KM_ECONFLICT. */
    int (*update)(struct km_store *s, struct km_resource *r);
    /* Deletes one resource (a Mesh also deletes everything in it). <version> 0 = any. */
    int (*remove)(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
                  int64_t version);
    /* Fetches a copy into *out (caller frees). */
    int (*get)(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
               struct km_resource **out);
    /* Lists the type, sorted by (mesh, name); <mesh> NULL lists every mesh. Appends copies. */
    int (*list)(struct km_store *s, const struct km_rtype *t, const char *mesh,
                struct km_resource_list *out);
    /* Number of resources of a type (all meshes). */
    int (*count)(struct km_store *s, const struct km_rtype *t, int64_t *out);
    /* 0 when the backend is reachable. */
    int (*ping)(struct km_store *s);
    void (*destroy)(struct km_store *s);
};

/* Operation counters for /metrics, indexed by KM_STORE_OP_*. */
enum { KM_STORE_OP_CREATE = 0, KM_STORE_OP_UPDATE, KM_STORE_OP_DELETE, KM_STORE_OP_GET,
       KM_STORE_OP_LIST, KM_STORE_OP_COUNT_ };
struct km_store_stats {
    atomic_uint_fast64_t ops[KM_STORE_OP_COUNT_];
    atomic_uint_fast64_t errors[KM_STORE_OP_COUNT_];
};

struct km_store {
    const struct km_store_ops *ops; /* borrowed (static) */
    km_store_event_fn on_event;     /* may be NULL */
    void *event_ctx;                /* borrowed */
    struct km_store_stats stats;
    void *impl;                     /* owned by the backend */
};

/* Backends. */
struct km_store *km_store_memory_new(void);

struct km_pg_config {
    const char *host;
    int port;
    const char *user;
    const char *password;
    const char *db_name;
    const char *tls_mode;    /* disable | verifyNone | verifyCa | verifyFull */
    const char *tls_ca_path;   /* libpq sslrootcert; NULL or "" = none */
    const char *tls_cert_path; /* libpq sslcert; NULL or "" = none */
    const char *tls_key_path;  /* libpq sslkey; NULL or "" = none */
    int max_open_connections;
    int connection_timeout_s;
};
/* Connects and checks the schema. On failure returns NULL with a message in <err>;
 * *code is KM_ESCHEMA when `kuma-cp migrate up` has not been run, KM_EUNAVAIL when the
 * server cannot be reached. */
struct km_store *km_store_postgres_new(const struct km_pg_config *cfg, char *err, size_t errlen,
                                       int *code);
/* Creates or upgrades the schema (`kuma-cp migrate up`). 0 on success. */
int km_store_postgres_migrate(const struct km_pg_config *cfg, char *err, size_t errlen);

/* Thin wrappers counting operations into s->stats. */
int km_store_create(struct km_store *s, struct km_resource *r);
int km_store_update(struct km_store *s, struct km_resource *r);
int km_store_remove(struct km_store *s, const struct km_rtype *t, const char *mesh,
                    const char *name, int64_t version);
int km_store_get(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
                 struct km_resource **out);
int km_store_list(struct km_store *s, const struct km_rtype *t, const char *mesh,
                  struct km_resource_list *out);
void km_store_free(struct km_store *s);
/* Delivers an event to the subscriber (backends call this). */
void km_store_emit(struct km_store *s, enum km_store_event_kind kind, const char *type,
                   const char *mesh, const char *name);

#endif
