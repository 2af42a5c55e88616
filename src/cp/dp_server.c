/* DP server: POST /bootstrap and Envoy's Aggregated Discovery Service, state of the world and
 * delta, on one event loop thread.
 *
 * Design. Each ADS stream is a `struct xconn`. Store events from any thread are posted to the
 * loop, which marks meshes dirty and, after a short debounce, regenerates every proxy of those
 * meshes: km_xds_generate() gives proto3 JSON per resource, the compact JSON text is hashed and
 * looked up in a cache of packed resources (shared by every proxy that gets the same
 * resource), and only the types whose content changed are pushed. Per type a stream keeps
 * what it subscribed to, what was sent (version and nonce) and what the proxy ACKed or NACKed,
 * as Envoy's protocol defines: a NACK keeps the last good config on the proxy and nothing is
 * re-sent until the content changes. Proxy state goes to the store as DataplaneInsight.
 *
 * mTLS. When a mesh has an enabled mtls backend, loading its view also loads its CA
 * (src/cp/mesh_ca.c: a builtin root is created in the store on first use) into a cache kept
 * on this thread. Each stream of a registered Dataplane holds its own identity certificate,
 * issued at regeneration when it has none, when the CA or the Dataplane's tags (its SPIFFE
 * and kuma:// SANs) or dpCert.rotation.expiration changed, or when 4/5 of its lifetime has
 * passed (a 1 s timer finds those). A new certificate only changes the identity Secret, so
 * only SDS is re-pushed. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/pb.h>
#include <km/common/pbjson.h>
#include <km/common/tlsgen.h>
#include <km/common/yamljson.h>
#include <km/cp/bootstrap.h>
#include <km/cp/cp.h>
#include <km/cp/dp_server.h>
#include <km/cp/tokens.h>
#include <km/cp/mesh_ca.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>

#include <openssl/crypto.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"

#define ADS_SOTW  "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define ADS_DELTA "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
#define REGEN_DEBOUNCE_MS  20
#define INSIGHT_FLUSH_MS   1000
#define MAX_SUBSCRIPTIONS  5   /* kept in a DataplaneInsight */
#define MAX_NAMES          10000 /* resource names one stream may subscribe to per type */
#define CERT_TICK_MS       1000  /* how often rotation points are checked */
#define CERT_RETRY_S       10    /* after a failed issuance or CA load */

typedef Envoy__Service__Discovery__V3__DiscoveryRequest disc_req;
typedef Envoy__Service__Discovery__V3__DiscoveryResponse disc_resp;
typedef Envoy__Service__Discovery__V3__DeltaDiscoveryRequest delta_req;
typedef Envoy__Service__Discovery__V3__DeltaDiscoveryResponse delta_resp;

/* A string set kept sorted, for dependencies and dirty lists. */
struct strset {
    char **v;
    size_t n;
};

/* ---- packed resources shared between proxies ---- */

struct xblob {
    uint64_t hash;      /* of the JSON text and type (FNV-1a) */
    uint64_t hash2;     /* a second, independent hash of the same text: with 128 bits a
                           collision between two different resources is not a practical risk */
    unsigned refs;
    uint8_t *bytes;     /* owned: packed resource */
    size_t len;
    struct xblob *next; /* hash chain */
};

struct xres {
    char *name;          /* owned */
    struct xblob *blob;  /* ref */
};

struct xset {
    struct xres *v; /* owned, sorted by name */
    size_t n;
};

struct dsent {
    char *name;
    uint64_t ver;
};

struct type_state {
    bool subscribed;
    bool wildcard;
    char **names; /* owned: explicit subscriptions */
    size_t nnames;
    bool sent_any;
    uint64_t sent_version;
    char nonce[24];
    struct dsent *dsent; /* delta: what the proxy holds */
    size_t ndsent;
    uint64_t n_sent, n_ack, n_nack;
    char *last_nack;     /* owned */
    char *acked_version; /* owned */
};

struct xconn {
    struct xconn *prev, *next;
    struct km_dp_server *srv;
    struct km_grpc_stream *stream; /* NULL once closed */
    bool delta;
    bool identified;
    char *mesh, *name; /* owned */
    struct type_state t[KM_XDS_TYPE_COUNT];
    struct xset snap[KM_XDS_TYPE_COUNT];
    uint64_t nonce_seq;
    char sub_id[40];
    int64_t connect_us;
    struct km_timer *insight_timer;
    bool insight_dirty;
    uint64_t generation;
    struct strset deps; /* services its config was made from (cluster and listener names) */
    /* mTLS identity of this proxy (a Dataplane in a mesh with mTLS), else all empty */
    char *cert_pem, *key_pem;  /* owned */
    char *cert_ident;          /* owned: its URI SANs, to see when the tags change */
    char *cert_backend;        /* owned: the CA backend that issued it */
    json_t *cert_backends;     /* owned: names of the mesh's mtls backends */
    uint64_t cert_ca_gen;      /* generation of the CA that issued it */
    int64_t cert_validity_s;   /* dpCert.rotation.expiration it was issued with */
    int64_t cert_not_after;    /* Unix seconds */
    int64_t cert_rotate_at;    /* Unix seconds: 4/5 of its lifetime */
    int64_t cert_issued_us;
    bool cert_wanted;          /* mTLS is on but it has no certificate yet (retry) */
    int64_t cert_retry_at;     /* Unix seconds */
    unsigned cert_pending;     /* issuances not yet counted in the DataplaneInsight */
};

struct offline {
    char *mesh, *name;
};

/* What changed in one mesh: everything, or some services and Dataplanes. Proxies are
 * regenerated only when they depend on one of them. */
struct dirty_mesh {
    char *mesh;
    bool all;
    struct strset svcs;  /* kuma.io/service values whose endpoints or protocol may differ */
    struct strset names; /* Dataplanes that changed themselves */
};

/* A consistent copy of what the generator reads for one mesh, cached until the mesh changes,
 * so that a reconnect storm copies each mesh once, not once per proxy. */
struct mesh_ctx {
    char *mesh;
    struct km_resource *mesh_res;
    struct km_resource_list dps;
    const struct km_resource **ptrs;
    struct km_resource_list pols;  /* policies the generator applies */
    const struct km_resource **pptrs;
    struct km_xds_mesh_index *ix; /* owned; built once per load */
    bool ok;
    bool mtls;                    /* Mesh.mtls has an enabled backend */
    int64_t dp_cert_validity_s;   /* its dpCert.rotation.expiration */
    const struct km_mesh_ca *ca;  /* borrowed from the CA cache (replaced only by the next load
                                     of this mesh); NULL when mTLS is off or the CA failed */
    json_t *backends;             /* owned: names of every mtls backend */
};

struct km_dp_server {
    struct km_cp *cp;
    struct km_loop *loop;
    pthread_t thread;
    bool started;
    struct km_grpc_server *grpc;
    int tls_fd, plain_fd;
    char *cert_pem, *key_pem;
    struct xconn *conns;
    _Atomic size_t nconns;
    struct dirty_mesh *dirty; /* owned: what changed since the last regeneration */
    size_t ndirty;
    struct km_timer *regen_timer;
    struct xblob *buckets[4096];
    struct offline *offline;
    size_t noffline;
    struct mesh_ctx **meshes; /* owned: cached mesh views, dropped when the mesh changes */
    size_t nmeshes;
    struct km_mesh_ca_cache *cas; /* owned: loaded CA per mesh (this thread only) */
    struct km_timer *cert_timer;  /* rotation check */
};

static uint64_t
fnv1a(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}
#define FNV_INIT 14695981039346656037ULL

/* Multiply-xorshift over 8-byte words (a different construction from FNV). */
static uint64_t
mix_hash(const char *p, size_t n, uint64_t seed)
{
    uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ULL);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, p + i, n - i < 8 ? n - i : 8);
        h ^= w * 0xBF58476D1CE4E5B9ULL;
        h = (h ^ (h >> 31)) * 0x94D049BB133111EBULL;
    }
    return h ^ (h >> 29);
}

static void
blob_unref(struct km_dp_server *s, struct xblob *b)
{
    if (!b || --b->refs)
        return;
    struct xblob **pp = &s->buckets[b->hash % KM_ARRAY_LEN(s->buckets)];
    while (*pp != b)
        pp = &(*pp)->next;
    *pp = b->next;
    free(b->bytes);
    free(b);
}

/* Packs <j> as resource type <t>, sharing identical results. NULL when it cannot be packed
 * (a generator bug: logged). */
