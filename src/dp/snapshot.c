/* kuma-dp's configuration snapshot: built from the xDS resources the agent holds, checked
 * against what the proxy engine supports (every other field is an error naming the resource
 * and the field, which becomes the NACK's error_detail), immutable once built and shared by
 * the workers through a reference count. Ring hash and Maglev tables are computed here so the
 * workers only look them up. */
#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/pb.h>
#include <km/dp/lb.h>
#include <km/dp/router.h>
#include <km/dp/rbac.h>
#include <km/dp/snapshot.h>
#include <km/dp/tls.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/filters/http/router/v3/router.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb-c.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb-c.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb-c.h"

typedef Envoy__Config__Listener__V3__Listener pb_listener;
typedef Envoy__Config__Listener__V3__FilterChain pb_chain;
typedef Envoy__Config__Cluster__V3__Cluster pb_cluster;
typedef Envoy__Config__Endpoint__V3__ClusterLoadAssignment pb_cla;
typedef Envoy__Config__Route__V3__RouteConfiguration pb_rc;
typedef Envoy__Config__Route__V3__Route pb_route;
typedef Envoy__Config__Route__V3__HeaderMatcher pb_hdr;
typedef Envoy__Config__Core__V3__Address pb_addr;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager
    pb_hcm;
typedef Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy pb_tcp;
typedef Google__Protobuf__Duration pb_dur;

#define TYPE_PREFIX "type.googleapis.com/"
#define MAX_WEIGHT_SUM 4294967295ull

/* Error context: the resource being converted ("listener \"x\"") and the error list. */
struct bctx {
    struct km_errs *errs;
    const char *res; /* "cluster \"backend\"" */
};

static void KM_PRINTF(3, 4)
    berr(struct bctx *c, const char *path, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    char *field = path && *path ? km_xasprintf("%s.%s", c->res, path) : km_xstrdup(c->res);
    km_errs_add(c->errs, field, "%s", reason);
    free(field);
}

#define PATHLEN 512

/* Formats a field path into a PATHLEN buffer (truncation is fine for messages). */
static void KM_PRINTF(2, 3)
    pathf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, PATHLEN, fmt, ap);
    va_end(ap);
}

uint64_t
km_dp_hash64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    /* splitmix64 finaliser: FNV's low bits alone spread poorly over a ring. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* Milliseconds of a Duration (clamped to UINT32_MAX); -1 when negative or malformed. */
static int64_t
dur_ms(const pb_dur *d)
{
    if (d->seconds < 0 || d->nanos < 0 || d->nanos > 999999999)
        return -1;
    if (d->seconds > (int64_t)(UINT32_MAX / 1000))
        return UINT32_MAX;
    int64_t ms = d->seconds * 1000 + d->nanos / 1000000;
    if (ms == 0 && d->nanos > 0)
        ms = 1; /* sub-millisecond timeouts round up, never to "disabled" */
    return ms > (int64_t)UINT32_MAX ? (int64_t)UINT32_MAX : ms;
}

/* Converts an optional Duration field: unset gives <dflt>. Returns false (error added) when
 * invalid. */
static bool
dur_field(struct bctx *c, const char *path, const pb_dur *d, uint32_t dflt, uint32_t *out)
{
    if (!d) {
        *out = dflt;
        return true;
    }
    int64_t ms = dur_ms(d);
    if (ms < 0) {
        berr(c, path, "must be a non-negative duration");
        return false;
    }
    *out = (uint32_t)ms;
    return true;
}

/* Whether an Any holds message <d>; adds an error naming the expected type otherwise. */
static ProtobufCMessage *
any_unpack(struct bctx *c, const char *path, const Google__Protobuf__Any *any,
           const ProtobufCMessageDescriptor *d)
{
    if (!any || !any->type_url) {
        berr(c, path, "typed_config is required (%s)", d->name);
        return NULL;
    }
    if (strcmp(km_pb_type_name(any->type_url), d->name) != 0) {
        berr(c, path, "type %s is not supported here (expected %s)",
             km_pb_type_name(any->type_url), d->name);
        return NULL;
    }
    char err[256];
    ProtobufCMessage *m = km_pb_unpack(d, any->value.data, any->value.len, err, sizeof(err));
    if (!m)
        berr(c, path, "cannot decode %s: %s", d->name, err);
    return m;
}

static bool
has_metadata(const Envoy__Config__Core__V3__Metadata *m)
{
    return m && m->n_filter_metadata > 0;
}

/* ---- freeing ---- */

static void
free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void
free_weighted(struct km_dp_weighted *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(w[i].cluster);
    free(w);
}

static void
free_eps(struct km_dp_endpoint *eps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(eps[i].addr_str);
        free(eps[i].zone);
    }
    free(eps);
}

static void
free_route(struct km_dp_route *r)
{
    km_dp_route_release(r);
    free(r->path);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free_weighted(r->clusters, r->nclusters);
    free(r->prefix_rewrite);
    free(r->host_rewrite);
    free(r->retry_on);
}

static void
free_rc(struct km_dp_route_config *rc)
{
    if (!rc)
        return;
    free(rc->name);
    for (size_t i = 0; i < rc->nvhosts; i++) {
        struct km_dp_vhost *v = &rc->vhosts[i];
        free(v->name);
        free_strv(v->domains, v->ndomains);
        for (size_t j = 0; j < v->nroutes; j++)
            free_route(&v->routes[j]);
        free(v->routes);
    }
    free(rc->vhosts);
}

static void
free_chain(struct km_dp_chain *ch)
{
    free_strv(ch->server_names, ch->nserver_names);
    free(ch->transport_protocol);
    free_strv(ch->alpn, ch->nalpn);
    free(ch->stat_prefix);
    free_weighted(ch->clusters, ch->nclusters);
    free(ch->rds_name);
    free_rc(ch->inline_rc);
    free(ch->inline_rc);
    km_dp_tls_ctx_free(ch->tls);
    km_dp_rbac_free(ch->rbac);
    km_dp_rbac_free(ch->http_rbac);
}

static void
free_listener(struct km_dp_listener *l)
{
    free(l->name);
    free(l->addr_str);
    for (size_t i = 0; i < l->nchains; i++)
        free_chain(&l->chains[i]);
    free(l->chains);
}

static void
free_cluster(struct km_dp_cluster *c)
{
    free(c->name);
    free(c->eds_name);
    free_eps(c->eps, c->neps);
    free(c->table);
    free(c->ring_hashes);
    km_dp_tls_ctx_free(c->tls);
}

