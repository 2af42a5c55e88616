/* kuma-dp's configuration model: one immutable, reference-counted snapshot built from the xDS
 * resources the agent holds (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment).
 *
 * The agent (main thread) builds a new snapshot whenever an xDS response is accepted and
 * publishes it; each worker takes a reference between events and drops its old one, so a
 * connection keeps the snapshot it started with (its cluster and route pointers stay valid)
 * and a config change never breaks an established connection. Nothing in a snapshot changes
 * after km_dp_snapshot_build returns. All strings and arrays are owned by the snapshot. */
#ifndef KM_DP_SNAPSHOT_H
#define KM_DP_SNAPSHOT_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <km/common/errs.h>

struct km_dp_tls_ctx;
struct km_dp_secret;
struct km_dp_rbac;

enum km_dp_lb {
    KM_DP_LB_ROUND_ROBIN = 0,
    KM_DP_LB_LEAST_REQUEST, /* power of two choices (choice_count) */
    KM_DP_LB_RANDOM,
    KM_DP_LB_RING_HASH,
    KM_DP_LB_MAGLEV,
};

struct km_dp_endpoint {
    struct sockaddr_storage addr; /* IP literal + port */
    socklen_t addrlen;
    char *addr_str;               /* "10.0.0.1:8080" */
    uint32_t weight;              /* >= 1 (endpoint weight x locality weight) */
    bool healthy;                 /* EDS health_status UNKNOWN or HEALTHY */
    uint32_t priority;
    char *zone;                   /* locality zone, "" when none */
};

struct km_dp_cluster {
    char *name;
    enum km_dp_lb lb;
    uint32_t choice_count;        /* least request, default 2 */
    uint32_t connect_timeout_ms;  /* default 5000 */
    bool http2;                   /* upstream speaks HTTP/2 (explicit http2 protocol options) */
    bool eds;                     /* endpoints come from a ClusterLoadAssignment */
    char *eds_name;               /* service_name or the cluster name */
    struct km_dp_endpoint *eps;   /* the cluster's endpoints (from EDS or load_assignment) */
    size_t neps;
    /* Ring hash / Maglev lookup table: indexes into eps; empty for other policies. */
    uint32_t *table;
    size_t table_size;
    /* Ring hash only: the ring's points, ascending, parallel to <table> (a request whose key
     * hashes to h, with km_dp_hash64, goes to eps[table[i]] for the first ring_hashes[i] >= h,
     * wrapping to 0). Maglev: eps[table[km_dp_hash64(key) % table_size]]. Both tables hold
     * the healthy endpoints of the lowest priority that has any (all endpoints when none is
     * healthy). */
    uint64_t *ring_hashes;
    /* Circuit breaker thresholds (0 = Envoy's defaults: 1024). */
    uint32_t max_connections, max_pending_requests, max_requests;
    /* UpstreamTlsContext of the transport socket (tls.h), or NULL for plaintext. */
    struct km_dp_tls_ctx *tls;
};

struct km_dp_weighted {
    char *cluster;
    uint32_t weight;
};

enum km_dp_path_match { KM_DP_MATCH_PREFIX = 0, KM_DP_MATCH_PATH, KM_DP_MATCH_REGEX };
enum km_dp_header_match_kind {
    KM_DP_HDR_EXACT = 0,
    KM_DP_HDR_PREFIX,
    KM_DP_HDR_SUFFIX,
    KM_DP_HDR_CONTAINS,
    KM_DP_HDR_PRESENT,
    KM_DP_HDR_REGEX,
};

struct km_dp_header_match {
    char *name; /* lowercase */
    enum km_dp_header_match_kind kind;
    char *value;
    bool invert;
    bool ignore_case; /* StringMatcher.ignore_case (exact, prefix, suffix, contains) */
    void *regex; /* compiled POSIX regex_t* for KM_DP_HDR_REGEX, else NULL */
};

struct km_dp_route {
    enum km_dp_path_match match;
    char *path;  /* prefix, exact path or regex source */
    void *regex; /* compiled regex_t* for KM_DP_MATCH_REGEX */
    bool case_sensitive;
    struct km_dp_header_match *headers;
    size_t nheaders;
    struct km_dp_weighted *clusters; /* one entry for route.cluster */
    size_t nclusters;
    uint32_t total_weight;
    uint32_t timeout_ms;   /* 0 = none; Envoy's default is 15 s when unset */
    char *prefix_rewrite;  /* may be NULL */
    char *host_rewrite;    /* may be NULL */
    uint32_t num_retries;
    char *retry_on;        /* comma separated, may be NULL */
    uint32_t direct_status; /* direct_response status, 0 = route to clusters */
    bool grpc;              /* match.grpc: only requests with content-type application/grpc */
};

struct km_dp_vhost {
    char *name;
    char **domains; /* "*", "*.x", "x.*", exact */
    size_t ndomains;
    struct km_dp_route *routes;
    size_t nroutes;
};

