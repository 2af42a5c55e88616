/* kuma-dp stats registry: blocks of per-worker counters keyed by kind and name (see stats.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/dp/stats.h>

#define STATS_BUCKETS 1024u

struct stat_desc {
    const char *name;
    bool gauge;
};

static const struct stat_desc stats_listener[KM_DP_LS_N] = {
    [KM_DP_LS_CX_TOTAL] = {"downstream_cx_total", false},
    [KM_DP_LS_CX_ACTIVE] = {"downstream_cx_active", true},
    [KM_DP_LS_CX_DESTROY] = {"downstream_cx_destroy", false},
    [KM_DP_LS_RX_BYTES] = {"downstream_cx_rx_bytes_total", false},
    [KM_DP_LS_TX_BYTES] = {"downstream_cx_tx_bytes_total", false},
    [KM_DP_LS_NO_CHAIN] = {"no_filter_chain_match", false},
    [KM_DP_LS_IDLE_TIMEOUT] = {"downstream_cx_idle_timeout", false},
    [KM_DP_LS_OVERFLOW] = {"downstream_cx_overflow", false},
    [KM_DP_LS_NO_CLUSTER] = {"downstream_cx_no_cluster", false},
    [KM_DP_LS_SSL_HANDSHAKE] = {"ssl.handshake", false},
    [KM_DP_LS_SSL_ERROR] = {"ssl.connection_error", false},
    [KM_DP_LS_SSL_FAIL_VERIFY] = {"ssl.fail_verify_error", false},
    [KM_DP_LS_SSL_FAIL_SAN] = {"ssl.fail_verify_san", false},
    [KM_DP_LS_SSL_NO_CERT] = {"ssl.fail_verify_no_cert", false},
};

static const struct stat_desc stats_cluster[KM_DP_CS_N] = {
    [KM_DP_CS_CX_TOTAL] = {"upstream_cx_total", false},
    [KM_DP_CS_CX_ACTIVE] = {"upstream_cx_active", true},
    [KM_DP_CS_CONNECT_FAIL] = {"upstream_cx_connect_fail", false},
    [KM_DP_CS_CONNECT_TIMEOUT] = {"upstream_cx_connect_timeout", false},
    [KM_DP_CS_CONNECT_EXCEEDED] = {"upstream_cx_connect_attempts_exceeded", false},
    [KM_DP_CS_NONE_HEALTHY] = {"upstream_cx_none_healthy", false},
    [KM_DP_CS_RX_BYTES] = {"upstream_cx_rx_bytes_total", false},
    [KM_DP_CS_TX_BYTES] = {"upstream_cx_tx_bytes_total", false},
    [KM_DP_CS_RQ_TOTAL] = {"upstream_rq_total", false},
    [KM_DP_CS_RQ_2XX] = {"upstream_rq_2xx", false},
    [KM_DP_CS_RQ_4XX] = {"upstream_rq_4xx", false},
    [KM_DP_CS_RQ_5XX] = {"upstream_rq_5xx", false},
    [KM_DP_CS_RQ_TIMEOUT] = {"upstream_rq_timeout", false},
    [KM_DP_CS_SSL_HANDSHAKE] = {"ssl.handshake", false},
    [KM_DP_CS_SSL_ERROR] = {"ssl.connection_error", false},
    [KM_DP_CS_SSL_FAIL_VERIFY] = {"ssl.fail_verify_error", false},
    [KM_DP_CS_SSL_FAIL_SAN] = {"ssl.fail_verify_san", false},
    [KM_DP_CS_SSL_REUSED] = {"ssl.session_reused", false},
};

static const struct stat_desc stats_endpoint[KM_DP_ES_N] = {
    [KM_DP_ES_CX_TOTAL] = {"cx_total", false},
    [KM_DP_ES_CX_ACTIVE] = {"cx_active", true},
    [KM_DP_ES_CONNECT_FAIL] = {"cx_connect_fail", false},
    [KM_DP_ES_RQ_TOTAL] = {"rq_total", false},
    [KM_DP_ES_RQ_ERROR] = {"rq_error", false},
    [KM_DP_ES_RQ_SUCCESS] = {"rq_success", false},
};

static const struct stat_desc stats_http[KM_DP_HS_N] = {
    [KM_DP_HS_RQ_TOTAL] = {"downstream_rq_total", false},
    [KM_DP_HS_RQ_ACTIVE] = {"downstream_rq_active", true},
    [KM_DP_HS_RQ_2XX] = {"downstream_rq_2xx", false},
    [KM_DP_HS_RQ_4XX] = {"downstream_rq_4xx", false},
    [KM_DP_HS_RQ_5XX] = {"downstream_rq_5xx", false},
    [KM_DP_HS_RX_PARSE_ERROR] = {"downstream_rq_rx_parse_error", false},
    [KM_DP_HS_NO_ROUTE] = {"no_route", false},
    [KM_DP_HS_NO_CLUSTER] = {"no_cluster", false},
    [KM_DP_HS_RQ_TIMEOUT] = {"downstream_rq_timeout", false},
    [KM_DP_HS_UNSUPPORTED] = {"downstream_rq_unsupported", false},
};

static const struct stat_desc stats_server[KM_DP_SV_N] = {
    [KM_DP_SV_LISTENER_CREATE_FAIL] = {"listener_manager.listener_create_failure", false},
    [KM_DP_SV_LISTENERS_ACTIVE] = {"listener_manager.total_listeners_active", true},
    [KM_DP_SV_SNAPSHOTS_APPLIED] = {"server.snapshots_applied", false},
};

static const struct stat_desc stats_rbac[KM_DP_RS_N] = {
    [KM_DP_RS_ALLOWED] = {"rbac.allowed", false},
    [KM_DP_RS_DENIED] = {"rbac.denied", false},
    [KM_DP_RS_SHADOW_ALLOWED] = {"rbac.shadow_allowed", false},
    [KM_DP_RS_SHADOW_DENIED] = {"rbac.shadow_denied", false},
};

static const struct {
    const struct stat_desc *d;
    size_t n;
    const char *prefix;    /* text name prefix ("" for the server block) */
    const char *label;     /* Prometheus label holding the block's name */
} stats_kinds[KM_DP_STAT_KINDS] = {
    [KM_DP_STAT_LISTENER] = {stats_listener, KM_DP_LS_N, "listener", "envoy_listener_address"},
    [KM_DP_STAT_CLUSTER] = {stats_cluster, KM_DP_CS_N, "cluster", "envoy_cluster_name"},
    [KM_DP_STAT_ENDPOINT] = {stats_endpoint, KM_DP_ES_N, "endpoint", NULL},
    [KM_DP_STAT_HTTP] = {stats_http, KM_DP_HS_N, "http", "envoy_http_conn_manager_prefix"},
    [KM_DP_STAT_SERVER] = {stats_server, KM_DP_SV_N, "", NULL},
    [KM_DP_STAT_RBAC] = {stats_rbac, KM_DP_RS_N, "", "envoy_rbac_prefix"},
};