static struct xblob *
blob_get(struct km_dp_server *s, int t, const char *name, const json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    size_t tlen = strlen(text);
    uint64_t h = fnv1a(fnv1a(FNV_INIT, &t, sizeof(t)), text, tlen);
    uint64_t h2 = mix_hash(text, tlen, (uint64_t)t);
    struct xblob **head = &s->buckets[h % KM_ARRAY_LEN(s->buckets)];
    for (struct xblob *b = *head; b; b = b->next) {
        if (b->hash == h && b->hash2 == h2) {
            b->refs++;
            free(text);
            return b;
        }
    }
    uint8_t *bytes = NULL;
    size_t len = 0;
    char err[512];
    if (km_pbjson_encode(km_xds_type_descriptor(t), j, &bytes, &len, err, sizeof(err)) != 0) {
        km_log_error("xds", "cannot encode %s %s: %s", km_xds_type_short[t], name, err);
        free(text);
        return NULL;
    }
    free(text);
    struct xblob *b = km_xcalloc(1, sizeof(*b));
    b->hash = h;
    b->hash2 = h2;
    b->refs = 1;
    b->bytes = bytes;
    b->len = len;
    b->next = *head;
    *head = b;
    return b;
}

static void
xset_free(struct km_dp_server *s, struct xset *x)
{
    for (size_t i = 0; i < x->n; i++) {
        free(x->v[i].name);
        blob_unref(s, x->v[i].blob);
    }
    free(x->v);
    x->v = NULL;
    x->n = 0;
}

static int
xres_cmp(const void *a, const void *b)
{
    return strcmp(((const struct xres *)a)->name, ((const struct xres *)b)->name);
}

static const struct xres *
xset_find(const struct xset *x, const char *name)
{
    struct xres key = {(char *)name, NULL};
    return x->n ? bsearch(&key, x->v, x->n, sizeof(key), xres_cmp) : NULL;
}

/* ---- offline set: Dataplanes whose proxy was connected and went away ---- */

static ssize_t
offline_index(struct km_dp_server *s, const char *mesh, const char *name)
{
    for (size_t i = 0; i < s->noffline; i++)
        if (strcmp(s->offline[i].mesh, mesh) == 0 && strcmp(s->offline[i].name, name) == 0)
            return (ssize_t)i;
    return -1;
}

static void
offline_set(struct km_dp_server *s, const char *mesh, const char *name, bool off)
{
    ssize_t i = offline_index(s, mesh, name);
    if (off && i < 0) {
        s->offline = km_xrealloc(s->offline, (s->noffline + 1) * sizeof(*s->offline));
        s->offline[s->noffline].mesh = km_xstrdup(mesh);
        s->offline[s->noffline].name = km_xstrdup(name);
        s->noffline++;
    } else if (!off && i >= 0) {
        free(s->offline[i].mesh);
        free(s->offline[i].name);
        s->offline[i] = s->offline[--s->noffline];
    }
}

struct offline_q {
    struct km_dp_server *s;
    const char *mesh;
};

static bool
is_offline(const char *name, void *ud)
{
    struct offline_q *q = ud;
    return offline_index(q->s, q->mesh, name) >= 0;
}

/* ---- dirty meshes and regeneration ---- */

static void regen_now(struct km_timer *t, void *arg);

static void mesh_ctx_free(struct mesh_ctx *mc);

static void
mesh_cache_drop(struct km_dp_server *s, const char *mesh)
{
    for (size_t i = 0; i < s->nmeshes; i++) {
        if (!mesh || strcmp(s->meshes[i]->mesh, mesh) == 0) {
            mesh_ctx_free(s->meshes[i]);
            free(s->meshes[i]);
            s->meshes[i] = s->meshes[--s->nmeshes];
            if (mesh)
                return;
            i--;
        }
    }
}

static bool
strset_has(const struct strset *set, const char *x)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(set->v[mid], x);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static void
strset_add(struct strset *set, const char *x)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(set->v[mid], x);
        if (c == 0)
            return;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    set->v = km_xrealloc(set->v, (set->n + 1) * sizeof(char *));
    memmove(&set->v[lo + 1], &set->v[lo], (set->n - lo) * sizeof(char *));
    set->v[lo] = km_xstrdup(x);
    set->n++;
}

static void
strset_free(struct strset *set)
{
    for (size_t i = 0; i < set->n; i++)
        free(set->v[i]);
    free(set->v);
    set->v = NULL;
    set->n = 0;
}

static bool
strset_intersects(const struct strset *a, const struct strset *b)
{
    const struct strset *small = a->n < b->n ? a : b, *big = a->n < b->n ? b : a;
    for (size_t i = 0; i < small->n; i++)
        if (strset_has(big, small->v[i]))
            return true;
    return false;
}

static struct dirty_mesh *
dirty_get(struct km_dp_server *s, const char *mesh)
{
    mesh_cache_drop(s, mesh);
    if (!s->regen_timer)
        s->regen_timer = km_timer_new(s->loop, REGEN_DEBOUNCE_MS, regen_now, s);
    for (size_t i = 0; i < s->ndirty; i++)
        if (strcmp(s->dirty[i].mesh, mesh) == 0)
            return &s->dirty[i];
    s->dirty = km_xrealloc(s->dirty, (s->ndirty + 1) * sizeof(*s->dirty));
    struct dirty_mesh *d = &s->dirty[s->ndirty++];
    memset(d, 0, sizeof(*d));
    d->mesh = km_xstrdup(mesh);
    return d;
}

static void
dirty_free(struct dirty_mesh *d)
{
    free(d->mesh);
    strset_free(&d->svcs);
    strset_free(&d->names);
}

/* Everything in <mesh> may have changed (the Mesh itself, a policy...). */
static void
mark_dirty(struct km_dp_server *s, const char *mesh)
{
    dirty_get(s, mesh)->all = true;
}

static void
add_inbound_services(struct strset *set, const struct km_resource *dp)
{
    json_t *inb = json_object_get(json_object_get(dp->spec, "networking"), "inbound");
    size_t i;
    json_t *item;
    json_array_foreach(inb, i, item)
    {
        json_t *svc = json_object_get(json_object_get(item, "tags"), "kuma.io/service");
        if (json_is_string(svc))
            strset_add(set, json_string_value(svc));
    }
}

static const struct km_resource *mesh_ctx_dp(const struct mesh_ctx *mc, const char *name);

/* Dataplane <name> changed (created, updated, deleted, went offline or came back): the
 * proxies that use its services, before and after, and its own proxy need new config. */
static void
mark_dirty_dp(struct km_dp_server *s, const char *mesh, const char *name)
{
    struct strset svcs = {NULL, 0};
    for (size_t i = 0; i < s->nmeshes; i++)
        if (strcmp(s->meshes[i]->mesh, mesh) == 0) {
            const struct km_resource *old = mesh_ctx_dp(s->meshes[i], name);
            if (old)
                add_inbound_services(&svcs, old);
        }
    struct km_resource *now = NULL;
    if (km_store_get(s->cp->store, km_registry_find("Dataplane"), mesh, name, &now) == 0)
        add_inbound_services(&svcs, now);
    km_resource_free(now);
    struct dirty_mesh *d = dirty_get(s, mesh);
    for (size_t i = 0; i < svcs.n; i++)
        strset_add(&d->svcs, svcs.v[i]);
    strset_add(&d->names, name);
    strset_free(&svcs);
}

/* Mesh.mtls of the loaded Mesh and its CA (created in the store for a builtin backend). */
static void
mesh_ctx_load_ca(struct km_dp_server *s, struct mesh_ctx *mc)
{
    const json_t *spec = mc->mesh_res ? mc->mesh_res->spec : NULL;
    struct km_mesh_mtls m;
    struct km_errs e;

    km_errs_init(&e);
    mc->backends = json_array();
    if (km_mesh_mtls_parse(spec, &m, &e) == 0 && m.enabled) {
        mc->mtls = true;
        mc->dp_cert_validity_s = m.dp_cert_validity_s;
        const json_t *bs = json_object_get(json_object_get(spec, "mtls"), "backends");
        for (size_t i = 0; i < json_array_size(bs); i++) {
            const json_t *n = json_object_get(json_array_get(bs, i), "name");
            if (json_is_string(n))
                json_array_append_new(mc->backends, json_string(json_string_value(n)));
        }
    }
    km_errs_deinit(&e);
    km_errs_init(&e);
    if (km_mesh_ca_cache_get(s->cas, s->cp->store, mc->mesh, spec, &mc->ca, &e) != 0) {
        char *msg = km_errs_join(&e);
        km_log_warn("xds", "mesh %s: mTLS CA unavailable%s: %s", mc->mesh,
                    mc->ca ? " (keeping the previous one)" : "", msg);
        free(msg);
    }
    km_errs_deinit(&e);
    if (!mc->mtls)
        mc->ca = NULL;
}