static void
snapshot_free(struct km_dp_snapshot *s)
{
    for (size_t i = 0; i < s->nlisteners; i++)
        free_listener(&s->listeners[i]);
    free(s->listeners);
    for (size_t i = 0; i < s->nclusters; i++)
        free_cluster(&s->clusters[i]);
    free(s->clusters);
    for (size_t i = 0; i < s->nroutes; i++)
        free_rc(&s->routes[i]);
    free(s->routes);
    km_dp_tls_secrets_free(s->secrets, s->nsecrets);
    free(s);
}

struct km_dp_snapshot *
km_dp_snapshot_ref(struct km_dp_snapshot *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void
km_dp_snapshot_unref(struct km_dp_snapshot *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(s);
}

void
km_dp_xds_set_clear(struct km_dp_xds_set *set)
{
    for (size_t i = 0; i < set->n; i++) {
        free(set->v[i].name);
        free(set->v[i].bytes);
        free(set->v[i].version);
    }
    free(set->v);
    set->v = NULL;
    set->n = 0;
}

/* ---- addresses ---- */

/* Parses a socket address (IP literal and port) into <ss>. */
static bool
parse_addr(struct bctx *c, const char *path, const pb_addr *a, struct sockaddr_storage *ss,
           socklen_t *len, char **str)
{
    char p[PATHLEN];
    if (!a) {
        berr(c, path, "is required");
        return false;
    }
    if (a->address_case != ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS ||
        !a->socket_address) {
        berr(c, path, "only socket_address is supported");
        return false;
    }
    const Envoy__Config__Core__V3__SocketAddress *sa = a->socket_address;
    pathf(p, "%s.socket_address", path);
    if (sa->protocol != ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PROTOCOL__TCP) {
        berr(c, p, "protocol UDP is not supported");
        return false;
    }
    if (sa->port_specifier_case != ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE ||
        sa->port_value == 0 || sa->port_value > 65535) {
        pathf(p, "%s.socket_address.port_value", path);
        berr(c, p, "must be in 1..65535");
        return false;
    }
    memset(ss, 0, sizeof(*ss));
    const char *ip = sa->address ? sa->address : "";
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)sa->port_value);
        *len = sizeof(*v4);
        *str = km_xasprintf("%s:%u", ip, sa->port_value);
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)sa->port_value);
        *len = sizeof(*v6);
        *str = km_xasprintf("[%s]:%u", ip, sa->port_value);
    } else {
        pathf(p, "%s.socket_address.address", path);
        berr(c, p, "\"%.100s\" is not an IP address (DNS names are not supported)", ip);
        return false;
    }
    return true;
}

/* ---- endpoints (ClusterLoadAssignment, also inline load_assignment) ---- */

struct eplist {
    char *name;
    struct km_dp_endpoint *eps;
    size_t neps;
};

static bool
parse_cla(struct bctx *c, const char *base, const pb_cla *cla, struct eplist *out)
{
    char p[PATHLEN];
    bool ok = true;
    size_t total = 0;
    for (size_t i = 0; i < cla->n_endpoints; i++)
        total += cla->endpoints[i]->n_lb_endpoints;
    out->eps = km_xcalloc(total ? total : 1, sizeof(*out->eps));
    out->neps = 0;
    for (size_t i = 0; i < cla->n_endpoints; i++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *loc = cla->endpoints[i];
        uint32_t lw = 1;
        if (loc->load_balancing_weight) {
            lw = loc->load_balancing_weight->value;
            if (lw == 0) {
                pathf(p, "%sendpoints[%zu].load_balancing_weight", base, i);
                berr(c, p, "must be at least 1");
                ok = false;
            }
        }
        for (size_t j = 0; j < loc->n_lb_endpoints; j++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *le = loc->lb_endpoints[j];
            pathf(p, "%sendpoints[%zu].lb_endpoints[%zu]", base, i, j);
            if (!le->endpoint) {
                berr(c, p, "endpoint is required");
                ok = false;
                continue;
            }
            uint32_t ew = 1;
            if (le->load_balancing_weight) {
                ew = le->load_balancing_weight->value;
                if (ew == 0) {
                    char q[PATHLEN];
                    pathf(q, "%s.load_balancing_weight", p);
                    berr(c, q, "must be at least 1");
                    ok = false;
                }
            }
            struct km_dp_endpoint *e = &out->eps[out->neps];
            char q[PATHLEN];
            pathf(q, "%s.endpoint.address", p);
            if (!parse_addr(c, q, le->endpoint->address, &e->addr, &e->addrlen, &e->addr_str)) {
                ok = false;
                continue;
            }
            uint64_t w = (uint64_t)(ew ? ew : 1) * (lw ? lw : 1);
            e->weight = w > UINT32_MAX ? UINT32_MAX : (uint32_t)w;
            e->healthy = le->health_status == ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__UNKNOWN ||
                         le->health_status == ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__HEALTHY;
            e->priority = loc->priority;
            e->zone = km_xstrdup(loc->locality && loc->locality->zone ? loc->locality->zone
                                                                     : "");
            out->neps++;
        }
    }
    return ok;
}

static struct km_dp_endpoint *
copy_eps(const struct km_dp_endpoint *eps, size_t n)
{
    struct km_dp_endpoint *out = km_xcalloc(n ? n : 1, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        out[i] = eps[i];
        out[i].addr_str = km_xstrdup(eps[i].addr_str);
        out[i].zone = km_xstrdup(eps[i].zone);
    }
    return out;
}

/* ---- clusters ---- */

static const char *
lb_name(int v)
{
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
        &envoy__config__cluster__v3__cluster__lb_policy__descriptor, v);
    return ev ? ev->name : "unknown";
}

static int
eplist_cmp(const void *a, const void *b)
{
    return strcmp(((const struct eplist *)a)->name, ((const struct eplist *)b)->name);
}

/* A TLS transport socket (tls.h); errors name "<resource>.<path>...". */
static bool
parse_transport_socket(struct bctx *c, const char *path,
                       const Envoy__Config__Core__V3__TransportSocket *ts, bool upstream,
                       struct km_dp_tls_ctx **out)
{
    char *base = km_xasprintf("%s.%s", c->res, path);
    const Google__Protobuf__Any *any = ts->typed_config;
    *out = km_dp_tls_ctx_parse(ts->name, any ? any->type_url : NULL,
                               any ? any->value.data : NULL, any ? any->value.len : 0, upstream,
                               base, c->errs);
    free(base);
    return *out != NULL;
}