struct km_dp_stats {
    size_t nworkers;
    pthread_mutex_t mu;
    struct km_dp_stat_block *buckets[STATS_BUCKETS];
    size_t nblocks;
};

struct km_dp_stats *
km_dp_stats_new(size_t nworkers)
{
    struct km_dp_stats *st = km_xcalloc(1, sizeof(*st));
    st->nworkers = nworkers ? nworkers : 1;
    pthread_mutex_init(&st->mu, NULL);
    return st;
}

static void
stats_block_free(struct km_dp_stat_block *b)
{
    free(b->name);
    free(b->ep);
    free(b->v);
    free(b);
}

void
km_dp_stats_free(struct km_dp_stats *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < STATS_BUCKETS; i++) {
        struct km_dp_stat_block *b = st->buckets[i];
        while (b) {
            struct km_dp_stat_block *n = b->next;
            stats_block_free(b);
            b = n;
        }
    }
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static size_t
stats_hash(enum km_dp_stat_kind kind, const char *name, const char *ep)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)kind;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    if (ep) {
        h = (h ^ 0xff) * 1099511628211ull;
        for (const char *p = ep; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
    }
    return (size_t)(h % STATS_BUCKETS);
}

struct km_dp_stat_block *
km_dp_stats_ref(struct km_dp_stats *st, enum km_dp_stat_kind kind, const char *name,
                const char *ep)
{
    if (!name)
        name = "";
    size_t h = stats_hash(kind, name, ep);
    pthread_mutex_lock(&st->mu);
    struct km_dp_stat_block *b = st->buckets[h];
    for (; b; b = b->next) {
        if (b->kind == kind && strcmp(b->name, name) == 0 &&
            ((!b->ep && !ep) || (b->ep && ep && strcmp(b->ep, ep) == 0)))
            break;
    }
    if (!b) {
        b = km_xcalloc(1, sizeof(*b));
        b->kind = kind;
        b->name = km_xstrdup(name);
        b->ep = ep ? km_xstrdup(ep) : NULL;
        b->n = stats_kinds[kind].n;
        b->nworkers = st->nworkers;
        b->v = km_xcalloc(b->n * b->nworkers, sizeof(*b->v));
        for (size_t i = 0; i < b->n * b->nworkers; i++)
            atomic_init(&b->v[i], 0);
        b->next = st->buckets[h];
        st->buckets[h] = b;
        st->nblocks++;
    }
    b->refs++;
    pthread_mutex_unlock(&st->mu);
    return b;
}

