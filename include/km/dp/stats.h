/* kuma-dp statistics: per listener, cluster and endpoint counters and gauges, written by the
 * worker threads without locks and merged on scrape.
 *
 * A stat block holds one row of counters per worker: worker <w> is the only writer of its row
 * (relaxed atomic load + store, a plain increment on x86), any thread may read. Gauges are kept
 * the same way as signed per-worker deltas whose sum is the gauge's value. Blocks live in a
 * registry keyed by kind and name; the engine takes a reference for every listener, cluster and
 * endpoint of each published snapshot and drops it when that snapshot is gone, so the stats of a
 * removed cluster disappear once no connection uses it any more (Envoy behaves the same way).
 * The registry has a mutex, taken only on publish, on snapshot release and on scrape; counter
 * updates never lock.
 *
 * Names follow Envoy: listener.<address with ':' as '_'>.downstream_cx_total,
 * cluster.<name>.upstream_cx_total; Prometheus output is envoy_ prefixed with the name moved to a
 * label (envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"}). */
#ifndef KM_DP_STATS_H
#define KM_DP_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/util.h>

enum km_dp_stat_kind {
    KM_DP_STAT_LISTENER = 0,
    KM_DP_STAT_CLUSTER,
    KM_DP_STAT_ENDPOINT,
    KM_DP_STAT_HTTP, /* one per HTTP connection manager stat_prefix */
    KM_DP_STAT_SERVER, /* the single process-wide block */
    KM_DP_STAT_RBAC,   /* one per network RBAC stat_prefix: "<stat_prefix>rbac.<counter>" */
    KM_DP_STAT_KINDS,
};

/* Listener counters (prefix listener.<addr>.). */
enum {
    KM_DP_LS_CX_TOTAL = 0,   /* downstream_cx_total */
    KM_DP_LS_CX_ACTIVE,      /* downstream_cx_active (gauge) */
    KM_DP_LS_CX_DESTROY,     /* downstream_cx_destroy */
    KM_DP_LS_RX_BYTES,       /* downstream_cx_rx_bytes_total */
    KM_DP_LS_TX_BYTES,       /* downstream_cx_tx_bytes_total */
    KM_DP_LS_NO_CHAIN,       /* no_filter_chain_match */
    KM_DP_LS_IDLE_TIMEOUT,   /* downstream_cx_idle_timeout */
    KM_DP_LS_OVERFLOW,       /* downstream_cx_overflow (accept failed: fd or memory limit) */
    KM_DP_LS_NO_CLUSTER,     /* downstream_cx_no_cluster (TCP proxy cluster not in config) */
    KM_DP_LS_SSL_HANDSHAKE,  /* ssl.handshake (completed TLS handshakes) */
    KM_DP_LS_SSL_ERROR,      /* ssl.connection_error (failed handshakes, no secret yet) */
    KM_DP_LS_SSL_FAIL_VERIFY, /* ssl.fail_verify_error (peer chain not trusted) */
    KM_DP_LS_SSL_FAIL_SAN,   /* ssl.fail_verify_san (peer URI SAN does not match) */
    KM_DP_LS_SSL_NO_CERT,    /* ssl.fail_verify_no_cert (client certificate required) */
    KM_DP_LS_N,
};

/* Cluster counters (prefix cluster.<name>.). */
enum {
    KM_DP_CS_CX_TOTAL = 0,        /* upstream_cx_total */
    KM_DP_CS_CX_ACTIVE,           /* upstream_cx_active (gauge) */
    KM_DP_CS_CONNECT_FAIL,        /* upstream_cx_connect_fail */
    KM_DP_CS_CONNECT_TIMEOUT,     /* upstream_cx_connect_timeout */
    KM_DP_CS_CONNECT_EXCEEDED,    /* upstream_cx_connect_attempts_exceeded */
    KM_DP_CS_NONE_HEALTHY,        /* upstream_cx_none_healthy */
    KM_DP_CS_RX_BYTES,            /* upstream_cx_rx_bytes_total */
    KM_DP_CS_TX_BYTES,            /* upstream_cx_tx_bytes_total */
    KM_DP_CS_RQ_TOTAL,            /* upstream_rq_total */
    KM_DP_CS_RQ_2XX,              /* upstream_rq_2xx */
    KM_DP_CS_RQ_4XX,              /* upstream_rq_4xx */
    KM_DP_CS_RQ_5XX,              /* upstream_rq_5xx */
    KM_DP_CS_RQ_TIMEOUT,          /* upstream_rq_timeout */
    KM_DP_CS_SSL_HANDSHAKE,       /* ssl.handshake */
    KM_DP_CS_SSL_ERROR,           /* ssl.connection_error (failed handshakes, no secret yet) */
    KM_DP_CS_SSL_FAIL_VERIFY,     /* ssl.fail_verify_error */
    KM_DP_CS_SSL_FAIL_SAN,        /* ssl.fail_verify_san */
    KM_DP_CS_SSL_REUSED,          /* ssl.session_reused */
    KM_DP_CS_N,
};