static bool
parse_cluster(struct bctx *c, const pb_cluster *pc, const struct eplist *eds, size_t neds,
              struct km_dp_cluster *out)
{
    bool ok = true;
    out->name = km_xstrdup(pc->name);
    int type = pc->cluster_discovery_type_case ==
                       ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE
                   ? (int)pc->type
                   : ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC;
    if (type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS) {
        out->eds = true;
        const char *sn = pc->eds_cluster_config && pc->eds_cluster_config->service_name &&
                                 *pc->eds_cluster_config->service_name
                             ? pc->eds_cluster_config->service_name
                             : pc->name;
        out->eds_name = km_xstrdup(sn);
    } else if (type != ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC) {
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
            &envoy__config__cluster__v3__cluster__discovery_type__descriptor, type);
        berr(c, "type", "%s is not supported (only STATIC and EDS)", ev ? ev->name : "unknown");
        ok = false;
    }
    switch (pc->lb_policy) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN:
        out->lb = KM_DP_LB_ROUND_ROBIN;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LEAST_REQUEST:
        out->lb = KM_DP_LB_LEAST_REQUEST;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RANDOM:
        out->lb = KM_DP_LB_RANDOM;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RING_HASH:
        out->lb = KM_DP_LB_RING_HASH;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__MAGLEV:
        out->lb = KM_DP_LB_MAGLEV;
        break;
    default:
        berr(c, "lb_policy", "%s is not supported", lb_name((int)pc->lb_policy));
        ok = false;
    }
    out->choice_count = 2;
    uint32_t ct;
    if (!dur_field(c, "connect_timeout", pc->connect_timeout, 5000, &ct))
        ok = false;
    else if (ct == 0) {
        berr(c, "connect_timeout", "must be greater than 0");
        ok = false;
    }
    out->connect_timeout_ms = ct;
    if (pc->transport_socket && !parse_transport_socket(c, "transport_socket",
                                                        pc->transport_socket, true, &out->tls))
        ok = false;
    if (pc->outlier_detection) {
        berr(c, "outlier_detection", "is not supported");
        ok = false;
    }
    if (pc->circuit_breakers) {
        for (size_t i = 0; i < pc->circuit_breakers->n_thresholds; i++) {
            const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds *t =
                pc->circuit_breakers->thresholds[i];
            if (t->priority != ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__DEFAULT)
                continue; /* no request priorities here: HIGH never applies */
            if (t->max_connections)
                out->max_connections = t->max_connections->value;
            if (t->max_pending_requests)
                out->max_pending_requests = t->max_pending_requests->value;
            if (t->max_requests)
                out->max_requests = t->max_requests->value;
        }
    }
    for (size_t i = 0; i < pc->n_typed_extension_protocol_options; i++) {
        const Envoy__Config__Cluster__V3__Cluster__TypedExtensionProtocolOptionsEntry *e =
            pc->typed_extension_protocol_options[i];
        char p[PATHLEN];
        pathf(p, "typed_extension_protocol_options[\"%.100s\"]",
                 e->key ? e->key : "");
        if (!e->key || strcmp(e->key, "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")) {
            berr(c, p, "is not supported");
            ok = false;
            continue;
        }
        Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions *hpo =
            (void *)any_unpack(c, p, e->value,
                               &envoy__extensions__upstreams__http__v3__http_protocol_options__descriptor);
        if (!hpo) {
            ok = false;
            continue;
        }
        if (hpo->upstream_protocol_options_case ==
                ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_EXPLICIT_HTTP_CONFIG &&
            hpo->explicit_http_config &&
            hpo->explicit_http_config->protocol_config_case ==
                ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP2_PROTOCOL_OPTIONS)
            out->http2 = true;
        km_pb_free(&hpo->base);
    }
    if (out->eds) {
        struct eplist key = {.name = out->eds_name};
        const struct eplist *el =
            neds ? bsearch(&key, eds, neds, sizeof(*eds), eplist_cmp) : NULL;
        if (el) {
            out->eps = copy_eps(el->eps, el->neps);
            out->neps = el->neps;
        }
    } else if (pc->load_assignment) {
        struct eplist el = {0};
        if (!parse_cla(c, "load_assignment.", pc->load_assignment, &el))
            ok = false;
        out->eps = el.eps;
        out->neps = el.neps;
    }
    if (ok && out->neps) {
        uint64_t sum = 0;
        for (size_t i = 0; i < out->neps; i++)
            sum += out->eps[i].weight;
        if (sum > MAX_WEIGHT_SUM) {
            berr(c, out->eds ? "endpoints" : "load_assignment.endpoints",
                 "the sum of the endpoint weights is larger than 4294967295");
            ok = false;
        }
    }
    /* The hash tables come from the load balancer module, which also reads them. */
    if (ok && out->neps && out->lb == KM_DP_LB_RING_HASH)
        km_dp_lb_build_ring(out, KM_DP_RING_MIN_SIZE);
    if (ok && out->neps && out->lb == KM_DP_LB_MAGLEV)
        km_dp_lb_build_maglev(out, KM_DP_MAGLEV_TABLE_SIZE);
    return ok;
}

/* ---- routes ---- */