void
km_dp_stats_unref(struct km_dp_stats *st, struct km_dp_stat_block *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&st->mu);
    if (--b->refs == 0) {
        size_t h = stats_hash(b->kind, b->name, b->ep);
        struct km_dp_stat_block **pp = &st->buckets[h];
        while (*pp && *pp != b)
            pp = &(*pp)->next;
        if (*pp)
            *pp = b->next;
        st->nblocks--;
        stats_block_free(b);
    }
    pthread_mutex_unlock(&st->mu);
}

int64_t
km_dp_stat_get(const struct km_dp_stat_block *b, size_t idx)
{
    int64_t sum = 0;
    if (idx >= b->n)
        return 0;
    for (size_t w = 0; w < b->nworkers; w++)
        sum += atomic_load_explicit(&b->v[w * b->n + idx], memory_order_relaxed);
    return sum;
}

const char *
km_dp_stat_name(enum km_dp_stat_kind kind, size_t idx)
{
    if ((unsigned)kind >= KM_DP_STAT_KINDS || idx >= stats_kinds[kind].n)
        return NULL;
    return stats_kinds[kind].d[idx].name;
}

bool
km_dp_stat_is_gauge(enum km_dp_stat_kind kind, size_t idx)
{
    if ((unsigned)kind >= KM_DP_STAT_KINDS || idx >= stats_kinds[kind].n)
        return false;
    return stats_kinds[kind].d[idx].gauge;
}

size_t
km_dp_stat_count(enum km_dp_stat_kind kind)
{
    return (unsigned)kind < KM_DP_STAT_KINDS ? stats_kinds[kind].n : 0;
}

/* "listener.<name>.<counter>", or the counter's own name for the server block. */
static char *
stats_full_name(const struct km_dp_stat_block *b, size_t idx)
{
    const char *cn = stats_kinds[b->kind].d[idx].name;
    if (b->kind == KM_DP_STAT_SERVER)
        return km_xstrdup(cn);
    if (b->kind == KM_DP_STAT_RBAC)
        return km_xasprintf("%s%s", b->name, cn); /* the stat_prefix ends with its own '.' */
    return km_xasprintf("%s.%s.%s", stats_kinds[b->kind].prefix, b->name, cn);
}

bool
km_dp_stats_lookup(struct km_dp_stats *st, const char *full_name, int64_t *value)
{
    bool found = false;
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < STATS_BUCKETS && !found; i++) {
        for (struct km_dp_stat_block *b = st->buckets[i]; b && !found; b = b->next) {
            if (b->kind == KM_DP_STAT_ENDPOINT)
                continue;
            for (size_t k = 0; k < b->n; k++) {
                char *n = stats_full_name(b, k);
                bool eq = strcmp(n, full_name) == 0;
                free(n);
                if (eq) {
                    *value = km_dp_stat_get(b, k);
                    found = true;
                    break;
                }
            }
        }
    }
    pthread_mutex_unlock(&st->mu);
    return found;
}

struct stats_line {
    char *name;
    int64_t v;
};

static int
stats_line_cmp(const void *a, const void *b)
{
    return strcmp(((const struct stats_line *)a)->name, ((const struct stats_line *)b)->name);
}

