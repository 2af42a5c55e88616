/* xDS configuration generation (Kuma's model, Universal): Dataplanes of one mesh in, Envoy v3
 * resources of one proxy out, as proto3 JSON (snake_case names, Any as "@type", Duration as
 * "5s", wrappers as plain numbers).
 *
 * Two steps. A mesh index (built once per mesh snapshot, shareable by every proxy of the mesh)
 * groups the inbounds of all Dataplanes by `kuma.io/service`: the service's protocol and its
 * ready endpoints, deduplicated and in a fixed order. Generation then walks the proxy's own
 * Dataplane (inbound and outbound listeners, local and EDS clusters) and the listener names a
 * proxyless gRPC client asked for (API listener, route, cluster, endpoints).
 *
 * mTLS (Mesh.mtls with an enabled backend): sidecars get the Downstream TLS context on every
 * inbound filter chain (STRICT; PERMISSIVE splits each chain into plaintext, application TLS
 * and mesh mTLS chains), the Upstream TLS context with Kuma's SNI on every outbound cluster,
 * and two SDS secrets, their certificate and the mesh's CAs (src/cp/xds_tls.c builds them).
 * Local clusters to the application and proxyless clients stay plaintext.
 *
 * Determinism: Dataplanes are visited sorted by name, inbounds by index, localities by zone;
 * every JSON object is filled in a fixed order, so the same input gives the same bytes. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_rbac.h>
#include <km/cp/xds_tls.h>

#define LOG_MOD "xds-gen"
#define TYPE_PREFIX "type.googleapis.com/"

#define URL_HCM TYPE_PREFIX "envoy.extensions.filters.network.http_connection_manager.v3." \
                            "HttpConnectionManager"
#define URL_TCP_PROXY TYPE_PREFIX "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
#define URL_ROUTER TYPE_PREFIX "envoy.extensions.filters.http.router.v3.Router"
#define URL_HTTP_RBAC TYPE_PREFIX "envoy.extensions.filters.http.rbac.v3.RBAC"
#define NAME_HTTP_RBAC "envoy.filters.http.rbac"
#define URL_HTTP_OPTS TYPE_PREFIX "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#define NAME_HTTP_OPTS "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#define TAG_SERVICE "kuma.io/service"
#define TAG_PROTOCOL "kuma.io/protocol"
#define TAG_ZONE "kuma.io/zone"

/* Connect timeout of every cluster (Kuma's default). */
#define CONNECT_TIMEOUT "5s"

const char *const km_xds_type_urls[KM_XDS_TYPE_COUNT] = {
    TYPE_PREFIX "envoy.config.listener.v3.Listener",
    TYPE_PREFIX "envoy.config.route.v3.RouteConfiguration",
    TYPE_PREFIX "envoy.config.cluster.v3.Cluster",
    TYPE_PREFIX "envoy.config.endpoint.v3.ClusterLoadAssignment",
    TYPE_PREFIX "envoy.extensions.transport_sockets.tls.v3.Secret",
};

const char *const km_xds_type_short[KM_XDS_TYPE_COUNT] = {"lds", "rds", "cds", "eds", "sds"};

int
km_xds_type_index(const char *type_url)
{
    if (type_url == NULL)
        return -1;
    for (int i = 0; i < KM_XDS_TYPE_COUNT; i++)
        if (strcmp(type_url, km_xds_type_urls[i]) == 0)
            return i;
    return -1;
}

/* ---- protocols (Kuma's kuma.io/protocol values and their common protocol) ---- */

enum gen_proto {
    PROTO_UNKNOWN = 0,
    PROTO_TCP,
    PROTO_TLS,
    PROTO_HTTP,
    PROTO_HTTP2,
    PROTO_GRPC,
    PROTO_KAFKA,
};

static enum gen_proto
proto_parse(const char *s)
{
    static const struct {
        const char *name;
        enum gen_proto p;
    } names[] = {{"tcp", PROTO_TCP},     {"tls", PROTO_TLS},   {"http", PROTO_HTTP},
                 {"http2", PROTO_HTTP2}, {"grpc", PROTO_GRPC}, {"kafka", PROTO_KAFKA}};
    if (s == NULL)
        return PROTO_UNKNOWN;
    for (size_t i = 0; i < KM_ARRAY_LEN(names); i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].p;
    return PROTO_UNKNOWN;
}

/* The protocol stack of <p>, most specific first, ending with PROTO_TCP (Kuma: grpc runs on
 * http2, which runs on tcp; http on tcp). */
static size_t
proto_stack(enum gen_proto p, enum gen_proto out[3])
{
    size_t n = 0;
    switch (p) {
    case PROTO_GRPC:
        out[n++] = PROTO_GRPC;
        out[n++] = PROTO_HTTP2;
        break;
    case PROTO_HTTP2:
    case PROTO_HTTP:
    case PROTO_TLS:
    case PROTO_KAFKA:
        out[n++] = p;
        break;
    case PROTO_TCP:
        break;
    case PROTO_UNKNOWN:
        return 0;
    }
    out[n++] = PROTO_TCP;
    return n;
}