static void
mesh_ctx_load(struct km_dp_server *s, struct mesh_ctx *mc, const char *mesh)
{
    memset(mc, 0, sizeof(*mc));
    mc->mesh = km_xstrdup(mesh);
    km_resource_list_init(&mc->dps);
    int rc = km_store_get(s->cp->store, km_registry_mesh(), "", mesh, &mc->mesh_res);
    if (rc && rc != KM_ENOTFOUND) {
        km_log_warn("xds", "cannot read mesh %s: %s", mesh, km_strerror(rc));
        return;
    }
    rc = km_store_list(s->cp->store, km_registry_find("Dataplane"), mesh, &mc->dps);
    if (rc) {
        km_log_warn("xds", "cannot list dataplanes of mesh %s: %s", mesh, km_strerror(rc));
        return;
    }
    mc->ptrs = km_xcalloc(mc->dps.n + 1, sizeof(*mc->ptrs));
    for (size_t i = 0; i < mc->dps.n; i++)
        mc->ptrs[i] = mc->dps.items[i];
    km_resource_list_init(&mc->pols);
    /* The policies the generator applies. */
    static const char *const policy_types[] = {"MeshLoadBalancingStrategy", "TrafficPermission",
                                               "MeshTrafficPermission"};
    for (size_t i = 0; i < KM_ARRAY_LEN(policy_types); i++) {
        rc = km_store_list(s->cp->store, km_registry_find(policy_types[i]), mesh, &mc->pols);
        if (rc) {
            km_log_warn("xds", "cannot list %s of mesh %s: %s", policy_types[i], mesh,
                        km_strerror(rc));
            return;
        }
    }
    mc->pptrs = km_xcalloc(mc->pols.n + 1, sizeof(*mc->pptrs));
    for (size_t i = 0; i < mc->pols.n; i++)
        mc->pptrs[i] = mc->pols.items[i];
    mesh_ctx_load_ca(s, mc);
    mc->ok = true;
}

static void
mesh_ctx_free(struct mesh_ctx *mc)
{
    km_xds_mesh_index_free(mc->ix);
    free(mc->mesh);
    km_resource_free(mc->mesh_res);
    km_resource_list_deinit(&mc->dps);
    free(mc->ptrs);
    km_resource_list_deinit(&mc->pols);
    free(mc->pptrs);
    json_decref(mc->backends);
}

/* The cached view of <mesh>, loaded on first use; NULL when the store cannot be read. */
static const struct mesh_ctx *
mesh_ctx_get(struct km_dp_server *s, const char *mesh)
{
    for (size_t i = 0; i < s->nmeshes; i++)
        if (strcmp(s->meshes[i]->mesh, mesh) == 0)
            return s->meshes[i];
    struct mesh_ctx *mc = km_xcalloc(1, sizeof(*mc));
    mesh_ctx_load(s, mc, mesh);
    if (!mc->ok) {
        mesh_ctx_free(mc);
        free(mc);
        return NULL;
    }
    struct offline_q q = {s, mc->mesh};
    struct km_mesh_view view = {.mesh = mc->mesh,
                                .mesh_res = mc->mesh_res,
                                .dataplanes = mc->ptrs,
                                .ndataplanes = mc->dps.n,
                                .is_offline = is_offline,
                                .offline_ud = &q,
                                .policies = mc->pptrs,
                                .npolicies = mc->pols.n};
    mc->ix = km_xds_mesh_index_new(&view);
    s->meshes = km_xrealloc(s->meshes, (s->nmeshes + 1) * sizeof(*s->meshes));
    s->meshes[s->nmeshes++] = mc;
    return mc;
}

/* The Dataplane <name>: the store lists a mesh sorted by name, so a binary search. */
static const struct km_resource *
mesh_ctx_dp(const struct mesh_ctx *mc, const char *name)
{
    size_t lo = 0, hi = mc->dps.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(mc->dps.items[mid]->name, name);
        if (c == 0)
            return mc->dps.items[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void conn_push_all(struct xconn *c, int force_type);
static void insight_touch(struct xconn *c);

/* ---- proxy identity certificates ---- */

static void
free_key(char *key)
{
    if (key) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
    }
}

static void
conn_cert_clear(struct xconn *c)
{
    free(c->cert_pem);
    free_key(c->key_pem);
    free(c->cert_ident);
    free(c->cert_backend);
    json_decref(c->cert_backends);
    c->cert_pem = c->key_pem = c->cert_ident = c->cert_backend = NULL;
    c->cert_backends = NULL;
    c->cert_ca_gen = 0;
    c->cert_wanted = false;
}

/* The identity (URI SANs, one per line) of Dataplane <dp> in <mesh>, or NULL with errors. */
static char *
dp_identity(const char *mesh, const struct km_resource *dp, struct km_errs *e)
{
    struct km_tag *tags = NULL;
    size_t ntags = km_ca_dataplane_tags(dp->spec, &tags);
    struct km_identity id = {.mesh = mesh, .tags = tags, .ntags = ntags};
    char **sans = NULL;
    struct km_sbuf b;

    if (km_ca_identity_sans(&id, &sans, e) < 0) {
        free(tags);
        return NULL;
    }
    km_sbuf_init(&b);
    for (size_t i = 0; sans[i]; i++)
        km_sbuf_printf(&b, "%s\n", sans[i]);
    km_ca_sans_free(sans);
    free(tags);
    return km_sbuf_take(&b);
}

/* Makes the certificate of <c> current before its config is generated: issues one when mTLS is
 * on and it has none, or the CA, the Dataplane's identity or the validity setting changed, or
 * its rotation point passed; drops it when mTLS is off. */
static void
conn_cert_refresh(struct xconn *c, const struct mesh_ctx *mc, const struct km_resource *dp)
{
    int64_t now = km_now_us() / 1000000;
    struct km_errs e;
    char *ident, *cert = NULL, *key = NULL;

    if (!mc->mtls || dp == NULL) {
        if (c->cert_pem || c->cert_wanted)
            conn_cert_clear(c);
        return;
    }
    if (mc->ca == NULL) {
        /* the CA of the mesh could not be loaded: no identity (traffic fails closed); the
         * tick reloads the mesh to retry */
        if (c->cert_pem)
            conn_cert_clear(c);
        if (c->cert_retry_at <= now)
            c->cert_retry_at = now + CERT_RETRY_S;
        c->cert_wanted = true;
        return;
    }
    km_errs_init(&e);
    ident = dp_identity(c->mesh, dp, &e);
    if (ident == NULL)
        goto fail;
    if (c->cert_pem && c->cert_ca_gen == mc->ca->generation && strcmp(c->cert_ident, ident) == 0 &&
        c->cert_validity_s == mc->dp_cert_validity_s && now < c->cert_rotate_at) {
        free(ident);
        km_errs_deinit(&e);
        return;
    }
    struct km_tag *tags = NULL;
    size_t ntags = km_ca_dataplane_tags(dp->spec, &tags);
    struct km_identity id = {.mesh = c->mesh, .tags = tags, .ntags = ntags};
    int rc = km_ca_issue_with(mc->ca->ca, &id, mc->dp_cert_validity_s, &cert, &key, &e);
    free(tags);
    if (rc != 0) {
        free(ident);
        goto fail;
    }
    int64_t nb = 0, na = 0;
    km_ca_cert_validity(cert, &nb, &na);
    conn_cert_clear(c);
    c->cert_pem = cert;
    c->key_pem = key;
    c->cert_ident = ident;
    c->cert_backend = km_xstrdup(mc->ca->backend);
    c->cert_backends = json_deep_copy(mc->backends);
    c->cert_ca_gen = mc->ca->generation;
    c->cert_validity_s = mc->dp_cert_validity_s;
    c->cert_not_after = na;
    c->cert_rotate_at = km_ca_rotation_time(nb, na);
    c->cert_issued_us = km_now_us();
    c->cert_pending++;
    insight_touch(c);
    km_log_info("xds", "%s.%s: issued an identity certificate by CA backend %s, valid %" PRId64
                "s, rotation in %" PRId64 "s", c->mesh, c->name, mc->ca->backend, na - now,
                c->cert_rotate_at - now);
    km_errs_deinit(&e);
    return;
fail:;
    char *msg = km_errs_join(&e);
    km_log_warn("xds", "%s.%s: cannot issue an identity certificate (retry in %ds): %s", c->mesh,
                c->name, CERT_RETRY_S, msg);
    free(msg);
    km_errs_deinit(&e);
    /* a previous certificate is kept while it is valid */
    if (c->cert_pem && now >= c->cert_not_after)
        conn_cert_clear(c);
    c->cert_wanted = true;
    c->cert_retry_at = now + CERT_RETRY_S;
}

/* Recomputes the snapshot of <c>; returns true when any type changed. */
static bool
conn_regen(struct xconn *c, const struct mesh_ctx *mc)
{
    struct km_dp_server *s = c->srv;
    struct type_state *lds = &c->t[KM_XDS_LISTENER];
    const struct km_resource *dp = mesh_ctx_dp(mc, c->name);
    conn_cert_refresh(c, mc, dp);
    struct km_xds_proxy_id id = {.mesh = c->mesh,
                                 .name = c->name,
                                 .dataplane = dp,
                                 .requested_listeners = (const char *const *)lds->names,
                                 .nrequested_listeners = lds->wildcard ? 0 : lds->nnames,
                                 .cert_pem = c->cert_pem,
                                 .key_pem = c->key_pem,
                                 .ca_pem = mc->ca ? mc->ca->cert_pem : NULL};
    struct km_xds_resources out;
    km_xds_generate_indexed(mc->ix, &id, &out);
    bool changed = false;
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        struct xset nx = {NULL, 0};
        size_t n = json_object_size(out.by_type[t]);
        nx.v = km_xcalloc(n + 1, sizeof(*nx.v));
        const char *name;
        json_t *res;
        json_object_foreach(out.by_type[t], name, res)
        {
            struct xblob *b = blob_get(s, t, name, res);
            if (!b)
                continue;
            nx.v[nx.n].name = km_xstrdup(name);
            nx.v[nx.n].blob = b;
            nx.n++;
        }
        qsort(nx.v, nx.n, sizeof(*nx.v), xres_cmp);
        bool same = nx.n == c->snap[t].n;
        for (size_t i = 0; same && i < nx.n; i++)
            same = nx.v[i].blob == c->snap[t].v[i].blob &&
                   strcmp(nx.v[i].name, c->snap[t].v[i].name) == 0;
        if (!same)
            changed = true;
        xset_free(s, &c->snap[t]);
        c->snap[t] = nx;
    }
    km_xds_resources_deinit(&out);
    strset_free(&c->deps);
    static const int dep_types[] = {KM_XDS_LISTENER, KM_XDS_CLUSTER, KM_XDS_ENDPOINT};
    for (size_t k = 0; k < KM_ARRAY_LEN(dep_types); k++)
        for (size_t i = 0; i < c->snap[dep_types[k]].n; i++)
            strset_add(&c->deps, c->snap[dep_types[k]].v[i].name);
    for (size_t i = 0; i < lds->nnames; i++)
        strset_add(&c->deps, lds->names[i]);
    if (changed)
        c->generation++;
    return changed;
}