void
km_dp_stats_render_text(struct km_dp_stats *st, struct km_sbuf *out)
{
    pthread_mutex_lock(&st->mu);
    size_t cap = 0, n = 0;
    for (size_t i = 0; i < STATS_BUCKETS; i++)
        for (struct km_dp_stat_block *b = st->buckets[i]; b; b = b->next)
            if (b->kind != KM_DP_STAT_ENDPOINT)
                cap += b->n;
    struct stats_line *lines = km_xcalloc(cap ? cap : 1, sizeof(*lines));
    for (size_t i = 0; i < STATS_BUCKETS; i++) {
        for (struct km_dp_stat_block *b = st->buckets[i]; b; b = b->next) {
            if (b->kind == KM_DP_STAT_ENDPOINT)
                continue;
            for (size_t k = 0; k < b->n; k++) {
                lines[n].name = stats_full_name(b, k);
                lines[n].v = km_dp_stat_get(b, k);
                n++;
            }
        }
    }
    pthread_mutex_unlock(&st->mu);
    qsort(lines, n, sizeof(*lines), stats_line_cmp);
    for (size_t i = 0; i < n; i++) {
        km_sbuf_printf(out, "%s: %lld\n", lines[i].name, (long long)lines[i].v);
        free(lines[i].name);
    }
    free(lines);
}

/* Prometheus label values escape backslash, double quote and newline. */
static void
stats_prom_label(struct km_sbuf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            km_sbuf_puts(out, "\\\\");
        else if (*p == '"')
            km_sbuf_puts(out, "\\\"");
        else if (*p == '\n')
            km_sbuf_puts(out, "\\n");
        else
            km_sbuf_add(out, p, 1);
    }
}

/* Metric names: [a-zA-Z0-9_] only, everything else becomes '_'. */
static void
stats_prom_name(struct km_sbuf *out, const char *a, const char *b)
{
    km_sbuf_puts(out, "envoy_");
    const char *parts[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        if (!parts[i] || !*parts[i])
            continue;
        if (i == 1 && parts[0] && *parts[0])
            km_sbuf_puts(out, "_");
        for (const char *p = parts[i]; *p; p++) {
            char c = *p;
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
            km_sbuf_add(out, ok ? &c : "_", 1);
        }
    }
}

static int
stats_block_cmp(const void *a, const void *b)
{
    const struct km_dp_stat_block *x = *(struct km_dp_stat_block *const *)a;
    const struct km_dp_stat_block *y = *(struct km_dp_stat_block *const *)b;
    return strcmp(x->name, y->name);
}

void
km_dp_stats_render_prometheus(struct km_dp_stats *st, struct km_sbuf *out)
{
    pthread_mutex_lock(&st->mu);
    struct km_dp_stat_block **blocks = km_xcalloc(st->nblocks + 1, sizeof(*blocks));
    for (unsigned kind = 0; kind < KM_DP_STAT_KINDS; kind++) {
        if (kind == KM_DP_STAT_ENDPOINT)
            continue;
        size_t nb = 0;
        for (size_t i = 0; i < STATS_BUCKETS; i++)
            for (struct km_dp_stat_block *b = st->buckets[i]; b; b = b->next)
                if (b->kind == kind)
                    blocks[nb++] = b;
        if (nb == 0)
            continue;
        qsort(blocks, nb, sizeof(*blocks), stats_block_cmp);
        for (size_t k = 0; k < stats_kinds[kind].n; k++) {
            const struct stat_desc *d = &stats_kinds[kind].d[k];
            km_sbuf_puts(out, "# TYPE ");
            stats_prom_name(out, stats_kinds[kind].prefix, d->name);
            km_sbuf_puts(out, d->gauge ? " gauge\n" : " counter\n");
            for (size_t j = 0; j < nb; j++) {
                stats_prom_name(out, stats_kinds[kind].prefix, d->name);
                if (stats_kinds[kind].label) {
                    km_sbuf_printf(out, "{%s=\"", stats_kinds[kind].label);
                    stats_prom_label(out, blocks[j]->name);
                    km_sbuf_puts(out, "\"}");
                }
                km_sbuf_printf(out, " %lld\n", (long long)km_dp_stat_get(blocks[j], k));
            }
        }
    }
    pthread_mutex_unlock(&st->mu);
    free(blocks);
}