/* The most specific protocol both <a> and <b> speak; unknown when either is unknown. */
static enum gen_proto
proto_common(enum gen_proto a, enum gen_proto b)
{
    enum gen_proto sa[3], sb[3];
    size_t na, nb;

    if (a == b)
        return a;
    na = proto_stack(a, sa);
    nb = proto_stack(b, sb);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++)
            if (sa[i] == sb[j])
                return sa[i];
    return PROTO_UNKNOWN;
}

static bool
proto_is_http(enum gen_proto p)
{
    return p == PROTO_HTTP || p == PROTO_HTTP2 || p == PROTO_GRPC;
}

static bool
proto_is_h2(enum gen_proto p)
{
    return p == PROTO_HTTP2 || p == PROTO_GRPC;
}

/* ---- JSON helpers ---- */

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *
must(json_t *j)
{
    if (j == NULL) {
        km_log_error(LOG_MOD, "out of memory building xDS JSON");
        abort();
    }
    return j;
}

static const char *
jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* A non-empty string value of <key>, else NULL. */
static const char *
jstr_nonempty(const json_t *o, const char *key)
{
    const char *s = jstr(o, key);
    return s && s[0] ? s : NULL;
}

/* A port (1..65535) under <key>; 0 when absent or invalid. */
static uint32_t
jport(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    json_int_t n;

    if (!json_is_integer(v))
        return 0;
    n = json_integer_value(v);
    return n >= 1 && n <= 65535 ? (uint32_t)n : 0;
}

static bool
is_ip_literal(const char *s)
{
    unsigned char buf[16];
    return s && (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1);
}

static void
set_new(json_t *obj, const char *key, json_t *v)
{
    if (json_object_set_new(obj, key, v) != 0) {
        km_log_error(LOG_MOD, "out of memory building xDS JSON");
        abort();
    }
}

/* Adds <v> under <name> unless a resource of that name exists already (first one wins). */
static void
add_resource(json_t *by_name, const char *name, json_t *v)
{
    if (json_object_get(by_name, name) != NULL) {
        json_decref(v);
        return;
    }
    set_new(by_name, name, v);
}