static void
regen_now(struct km_timer *t, void *arg)
{
    struct km_dp_server *s = arg;
    km_timer_free(s->regen_timer);
    s->regen_timer = NULL;
    struct dirty_mesh *dirty = s->dirty;
    size_t ndirty = s->ndirty;
    s->dirty = NULL;
    s->ndirty = 0;
    for (size_t i = 0; i < ndirty; i++) {
        struct dirty_mesh *d = &dirty[i];
        const struct mesh_ctx *mc = mesh_ctx_get(s, d->mesh);
        for (struct xconn *c = s->conns; mc && c; c = c->next) {
            if (!c->identified || !c->stream || strcmp(c->mesh, d->mesh) != 0)
                continue;
            if (!d->all && !strset_has(&d->names, c->name) &&
                !strset_intersects(&d->svcs, &c->deps))
                continue;
            if (conn_regen(c, mc))
                conn_push_all(c, -1);
        }
        dirty_free(d);
    }
    free(dirty);
}

/* Every second: streams whose certificate reached its rotation point, or that wait for one,
 * are regenerated (only their identity Secret changes). A mesh whose CA could not be loaded
 * is reloaded. */
static void
cert_tick(struct km_timer *t, void *arg)
{
    struct km_dp_server *s = arg;
    int64_t now = km_now_us() / 1000000;

    for (struct xconn *c = s->conns; c; c = c->next) {
        if (!c->identified || !c->stream)
            continue;
        bool due = (c->cert_pem && now >= c->cert_rotate_at) ||
                   (c->cert_wanted && now >= c->cert_retry_at);
        if (!due)
            continue;
        const struct mesh_ctx *mc = mesh_ctx_get(s, c->mesh);
        if (mc && mc->mtls && mc->ca == NULL) {
            /* reload the mesh and its CA, then regenerate it all, once for the mesh */
            for (struct xconn *o = s->conns; o; o = o->next)
                if (o->identified && strcmp(o->mesh, c->mesh) == 0)
                    o->cert_retry_at = now + CERT_RETRY_S;
            mark_dirty(s, c->mesh);
            continue;
        }
        if (mc && conn_regen(c, mc))
            conn_push_all(c, -1);
    }
    km_timer_arm(t, CERT_TICK_MS);
}

/* ---- insights ---- */

static void
stat_json(json_t *o, const char *key, const struct type_state *ts)
{
    char a[24], b[24], c[24];
    snprintf(a, sizeof(a), "%" PRIu64, ts->n_sent);
    snprintf(b, sizeof(b), "%" PRIu64, ts->n_ack);
    snprintf(c, sizeof(c), "%" PRIu64, ts->n_nack);
    json_t *j = json_pack("{s:s, s:s, s:s}", "responsesSent", a, "responsesAcknowledged", b,
                          "responsesRejected", c);
    if (ts->last_nack)
        json_object_set_new(j, "lastNackError", json_string(ts->last_nack));
    json_object_set_new(o, key, j);
}

static json_t *
subscription_json(struct xconn *c, int64_t disconnect_us)
{
    char t1[40], t2[40];
    km_time_format(c->connect_us, t1, sizeof(t1));
    json_t *sub = json_pack("{s:s, s:s, s:s}", "id", c->sub_id, "controlPlaneInstanceId",
                            c->srv->cp->instance_id, "connectTime", t1);
    if (disconnect_us) {
        km_time_format(disconnect_us, t2, sizeof(t2));
        json_object_set_new(sub, "disconnectTime", json_string(t2));
    }
    json_t *status = json_object();
    km_time_format(km_now_us(), t2, sizeof(t2));
    json_object_set_new(status, "lastUpdateTime", json_string(t2));
    struct type_state total = {0};
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        total.n_sent += c->t[t].n_sent;
        total.n_ack += c->t[t].n_ack;
        total.n_nack += c->t[t].n_nack;
    }
    stat_json(status, "total", &total);
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++)
        if (c->t[t].subscribed)
            stat_json(status, km_xds_type_short[t], &c->t[t]);
    json_object_set_new(sub, "status", status);
    json_object_set_new(sub, "generation", json_integer((json_int_t)c->generation));
    json_object_set_new(sub, "deltaXds", json_boolean(c->delta));
    return sub;
}

/* Kuma's DataplaneInsight.mTLS: the current certificate, and how many were issued. */
static void
insight_mtls(struct xconn *c, json_t *spec)
{
    char t1[40], t2[40];
    const json_t *old = json_object_get(json_object_get(spec, "mTLS"),
                                        "certificateRegenerations");
    json_int_t n = json_is_integer(old) ? json_integer_value(old) : 0;
    if (n < 0 || n > UINT32_MAX)
        n = 0;
    n += c->cert_pending;
    if (n > UINT32_MAX)
        n = UINT32_MAX; /* a uint32 in Kuma */
    km_time_format(c->cert_not_after * 1000000, t1, sizeof(t1));
    km_time_format(c->cert_issued_us, t2, sizeof(t2));
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:O}", "certificateExpirationTime", t1,
                          "lastCertificateRegeneration", t2, "certificateRegenerations", n,
                          "issuedBackend", c->cert_backend ? c->cert_backend : "",
                          "supportedBackends",
                          c->cert_backends ? c->cert_backends : json_array());
    if (m)
        json_object_set_new(spec, "mTLS", m);
}

/* Writes this stream's subscription into the DataplaneInsight of its proxy. */
static void
insight_write(struct xconn *c, int64_t disconnect_us)
{
    struct km_dp_server *s = c->srv;
    const struct km_rtype *it = km_registry_find("DataplaneInsight");
    if (!it || !c->identified)
        return;
    for (int attempt = 0; attempt < 3; attempt++) {
        struct km_resource *r = NULL;
        int rc = km_store_get(s->cp->store, it, c->mesh, c->name, &r);
        bool create = rc == KM_ENOTFOUND;
        if (rc && !create) {
            km_log_warn("xds", "cannot read insight of %s.%s: %s", c->mesh, c->name,
                        km_strerror(rc));
            return;
        }
        if (create)
            r = km_resource_new(it, c->mesh, c->name);
        json_t *subs = json_object_get(r->spec, "subscriptions");
        if (!json_is_array(subs)) {
            subs = json_array();
            json_object_set_new(r->spec, "subscriptions", subs);
        }
        size_t i;
        json_t *sub;
        bool replaced = false;
        json_array_foreach(subs, i, sub)
        {
            const char *id = json_string_value(json_object_get(sub, "id"));
            if (id && strcmp(id, c->sub_id) == 0) {
                json_array_set_new(subs, i, subscription_json(c, disconnect_us));
                replaced = true;
                break;
            }
        }
        if (!replaced) {
            json_array_append_new(subs, subscription_json(c, disconnect_us));
            while (json_array_size(subs) > MAX_SUBSCRIPTIONS)
                json_array_remove(subs, 0);
        }
        unsigned counted = c->cert_pending;
        if (c->cert_pem)
            insight_mtls(c, r->spec);
        rc = create ? km_store_create(s->cp->store, r) : km_store_update(s->cp->store, r);
        km_resource_free(r);
        if (rc == 0) {
            c->cert_pending -= counted;
            return;
        }
        if (rc != KM_ECONFLICT) {
            km_log_warn("xds", "cannot write insight of %s.%s: %s", c->mesh, c->name,
                        km_strerror(rc));
            return;
        }
    }
}