/* Endpoint counters (shown by /clusters as cluster::addr::name::value). */
enum {
    KM_DP_ES_CX_TOTAL = 0,    /* cx_total */
    KM_DP_ES_CX_ACTIVE,       /* cx_active (gauge) */
    KM_DP_ES_CONNECT_FAIL,    /* cx_connect_fail */
    KM_DP_ES_RQ_TOTAL,        /* rq_total */
    KM_DP_ES_RQ_ERROR,        /* rq_error */
    KM_DP_ES_RQ_SUCCESS,      /* rq_success */
    KM_DP_ES_N,
};

/* HTTP connection manager counters (prefix http.<stat_prefix>.). */
enum {
    KM_DP_HS_RQ_TOTAL = 0,    /* downstream_rq_total */
    KM_DP_HS_RQ_ACTIVE,       /* downstream_rq_active (gauge) */
    KM_DP_HS_RQ_2XX,          /* downstream_rq_2xx */
    KM_DP_HS_RQ_4XX,          /* downstream_rq_4xx */
    KM_DP_HS_RQ_5XX,          /* downstream_rq_5xx */
    KM_DP_HS_RX_PARSE_ERROR,  /* downstream_rq_rx_parse_error (answered 400) */
    KM_DP_HS_NO_ROUTE,        /* no_route */
    KM_DP_HS_NO_CLUSTER,      /* no_cluster */
    KM_DP_HS_RQ_TIMEOUT,      /* downstream_rq_timeout (answered 504) */
    KM_DP_HS_UNSUPPORTED,     /* downstream_rq_unsupported (upgrade/CONNECT refused, no codec) */
    KM_DP_HS_N,
};

/* Network RBAC counters (names "<stat_prefix>rbac.allowed", as Envoy's). */
enum {
    KM_DP_RS_ALLOWED = 0,     /* rbac.allowed */
    KM_DP_RS_DENIED,          /* rbac.denied */
    KM_DP_RS_SHADOW_ALLOWED,  /* rbac.shadow_allowed */
    KM_DP_RS_SHADOW_DENIED,   /* rbac.shadow_denied */
    KM_DP_RS_N,
};

/* Process-wide counters (prefix server. / listener_manager.). */
enum {
    KM_DP_SV_LISTENER_CREATE_FAIL = 0, /* listener_manager.listener_create_failure */
    KM_DP_SV_LISTENERS_ACTIVE,         /* listener_manager.total_listeners_active (gauge,
                                          counts worker sockets) */
    KM_DP_SV_SNAPSHOTS_APPLIED,        /* server.snapshots_applied (per worker) */
    KM_DP_SV_N,
};

struct km_dp_stat_block {
    enum km_dp_stat_kind kind;
    char *name;        /* owned: listener address ("127.0.0.1_10001"), cluster name, stat_prefix */
    char *ep;          /* owned: endpoint address for KM_DP_STAT_ENDPOINT, else NULL */
    size_t n;          /* counters per worker row */
    size_t nworkers;
    size_t refs;       /* under the registry mutex */
    atomic_int_least64_t *v; /* owned: nworkers * n values */
    struct km_dp_stat_block *next; /* hash chain (borrowed, registry-owned) */
};

struct km_dp_stats;

/* A registry for <nworkers> writer threads. */
struct km_dp_stats *km_dp_stats_new(size_t nworkers);
void km_dp_stats_free(struct km_dp_stats *st);

/* Finds or creates the block and takes a reference on it; <ep> only for endpoints. */
struct km_dp_stat_block *km_dp_stats_ref(struct km_dp_stats *st, enum km_dp_stat_kind kind,
                                         const char *name, const char *ep);
/* Drops a reference; the block is freed (its counters forgotten) when none is left. */
void km_dp_stats_unref(struct km_dp_stats *st, struct km_dp_stat_block *b);

/* Adds <delta> to counter <idx> in worker <w>'s row. Only worker <w> may call this for row <w>. */
static inline void
km_dp_stat_add(struct km_dp_stat_block *b, size_t w, size_t idx, int64_t delta)
{
    atomic_int_least64_t *p = &b->v[w * b->n + idx];
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + delta,
                          memory_order_relaxed);
}
#define km_dp_stat_inc(b, w, idx) km_dp_stat_add((b), (w), (idx), 1)

/* The merged value of counter <idx> (sum over workers); any thread. */
int64_t km_dp_stat_get(const struct km_dp_stat_block *b, size_t idx);

/* Counter name of <idx> for blocks of <kind> ("downstream_cx_total"); NULL when out of range. */
const char *km_dp_stat_name(enum km_dp_stat_kind kind, size_t idx);
/* Whether counter <idx> of <kind> is a gauge. */
bool km_dp_stat_is_gauge(enum km_dp_stat_kind kind, size_t idx);
size_t km_dp_stat_count(enum km_dp_stat_kind kind);

/* Looks a merged value up by its full text name ("cluster.backend.upstream_cx_total",
 * "listener.127.0.0.1_10001.downstream_cx_active"); false when no such stat exists. */
bool km_dp_stats_lookup(struct km_dp_stats *st, const char *full_name, int64_t *value);

/* Appends "name: value\n" lines sorted by name (Envoy's /stats text), endpoint blocks excluded. */
void km_dp_stats_render_text(struct km_dp_stats *st, struct km_sbuf *out);
/* Appends Prometheus text exposition (envoy_ prefixed, names moved to labels). */
void km_dp_stats_render_prometheus(struct km_dp_stats *st, struct km_sbuf *out);
#endif