/* Kuma's metric name sanitising: anything but [A-Za-z0-9_-] becomes '_'. Caller frees. */
static char *
stat_name(const char *s)
{
    char *r = km_xstrdup(s);
    for (char *p = r; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            *p = '_';
    return r;
}

/* A copy of a tags object with keys in sorted order and only string values: the stored
 * spec's key order depends on the store (PostgreSQL jsonb reorders keys), the output must not. */
static json_t *
tags_copy(const json_t *tags)
{
    const char **keys = km_xcalloc(json_object_size(tags) + 1, sizeof(*keys));
    json_t *out = must(json_object());
    const char *k;
    json_t *v;
    size_t n = 0;

    json_object_foreach((json_t *)tags, k, v)
        if (json_is_string(v))
            keys[n++] = k;
    qsort(keys, n, sizeof(*keys), cmp_cstr);
    for (size_t i = 0; i < n; i++)
        set_new(out, keys[i], must(json_string(json_string_value(json_object_get(tags, keys[i])))));
    free(keys);
    return out;
}

static json_t *
address_json(const char *ip, uint32_t port)
{
    return must(json_pack("{s:{s:s, s:I}}", "socket_address", "address", ip, "port_value",
                          (json_int_t)port));
}

/* An ADS config source: "ads" is an empty message that must be present. */
static json_t *
ads_source_json(void)
{
    return must(json_pack("{s:{}, s:s}", "ads", "resource_api_version", "V3"));
}

static json_t *
router_filter_json(void)
{
    return must(json_pack("{s:s, s:{s:s}}", "name", "envoy.filters.http.router", "typed_config",
                          "@type", URL_ROUTER));
}

/* One virtual host matching every authority, one catch-all route to <cluster>. */
static json_t *
route_config_json(const char *name, const char *vhost, const char *cluster)
{
    return must(json_pack("{s:s, s:[{s:s, s:[s], s:[{s:{s:s}, s:{s:s}}]}]}", "name", name,
                          "virtual_hosts", "name", vhost, "domains", "*", "routes", "match",
                          "prefix", "/", "route", "cluster", cluster));
}

/* HttpConnectionManager (typed config) with an inline route table. Steals <route_config>. */
static json_t *
hcm_inline_json(const char *stat_prefix, json_t *route_config)
{
    char *sp = stat_name(stat_prefix);
    /* codec_type is left at its default, AUTO (HTTP/1.1 or HTTP/2 by ALPN or preface) */
    json_t *j = must(json_pack("{s:s, s:s, s:o, s:[o]}", "@type", URL_HCM, "stat_prefix", sp,
                               "route_config", route_config, "http_filters",
                               router_filter_json()));
    free(sp);
    return j;
}

static json_t *
tcp_proxy_json(const char *stat_prefix, const char *cluster)
{
    char *sp = stat_name(stat_prefix);
    json_t *j = must(json_pack("{s:s, s:s, s:s}", "@type", URL_TCP_PROXY, "stat_prefix", sp,
                               "cluster", cluster));
    free(sp);
    return j;
}

/* Listener on <ip>:<port> with one filter chain holding one network filter. Steals
 * <typed_config> and <metadata> (may be NULL). */
static json_t *
listener_json(const char *name, const char *ip, uint32_t port, const char *direction,
              const char *filter_name, json_t *typed_config, json_t *metadata)
{
    json_t *l = must(json_pack("{s:s, s:o, s:[{s:[{s:s, s:o}]}]}", "name", name, "address",
                               address_json(ip, port), "filter_chains", "filters", "name",
                               filter_name, "typed_config", typed_config));
    if (metadata)
        set_new(l, "metadata", metadata);
    set_new(l, "traffic_direction", must(json_string(direction)));
    return l;
}

/* typed_extension_protocol_options that make a cluster speak HTTP/2 upstream. */
static json_t *
http2_options_json(void)
{
    return must(json_pack("{s:{s:s, s:{s:{}}}}", NAME_HTTP_OPTS, "@type", URL_HTTP_OPTS,
                          "explicit_http_config", "http2_protocol_options"));
}

static json_t *
eds_cluster_json(const char *name, bool h2, const char *lb_policy)
{
    json_t *c = must(json_pack("{s:s, s:s, s:{s:o}, s:s}", "name", name, "type", "EDS",
                               "eds_cluster_config", "eds_config", ads_source_json(),
                               "connect_timeout", CONNECT_TIMEOUT));
    if (lb_policy)
        set_new(c, "lb_policy", json_string(lb_policy));
    if (h2)
        set_new(c, "typed_extension_protocol_options", http2_options_json());
    return c;
}

/* The cluster of the local application (inbound side): one static endpoint. */
static json_t *
local_cluster_json(const char *name, const char *ip, uint32_t port, bool h2)
{
    json_t *c = must(json_pack("{s:s, s:s, s:s, s:{s:s, s:[{s:[{s:{s:o}}]}]}}", "name", name,
                               "type", "STATIC", "connect_timeout", CONNECT_TIMEOUT,
                               "load_assignment", "cluster_name", name, "endpoints",
                               "lb_endpoints", "endpoint", "address", address_json(ip, port)));
    if (h2)
        set_new(c, "typed_extension_protocol_options", http2_options_json());
    return c;
}

/* ---- inbound interfaces ---- */

struct gen_inbound {
    const char *ip;          /* listener address: inbound.address or networking.address */
    const char *endpoint_ip; /* address others reach it on: advertisedAddress or ip */
    uint32_t port;
    const char *workload_ip; /* serviceAddress or 127.0.0.1 */
    uint32_t workload_port;  /* servicePort or port */
    const char *service;     /* kuma.io/service, NULL when serviceless */
    const char *zone;        /* kuma.io/zone, NULL when absent */
    const json_t *tags;      /* borrowed, may be NULL */
    enum gen_proto protocol; /* declared protocol, PROTO_UNKNOWN when absent */
    bool ignored;            /* state Ignored: no listener, no endpoint */
    bool ready;              /* health.ready (when health is given) and state not NotReady */
};

/* Reads networking.inbound[i]; false when it cannot be served (no port, no address). */
static bool
inbound_parse(const json_t *networking, const json_t *in, const char *dp, size_t i,
              struct gen_inbound *out)
{
    const json_t *health = json_object_get(in, "health");
    const char *state = jstr(in, "state");
    const char *proto;

    memset(out, 0, sizeof(*out));
    if (!json_is_object(in))
        return false;
    out->port = jport(in, "port");
    if (out->port == 0) {
        km_log_debug(LOG_MOD, "dataplane %s: networking.inbound[%zu].port: missing, skipped", dp,
                     i);
        return false;
    }
    out->ip = jstr_nonempty(in, "address");
    if (out->ip == NULL)
        out->ip = jstr_nonempty(networking, "address");
    if (out->ip == NULL) {
        km_log_debug(LOG_MOD, "dataplane %s: networking.address: missing, inbound[%zu] skipped",
                     dp, i);
        return false;
    }
    out->endpoint_ip = jstr_nonempty(networking, "advertisedAddress");
    if (out->endpoint_ip == NULL)
        out->endpoint_ip = out->ip;
    out->workload_ip = jstr_nonempty(in, "serviceAddress");
    if (out->workload_ip == NULL)
        out->workload_ip = "127.0.0.1";
    out->workload_port = jport(in, "servicePort");
    if (out->workload_port == 0)
        out->workload_port = out->port;
    out->tags = json_object_get(in, "tags");
    if (!json_is_object(out->tags))
        out->tags = NULL;
    out->service = jstr_nonempty(out->tags, TAG_SERVICE);
    out->zone = jstr_nonempty(out->tags, TAG_ZONE);
    proto = jstr_nonempty(out->tags, TAG_PROTOCOL);
    if (proto == NULL)
        proto = jstr_nonempty(in, "protocol");
    out->protocol = proto_parse(proto);
    out->ignored = state && strcmp(state, "Ignored") == 0;
    /* Kuma: an inbound is ready unless health is given without ready: true, or its state is
     * NotReady. */
    out->ready = !(state && strcmp(state, "NotReady") == 0) &&
                 !(json_is_object(health) && !json_is_true(json_object_get(health, "ready")));
    return true;
}

/* ---- mesh index ---- */

struct gen_endpoint {
    const char *ip;     /* borrowed */
    uint32_t port;
    const char *zone;   /* borrowed, NULL when none */
    const json_t *tags; /* borrowed, may be NULL */
    size_t order;       /* (dataplane name, inbound index) rank */
};

struct gen_service {
    const char *name;        /* borrowed */
    const char *lb_policy;   /* Envoy lb_policy from MeshLoadBalancingStrategy, NULL = default */
    enum gen_proto protocol; /* common protocol of all its (non-ignored) inbounds */
    struct gen_endpoint *eps; /* owned: ready endpoints, deduplicated, by order */
    size_t neps;
};

struct km_xds_mesh_index {
    struct gen_service *svcs; /* owned, sorted by name */
    size_t nsvcs;
    char *mesh;               /* owned: the mesh name (trust domain, SDS secret names) */
    bool mtls;                /* Mesh.mtls has an enabled backend */
    bool permissive;          /* its mode is PERMISSIVE */
    const struct km_resource *const *policies; /* borrowed from the view (RBAC per inbound) */
    size_t npolicies;
};

/* One non-ignored inbound with a service, while the index is built. */
struct gen_entry {
    const char *service;
    enum gen_proto protocol;
    bool usable; /* ready, online, and its endpoint address is an IP literal */
    struct gen_endpoint ep;
};

static int
cmp_dp_name(const void *a, const void *b)
{
    const struct km_resource *x = *(const struct km_resource *const *)a;
    const struct km_resource *y = *(const struct km_resource *const *)b;
    return strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

static int
cmp_entry(const void *a, const void *b)
{
    const struct gen_entry *x = a, *y = b;
    int c = strcmp(x->service, y->service);
    if (c)
        return c;
    return x->ep.order < y->ep.order ? -1 : x->ep.order > y->ep.order;
}

/* The address as bytes (family first), so that "::1" and "0::1" are the same endpoint. */
static void
addr_key(const char *ip, unsigned char key[17])
{
    memset(key, 0, 17);
    if (inet_pton(AF_INET, ip, key + 1) == 1)
        key[0] = 4;
    else if (inet_pton(AF_INET6, ip, key + 1) == 1)
        key[0] = 6;
}

static int
ep_addr_cmp(const struct gen_endpoint *x, const struct gen_endpoint *y)
{
    unsigned char kx[17], ky[17];
    addr_key(x->ip, kx);
    addr_key(y->ip, ky);
    int c = memcmp(kx, ky, sizeof(kx));
    if (c)
        return c;
    return x->port < y->port ? -1 : x->port > y->port;
}

static int
cmp_ep_addr(const void *a, const void *b)
{
    const struct gen_endpoint *x = *(const struct gen_endpoint *const *)a;
    const struct gen_endpoint *y = *(const struct gen_endpoint *const *)b;
    int c = ep_addr_cmp(x, y);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Keeps the first of endpoints with the same address and port (gRPC clients NACK duplicates). */
static void
dedup_endpoints(struct gen_service *s)
{
    struct gen_endpoint **v;
    bool *drop;
    size_t n = 0;

    if (s->neps < 2)
        return;
    v = km_xcalloc(s->neps, sizeof(*v));
    drop = km_xcalloc(s->neps, sizeof(*drop));
    for (size_t i = 0; i < s->neps; i++)
        v[i] = &s->eps[i];
    qsort(v, s->neps, sizeof(*v), cmp_ep_addr);
    for (size_t i = 1; i < s->neps; i++)
        if (ep_addr_cmp(v[i], v[i - 1]) == 0)
            drop[v[i] - s->eps] = true;
    for (size_t i = 0; i < s->neps; i++)
        if (!drop[i])
            s->eps[n++] = s->eps[i];
    s->neps = n;
    free(drop);
    free(v);
}

/* MeshLoadBalancingStrategy, the subset that needs no per-proxy matching: policies whose
 * top-level targetRef is the Mesh (or absent), with to[] entries for kind Mesh (every
 * service) or MeshService (one service by name). Kuma's order: policies by name in reverse
 * (so "a" is applied after "z" and wins), then Mesh entries before MeshService ones; the last
 * loadBalancer.type that applies to a service wins. Other targetRef kinds are not applied yet. */
static const char *
lb_type_to_envoy(const char *t)
{
    static const struct {
        const char *kuma, *envoy;
    } map[] = {{"RoundRobin", NULL},      {"LeastRequest", "LEAST_REQUEST"},
               {"Random", "RANDOM"},      {"RingHash", "RING_HASH"},
               {"Maglev", "MAGLEV"}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(t, map[i].kuma) == 0)
            return map[i].envoy;
    return NULL;
}

static int
cmp_policy_rev(const void *a, const void *b)
{
    const struct km_resource *x = *(const struct km_resource *const *)a;
    const struct km_resource *y = *(const struct km_resource *const *)b;
    return -strcmp(x->name, y->name);
}

static void
apply_lb_entry(struct km_xds_mesh_index *ix, const json_t *entry, bool want_service)
{
    const json_t *tr = json_object_get(entry, "targetRef");
    const char *kind = json_string_value(json_object_get(tr, "kind"));
    const char *type = json_string_value(
        json_object_get(json_object_get(json_object_get(entry, "default"), "loadBalancer"), "type"));
    if (!kind || !type)
        return;
    bool is_service = strcmp(kind, "MeshService") == 0;
    if (is_service != want_service || (!is_service && strcmp(kind, "Mesh") != 0))
        return;
    const char *name = json_string_value(json_object_get(tr, "name"));
    for (size_t i = 0; i < ix->nsvcs; i++)
        if (!is_service || (name && strcmp(name, ix->svcs[i].name) == 0))
            ix->svcs[i].lb_policy = lb_type_to_envoy(type);
}

static void
apply_lb_policies(struct km_xds_mesh_index *ix, const struct km_mesh_view *view)
{
    const struct km_resource **pol = km_xcalloc(view->npolicies + 1, sizeof(*pol));
    size_t n = 0;
    for (size_t i = 0; i < view->npolicies; i++) {
        const struct km_resource *p = view->policies[i];
        if (!p || !p->type || strcmp(p->type->name, "MeshLoadBalancingStrategy") != 0)
            continue;
        const json_t *top = json_object_get(p->spec, "targetRef");
        const char *kind = json_string_value(json_object_get(top, "kind"));
        if (top && (!kind || strcmp(kind, "Mesh") != 0))
            continue;
        pol[n++] = p;
    }
    qsort(pol, n, sizeof(*pol), cmp_policy_rev);
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < n; i++) {
            const json_t *to = json_object_get(pol[i]->spec, "to");
            for (size_t k = 0; k < json_array_size(to); k++)
                apply_lb_entry(ix, json_array_get(to, k), pass == 1);
        }
    free(pol);
}

/* Mesh.mtls of the view's Mesh: enabled backend and mode. A malformed mtls (the validator
 * rejects it, so only a store edited behind the API's back has one) is logged and ignored. */
static void
index_mtls(struct km_xds_mesh_index *ix, const struct km_mesh_view *view)
{
    struct km_mesh_mtls m;
    struct km_errs e;

    ix->mesh = km_xstrdup(view && view->mesh ? view->mesh : "");
    if (view == NULL || view->mesh_res == NULL || view->mesh == NULL)
        return;
    km_errs_init(&e);
    if (km_mesh_mtls_parse(view->mesh_res->spec, &m, &e) != 0) {
        char *msg = km_errs_join(&e);
        km_log_warn(LOG_MOD, "mesh %s: mtls ignored: %s", view->mesh, msg);
        free(msg);
    } else if (m.enabled) {
        ix->mtls = true;
        ix->permissive = m.mode == KM_MTLS_PERMISSIVE;
    }
    km_errs_deinit(&e);
}

struct km_xds_mesh_index *
km_xds_mesh_index_new(const struct km_mesh_view *view)
{
    struct km_xds_mesh_index *ix = km_xcalloc(1, sizeof(*ix));
    const struct km_resource **dps = NULL;
    struct gen_entry *ents = NULL;
    size_t nents = 0, capents = 0, order = 0, ndps = view ? view->ndataplanes : 0;

    index_mtls(ix, view);
    if (view) {
        ix->policies = view->policies;
        ix->npolicies = view->npolicies;
    }
    if (ndps == 0 || view->dataplanes == NULL)
        return ix; /* no services: nothing for policies to apply to */
    dps = km_xcalloc(ndps, sizeof(*dps));
    memcpy(dps, view->dataplanes, ndps * sizeof(*dps));
    qsort(dps, ndps, sizeof(*dps), cmp_dp_name);

    for (size_t d = 0; d < ndps; d++) {
        const struct km_resource *dp = dps[d];
        const json_t *net, *inbounds;
        bool offline;

        if (dp == NULL || dp->name == NULL)
            continue;
        net = json_object_get(dp->spec, "networking");
        inbounds = json_object_get(net, "inbound");
        if (!json_is_array(inbounds))
            continue;
        offline = view->is_offline && view->is_offline(dp->name, view->offline_ud);
        for (size_t i = 0; i < json_array_size(inbounds); i++) {
            struct gen_inbound in;
            struct gen_entry *e;

            if (!inbound_parse(net, json_array_get(inbounds, i), dp->name, i, &in) ||
                in.ignored || in.service == NULL)
                continue;
            if (nents == capents) {
                capents = capents ? capents * 2 : 64;
                ents = km_xrealloc(ents, capents * sizeof(*ents));
            }
            e = &ents[nents++];
            e->service = in.service;
            e->protocol = in.protocol;
            e->usable = in.ready && !offline && is_ip_literal(in.endpoint_ip);
            if (in.ready && !offline && !e->usable)
                km_log_debug(LOG_MOD,
                             "dataplane %s: networking.inbound[%zu]: address %s is not an IP "
                             "address, not used as an endpoint",
                             dp->name, i, in.endpoint_ip);
            e->ep.ip = in.endpoint_ip;
            e->ep.port = in.port;
            e->ep.zone = in.zone;
            e->ep.tags = in.tags;
            e->ep.order = order++;
        }
    }
    free(dps);
    if (nents == 0)
        return ix;
    qsort(ents, nents, sizeof(*ents), cmp_entry);

    ix->svcs = km_xcalloc(nents, sizeof(*ix->svcs));
    for (size_t i = 0; i < nents;) {
        struct gen_service *s = &ix->svcs[ix->nsvcs++];
        size_t j = i;

        s->name = ents[i].service;
        s->protocol = ents[i].protocol;
        while (j < nents && strcmp(ents[j].service, s->name) == 0)
            j++;
        s->eps = km_xcalloc(j - i, sizeof(*s->eps));
        for (size_t k = i; k < j; k++) {
            s->protocol = proto_common(s->protocol, ents[k].protocol);
            if (ents[k].usable)
                s->eps[s->neps++] = ents[k].ep;
        }
        dedup_endpoints(s);
        i = j;
    }
    free(ents);
    apply_lb_policies(ix, view);
    return ix;
}

void
km_xds_mesh_index_free(struct km_xds_mesh_index *ix)
{
    if (ix == NULL)
        return;
    for (size_t i = 0; i < ix->nsvcs; i++)
        free(ix->svcs[i].eps);
    free(ix->svcs);
    free(ix->mesh);
    free(ix);
}

static int
cmp_svc_key(const void *key, const void *elem)
{
    return strcmp(key, ((const struct gen_service *)elem)->name);
}

static const struct gen_service *
index_find(const struct km_xds_mesh_index *ix, const char *name)
{
    if (ix == NULL || ix->nsvcs == 0 || name == NULL)
        return NULL;
    return bsearch(name, ix->svcs, ix->nsvcs, sizeof(*ix->svcs), cmp_svc_key);
}

bool
km_xds_mesh_index_has_service(const struct km_xds_mesh_index *ix, const char *service)
{
    return index_find(ix, service) != NULL;
}

/* ---- endpoints (ClusterLoadAssignment) ---- */

static int
cmp_zone(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "");
}

static int
cmp_ep_zone(const void *a, const void *b)
{
    const struct gen_endpoint *x = *(const struct gen_endpoint *const *)a;
    const struct gen_endpoint *y = *(const struct gen_endpoint *const *)b;
    int c = cmp_zone(x->zone, y->zone);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

static json_t *
lb_endpoint_json(const struct gen_endpoint *ep)
{
    json_t *e = must(json_pack("{s:{s:o}}", "endpoint", "address", address_json(ep->ip, ep->port)));
    if (ep->tags && json_object_size(ep->tags) > 0)
        set_new(e, "metadata",
                must(json_pack("{s:{s:o}}", "filter_metadata", "envoy.lb",
                               tags_copy(ep->tags))));
    set_new(e, "load_balancing_weight", must(json_integer(1)));
    return e;
}

/* ClusterLoadAssignment of <svc> (NULL: a service without instances): one LocalityLbEndpoints
 * per zone, each with a locality ({"zone": z}, or {} when the endpoints carry no zone tag: the
 * message must be present for gRPC clients) and a load_balancing_weight (the number of its
 * endpoints: gRPC clients drop localities without one). */
static json_t *
cla_json(const char *name, const struct gen_service *svc)
{
    json_t *eps = must(json_array());
    json_t *cla = must(json_pack("{s:s, s:o}", "cluster_name", name, "endpoints", eps));
    const struct gen_endpoint **v;
    size_t n = svc ? svc->neps : 0;

    if (n == 0)
        return cla;
    v = km_xcalloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = &svc->eps[i];
    qsort(v, n, sizeof(*v), cmp_ep_zone);
    for (size_t i = 0; i < n;) {
        json_t *lbs = must(json_array()), *loc;
        size_t j = i;

        while (j < n && cmp_zone(v[j]->zone, v[i]->zone) == 0) {
            json_array_append_new(lbs, lb_endpoint_json(v[j]));
            j++;
        }
        loc = v[i]->zone ? must(json_pack("{s:s}", "zone", v[i]->zone)) : must(json_object());
        json_array_append_new(eps, must(json_pack("{s:o, s:o, s:I}", "locality", loc,
                                                  "lb_endpoints", lbs, "load_balancing_weight",
                                                  (json_int_t)(j - i))));
        i = j;
    }
    free(v);
    return cla;
}

/* ---- generation ---- */

/* Cluster `<service>` (EDS over ADS) and its endpoints, once per proxy. */
static void
gen_service_cluster(const struct km_xds_mesh_index *ix, const char *service, bool envoy,
                    struct km_xds_resources *out)
{
    const struct gen_service *svc = index_find(ix, service);
    bool h2 = envoy && svc && proto_is_h2(svc->protocol);

    if (json_object_get(out->by_type[KM_XDS_CLUSTER], service) == NULL) {
        json_t *c = eds_cluster_json(service, h2, svc ? svc->lb_policy : NULL);
        /* sidecars speak mTLS to each other; proxyless clients use their own certificate
         * providers from the bootstrap */
        if (envoy && ix && ix->mtls) {
            struct km_xds_tls_opts o = {.mesh = ix->mesh};
            char *sni = km_xds_tls_sni(service, ix->mesh, NULL);
            km_xds_tls_outbound_cluster(c, &o, service, sni);
            free(sni);
        }
        add_resource(out->by_type[KM_XDS_CLUSTER], service, c);
    }
    if (json_object_get(out->by_type[KM_XDS_ENDPOINT], service) == NULL)
        add_resource(out->by_type[KM_XDS_ENDPOINT], service, cla_json(service, svc));
}

/* Moves the rules of the network RBAC filter <rbac> (stolen, may be NULL) into an HTTP RBAC
 * filter (envoy.filters.http.rbac) first in the http_filters of <hcm>, before the router.
 * Without rules in <rbac> the HTTP filter has none either (everything allowed), as the
 * network filter would. */
static void
add_http_rbac(json_t *hcm, json_t *rbac)
{
    json_t *tc = json_object_get(rbac, "typed_config");
    json_t *hf = json_object_get(hcm, "http_filters");
    json_t *h;

    if (rbac == NULL || !json_is_array(hf)) {
        json_decref(rbac);
        return;
    }
    h = must(json_pack("{s:s}", "@type", URL_HTTP_RBAC));
    if (json_object_get(tc, "rules"))
        set_new(h, "rules", json_incref(json_object_get(tc, "rules")));
    if (json_object_get(tc, "shadow_rules"))
        set_new(h, "shadow_rules", json_incref(json_object_get(tc, "shadow_rules")));
    json_array_insert_new(hf, 0, must(json_pack("{s:s, s:o}", "name", NAME_HTTP_RBAC,
                                                "typed_config", h)));
    json_decref(rbac);
}

static void
gen_inbounds(const struct km_xds_mesh_index *ix, const struct km_resource *dp,
             struct km_xds_resources *out)
{
    const json_t *net = json_object_get(dp->spec, "networking");
    const json_t *inbounds = json_object_get(net, "inbound");

    for (size_t i = 0; i < json_array_size(inbounds); i++) {
        struct gen_inbound in;
        char *lname, *cname, *rname;
        json_t *filter, *meta = NULL;
        bool http;

        if (!inbound_parse(net, json_array_get(inbounds, i), dp->name, i, &in) || in.ignored ||
            in.service == NULL)
            continue;
        if (!is_ip_literal(in.ip) || !is_ip_literal(in.workload_ip)) {
            km_log_debug(LOG_MOD,
                         "dataplane %s: networking.inbound[%zu]: address %s or serviceAddress %s "
                         "is not an IP address, skipped",
                         dp->name, i, in.ip, in.workload_ip);
            continue;
        }
        http = proto_is_http(in.protocol);
        lname = km_xasprintf("inbound:%s:%u", in.ip, in.port);
        cname = km_xasprintf("localhost:%u", in.workload_port);
        if (http) {
            rname = km_xasprintf("inbound:%s", in.service);
            filter = hcm_inline_json(cname, route_config_json(rname, in.service, cname));
            free(rname);
        } else {
            filter = tcp_proxy_json(cname, cname);
        }
        if (in.tags)
            meta = must(json_pack("{s:{s:o}}", "filter_metadata", "io.kuma.tags",
                                  tags_copy(in.tags)));
        json_t *l = listener_json(lname, in.ip, in.port, "INBOUND",
                                  http ? "envoy.filters.network.http_connection_manager"
                                       : "envoy.filters.network.tcp_proxy",
                                  filter, meta);
        if (ix && ix->mtls) {
            /* Traffic permissions are enforced on the caller's certificate: an RBAC filter
             * first in the chain (no permission that matches denies); for HTTP inbounds an
             * HTTP RBAC filter before the router instead, so a refused request gets a 403. */
            char *prefix = km_xasprintf("inbound_%s_%u.", in.ip, in.port);
            json_t *rbac = km_rbac_inbound_filter(ix->mesh, dp, i, prefix, ix->policies,
                                                  ix->npolicies, NULL, NULL);
            free(prefix);
            json_t *filters = json_object_get(
                json_array_get(json_object_get(l, "filter_chains"), 0), "filters");
            if (http)
                add_http_rbac(filter, rbac);
            else if (rbac && json_is_array(filters))
                json_array_insert_new(filters, 0, rbac);
            else
                json_decref(rbac);
            struct km_xds_tls_opts o = {.mesh = ix->mesh};
            km_xds_tls_inbound_listener(l, &o, ix->permissive);
        }
        add_resource(out->by_type[KM_XDS_LISTENER], lname, l);
        add_resource(out->by_type[KM_XDS_CLUSTER], cname,
                     local_cluster_json(cname, in.workload_ip, in.workload_port,
                                        proto_is_h2(in.protocol)));
        free(lname);
        free(cname);
    }
}

/* The service an outbound points at: its kuma.io/service tag, else its backendRef name. */
static const char *
outbound_service(const json_t *ob)
{
    const char *s = jstr_nonempty(json_object_get(ob, "tags"), TAG_SERVICE);
    if (s == NULL)
        s = jstr_nonempty(json_object_get(ob, "backendRef"), "name");
    return s;
}

static void
gen_outbounds(const struct km_xds_mesh_index *ix, const struct km_resource *dp,
              struct km_xds_resources *out)
{
    const json_t *net = json_object_get(dp->spec, "networking");
    const json_t *outbounds = json_object_get(net, "outbound");

    for (size_t i = 0; i < json_array_size(outbounds); i++) {
        const json_t *ob = json_array_get(outbounds, i);
        const char *ip = jstr_nonempty(ob, "address"), *service = outbound_service(ob);
        uint32_t port = jport(ob, "port");
        const struct gen_service *svc;
        enum gen_proto proto;
        char *lname, *rname;
        json_t *filter;

        if (ip == NULL)
            ip = "127.0.0.1";
        if (port == 0 || service == NULL || !is_ip_literal(ip)) {
            km_log_debug(LOG_MOD, "dataplane %s: networking.outbound[%zu]: no port, service or "
                         "IP address, skipped", dp->name, i);
            continue;
        }
        svc = index_find(ix, service);
        proto = svc ? svc->protocol : PROTO_UNKNOWN;
        lname = km_xasprintf("outbound:%s:%u", ip, port);
        if (proto_is_http(proto)) {
            rname = km_xasprintf("outbound:%s", service);
            filter = hcm_inline_json(service, route_config_json(rname, service, service));
            free(rname);
        } else {
            filter = tcp_proxy_json(service, service);
        }
        add_resource(out->by_type[KM_XDS_LISTENER], lname,
                     listener_json(lname, ip, port, "OUTBOUND",
                                   proto_is_http(proto)
                                       ? "envoy.filters.network.http_connection_manager"
                                       : "envoy.filters.network.tcp_proxy",
                                   filter, NULL));
        free(lname);
        gen_service_cluster(ix, service, true, out);
    }
}

/* Proxyless gRPC: API listener `<service>` -> RDS `<service>` -> cluster `<service>`. */
static void
gen_api_listener(const struct km_xds_mesh_index *ix, const char *service,
                 struct km_xds_resources *out)
{
    json_t *hcm;

    if (json_object_get(out->by_type[KM_XDS_LISTENER], service) != NULL)
        return;
    hcm = must(json_pack("{s:s, s:{s:s, s:o}, s:[o]}", "@type", URL_HCM, "rds",
                         "route_config_name", service, "config_source", ads_source_json(),
                         "http_filters", router_filter_json()));
    add_resource(out->by_type[KM_XDS_LISTENER], service,
                 must(json_pack("{s:s, s:{s:o}}", "name", service, "api_listener",
                                "api_listener", hcm)));
    add_resource(out->by_type[KM_XDS_ROUTE], service,
                 route_config_json(service, service, service));
    gen_service_cluster(ix, service, false, out);
}

/* SDS: the proxy's identity and the mesh's CAs, when it has them. */
static void
gen_secrets(const struct km_xds_mesh_index *ix, const struct km_xds_proxy_id *proxy,
            struct km_xds_resources *out)
{
    json_t *j;
    char *name;

    if (proxy->cert_pem && proxy->key_pem &&
        (j = km_xds_tls_identity_secret(ix->mesh, proxy->cert_pem, proxy->key_pem)) != NULL) {
        name = km_xds_tls_identity_name(ix->mesh);
        add_resource(out->by_type[KM_XDS_SECRET], name, j);
        free(name);
    }
    if (proxy->ca_pem && (j = km_xds_tls_mesh_ca_secret(ix->mesh, proxy->ca_pem)) != NULL) {
        name = km_xds_tls_mesh_ca_name(ix->mesh);
        add_resource(out->by_type[KM_XDS_SECRET], name, j);
        free(name);
    }
}

void
km_xds_generate_indexed(const struct km_xds_mesh_index *ix, const struct km_xds_proxy_id *proxy,
                        struct km_xds_resources *out)
{
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++)
        out->by_type[t] = must(json_object());
    if (proxy == NULL)
        return;
    if (proxy->dataplane && proxy->dataplane->spec) {
        gen_inbounds(ix, proxy->dataplane, out);
        gen_outbounds(ix, proxy->dataplane, out);
        if (ix && ix->mtls)
            gen_secrets(ix, proxy, out);
    }
    for (size_t i = 0; i < proxy->nrequested_listeners && proxy->requested_listeners; i++) {
        const char *name = proxy->requested_listeners[i];
        if (name && index_find(ix, name))
            gen_api_listener(ix, name, out);
    }
}

void
km_xds_generate(const struct km_mesh_view *view, const struct km_xds_proxy_id *proxy,
                struct km_xds_resources *out)
{
    struct km_xds_mesh_index *ix = km_xds_mesh_index_new(view);
    km_xds_generate_indexed(ix, proxy, out);
    km_xds_mesh_index_free(ix);
}

void
km_xds_resources_deinit(struct km_xds_resources *r)
{
    if (r == NULL)
        return;
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        json_decref(r->by_type[t]);
        r->by_type[t] = NULL;
    }
}