static void
insight_flush(struct km_timer *t, void *arg)
{
    struct xconn *c = arg;
    km_timer_free(c->insight_timer);
    c->insight_timer = NULL;
    if (c->insight_dirty && c->stream) {
        c->insight_dirty = false;
        insight_write(c, 0);
    }
}

static void
insight_touch(struct xconn *c)
{
    c->insight_dirty = true;
    if (!c->insight_timer)
        c->insight_timer = km_timer_new(c->srv->loop, INSIGHT_FLUSH_MS, insight_flush, c);
}

/* ---- sending ---- */

static bool
type_wants(const struct type_state *ts, const char *name)
{
    if (ts->wildcard)
        return true;
    for (size_t i = 0; i < ts->nnames; i++)
        if (strcmp(ts->names[i], name) == 0)
            return true;
    return false;
}

static void
next_nonce(struct xconn *c, struct type_state *ts)
{
    snprintf(ts->nonce, sizeof(ts->nonce), "%" PRIu64, ++c->nonce_seq);
}

static void
send_packed(struct xconn *c, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = km_xmalloc(n);
    protobuf_c_message_pack(m, buf);
    if (km_grpc_stream_send(c->stream, buf, n) != 0)
        km_log_warn("xds", "%s.%s: cannot queue a response (write queue full or stream closed)",
                    c->mesh, c->name);
    free(buf);
}

static void
sotw_push(struct xconn *c, int t, bool force)
{
    struct type_state *ts = &c->t[t];
    if (!ts->subscribed || !c->stream)
        return;
    const struct xset *x = &c->snap[t];
    uint64_t ver = FNV_INIT;
    size_t n = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (!type_wants(ts, x->v[i].name))
            continue;
        ver = fnv1a(ver, x->v[i].name, strlen(x->v[i].name) + 1);
        ver = fnv1a(ver, &x->v[i].blob->hash, sizeof(uint64_t));
        n++;
    }
    if (!force && ts->sent_any && ver == ts->sent_version)
        return;
    Google__Protobuf__Any *anys = km_xcalloc(n + 1, sizeof(*anys));
    Google__Protobuf__Any **ptrs = km_xcalloc(n + 1, sizeof(*ptrs));
    size_t k = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (!type_wants(ts, x->v[i].name))
            continue;
        google__protobuf__any__init(&anys[k]);
        anys[k].type_url = (char *)km_xds_type_urls[t];
        anys[k].value.data = x->v[i].blob->bytes;
        anys[k].value.len = x->v[i].blob->len;
        ptrs[k] = &anys[k];
        k++;
    }
    char version[24];
    snprintf(version, sizeof(version), "%016" PRIx64, ver);
    next_nonce(c, ts);
    disc_resp r = ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_RESPONSE__INIT;
    Envoy__Config__Core__V3__ControlPlane cpid =
        ENVOY__CONFIG__CORE__V3__CONTROL_PLANE__INIT;
    cpid.identifier = c->srv->cp->instance_id;
    r.version_info = version;
    r.n_resources = n;
    r.resources = ptrs;
    r.type_url = (char *)km_xds_type_urls[t];
    r.nonce = ts->nonce;
    r.control_plane = &cpid;
    send_packed(c, &r.base);
    free(anys);
    free(ptrs);
    ts->sent_any = true;
    ts->sent_version = ver;
    ts->n_sent++;
    insight_touch(c);
    km_log_debug("xds", "%s.%s: sent %s version %s (%zu resources) nonce %s", c->mesh, c->name,
                 km_xds_type_short[t], version, n, ts->nonce);
}

static struct dsent *
dsent_find(struct type_state *ts, const char *name)
{
    for (size_t i = 0; i < ts->ndsent; i++)
        if (strcmp(ts->dsent[i].name, name) == 0)
            return &ts->dsent[i];
    return NULL;
}

static void
dsent_remove(struct type_state *ts, const char *name)
{
    struct dsent *d = dsent_find(ts, name);
    if (!d)
        return;
    free(d->name);
    *d = ts->dsent[--ts->ndsent];
}

static void
delta_push(struct xconn *c, int t, bool force)
{
    struct type_state *ts = &c->t[t];
    if (!ts->subscribed || !c->stream)
        return;
    const struct xset *x = &c->snap[t];
    Envoy__Service__Discovery__V3__Resource *res = km_xcalloc(x->n + 1, sizeof(*res));
    Envoy__Service__Discovery__V3__Resource **rptr = km_xcalloc(x->n + 1, sizeof(*rptr));
    Google__Protobuf__Any *anys = km_xcalloc(x->n + 1, sizeof(*anys));
    char (*vers)[20] = km_xcalloc(x->n + 1, sizeof(*vers));
    size_t n = 0;
    for (size_t i = 0; i < x->n; i++) {
        const struct xres *xr = &x->v[i];
        if (!type_wants(ts, xr->name))
            continue;
        struct dsent *d = dsent_find(ts, xr->name);
        if (d && d->ver == xr->blob->hash)
            continue;
        if (d) {
            d->ver = xr->blob->hash;
        } else {
            ts->dsent = km_xrealloc(ts->dsent, (ts->ndsent + 1) * sizeof(*ts->dsent));
            ts->dsent[ts->ndsent].name = km_xstrdup(xr->name);
            ts->dsent[ts->ndsent].ver = xr->blob->hash;
            ts->ndsent++;
        }
        envoy__service__discovery__v3__resource__init(&res[n]);
        google__protobuf__any__init(&anys[n]);
        anys[n].type_url = (char *)km_xds_type_urls[t];
        anys[n].value.data = xr->blob->bytes;
        anys[n].value.len = xr->blob->len;
        snprintf(vers[n], sizeof(vers[n]), "%016" PRIx64, xr->blob->hash);
        res[n].name = xr->name;
        res[n].version = vers[n];
        res[n].resource = &anys[n];
        rptr[n] = &res[n];
        n++;
    }
    /* What the proxy holds but the snapshot no longer has. */
    char **removed = km_xcalloc(ts->ndsent + 1, sizeof(char *));
    size_t nrem = 0;
    for (size_t i = 0; i < ts->ndsent;) {
        if (!xset_find(x, ts->dsent[i].name)) {
            removed[nrem++] = ts->dsent[i].name; /* ownership moves to removed[] */
            ts->dsent[i] = ts->dsent[--ts->ndsent];
        } else {
            i++;
        }
    }
    if (n || nrem || force) {
        next_nonce(c, ts);
        uint64_t sys = FNV_INIT;
        for (size_t i = 0; i < x->n; i++)
            sys = fnv1a(sys, &x->v[i].blob->hash, sizeof(uint64_t));
        char sysver[24];
        snprintf(sysver, sizeof(sysver), "%016" PRIx64, sys);
        delta_resp r = ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
        r.system_version_info = sysver;
        r.n_resources = n;
        r.resources = rptr;
        r.type_url = (char *)km_xds_type_urls[t];
        r.nonce = ts->nonce;
        r.n_removed_resources = nrem;
        r.removed_resources = removed;
        send_packed(c, &r.base);
        ts->sent_any = true;
        ts->n_sent++;
        insight_touch(c);
        km_log_debug("xds", "%s.%s: sent delta %s: %zu updated, %zu removed, nonce %s", c->mesh,
                     c->name, km_xds_type_short[t], n, nrem, ts->nonce);
    }
    for (size_t i = 0; i < nrem; i++)
        free(removed[i]);
    free(removed);
    free(res);
    free(rptr);
    free(anys);
    free(vers);
}

static void
conn_push_all(struct xconn *c, int force_type)
{
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        if (c->delta)
            delta_push(c, t, t == force_type);
        else
            sotw_push(c, t, t == force_type);
    }
}

/* ---- requests ---- */

static void
conn_fail(struct xconn *c, int status, const char *fmt, ...) KM_PRINTF(3, 4);

static void
conn_fail(struct xconn *c, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    km_log_warn("xds", "closing ADS stream from %s: %s",
                c->stream ? km_grpc_stream_peer(c->stream) : "?", msg);
    if (c->stream)
        km_grpc_stream_finish(c->stream, status, msg);
}

/* dpServer.authn.dpProxy.type dpToken: the stream's "authorization" metadata must hold a valid
 * dataplane token (signature by kid, expiry, revocation) for this Dataplane (name, mesh, tags).
 * Returns false when the stream was refused. */