struct km_dp_route_config {
    char *name;
    struct km_dp_vhost *vhosts;
    size_t nvhosts;
};

enum km_dp_filter_kind { KM_DP_FILTER_TCP_PROXY = 0, KM_DP_FILTER_HCM };
enum km_dp_codec { KM_DP_CODEC_AUTO = 0, KM_DP_CODEC_HTTP1, KM_DP_CODEC_HTTP2 };

struct km_dp_chain {
    /* filter_chain_match */
    uint32_t dest_port;     /* 0 = any */
    char **server_names;    /* SNI, empty = any */
    size_t nserver_names;
    char *transport_protocol; /* "tls", "raw_buffer" or NULL = any */
    char **alpn;
    size_t nalpn;
    enum km_dp_filter_kind kind;
    char *stat_prefix;
    /* TCP proxy */
    struct km_dp_weighted *clusters;
    size_t nclusters;
    uint32_t total_weight;
    uint32_t idle_timeout_ms; /* 0 = none; Envoy's default is 1 h */
    /* HTTP connection manager */
    enum km_dp_codec codec;
    char *rds_name;                       /* route config from RDS, or NULL */
    const struct km_dp_route_config *rc;  /* resolved: inline or from RDS (borrowed from
                                             this snapshot) */
    struct km_dp_route_config *inline_rc; /* owned when inline */
    uint32_t stream_idle_timeout_ms;
    uint32_t request_timeout_ms;
    /* DownstreamTlsContext of the transport socket (tls.h), or NULL for plaintext. */
    struct km_dp_tls_ctx *tls;
    /* The network RBAC filter before the terminal filter (rbac.h), or NULL. */
    struct km_dp_rbac *rbac;
    /* HTTP connection manager: the HTTP RBAC filter before the router (rbac.h), or NULL. */
    struct km_dp_rbac *http_rbac;
};

struct km_dp_listener {
    char *name;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *addr_str; /* "127.0.0.1:10001" */
    bool inbound;   /* traffic_direction INBOUND */
    struct km_dp_chain *chains;
    size_t nchains;
};

struct km_dp_snapshot {
    atomic_uint refs;
    uint64_t generation; /* increases with every snapshot the agent publishes */
    struct km_dp_listener *listeners; /* sorted by name */
    size_t nlisteners;
    struct km_dp_cluster *clusters;   /* sorted by name */
    size_t nclusters;
    struct km_dp_route_config *routes; /* from RDS, sorted by name */
    size_t nroutes;
    struct km_dp_secret *secrets;      /* from SDS, sorted by name (tls.h) */
    size_t nsecrets;
};

/* The raw resources the agent holds: for each type, name -> encoded resource bytes. */
struct km_dp_xds_res {
    char *name;
    uint8_t *bytes;
    size_t len;
    char *version;
};
struct km_dp_xds_set {
    struct km_dp_xds_res *v; /* owned */
    size_t n;
};
/* KM_DP_SDS: envoy.extensions.transport_sockets.tls.v3.Secret, subscribed by the names the
 * TLS contexts of the snapshot refer to. */
enum { KM_DP_LDS = 0, KM_DP_RDS, KM_DP_CDS, KM_DP_EDS, KM_DP_SDS, KM_DP_TYPES };

/* Builds a snapshot from the held resources. Every unsupported or invalid field is an error
 * naming the resource and the field ("cluster backend: lb_policy CLUSTER_PROVIDED is not
 * supported"); with any error, returns NULL and the errors tell the NACK's error_detail.
 * References to missing RDS routes or EDS assignments are not errors: such chains or
 * clusters simply have no routes or endpoints yet. */
struct km_dp_snapshot *km_dp_snapshot_build(const struct km_dp_xds_set sets[KM_DP_TYPES],
                                            uint64_t generation, struct km_errs *errs);

struct km_dp_snapshot *km_dp_snapshot_ref(struct km_dp_snapshot *s);
void km_dp_snapshot_unref(struct km_dp_snapshot *s);

/* The hash of ring hash and Maglev (64-bit FNV-1a with a final avalanche mix): the engine
 * hashes request keys with it. */
uint64_t km_dp_hash64(const void *data, size_t len);
#define KM_DP_MAGLEV_TABLE_SIZE 65537u
#define KM_DP_RING_MIN_SIZE 1024u          /* Envoy's minimum_ring_size default */
#define KM_DP_RING_MAX_SIZE (8u * 1024 * 1024)

/* Lookups by name (binary search); NULL when absent. */
const struct km_dp_cluster *km_dp_snapshot_cluster(const struct km_dp_snapshot *s,
                                                   const char *name);
const struct km_dp_listener *km_dp_snapshot_listener(const struct km_dp_snapshot *s,
                                                     const char *name);
const struct km_dp_route_config *km_dp_snapshot_route(const struct km_dp_snapshot *s,
                                                      const char *name);

/* Frees the resources of a set (not the array itself) and empties it. */
void km_dp_xds_set_clear(struct km_dp_xds_set *set);

#endif