static char *
lower_dup(const char *s)
{
    char *r = km_xstrdup(s ? s : "");
    for (char *p = r; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return r;
}

static bool
parse_header(struct bctx *c, const char *path, const pb_hdr *h, struct km_dp_header_match *out)
{
    char p[PATHLEN];
    if (!h->name || !*h->name) {
        pathf(p, "%s.name", path);
        berr(c, p, "must not be empty");
        return false;
    }
    out->name = lower_dup(h->name);
    out->invert = h->invert_match;
    switch (h->header_match_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER__NOT_SET:
        out->kind = KM_DP_HDR_PRESENT;
        return true;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PRESENT_MATCH:
        out->kind = KM_DP_HDR_PRESENT;
        if (!h->present_match)
            out->invert = !out->invert;
        return true;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_STRING_MATCH:
        break;
    default:
        berr(c, path, "unknown header match");
        return false;
    }
    const Envoy__Type__Matcher__V3__StringMatcher *sm = h->string_match;
    pathf(p, "%s.string_match", path);
    if (!sm) {
        berr(c, p, "is required");
        return false;
    }
    out->ignore_case = sm->ignore_case;
    switch (sm->match_pattern_case) {
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
        out->kind = KM_DP_HDR_EXACT;
        out->value = km_xstrdup(sm->exact);
        return true;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
        out->kind = KM_DP_HDR_PREFIX;
        out->value = km_xstrdup(sm->prefix);
        return true;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
        out->kind = KM_DP_HDR_SUFFIX;
        out->value = km_xstrdup(sm->suffix);
        return true;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
        out->kind = KM_DP_HDR_CONTAINS;
        out->value = km_xstrdup(sm->contains);
        return true;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SAFE_REGEX: {
        out->kind = KM_DP_HDR_REGEX;
        out->value = km_xstrdup(sm->safe_regex && sm->safe_regex->regex ? sm->safe_regex->regex
                                                                        : "");
        return true; /* compiled with the route (km_dp_route_compile) */
    }
    default:
        berr(c, p, "one of exact, prefix, suffix, contains, safe_regex is required");
        return false;
    }
}

/* Compiles the route's regexes (path and headers) with the router's translator, which also
 * accepts the RE2 syntax Envoy configs use (\d, (?:...), (?i)). */
static bool
compile_route(struct bctx *c, const char *path, struct km_dp_route *r)
{
    char err[256];
    if (km_dp_route_compile(r, err, sizeof(err)) == 0)
        return true;
    /* <err> is "field.path: reason": name the field from the route down */
    char *sep = strstr(err, ": ");
    char q[PATHLEN];
    if (sep) {
        *sep = '\0';
        pathf(q, "%s.%s", path, err);
        berr(c, q, "%s", sep + 2);
    } else {
        berr(c, path, "%s", err);
    }
    return false;
}

static bool
parse_route(struct bctx *c, const char *path, const pb_route *r, struct km_dp_route *out)
{
    char p[PATHLEN];
    bool ok = true;
    const Envoy__Config__Route__V3__RouteMatch *m = r->match;
    pathf(p, "%s.match", path);
    if (!m) {
        berr(c, p, "is required");
        return false;
    }
    out->case_sensitive = m->case_sensitive ? m->case_sensitive->value : true;
    switch (m->path_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX:
        out->match = KM_DP_MATCH_PREFIX;
        out->path = km_xstrdup(m->prefix);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH:
        out->match = KM_DP_MATCH_PATH;
        out->path = km_xstrdup(m->path);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_SAFE_REGEX: {
        out->match = KM_DP_MATCH_REGEX;
        out->path = km_xstrdup(m->safe_regex && m->safe_regex->regex ? m->safe_regex->regex : "");
        break;
    }
    default:
        berr(c, p, "one of prefix, path, safe_regex is required");
        ok = false;
    }
    out->grpc = m->grpc != NULL;
    if (m->n_headers) {
        out->headers = km_xcalloc(m->n_headers, sizeof(*out->headers));
        for (size_t i = 0; i < m->n_headers; i++) {
            char q[PATHLEN];
            pathf(q, "%s.headers[%zu]", p, i);
            if (!parse_header(c, q, m->headers[i], &out->headers[out->nheaders++]))
                ok = false;
        }
    }
    if (r->n_request_headers_to_add) {
        pathf(p, "%s.request_headers_to_add", path);
        berr(c, p, "is not supported");
        ok = false;
    }
    if (r->action_case != ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE || !r->route) {
        pathf(p, "%s", path);
        berr(c, p,
             r->action_case == ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_NON_FORWARDING_ACTION
                 ? "non_forwarding_action is not supported (only route)"
                 : "route is required");
        return false;
    }
    const Envoy__Config__Route__V3__RouteAction *a = r->route;
    pathf(p, "%s.route", path);
    switch (a->cluster_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER:
        if (!a->cluster || !*a->cluster) {
            char q[PATHLEN];
            pathf(q, "%s.cluster", p);
            berr(c, q, "must not be empty");
            ok = false;
            break;
        }
        out->clusters = km_xcalloc(1, sizeof(*out->clusters));
        out->clusters[0].cluster = km_xstrdup(a->cluster);
        out->clusters[0].weight = 1;
        out->nclusters = 1;
        out->total_weight = 1;
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS: {
        const Envoy__Config__Route__V3__WeightedCluster *wc = a->weighted_clusters;
        char q[PATHLEN];
        pathf(q, "%s.weighted_clusters.clusters", p);
        if (!wc || wc->n_clusters == 0) {
            berr(c, q, "must not be empty");
            ok = false;
            break;
        }
        out->clusters = km_xcalloc(wc->n_clusters, sizeof(*out->clusters));
        uint64_t sum = 0;
        for (size_t i = 0; i < wc->n_clusters; i++) {
            const Envoy__Config__Route__V3__WeightedCluster__ClusterWeight *cw = wc->clusters[i];
            if (!cw->name || !*cw->name) {
                char q2[PATHLEN];
                pathf(q2, "%s[%zu].name", q, i);
                berr(c, q2, "must not be empty");
                ok = false;
                continue;
            }
            struct km_dp_weighted *w = &out->clusters[out->nclusters++];
            w->cluster = km_xstrdup(cw->name);
            w->weight = cw->weight ? cw->weight->value : 0;
            sum += w->weight;
        }
        if (sum == 0 || sum > UINT32_MAX) {
            berr(c, q, "the sum of the weights must be in 1..4294967295");
            ok = false;
        }
        out->total_weight = (uint32_t)(sum > UINT32_MAX ? 0 : sum);
        break;
    }
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER_HEADER: {
        char q[PATHLEN];
        pathf(q, "%s.cluster_header", p);
        berr(c, q, "is not supported");
        ok = false;
        break;
    }
    default:
        berr(c, p, "one of cluster, weighted_clusters is required");
        ok = false;
    }
    char q[PATHLEN];
    pathf(q, "%s.timeout", p);
    if (!dur_field(c, q, a->timeout, 15000, &out->timeout_ms))
        ok = false;
    if (a->prefix_rewrite && *a->prefix_rewrite)
        out->prefix_rewrite = km_xstrdup(a->prefix_rewrite);
    if (a->host_rewrite_specifier_case ==
            ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL &&
        a->host_rewrite_literal && *a->host_rewrite_literal)
        out->host_rewrite = km_xstrdup(a->host_rewrite_literal);
    if (a->retry_policy) {
        out->num_retries = a->retry_policy->num_retries ? a->retry_policy->num_retries->value : 1;
        if (a->retry_policy->retry_on && *a->retry_policy->retry_on)
            out->retry_on = km_xstrdup(a->retry_policy->retry_on);
    }
    return ok;
}

static bool
valid_domain(const char *d)
{
    if (!*d)
        return false;
    if (strcmp(d, "*") == 0)
        return true;
    const char *star = strchr(d, '*');
    if (!star)
        return true;
    if (strchr(star + 1, '*'))
        return false;
    return star == d || star[1] == '\0';
}

static bool
parse_rc(struct bctx *c, const char *base, const pb_rc *rc, struct km_dp_route_config *out)
{
    bool ok = true;
    char p[PATHLEN];
    out->name = km_xstrdup(rc->name ? rc->name : "");
    out->vhosts = km_xcalloc(rc->n_virtual_hosts ? rc->n_virtual_hosts : 1,
                             sizeof(*out->vhosts));
    for (size_t i = 0; i < rc->n_virtual_hosts; i++) {
        const Envoy__Config__Route__V3__VirtualHost *vh = rc->virtual_hosts[i];
        struct km_dp_vhost *v = &out->vhosts[out->nvhosts++];
        v->name = km_xstrdup(vh->name ? vh->name : "");
        pathf(p, "%svirtual_hosts[%zu].domains", base, i);
        if (vh->n_domains == 0) {
            berr(c, p, "must not be empty");
            ok = false;
        }
        v->domains = km_xcalloc(vh->n_domains ? vh->n_domains : 1, sizeof(char *));
        for (size_t j = 0; j < vh->n_domains; j++) {
            char *d = lower_dup(vh->domains[j]);
            if (!valid_domain(d)) {
                char q[PATHLEN];
                pathf(q, "%s[%zu]", p, j);
                berr(c, q, "\"%.100s\" is not a valid domain (one leading or trailing * only)",
                     d);
                ok = false;
            }
            /* Envoy refuses a domain that two virtual hosts claim. */
            for (size_t k = 0; k + 1 < out->nvhosts; k++)
                for (size_t l = 0; l < out->vhosts[k].ndomains; l++)
                    if (strcmp(out->vhosts[k].domains[l], d) == 0) {
                        char q[PATHLEN];
                        pathf(q, "%s[%zu]", p, j);
                        berr(c, q, "domain \"%.100s\" is also in virtual_hosts[%zu]", d, k);
                        ok = false;
                    }
            v->domains[v->ndomains++] = d;
        }
        v->routes = km_xcalloc(vh->n_routes ? vh->n_routes : 1, sizeof(*v->routes));
        for (size_t j = 0; j < vh->n_routes; j++) {
            pathf(p, "%svirtual_hosts[%zu].routes[%zu]", base, i, j);
            if (!parse_route(c, p, vh->routes[j], &v->routes[v->nroutes++]) ||
                !compile_route(c, p, &v->routes[v->nroutes - 1]))
                ok = false;
        }
    }
    return ok;
}

/* ---- listeners ---- */

static bool
parse_tcp_proxy(struct bctx *c, const char *path, const pb_tcp *t, struct km_dp_chain *ch)
{
    bool ok = true;
    char p[PATHLEN];
    ch->kind = KM_DP_FILTER_TCP_PROXY;
    ch->stat_prefix = km_xstrdup(t->stat_prefix ? t->stat_prefix : "");
    if (t->cluster_specifier_case ==
        ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_CLUSTER) {
        if (!t->cluster || !*t->cluster) {
            pathf(p, "%s.cluster", path);
            berr(c, p, "must not be empty");
            ok = false;
        } else {
            ch->clusters = km_xcalloc(1, sizeof(*ch->clusters));
            ch->clusters[0].cluster = km_xstrdup(t->cluster);
            ch->clusters[0].weight = 1;
            ch->nclusters = 1;
            ch->total_weight = 1;
        }
    } else if (t->cluster_specifier_case ==
               ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS) {
        const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster *wc =
            t->weighted_clusters;
        pathf(p, "%s.weighted_clusters.clusters", path);
        if (!wc || wc->n_clusters == 0) {
            berr(c, p, "must not be empty");
            return false;
        }
        ch->clusters = km_xcalloc(wc->n_clusters, sizeof(*ch->clusters));
        uint64_t sum = 0;
        for (size_t i = 0; i < wc->n_clusters; i++) {
            const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster__ClusterWeight
                *cw = wc->clusters[i];
            char q[PATHLEN];
            if (!cw->name || !*cw->name) {
                pathf(q, "%s[%zu].name", p, i);
                berr(c, q, "must not be empty");
                ok = false;
                continue;
            }
            if (cw->weight == 0) {
                pathf(q, "%s[%zu].weight", p, i);
                berr(c, q, "must be at least 1");
                ok = false;
            }
            if (has_metadata(cw->metadata_match)) {
                pathf(q, "%s[%zu].metadata_match", p, i);
                berr(c, q, "is not supported (no subset load balancing)");
                ok = false;
            }
            struct km_dp_weighted *w = &ch->clusters[ch->nclusters++];
            w->cluster = km_xstrdup(cw->name);
            w->weight = cw->weight;
            sum += cw->weight;
        }
        if (sum > UINT32_MAX) {
            berr(c, p, "the sum of the weights is larger than 4294967295");
            ok = false;
        }
        ch->total_weight = (uint32_t)(sum > UINT32_MAX ? 0 : sum);
    } else {
        berr(c, path, "one of cluster, weighted_clusters is required");
        ok = false;
    }
    if (has_metadata(t->metadata_match)) {
        pathf(p, "%s.metadata_match", path);
        berr(c, p, "is not supported (no subset load balancing)");
        ok = false;
    }
    pathf(p, "%s.idle_timeout", path);
    if (!dur_field(c, p, t->idle_timeout, 3600000, &ch->idle_timeout_ms))
        ok = false;
    return ok;
}

#define ROUTER_TYPE "envoy.extensions.filters.http.router.v3.Router"
#define HTTP_RBAC_TYPE "envoy.extensions.filters.http.rbac.v3.RBAC"

static bool
parse_hcm(struct bctx *c, const char *path, const pb_hcm *h, struct km_dp_chain *ch)
{
    bool ok = true;
    char p[PATHLEN];
    ch->kind = KM_DP_FILTER_HCM;
    ch->stat_prefix = km_xstrdup(h->stat_prefix ? h->stat_prefix : "");
    switch (h->codec_type) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__AUTO:
        ch->codec = KM_DP_CODEC_AUTO;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP1:
        ch->codec = KM_DP_CODEC_HTTP1;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP2:
        ch->codec = KM_DP_CODEC_HTTP2;
        break;
    default:
        pathf(p, "%s.codec_type", path);
        berr(c, p, "HTTP3 is not supported");
        ok = false;
    }
    if (h->route_specifier_case ==
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS) {
        pathf(p, "%s.rds.route_config_name", path);
        if (!h->rds || !h->rds->route_config_name || !*h->rds->route_config_name) {
            berr(c, p, "must not be empty");
            ok = false;
        } else {
            ch->rds_name = km_xstrdup(h->rds->route_config_name);
        }
    } else if (h->route_specifier_case ==
               ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG) {
        ch->inline_rc = km_xcalloc(1, sizeof(*ch->inline_rc));
        pathf(p, "%s.route_config.", path);
        if (!parse_rc(c, p, h->route_config, ch->inline_rc))
            ok = false;
        ch->rc = ch->inline_rc;
    } else {
        berr(c, path, "one of rds, route_config is required");
        ok = false;
    }
    bool router = false;
    for (size_t i = 0; i < h->n_http_filters; i++) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter *f =
            h->http_filters[i];
        const char *type = f->typed_config && f->typed_config->type_url
                               ? km_pb_type_name(f->typed_config->type_url)
                               : "";
        bool is_router = strcmp(type, ROUTER_TYPE) == 0 ||
                         (!*type && f->name && strcmp(f->name, "envoy.filters.http.router") == 0);
        pathf(p, "%s.http_filters[%zu]", path, i);
        if (is_router) {
            if (i != h->n_http_filters - 1) {
                berr(c, p, "the router must be the last HTTP filter");
                ok = false;
            }
            if (*type) {
                ProtobufCMessage *m = any_unpack(
                    c, p, f->typed_config, &envoy__extensions__filters__http__router__v3__router__descriptor);
                if (!m)
                    ok = false;
                km_pb_free(m);
            }
            router = true;
            continue;
        }
        if (strcmp(type, HTTP_RBAC_TYPE) == 0) {
            /* checked per request against the peer certificate (rbac.h); counters
             * "http.<stat_prefix>.rbac.*" as Envoy's */
            if (ch->http_rbac) {
                berr(c, p, "only one HTTP RBAC filter per connection manager is supported");
                ok = false;
                continue;
            }
            char *base = km_xasprintf("%s.%s.typed_config", c->res, p);
            char *sp = km_xasprintf("http.%s.", ch->stat_prefix);
            ch->http_rbac = km_dp_rbac_compile_http(f->typed_config->value.data,
                                                    f->typed_config->value.len, base, sp,
                                                    c->errs);
            free(sp);
            free(base);
            if (!ch->http_rbac)
                ok = false;
            continue;
        }
        if (f->is_optional)
            continue; /* Envoy skips optional filters it does not know */
        berr(c, p, "HTTP filter \"%.100s\" (%.150s) is not supported", f->name ? f->name : "",
             *type ? type : "no typed_config");
        ok = false;
    }
    if (!router) {
        pathf(p, "%s.http_filters", path);
        berr(c, p, "the last HTTP filter must be the router (envoy.filters.http.router)");
        ok = false;
    }
    pathf(p, "%s.stream_idle_timeout", path);
    if (!dur_field(c, p, h->stream_idle_timeout, 0, &ch->stream_idle_timeout_ms))
        ok = false;
    pathf(p, "%s.request_timeout", path);
    if (!dur_field(c, p, h->request_timeout, 0, &ch->request_timeout_ms))
        ok = false;
    return ok;
}