static bool
conn_authenticate(struct xconn *c, const char *mesh, const char *name)
{
    if (strcmp(c->srv->cp->cfg->dp_server.authn_dp_proxy_type, "dpToken") != 0)
        return true;
    const char *auth = km_grpc_stream_header(c->stream, "authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        auth += 7;
    if (!auth || !*auth) {
        conn_fail(c, KM_GRPC_UNAUTHENTICATED,
                  "authentication failed: the stream carries no dataplane token (\"authorization\" "
                  "metadata); generate one with 'kumactl generate dataplane-token'");
        return false;
    }
    struct km_resource *dp = NULL;
    int rc = km_store_get(c->srv->cp->store, km_registry_find("Dataplane"), mesh, name, &dp);
    if (rc) {
        conn_fail(c, rc == KM_ENOTFOUND ? KM_GRPC_UNAUTHENTICATED : KM_GRPC_UNAVAILABLE,
                  "authentication failed: dataplane %s.%s %s", mesh, name,
                  rc == KM_ENOTFOUND ? "is not registered" : "cannot be read from the store");
        return false;
    }
    char err[512];
    rc = km_token_authenticate_dataplane(c->srv->cp->store, auth, dp, err, sizeof(err));
    km_resource_free(dp);
    if (rc != 0) {
        conn_fail(c, KM_GRPC_UNAUTHENTICATED, "authentication failed: %s", err);
        return false;
    }
    return true;
}

/* Handles the node of the first request: "<mesh>.<name>". Returns false when the stream was
 * refused. */
static bool
conn_identify(struct xconn *c, const Envoy__Config__Core__V3__Node *node)
{
    if (!node || !node->id || !*node->id) {
        conn_fail(c, KM_GRPC_INVALID_ARGUMENT,
                  "the first DiscoveryRequest must carry node.id \"<mesh>.<name>\"");
        return false;
    }
    const char *dot = strchr(node->id, '.');
    if (!dot || dot == node->id || !dot[1]) {
        conn_fail(c, KM_GRPC_INVALID_ARGUMENT,
                  "node.id \"%.200s\" is not of the form \"<mesh>.<name>\"", node->id);
        return false;
    }
    char *mesh = km_xstrndup(node->id, (size_t)(dot - node->id));
    struct km_resource *m = NULL;
    int rc = km_store_get(c->srv->cp->store, km_registry_mesh(), "", mesh, &m);
    km_resource_free(m);
    if (rc) {
        conn_fail(c, rc == KM_ENOTFOUND ? KM_GRPC_NOT_FOUND : KM_GRPC_UNAVAILABLE,
                  rc == KM_ENOTFOUND ? "mesh \"%s\" of node.id does not exist"
                                     : "mesh \"%s\": store unavailable",
                  mesh);
        free(mesh);
        return false;
    }
    if (!conn_authenticate(c, mesh, dot + 1)) {
        free(mesh);
        return false;
    }
    c->mesh = mesh;
    c->name = km_xstrdup(dot + 1);
    c->identified = true;
    c->connect_us = km_now_us();
    if (!c->srv->cert_timer)
        c->srv->cert_timer = km_timer_new(c->srv->loop, CERT_TICK_MS, cert_tick, c->srv);
    bool was_offline = offline_index(c->srv, c->mesh, c->name) >= 0;
    offline_set(c->srv, c->mesh, c->name, false);
    km_log_info("xds", "%s.%s connected from %s (%s)", c->mesh, c->name,
                km_grpc_stream_peer(c->stream), c->delta ? "delta" : "state of the world");
    const struct mesh_ctx *mc = mesh_ctx_get(c->srv, c->mesh);
    if (mc)
        conn_regen(c, mc);
    /* Its endpoints come back for the others. */
    if (was_offline)
        mark_dirty_dp(c->srv, c->mesh, c->name);
    insight_write(c, 0);
    return true;
}

static bool
names_equal(char **a, size_t na, char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        bool found = false;
        for (size_t j = 0; j < nb && !found; j++)
            found = strcmp(a[i], b[j]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static void
names_set(struct type_state *ts, char *const *names, size_t n)
{
    for (size_t i = 0; i < ts->nnames; i++)
        free(ts->names[i]);
    free(ts->names);
    ts->names = km_xcalloc(n + 1, sizeof(char *));
    ts->nnames = 0;
    ts->wildcard = false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i], "*") == 0)
            ts->wildcard = true;
        else
            ts->names[ts->nnames++] = km_xstrdup(names[i]);
    }
}

/* Records an ACK or NACK of the response with <nonce>; returns false for a stale nonce. */
static bool
ack_or_nack(struct xconn *c, int t, const char *nonce, const char *version,
            const Google__Rpc__Status *error)
{
    struct type_state *ts = &c->t[t];
    if (!nonce || !*nonce)
        return true;
    if (strcmp(nonce, ts->nonce) != 0)
        return false; /* answers an older response: superseded */
    if (error) {
        ts->n_nack++;
        free(ts->last_nack);
        ts->last_nack = km_xstrdup(error->message ? error->message : "(no detail)");
        km_log_warn("xds", "%s.%s rejected %s (nonce %s): %s", c->mesh, c->name,
                    km_xds_type_short[t], nonce, ts->last_nack);
    } else {
        ts->n_ack++;
        free(ts->acked_version);
        ts->acked_version = km_xstrdup(version ? version : "");
    }
    insight_touch(c);
    return true;
}

static void
on_sotw_request(struct xconn *c, const disc_req *req)
{
    if (!c->identified && !conn_identify(c, req->node))
        return;
    int t = km_xds_type_index(req->type_url);
    if (t < 0) {
        conn_fail(c, KM_GRPC_INVALID_ARGUMENT, "unknown type_url \"%.200s\"",
                  req->type_url ? req->type_url : "");
        return;
    }
    if (req->n_resource_names > MAX_NAMES) {
        conn_fail(c, KM_GRPC_RESOURCE_EXHAUSTED, "more than %d resource names for %s",
                  MAX_NAMES, km_xds_type_short[t]);
        return;
    }
    struct type_state *ts = &c->t[t];
    if (!ack_or_nack(c, t, req->response_nonce, req->version_info, req->error_detail))
        return;
    bool first = !ts->subscribed;
    bool wildcard_default = req->n_resource_names == 0 &&
                            (t == KM_XDS_LISTENER || t == KM_XDS_CLUSTER);
    bool changed = first || !names_equal(ts->names, ts->nnames, req->resource_names,
                                         req->n_resource_names);
    if (!changed)
        return; /* an ACK or NACK: nothing new to send */
    ts->subscribed = true;
    names_set(ts, req->resource_names, req->n_resource_names);
    if (wildcard_default)
        ts->wildcard = true;
    if (t == KM_XDS_LISTENER) {
        /* Listeners asked by name (proxyless gRPC) change what is generated. */
        const struct mesh_ctx *mc = mesh_ctx_get(c->srv, c->mesh);
        if (mc)
            conn_regen(c, mc);
        conn_push_all(c, t);
    } else {
        sotw_push(c, t, true);
    }
}

static void
on_delta_request(struct xconn *c, const delta_req *req)
{
    if (!c->identified && !conn_identify(c, req->node))
        return;
    int t = km_xds_type_index(req->type_url);
    if (t < 0) {
        conn_fail(c, KM_GRPC_INVALID_ARGUMENT, "unknown type_url \"%.200s\"",
                  req->type_url ? req->type_url : "");
        return;
    }
    struct type_state *ts = &c->t[t];
    if (ts->nnames + req->n_resource_names_subscribe > MAX_NAMES) {
        conn_fail(c, KM_GRPC_RESOURCE_EXHAUSTED, "more than %d resource names for %s",
                  MAX_NAMES, km_xds_type_short[t]);
        return;
    }
    ack_or_nack(c, t, req->response_nonce, NULL, req->error_detail);
    bool first = !ts->subscribed;
    if (first) {
        ts->subscribed = true;
        ts->wildcard = req->n_resource_names_subscribe == 0 &&
                       (t == KM_XDS_LISTENER || t == KM_XDS_CLUSTER);
        for (size_t i = 0; i < req->n_initial_resource_versions; i++) {
            const char *name = req->initial_resource_versions[i]->key;
            const char *ver = req->initial_resource_versions[i]->value;
            if (!name || !ver || ts->ndsent >= MAX_NAMES)
                continue;
            ts->dsent = km_xrealloc(ts->dsent, (ts->ndsent + 1) * sizeof(*ts->dsent));
            ts->dsent[ts->ndsent].name = km_xstrdup(name);
            ts->dsent[ts->ndsent].ver = strtoull(ver, NULL, 16);
            ts->ndsent++;
        }
    }
    bool changed = first;
    for (size_t i = 0; i < req->n_resource_names_subscribe; i++) {
        const char *n = req->resource_names_subscribe[i];
        if (strcmp(n, "*") == 0) {
            ts->wildcard = true;
            changed = true;
            continue;
        }
        bool have = false;
        for (size_t j = 0; j < ts->nnames && !have; j++)
            have = strcmp(ts->names[j], n) == 0;
        if (!have) {
            ts->names = km_xrealloc(ts->names, (ts->nnames + 1) * sizeof(char *));
            ts->names[ts->nnames++] = km_xstrdup(n);
            changed = true;
        }
    }
    for (size_t i = 0; i < req->n_resource_names_unsubscribe; i++) {
        const char *n = req->resource_names_unsubscribe[i];
        if (strcmp(n, "*") == 0)
            ts->wildcard = false;
        for (size_t j = 0; j < ts->nnames; j++) {
            if (strcmp(ts->names[j], n) == 0) {
                free(ts->names[j]);
                ts->names[j] = ts->names[--ts->nnames];
                break;
            }
        }
        dsent_remove(ts, n);
        changed = true;
    }
    if (!changed)
        return;
    if (t == KM_XDS_LISTENER) {
        const struct mesh_ctx *mc = mesh_ctx_get(c->srv, c->mesh);
        if (mc)
            conn_regen(c, mc);
        conn_push_all(c, first ? t : -1);
    } else {
        delta_push(c, t, first);
    }
}

/* ---- gRPC glue ---- */

static int
ads_open(struct km_grpc_stream *st, bool delta, struct km_dp_server *s)
{
    struct xconn *c = km_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->stream = st;
    c->delta = delta;
    char h[40];
    unsigned char rnd[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd))
        memset(rnd, 0, sizeof(rnd));
    if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < 16; i++)
        snprintf(h + 2 * i, 3, "%02x", rnd[i]);
    snprintf(c->sub_id, sizeof(c->sub_id), "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16,
             h + 20);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    km_grpc_stream_set_data(st, c);
    return 0;
}

static int
ads_open_sotw(struct km_grpc_stream *st, void *ud)
{
    return ads_open(st, false, ud);
}

static int
ads_open_delta(struct km_grpc_stream *st, void *ud)
{
    return ads_open(st, true, ud);
}

static void
ads_message(struct km_grpc_stream *st, const uint8_t *msg, size_t len, void *ud)
{
    struct xconn *c = km_grpc_stream_get_data(st);
    char err[256];
    ProtobufCMessage *m =
        km_pb_unpack(c->delta ? &envoy__service__discovery__v3__delta_discovery_request__descriptor
                              : &envoy__service__discovery__v3__discovery_request__descriptor,
                     msg, len, err, sizeof(err));
    if (!m) {
        conn_fail(c, KM_GRPC_INVALID_ARGUMENT, "malformed %s: %s",
                  c->delta ? "DeltaDiscoveryRequest" : "DiscoveryRequest", err);
        return;
    }
    if (c->delta)
        on_delta_request(c, (const delta_req *)m);
    else
        on_sotw_request(c, (const disc_req *)m);
    km_pb_free(m);
}

static void
ads_close(struct km_grpc_stream *st, void *ud)
{
    struct km_dp_server *s = ud;
    struct xconn *c = km_grpc_stream_get_data(st);
    if (!c)
        return;
    c->stream = NULL;
    if (c->identified) {
        km_log_info("xds", "%s.%s disconnected", c->mesh, c->name);
        insight_write(c, km_now_us());
        /* Only proxies of registered Dataplanes leave the endpoint lists. */
        struct km_resource *dp = NULL;
        if (km_store_get(s->cp->store, km_registry_find("Dataplane"), c->mesh, c->name, &dp) ==
            0) {
            bool another = false;
            for (struct xconn *o = s->conns; o; o = o->next)
                another |= o != c && o->stream && o->identified &&
                           strcmp(o->mesh, c->mesh) == 0 && strcmp(o->name, c->name) == 0;
            if (!another) {
                offline_set(s, c->mesh, c->name, true);
                mark_dirty_dp(s, c->mesh, c->name);
            }
        }
        km_resource_free(dp);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    km_timer_free(c->insight_timer);
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        struct type_state *ts = &c->t[t];
        for (size_t i = 0; i < ts->nnames; i++)
            free(ts->names[i]);
        free(ts->names);
        for (size_t i = 0; i < ts->ndsent; i++)
            free(ts->dsent[i].name);
        free(ts->dsent);
        free(ts->last_nack);
        free(ts->acked_version);
        xset_free(s, &c->snap[t]);
    }
    strset_free(&c->deps);
    conn_cert_clear(c);
    free(c->mesh);
    free(c->name);
    free(c);
}

/* ---- POST /bootstrap ---- */

static void
http_error(struct km_http_response *resp, int status, const char *title, const char *detail,
           const struct km_errs *errs)
{
    json_t *e = json_pack("{s:s, s:i, s:s, s:s}", "type", "/std-errors", "status", status, "title",
                          title, "detail", detail);
    if (errs && errs->n) {
        json_t *ip = json_array();
        for (size_t i = 0; i < errs->n; i++)
            json_array_append_new(ip, json_pack("{s:s, s:s}", "field", errs->v[i].field,
                                                "reason", errs->v[i].reason));
        json_object_set_new(e, "invalid_parameters", ip);
    }
    resp->status = status;
    resp->content_type = km_xstrdup("application/json");
    resp->body = json_dumps(e, JSON_INDENT(1));
    resp->body_len = strlen(resp->body);
    json_decref(e);
}

static void
handle_bootstrap(const struct km_http_request *req, struct km_http_response *resp, void *ud)
{
    struct km_dp_server *s = ud;
    if (strcmp(req->path, "/bootstrap") != 0) {
        http_error(resp, 404, "Not found", "the DP server serves POST /bootstrap and ADS", NULL);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        http_error(resp, 405, "Method not allowed", "use POST /bootstrap", NULL);
        return;
    }
    char perr[256];
    json_t *body = km_json_parse((const char *)req->body, req->body_len, perr, sizeof(perr));
    if (!body) {
        char *d = km_xasprintf("the request body is not JSON: %s", perr);
        http_error(resp, 400, "Bad Request", d, NULL);
        free(d);
        return;
    }
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_bootstrap_request br;
    if (km_bootstrap_parse(body, &br, &errs) != 0) {
        http_error(resp, 422, "Invalid bootstrap request", "Resource is not valid", &errs);
        goto out;
    }
    const struct km_cp_config *cfg = s->cp->cfg;
    if (strcmp(cfg->dp_server.authn_dp_proxy_type, "dpToken") == 0) {
        if (!br.token || !*br.token) {
            http_error(resp, 422, "Invalid bootstrap request",
                       "Dataplane Token is required. Generate token using 'kumactl generate "
                       "dataplane-token > /path/file' and provide it via "
                       "--dataplane-token-file=/path/file argument to Kuma DP",
                       NULL);
            goto out;
        }
        /* Check it against the Dataplane it registers (or the one already stored). */
        struct km_resource *stored = NULL;
        const struct km_resource *dp = br.dataplane;
        if (!dp && km_store_get(s->cp->store, km_registry_find("Dataplane"), br.mesh, br.name,
                                &stored) == 0)
            dp = stored;
        char terr[512];
        int trc = dp ? km_token_authenticate_dataplane(s->cp->store, br.token, dp, terr,
                                                       sizeof(terr))
                     : km_token_verify_dataplane(s->cp->store, br.token, br.mesh, br.name, NULL,
                                                 terr, sizeof(terr));
        km_resource_free(stored);
        if (trc != 0) {
            char *d = km_xasprintf("authentication failed: %s", terr);
            http_error(resp, 401, "Unauthenticated", d, NULL);
            free(d);
            goto out;
        }
    }
    struct km_resource *m = NULL;
    int rc = km_store_get(s->cp->store, km_registry_mesh(), "", br.mesh, &m);
    km_resource_free(m);
    if (rc) {
        char *d = km_xasprintf("mesh \"%s\": %s", br.mesh, km_strerror(rc));
        http_error(resp, rc == KM_ENOTFOUND ? 404 : 503, "Could not bootstrap", d, NULL);
        free(d);
        goto out;
    }
    if (br.dataplane) {
        /* Universal self-registration: create or replace the Dataplane. */
        struct km_resource *cur = NULL;
        rc = km_store_get(s->cp->store, br.dataplane->type, br.mesh, br.name, &cur);
        if (rc == 0) {
            br.dataplane->version = cur->version;
            br.dataplane->creation_us = cur->creation_us;
            br.dataplane->labels = br.dataplane->labels ? br.dataplane->labels
                                                        : json_incref(cur->labels);
            rc = km_store_update(s->cp->store, br.dataplane);
        } else if (rc == KM_ENOTFOUND) {
            rc = km_store_create(s->cp->store, br.dataplane);
        }
        km_resource_free(cur);
        if (rc) {
            http_error(resp, rc == KM_ECONFLICT ? 409 : 503, "Could not register the Dataplane",
                       km_strerror(rc), NULL);
            goto out;
        }
    }
    struct km_bootstrap_params p = {.default_host = "127.0.0.1",
                                    .port = cfg->dp_server.port,
                                    .ca_pem = s->cert_pem,
                                    .admin_port = 9901,
                                    .delta = true};
    json_t *out = km_bootstrap_build(&br, &p);
    resp->status = 200;
    resp->content_type = km_xstrdup("application/json");
    resp->body = json_dumps(out, JSON_INDENT(1));
    resp->body_len = strlen(resp->body);
    json_decref(out);
out:
    km_bootstrap_request_deinit(&br);
    km_errs_deinit(&errs);
    json_decref(body);
}