static bool
parse_chain(struct bctx *c, const char *path, const pb_chain *fc, struct km_dp_chain *ch)
{
    bool ok = true;
    char p[PATHLEN];
    const Envoy__Config__Listener__V3__FilterChainMatch *m = fc->filter_chain_match;
    if (m) {
        if (m->n_prefix_ranges || m->n_source_prefix_ranges) {
            pathf(p, "%s.filter_chain_match.%s", path,
                     m->n_prefix_ranges ? "prefix_ranges" : "source_prefix_ranges");
            berr(c, p, "is not supported");
            ok = false;
        }
        if (m->destination_port) {
            if (m->destination_port->value == 0 || m->destination_port->value > 65535) {
                pathf(p, "%s.filter_chain_match.destination_port", path);
                berr(c, p, "must be in 1..65535");
                ok = false;
            }
            ch->dest_port = m->destination_port->value;
        }
        if (m->transport_protocol && *m->transport_protocol) {
            if (strcmp(m->transport_protocol, "tls") && strcmp(m->transport_protocol, "raw_buffer")) {
                pathf(p, "%s.filter_chain_match.transport_protocol", path);
                berr(c, p, "\"%.100s\" is not supported (tls, raw_buffer)", m->transport_protocol);
                ok = false;
            }
            ch->transport_protocol = km_xstrdup(m->transport_protocol);
        }
        ch->server_names = km_xcalloc(m->n_server_names + 1, sizeof(char *));
        for (size_t i = 0; i < m->n_server_names; i++)
            ch->server_names[ch->nserver_names++] = lower_dup(m->server_names[i]);
        ch->alpn = km_xcalloc(m->n_application_protocols + 1, sizeof(char *));
        for (size_t i = 0; i < m->n_application_protocols; i++)
            ch->alpn[ch->nalpn++] = km_xstrdup(m->application_protocols[i]);
    }
    pathf(p, "%s.transport_socket", path);
    if (fc->transport_socket &&
        !parse_transport_socket(c, p, fc->transport_socket, false, &ch->tls))
        ok = false;
    pathf(p, "%s.filters", path);
    if (fc->n_filters == 0) {
        berr(c, p, "must not be empty");
        return false;
    }
    for (size_t i = 0; i < fc->n_filters; i++) {
        const Envoy__Config__Listener__V3__Filter *f = fc->filters[i];
        pathf(p, "%s.filters[%zu]", path, i);
        const char *type = f->typed_config && f->typed_config->type_url
                               ? km_pb_type_name(f->typed_config->type_url)
                               : "";
        bool last = i == fc->n_filters - 1;
        if (strcmp(type, envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor.name) == 0 ||
            strcmp(type, envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor.name) == 0) {
            if (!last) {
                berr(c, p, "%s must be the last network filter", type);
                ok = false;
                continue;
            }
            bool tcp = strcmp(type, envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor.name) == 0;
            const ProtobufCMessageDescriptor *d =
                tcp ? &envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor
                    : &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor;
            char q[PATHLEN];
            pathf(q, "%s.typed_config", p);
            ProtobufCMessage *msg = any_unpack(c, q, f->typed_config, d);
            if (!msg) {
                ok = false;
                continue;
            }
            if (tcp ? !parse_tcp_proxy(c, q, (const pb_tcp *)msg, ch)
                    : !parse_hcm(c, q, (const pb_hcm *)msg, ch))
                ok = false;
            km_pb_free(msg);
            continue;
        }
        if (strcmp(type, envoy__extensions__filters__network__rbac__v3__rbac__descriptor.name) == 0 &&
            !last) {
            char q[PATHLEN];
            pathf(q, "%s.typed_config", p);
            if (ch->rbac) {
                berr(c, p, "only one RBAC filter per filter chain is supported");
                ok = false;
                continue;
            }
            char *base = km_xasprintf("%s.%s", c->res, q);
            ch->rbac = km_dp_rbac_compile(f->typed_config->value.data, f->typed_config->value.len,
                                          base, c->errs);
            free(base);
            if (!ch->rbac)
                ok = false;
            continue;
        }
        berr(c, p, "network filter \"%.100s\" (%.150s) is not supported", f->name ? f->name : "",
             *type ? type : "no typed_config");
        ok = false;
    }
    return ok;
}