/* ---- lifecycle ---- */

static struct km_grpc_method ads_methods[2];

struct event_msg {
    struct km_dp_server *s;
    enum km_store_event_kind kind;
    char *type, *mesh, *name;
};

static void
on_event(void *arg)
{
    struct event_msg *e = arg;
    if (strcmp(e->type, "Mesh") == 0)
        mark_dirty(e->s, e->name);
    else if (strcmp(e->type, "Dataplane") == 0 && *e->mesh)
        mark_dirty_dp(e->s, e->mesh, e->name);
    else if (*e->mesh)
        mark_dirty(e->s, e->mesh);
    free(e->type);
    free(e->mesh);
    free(e->name);
    free(e);
}

void
km_dp_server_notify(struct km_dp_server *s, enum km_store_event_kind kind, const char *type,
                    const char *mesh, const char *name)
{
    if (!s || strcmp(type, "DataplaneInsight") == 0 || strcmp(type, "MeshInsight") == 0)
        return; /* written by us; they change no proxy config */
    struct event_msg *e = km_xcalloc(1, sizeof(*e));
    e->s = s;
    e->kind = kind;
    e->type = km_xstrdup(type);
    e->mesh = km_xstrdup(mesh ? mesh : "");
    e->name = km_xstrdup(name);
    km_loop_post(s->loop, on_event, e);
}

size_t
km_dp_server_streams(struct km_dp_server *s)
{
    return s ? s->nconns : 0;
}

/* The DP server certificate: general.tlsCertFile/tlsKeyFile when set, else one generated at
 * first start and kept in <workDir>/dp-server.{crt,key} so proxies can pin it. */
static int
load_cert(struct km_dp_server *s, char *err, size_t errlen)
{
    const struct km_cp_config *cfg = s->cp->cfg;
    if (cfg->general.tls_cert_file[0]) {
        s->cert_pem = km_read_file(cfg->general.tls_cert_file, 1 << 20, NULL);
        s->key_pem = km_read_file(cfg->general.tls_key_file, 1 << 20, NULL);
        if (!s->cert_pem || !s->key_pem) {
            snprintf(err, errlen, "general.tlsCertFile/tlsKeyFile: cannot read %s: %s",
                     s->cert_pem ? cfg->general.tls_key_file : cfg->general.tls_cert_file,
                     strerror(errno));
            return -1;
        }
        return 0;
    }
    char *dir = cfg->general.work_dir[0] ? km_xstrdup(cfg->general.work_dir)
                                         : km_xasprintf("%s/.kuma", getenv("HOME") ? getenv("HOME")
                                                                                   : "/tmp");
    char *crt = km_xasprintf("%s/dp-server.crt", dir), *key = km_xasprintf("%s/dp-server.key", dir);
    s->cert_pem = km_read_file(crt, 1 << 20, NULL);
    s->key_pem = km_read_file(key, 1 << 20, NULL);
    int rc = 0;
    if (!s->cert_pem || !s->key_pem) {
        free(s->cert_pem);
        free(s->key_pem);
        s->cert_pem = s->key_pem = NULL;
        const char *names[] = {"localhost", s->cp->hostname};
        rc = km_tls_selfsigned(names, 2, 3650, &s->cert_pem, &s->key_pem, err, errlen);
        if (rc == 0) {
            mkdir(dir, 0700);
            FILE *f = fopen(crt, "w");
            int kfd = open(key, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            FILE *k = kfd >= 0 ? fdopen(kfd, "w") : NULL;
            if (f && k && fputs(s->cert_pem, f) >= 0 && fputs(s->key_pem, k) >= 0)
                km_log_info("dp-server", "generated a TLS certificate for the DP server in %s",
                            crt);
            else
                km_log_warn("dp-server", "cannot store the DP server certificate in %s: %s "
                                         "(a new one is made at every start)",
                            dir, strerror(errno));
            if (f)
                fclose(f);
            if (k)
                fclose(k);
            else if (kfd >= 0)
                close(kfd);
        }
    }
    free(dir);
    free(crt);
    free(key);
    return rc;
}

struct km_dp_server *
km_dp_server_new(struct km_cp *cp, char *err, size_t errlen)
{
    struct km_dp_server *s = km_xcalloc(1, sizeof(*s));
    s->cp = cp;
    s->tls_fd = s->plain_fd = -1;
    km_xds_register_types();
    const struct km_cp_config *cfg = cp->cfg;
    s->tls_fd = km_listen_tcp("0.0.0.0", cfg->dp_server.port, "DP server (dpServer.port)", err,
                              errlen);
    if (s->tls_fd < 0)
        goto fail;
    if (cfg->dp_server.plaintext_port) {
        s->plain_fd = km_listen_tcp(cfg->dp_server.plaintext_interface,
                                    cfg->dp_server.plaintext_port,
                                    "DP server plaintext (dpServer.plaintextPort)", err, errlen);
        if (s->plain_fd < 0)
            goto fail;
    }
    if (load_cert(s, err, errlen) != 0)
        goto fail;
    s->loop = km_loop_new();
    s->cas = km_mesh_ca_cache_new();
    return s;
fail:
    km_dp_server_free(s);
    return NULL;
}

static void *
dp_thread(void *arg)
{
    struct km_dp_server *s = arg;
    km_loop_run(s->loop);
    return NULL;
}

int
km_dp_server_start(struct km_dp_server *s, char *err, size_t errlen)
{
    ads_methods[0] = (struct km_grpc_method){.path = ADS_SOTW,
                                             .on_open = ads_open_sotw,
                                             .on_message = ads_message,
                                             .on_close = ads_close,
                                             .ud = s};
    ads_methods[1] = (struct km_grpc_method){.path = ADS_DELTA,
                                             .on_open = ads_open_delta,
                                             .on_message = ads_message,
                                             .on_close = ads_close,
                                             .ud = s};
    struct km_grpc_server_opts o = {.methods = ads_methods,
                                    .nmethods = 2,
                                    .http_handler = handle_bootstrap,
                                    .http_ud = s};
    s->grpc = km_grpc_server_new(s->loop, &o);
    if (km_grpc_server_listen(s->grpc, s->tls_fd, s->cert_pem, s->key_pem, err, errlen) != 0)
        return -1;
    s->tls_fd = -1;
    if (s->plain_fd >= 0) {
        if (km_grpc_server_listen(s->grpc, s->plain_fd, NULL, NULL, err, errlen) != 0)
            return -1;
        s->plain_fd = -1;
    }
    if (pthread_create(&s->thread, NULL, dp_thread, s) != 0) {
        snprintf(err, errlen, "cannot start the DP server thread");
        return -1;
    }
    s->started = true;
    return 0;
}

static void
stop_on_loop(void *arg)
{
    struct km_dp_server *s = arg;
    km_grpc_server_free(s->grpc); /* closes every stream: ads_close runs for each */
    s->grpc = NULL;
    km_timer_free(s->regen_timer);
    s->regen_timer = NULL;
    km_timer_free(s->cert_timer);
    s->cert_timer = NULL;
    km_loop_stop(s->loop);
}

void
km_dp_server_free(struct km_dp_server *s)
{
    if (!s)
        return;
    if (s->started) {
        km_loop_post(s->loop, stop_on_loop, s);
        pthread_join(s->thread, NULL);
    }
    km_loop_free(s->loop);
    if (s->tls_fd >= 0)
        close(s->tls_fd);
    if (s->plain_fd >= 0)
        close(s->plain_fd);
    for (size_t i = 0; i < s->ndirty; i++)
        dirty_free(&s->dirty[i]);
    free(s->dirty);
    for (size_t i = 0; i < s->noffline; i++) {
        free(s->offline[i].mesh);
        free(s->offline[i].name);
    }
    free(s->offline);
    mesh_cache_drop(s, NULL);
    free(s->meshes);
    km_mesh_ca_cache_free(s->cas);
    free(s->cert_pem);
    free(s->key_pem);
    free(s);
}