static bool
same_strv(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

static bool
same_match(const struct km_dp_chain *a, const struct km_dp_chain *b)
{
    const char *ta = a->transport_protocol ? a->transport_protocol : "";
    const char *tb = b->transport_protocol ? b->transport_protocol : "";
    return a->dest_port == b->dest_port && strcmp(ta, tb) == 0 &&
           same_strv(a->server_names, a->nserver_names, b->server_names, b->nserver_names) &&
           same_strv(a->alpn, a->nalpn, b->alpn, b->nalpn);
}

static bool
parse_listener(struct bctx *c, const pb_listener *pl, struct km_dp_listener *out)
{
    bool ok = true;
    char p[PATHLEN];
    out->name = km_xstrdup(pl->name);
    if (pl->api_listener) {
        berr(c, "api_listener", "api listeners are for proxyless clients");
        return false;
    }
    if (!parse_addr(c, "address", pl->address, &out->addr, &out->addrlen, &out->addr_str))
        ok = false;
    if (pl->use_original_dst && pl->use_original_dst->value) {
        berr(c, "use_original_dst", "is not supported (no transparent proxying)");
        ok = false;
    }
    if (pl->bind_to_port && !pl->bind_to_port->value) {
        berr(c, "bind_to_port", "false is not supported");
        ok = false;
    }
    for (size_t i = 0; i < pl->n_listener_filters; i++) {
        const Envoy__Config__Listener__V3__ListenerFilter *lf = pl->listener_filters[i];
        const char *type = lf->typed_config && lf->typed_config->type_url
                               ? km_pb_type_name(lf->typed_config->type_url)
                               : "";
        /* The engine reads SNI and ALPN from the ClientHello by itself. */
        if (strcmp(type, "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector") == 0)
            continue;
        pathf(p, "listener_filters[%zu]", i);
        berr(c, p, "listener filter \"%.100s\" (%.150s) is not supported",
             lf->name ? lf->name : "", *type ? type : "no typed_config");
        ok = false;
    }
    out->inbound = pl->traffic_direction == ENVOY__CONFIG__CORE__V3__TRAFFIC_DIRECTION__INBOUND;
    size_t n = pl->n_filter_chains + (pl->default_filter_chain ? 1 : 0);
    if (n == 0) {
        berr(c, "filter_chains", "must not be empty");
        return false;
    }
    out->chains = km_xcalloc(n, sizeof(*out->chains));
    for (size_t i = 0; i < pl->n_filter_chains; i++) {
        pathf(p, "filter_chains[%zu]", i);
        struct km_dp_chain *ch = &out->chains[out->nchains++];
        if (!parse_chain(c, p, pl->filter_chains[i], ch)) {
            ok = false;
            continue;
        }
        for (size_t j = 0; j + 1 < out->nchains; j++)
            if (same_match(&out->chains[j], ch)) {
                berr(c, p, "has the same filter_chain_match as filter_chains[%zu]", j);
                ok = false;
                break;
            }
    }
    if (pl->default_filter_chain) {
        /* The fallback: matches anything, after every other chain. */
        struct km_dp_chain *ch = &out->chains[out->nchains++];
        if (pl->default_filter_chain->filter_chain_match) {
            berr(c, "default_filter_chain.filter_chain_match", "must not be set");
            ok = false;
        } else if (!parse_chain(c, "default_filter_chain", pl->default_filter_chain, ch)) {
            ok = false;
        }
    }
    return ok;
}

/* ---- the whole snapshot ---- */

static int
listener_cmp(const void *a, const void *b)
{
    return strcmp(((const struct km_dp_listener *)a)->name,
                  ((const struct km_dp_listener *)b)->name);
}
static int
cluster_cmp(const void *a, const void *b)
{
    return strcmp(((const struct km_dp_cluster *)a)->name,
                  ((const struct km_dp_cluster *)b)->name);
}
static int
rc_cmp(const void *a, const void *b)
{
    return strcmp(((const struct km_dp_route_config *)a)->name,
                  ((const struct km_dp_route_config *)b)->name);
}
static int
addr_idx_cmp(const void *a, const void *b, void *arg)
{
    const struct km_dp_listener *l = arg;
    return strcmp(l[*(const size_t *)a].addr_str, l[*(const size_t *)b].addr_str);
}

static ProtobufCMessage *
decode_res(struct bctx *c, const ProtobufCMessageDescriptor *d, const struct km_dp_xds_res *r)
{
    char err[256];
    ProtobufCMessage *m = km_pb_unpack(d, r->bytes, r->len, err, sizeof(err));
    if (!m)
        berr(c, "", "cannot decode %s: %s", d->name, err);
    return m;
}

/* The name field of a decoded resource must be the name it was delivered under. */
static bool
check_name(struct bctx *c, const char *field, const char *got, const char *want)
{
    if (!got || strcmp(got, want) != 0) {
        berr(c, field, "\"%.100s\" differs from the resource name", got ? got : "");
        return false;
    }
    return true;
}

struct km_dp_snapshot *
km_dp_snapshot_build(const struct km_dp_xds_set sets[KM_DP_TYPES], uint64_t generation,
                     struct km_errs *errs)
{
    struct km_dp_snapshot *s = km_xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->generation = generation;
    size_t nerr0 = errs->n;
    char res[300];
    struct bctx c = {.errs = errs, .res = res};

    /* Secrets (SDS) first: the TLS contexts are bound to them at the end. */
    km_dp_tls_secrets_parse(&sets[KM_DP_SDS], &s->secrets, &s->nsecrets, errs);

    /* Endpoints first: clusters copy theirs. */
    const struct km_dp_xds_set *es = &sets[KM_DP_EDS];
    struct eplist *eds = km_xcalloc(es->n ? es->n : 1, sizeof(*eds));
    size_t neds = 0;
    for (size_t i = 0; i < es->n; i++) {
        snprintf(res, sizeof(res), "cluster_load_assignment \"%.200s\"", es->v[i].name);
        pb_cla *cla = (pb_cla *)decode_res(
            &c, &envoy__config__endpoint__v3__cluster_load_assignment__descriptor, &es->v[i]);
        if (!cla)
            continue;
        if (check_name(&c, "cluster_name", cla->cluster_name, es->v[i].name)) {
            struct eplist *el = &eds[neds++];
            el->name = es->v[i].name;
            parse_cla(&c, "", cla, el);
        }
        km_pb_free(&cla->base);
    }
    qsort(eds, neds, sizeof(*eds), eplist_cmp);

    const struct km_dp_xds_set *cs = &sets[KM_DP_CDS];
    s->clusters = km_xcalloc(cs->n ? cs->n : 1, sizeof(*s->clusters));
    for (size_t i = 0; i < cs->n; i++) {
        snprintf(res, sizeof(res), "cluster \"%.200s\"", cs->v[i].name);
        pb_cluster *pc =
            (pb_cluster *)decode_res(&c, &envoy__config__cluster__v3__cluster__descriptor, &cs->v[i]);
        if (!pc)
            continue;
        if (check_name(&c, "name", pc->name, cs->v[i].name))
            parse_cluster(&c, pc, eds, neds, &s->clusters[s->nclusters++]);
        km_pb_free(&pc->base);
    }
    for (size_t i = 0; i < neds; i++)
        free_eps(eds[i].eps, eds[i].neps);
    free(eds);

    const struct km_dp_xds_set *rs = &sets[KM_DP_RDS];
    s->routes = km_xcalloc(rs->n ? rs->n : 1, sizeof(*s->routes));
    for (size_t i = 0; i < rs->n; i++) {
        snprintf(res, sizeof(res), "route_configuration \"%.200s\"", rs->v[i].name);
        pb_rc *rc = (pb_rc *)decode_res(
            &c, &envoy__config__route__v3__route_configuration__descriptor, &rs->v[i]);
        if (!rc)
            continue;
        if (check_name(&c, "name", rc->name, rs->v[i].name))
            parse_rc(&c, "", rc, &s->routes[s->nroutes++]);
        km_pb_free(&rc->base);
    }

    const struct km_dp_xds_set *ls = &sets[KM_DP_LDS];
    s->listeners = km_xcalloc(ls->n ? ls->n : 1, sizeof(*s->listeners));
    for (size_t i = 0; i < ls->n; i++) {
        snprintf(res, sizeof(res), "listener \"%.200s\"", ls->v[i].name);
        pb_listener *pl = (pb_listener *)decode_res(
            &c, &envoy__config__listener__v3__listener__descriptor, &ls->v[i]);
        if (!pl)
            continue;
        if (check_name(&c, "name", pl->name, ls->v[i].name))
            parse_listener(&c, pl, &s->listeners[s->nlisteners++]);
        km_pb_free(&pl->base);
    }

    qsort(s->clusters, s->nclusters, sizeof(*s->clusters), cluster_cmp);
    qsort(s->routes, s->nroutes, sizeof(*s->routes), rc_cmp);
    qsort(s->listeners, s->nlisteners, sizeof(*s->listeners), listener_cmp);

    /* Two listeners cannot bind one address. */
    if (errs->n == nerr0 && s->nlisteners > 1) {
        size_t *ix = km_xcalloc(s->nlisteners, sizeof(*ix));
        for (size_t i = 0; i < s->nlisteners; i++)
            ix[i] = i;
        qsort_r(ix, s->nlisteners, sizeof(*ix), addr_idx_cmp, s->listeners);
        for (size_t i = 1; i < s->nlisteners; i++) {
            const struct km_dp_listener *a = &s->listeners[ix[i - 1]], *b = &s->listeners[ix[i]];
            if (strcmp(a->addr_str, b->addr_str) == 0) {
                snprintf(res, sizeof(res), "listener \"%.200s\"", b->name);
                berr(&c, "address", "%s is also the address of listener \"%.200s\"", b->addr_str,
                     a->name);
            }
        }
        free(ix);
    }
    /* Resolve RDS references (a missing route config is not an error: not delivered yet). */
    for (size_t i = 0; i < s->nlisteners; i++)
        for (size_t j = 0; j < s->listeners[i].nchains; j++) {
            struct km_dp_chain *ch = &s->listeners[i].chains[j];
            if (ch->rds_name)
                ch->rc = km_dp_snapshot_route(s, ch->rds_name);
        }
    if (errs->n != nerr0) {
        snapshot_free(s);
        return NULL;
    }
    /* TLS contexts: an SSL_CTX each when their secrets are there (missing ones: no TLS yet). */
    for (size_t i = 0; i < s->nclusters; i++)
        if (s->clusters[i].tls)
            km_dp_tls_ctx_bind(s->clusters[i].tls, s->secrets, s->nsecrets);
    for (size_t i = 0; i < s->nlisteners; i++)
        for (size_t j = 0; j < s->listeners[i].nchains; j++)
            if (s->listeners[i].chains[j].tls)
                km_dp_tls_ctx_bind(s->listeners[i].chains[j].tls, s->secrets, s->nsecrets);
    return s;
}

const struct km_dp_cluster *
km_dp_snapshot_cluster(const struct km_dp_snapshot *s, const char *name)
{
    struct km_dp_cluster key = {.name = (char *)name};
    return s && s->nclusters ? bsearch(&key, s->clusters, s->nclusters, sizeof(key), cluster_cmp)
                             : NULL;
}

const struct km_dp_listener *
km_dp_snapshot_listener(const struct km_dp_snapshot *s, const char *name)
{
    struct km_dp_listener key = {.name = (char *)name};
    return s && s->nlisteners
               ? bsearch(&key, s->listeners, s->nlisteners, sizeof(key), listener_cmp)
               : NULL;
}

const struct km_dp_route_config *
km_dp_snapshot_route(const struct km_dp_snapshot *s, const char *name)
{
    struct km_dp_route_config key = {.name = (char *)name};
    return s && s->nroutes ? bsearch(&key, s->routes, s->nroutes, sizeof(key), rc_cmp) : NULL;
}
