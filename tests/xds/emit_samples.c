/* Writes protobuf samples of every message type kuma-c defines, for tests/xds/decode_check.js,
 * which decodes them with Envoy's real .proto files and fails on any unknown or mistyped field.
 *
 * Two kinds of samples, each written as <dir>/<full.message.Name><suffix>.bin:
 *   - generated ones, one per message type and per oneof member ("<Name>.bin", "<Name>~1.bin",
 *     ...): every field is set by reflection over the protobuf-c descriptor (scalars non-zero,
 *     enums to their last value, repeated fields with two elements, sub-messages filled in
 *     turn, Any holding a filled-in Router), so every field number and wire type we declare is
 *     on the wire at least once;
 *   - realistic ones ("<Name>@<label>.bin"): the resources an xDS client really gets (an
 *     ApiListener with HCM, an inbound listener with TcpProxy and TLS, an inbound HCM with an
 *     HTTP RBAC filter before the router, RDS, EDS cluster, CLA, Secret, Discovery* with those
 *     resources in Any), and ("<Name>@gen-<case>-<type><n>.bin")
 *     what src/cp/xds_gen.c generates for a sidecar in a mesh with mTLS, STRICT and
 *     PERMISSIVE, packed by src/common/pbjson.c as the DP server does.
 * Usage: xds-emit-samples <dir>   (also used to write the fuzz seed corpus) */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include <km/common/errs.h>
#include <km/common/pb.h>
#include <km/common/pbjson.h>
#include <km/cp/resource.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/core/v3/core.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/filters/http/router/v3/router.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "google/protobuf/any.pb-c.h"

#define FILL_MAX_DEPTH 6

static const char *out_dir;
static unsigned str_counter;
static int n_written;

static void
die(const char *what)
{
    fprintf(stderr, "xds-emit-samples: %s: %s\n", what, strerror(errno));
    exit(1);
}

static char *
xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        die("strdup");
    return p;
}

static void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("calloc");
    return p;
}

static void
write_msg(const ProtobufCMessage *m, const char *suffix)
{
    char path[1024];
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = xcalloc(1, len);
    FILE *f;

    protobuf_c_message_pack(m, buf);
    snprintf(path, sizeof(path), "%s/%s%s.bin", out_dir, m->descriptor->name, suffix);
    f = fopen(path, "wb");
    if (!f)
        die(path);
    if (len && fwrite(buf, 1, len, f) != len)
        die(path);
    if (fclose(f) != 0)
        die(path);
    free(buf);
    n_written++;
}

static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, unsigned variant,
                                      unsigned depth);

/* Packs <m> into a fresh Any (taking ownership of <m>). */
static Google__Protobuf__Any *
to_any(ProtobufCMessage *m)
{
    Google__Protobuf__Any *a = xcalloc(1, sizeof(*a));
    char url[512];

    google__protobuf__any__init(a);
    snprintf(url, sizeof(url), "type.googleapis.com/%s", m->descriptor->name);
    a->type_url = xstrdup(url);
    a->value.len = protobuf_c_message_get_packed_size(m);
    a->value.data = xcalloc(1, a->value.len);
    protobuf_c_message_pack(m, a->value.data);
    protobuf_c_message_free_unpacked(m, NULL);
    return a;
}

/* Sets one value of field <f> at <p> (a member or an array element). Returns false when a
 * sub-message could not be made (recursion limit). */
static bool
fill_value(const ProtobufCFieldDescriptor *f, void *p, unsigned variant, unsigned depth)
{
    char s[128];

    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)p = 7;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)p = 7;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)p = 7;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)p = 7;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)p = 1.5f;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)p = 1.5;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)p = 1;
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *e = f->descriptor;
        *(int *)p = e->values[e->n_values - 1].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
        snprintf(s, sizeof(s), "%s-%u", f->name, ++str_counter);
        *(char **)p = xstrdup(s);
        break;
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        snprintf(s, sizeof(s), "bytes-%u", ++str_counter);
        b->len = strlen(s);
        b->data = (uint8_t *)xstrdup(s);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *sub = f->descriptor;
        ProtobufCMessage *m;
        if (sub == &google__protobuf__any__descriptor) {
            /* A real payload, so the checker decodes the Any contents as well. */
            if (depth >= FILL_MAX_DEPTH)
                return false;
            m = fill_message(&envoy__extensions__filters__http__router__v3__router__descriptor,
                             0, depth + 1);
            *(ProtobufCMessage **)p = (ProtobufCMessage *)to_any(m);
            break;
        }
        m = fill_message(sub, variant, depth + 1);
        if (!m)
            return false;
        *(ProtobufCMessage **)p = m;
        break;
    }
    }
    return true;
}

static size_t
type_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    }
    return 8;
}

/* Position of <f> among the members of its oneof, and how many members that oneof has. */
static void
oneof_pos(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f, unsigned *pos,
          unsigned *count)
{
    unsigned i;

    *pos = 0;
    *count = 0;
    for (i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *g = &d->fields[i];
        if (!(g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || g->quantifier_offset != f->quantifier_offset)
            continue;
        if (g == f)
            *pos = *count;
        (*count)++;
    }
}

/* Number of samples needed so that each member of each oneof of <d> is set once. */
static unsigned
variants_of(const ProtobufCMessageDescriptor *d)
{
    unsigned i, n = 1;

    for (i = 0; i < d->n_fields; i++) {
        unsigned pos, count;
        if (!(d->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            continue;
        oneof_pos(d, &d->fields[i], &pos, &count);
        if (count > n)
            n = count;
    }
    return n;
}

static ProtobufCMessage *
fill_message(const ProtobufCMessageDescriptor *d, unsigned variant, unsigned depth)
{
    ProtobufCMessage *m;
    unsigned i;

    if (depth > FILL_MAX_DEPTH)
        return NULL;
    m = xcalloc(1, d->sizeof_message);
    d->message_init(m);
    for (i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *base = (char *)m;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            unsigned pos, count;
            oneof_pos(d, f, &pos, &count);
            if (variant % count != pos)
                continue;
            if (!fill_value(f, base + f->offset, variant, depth))
                continue;
            *(uint32_t *)(base + f->quantifier_offset) = f->id;
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 2, k, sz = type_size(f);
            char *arr = xcalloc(n, sz);
            for (k = 0; k < n; k++)
                if (!fill_value(f, arr + k * sz, variant, depth))
                    break;
            if (k == 0) {
                free(arr);
                continue;
            }
            *(size_t *)(base + f->quantifier_offset) = k;
            *(void **)(base + f->offset) = arr;
        } else {
            if (!fill_value(f, base + f->offset, variant, depth))
                continue;
            if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset)
                *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
        }
    }
    return m;
}

static void
emit_generated(void)
{
    size_t i;

    for (i = 0; i < km_pb_all_messages_count; i++) {
        const ProtobufCMessageDescriptor *d = km_pb_all_messages[i];
        unsigned v, nv = variants_of(d);
        for (v = 0; v < nv; v++) {
            char suffix[32] = "";
            ProtobufCMessage *m;
            if (d == &google__protobuf__any__descriptor)
                m = (ProtobufCMessage *)to_any(fill_message(
                    &envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor, 1, 1));
            else
                m = fill_message(d, v, 0);
            if (v)
                snprintf(suffix, sizeof(suffix), "~%u", v);
            write_msg(m, suffix);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
}

/* ---- realistic resources, built the way the generators will build them ---- */

static Google__Protobuf__UInt32Value *
u32(uint32_t v)
{
    Google__Protobuf__UInt32Value *w = xcalloc(1, sizeof(*w));
    google__protobuf__uint32_value__init(w);
    w->value = v;
    return w;
}

static Envoy__Config__Core__V3__ConfigSource *
ads_source(void)
{
    Envoy__Config__Core__V3__ConfigSource *cs = xcalloc(1, sizeof(*cs));
    Envoy__Config__Core__V3__AggregatedConfigSource *ads = xcalloc(1, sizeof(*ads));
    envoy__config__core__v3__config_source__init(cs);
    envoy__config__core__v3__aggregated_config_source__init(ads);
    cs->config_source_specifier_case = ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS;
    cs->ads = ads;
    cs->resource_api_version = ENVOY__CONFIG__CORE__V3__API_VERSION__V3;
    return cs;
}

static Envoy__Config__Core__V3__Address *
sock_addr(const char *ip, uint32_t port)
{
    Envoy__Config__Core__V3__Address *a = xcalloc(1, sizeof(*a));
    Envoy__Config__Core__V3__SocketAddress *sa = xcalloc(1, sizeof(*sa));
    envoy__config__core__v3__address__init(a);
    envoy__config__core__v3__socket_address__init(sa);
    sa->address = xstrdup(ip);
    sa->port_specifier_case = ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE;
    sa->port_value = port;
    a->address_case = ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS;
    a->socket_address = sa;
    return a;
}

static Envoy__Config__Route__V3__RouteConfiguration *
route_config(const char *name, const char *cluster)
{
    Envoy__Config__Route__V3__RouteConfiguration *rc = xcalloc(1, sizeof(*rc));
    Envoy__Config__Route__V3__VirtualHost *vh = xcalloc(1, sizeof(*vh));
    Envoy__Config__Route__V3__Route *r = xcalloc(1, sizeof(*r));
    Envoy__Config__Route__V3__RouteMatch *match = xcalloc(1, sizeof(*match));
    Envoy__Config__Route__V3__RouteAction *act = xcalloc(1, sizeof(*act));

    envoy__config__route__v3__route_configuration__init(rc);
    envoy__config__route__v3__virtual_host__init(vh);
    envoy__config__route__v3__route__init(r);
    envoy__config__route__v3__route_match__init(match);
    envoy__config__route__v3__route_action__init(act);
    match->path_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX;
    match->prefix = xstrdup("/");
    act->cluster_specifier_case = ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER;
    act->cluster = xstrdup(cluster);
    r->match = match;
    r->action_case = ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE;
    r->route = act;
    vh->name = xstrdup(cluster);
    vh->n_domains = 1;
    vh->domains = xcalloc(1, sizeof(char *));
    vh->domains[0] = xstrdup("*");
    vh->n_routes = 1;
    vh->routes = xcalloc(1, sizeof(void *));
    vh->routes[0] = r;
    rc->name = xstrdup(name);
    rc->n_virtual_hosts = 1;
    rc->virtual_hosts = xcalloc(1, sizeof(void *));
    rc->virtual_hosts[0] = vh;
    return rc;
}

static Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *
hcm(const char *stat_prefix, bool inline_routes)
{
    Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager *h =
        xcalloc(1, sizeof(*h));
    Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter *hf =
        xcalloc(1, sizeof(*hf));
    Envoy__Extensions__Filters__Http__Router__V3__Router *router = xcalloc(1, sizeof(*router));

    envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__init(h);
    envoy__extensions__filters__network__http_connection_manager__v3__http_filter__init(hf);
    envoy__extensions__filters__http__router__v3__router__init(router);
    h->stat_prefix = xstrdup(stat_prefix);
    if (inline_routes) {
        h->route_specifier_case =
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG;
        h->route_config = route_config(stat_prefix, stat_prefix);
    } else {
        Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__Rds *rds =
            xcalloc(1, sizeof(*rds));
        envoy__extensions__filters__network__http_connection_manager__v3__rds__init(rds);
        rds->config_source = ads_source();
        rds->route_config_name = xstrdup("echo-route");
        h->route_specifier_case =
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS;
        h->rds = rds;
    }
    hf->name = xstrdup("envoy.filters.http.router");
    hf->config_type_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_TYPED_CONFIG;
    hf->typed_config = to_any(&router->base);
    h->n_http_filters = 1;
    h->http_filters = xcalloc(1, sizeof(void *));
    h->http_filters[0] = hf;
    return h;
}

static Envoy__Config__Listener__V3__Listener *
api_listener(void)
{
    Envoy__Config__Listener__V3__Listener *l = xcalloc(1, sizeof(*l));
    Envoy__Config__Listener__V3__ApiListener *al = xcalloc(1, sizeof(*al));

    envoy__config__listener__v3__listener__init(l);
    envoy__config__listener__v3__api_listener__init(al);
    l->name = xstrdup("echo");
    al->api_listener = to_any(&hcm("echo", false)->base);
    l->api_listener = al;
    return l;
}

static Envoy__Config__Core__V3__DataSource *
inline_ds(const char *s)
{
    Envoy__Config__Core__V3__DataSource *ds = xcalloc(1, sizeof(*ds));
    envoy__config__core__v3__data_source__init(ds);
    ds->specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES;
    ds->inline_bytes.len = strlen(s);
    ds->inline_bytes.data = (uint8_t *)xstrdup(s);
    return ds;
}

static Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext *
common_tls(void)
{
    Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext *c = xcalloc(1, sizeof(*c));
    Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig *cert = xcalloc(1, sizeof(*cert));
    Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig *ca = xcalloc(1, sizeof(*ca));

    envoy__extensions__transport_sockets__tls__v3__common_tls_context__init(c);
    envoy__extensions__transport_sockets__tls__v3__sds_secret_config__init(cert);
    envoy__extensions__transport_sockets__tls__v3__sds_secret_config__init(ca);
    cert->name = xstrdup("identity_cert:secret:default");
    cert->sds_config = ads_source();
    ca->name = xstrdup("mesh_ca:secret:default");
    ca->sds_config = ads_source();
    c->n_tls_certificate_sds_secret_configs = 1;
    c->tls_certificate_sds_secret_configs = xcalloc(1, sizeof(void *));
    c->tls_certificate_sds_secret_configs[0] = cert;
    c->validation_context_type_case =
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_SDS_SECRET_CONFIG;
    c->validation_context_sds_secret_config = ca;
    return c;
}

static Envoy__Config__Core__V3__TransportSocket *
tls_socket(ProtobufCMessage *ctx)
{
    Envoy__Config__Core__V3__TransportSocket *ts = xcalloc(1, sizeof(*ts));
    envoy__config__core__v3__transport_socket__init(ts);
    ts->name = xstrdup("envoy.transport_sockets.tls");
    ts->config_type_case = ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG;
    ts->typed_config = to_any(ctx);
    return ts;
}

static Envoy__Config__Listener__V3__Filter *
net_filter(const char *name, ProtobufCMessage *cfg)
{
    Envoy__Config__Listener__V3__Filter *f = xcalloc(1, sizeof(*f));
    envoy__config__listener__v3__filter__init(f);
    f->name = xstrdup(name);
    f->config_type_case = ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG;
    f->typed_config = to_any(cfg);
    return f;
}

/* An inbound listener with two filter chains: TCP proxy, and HCM for HTTP, both under mTLS. */
static Envoy__Config__Listener__V3__Listener *
inbound_listener(void)
{
    Envoy__Config__Listener__V3__Listener *l = xcalloc(1, sizeof(*l));
    Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy *tp = xcalloc(1, sizeof(*tp));
    size_t i;

    envoy__config__listener__v3__listener__init(l);
    envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__init(tp);
    l->name = xstrdup("inbound:10.0.0.1:8080");
    l->address = sock_addr("10.0.0.1", 8080);
    l->traffic_direction = ENVOY__CONFIG__CORE__V3__TRAFFIC_DIRECTION__INBOUND;
    tp->stat_prefix = xstrdup("localhost_8080");
    tp->cluster_specifier_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_CLUSTER;
    tp->cluster = xstrdup("localhost:8080");
    l->n_filter_chains = 2;
    l->filter_chains = xcalloc(2, sizeof(void *));
    for (i = 0; i < 2; i++) {
        Envoy__Config__Listener__V3__FilterChain *fc = xcalloc(1, sizeof(*fc));
        Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *dtc =
            xcalloc(1, sizeof(*dtc));
        Google__Protobuf__BoolValue *req = xcalloc(1, sizeof(*req));
        envoy__config__listener__v3__filter_chain__init(fc);
        envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__init(dtc);
        google__protobuf__bool_value__init(req);
        req->value = 1;
        dtc->common_tls_context = common_tls();
        dtc->require_client_certificate = req;
        fc->transport_socket = tls_socket(&dtc->base);
        fc->n_filters = 1;
        fc->filters = xcalloc(1, sizeof(void *));
        fc->filters[0] = i == 0 ? net_filter("envoy.filters.network.tcp_proxy", &tp->base)
                                : net_filter("envoy.filters.network.http_connection_manager",
                                             &hcm("inbound_http", true)->base);
        l->filter_chains[i] = fc;
    }
    return l;
}

static Envoy__Config__Cluster__V3__Cluster *
eds_cluster(void)
{
    Envoy__Config__Cluster__V3__Cluster *c = xcalloc(1, sizeof(*c));
    Envoy__Config__Cluster__V3__Cluster__EdsClusterConfig *eds = xcalloc(1, sizeof(*eds));
    Google__Protobuf__Duration *ct = xcalloc(1, sizeof(*ct));
    Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions *hpo = xcalloc(1, sizeof(*hpo));
    Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions__ExplicitHttpConfig *ex =
        xcalloc(1, sizeof(*ex));
    Envoy__Config__Core__V3__Http2ProtocolOptions *h2 = xcalloc(1, sizeof(*h2));
    Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *utc = xcalloc(1, sizeof(*utc));
    Envoy__Config__Cluster__V3__Cluster__TypedExtensionProtocolOptionsEntry *e =
        xcalloc(1, sizeof(*e));

    envoy__config__cluster__v3__cluster__init(c);
    envoy__config__cluster__v3__cluster__eds_cluster_config__init(eds);
    google__protobuf__duration__init(ct);
    envoy__extensions__upstreams__http__v3__http_protocol_options__init(hpo);
    envoy__extensions__upstreams__http__v3__http_protocol_options__explicit_http_config__init(ex);
    envoy__config__core__v3__http2_protocol_options__init(h2);
    envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__init(utc);
    envoy__config__cluster__v3__cluster__typed_extension_protocol_options_entry__init(e);
    c->name = xstrdup("echo-cluster");
    c->cluster_discovery_type_case = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE;
    c->type = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS;
    eds->eds_config = ads_source();
    c->eds_cluster_config = eds;
    ct->seconds = 5;
    c->connect_timeout = ct;
    c->lb_policy = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN;
    ex->protocol_config_case =
        ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP2_PROTOCOL_OPTIONS;
    ex->http2_protocol_options = h2;
    hpo->upstream_protocol_options_case =
        ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_EXPLICIT_HTTP_CONFIG;
    hpo->explicit_http_config = ex;
    e->key = xstrdup("envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
    e->value = to_any(&hpo->base);
    c->n_typed_extension_protocol_options = 1;
    c->typed_extension_protocol_options = xcalloc(1, sizeof(void *));
    c->typed_extension_protocol_options[0] = e;
    utc->common_tls_context = common_tls();
    utc->sni = xstrdup("echo{mesh=default}");
    c->transport_socket = tls_socket(&utc->base);
    return c;
}

static Envoy__Config__Endpoint__V3__ClusterLoadAssignment *
cla(void)
{
    Envoy__Config__Endpoint__V3__ClusterLoadAssignment *a = xcalloc(1, sizeof(*a));
    Envoy__Config__Endpoint__V3__LocalityLbEndpoints *lle = xcalloc(1, sizeof(*lle));
    Envoy__Config__Core__V3__Locality *loc = xcalloc(1, sizeof(*loc));
    size_t i;

    envoy__config__endpoint__v3__cluster_load_assignment__init(a);
    envoy__config__endpoint__v3__locality_lb_endpoints__init(lle);
    envoy__config__core__v3__locality__init(loc);
    a->cluster_name = xstrdup("echo-cluster");
    loc->zone = xstrdup("zone-1");
    lle->locality = loc;
    lle->load_balancing_weight = u32(2);
    lle->n_lb_endpoints = 2;
    lle->lb_endpoints = xcalloc(2, sizeof(void *));
    for (i = 0; i < 2; i++) {
        Envoy__Config__Endpoint__V3__LbEndpoint *lb = xcalloc(1, sizeof(*lb));
        Envoy__Config__Endpoint__V3__Endpoint *ep = xcalloc(1, sizeof(*ep));
        envoy__config__endpoint__v3__lb_endpoint__init(lb);
        envoy__config__endpoint__v3__endpoint__init(ep);
        ep->address = sock_addr("127.0.0.1", 50051 + (uint32_t)i);
        lb->host_identifier_case = ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT;
        lb->endpoint = ep;
        lb->health_status = ENVOY__CONFIG__CORE__V3__HEALTH_STATUS__HEALTHY;
        lb->load_balancing_weight = u32(1);
        lle->lb_endpoints[i] = lb;
    }
    a->n_endpoints = 1;
    a->endpoints = xcalloc(1, sizeof(void *));
    a->endpoints[0] = lle;
    return a;
}

static Envoy__Extensions__TransportSockets__Tls__V3__Secret *
secret(void)
{
    Envoy__Extensions__TransportSockets__Tls__V3__Secret *s = xcalloc(1, sizeof(*s));
    Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate *tc = xcalloc(1, sizeof(*tc));

    envoy__extensions__transport_sockets__tls__v3__secret__init(s);
    envoy__extensions__transport_sockets__tls__v3__tls_certificate__init(tc);
    s->name = xstrdup("identity_cert:secret:default");
    tc->certificate_chain = inline_ds("-----BEGIN CERTIFICATE-----\n...\n");
    tc->private_key = inline_ds("-----BEGIN PRIVATE KEY-----\n...\n");
    s->type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE;
    s->tls_certificate = tc;
    return s;
}

static void
emit_one(ProtobufCMessage *m, const char *label)
{
    char suffix[64];
    snprintf(suffix, sizeof(suffix), "@%s", label);
    write_msg(m, suffix);
    protobuf_c_message_free_unpacked(m, NULL);
}

static void
emit_realistic(void)
{
    ProtobufCMessage *res[5];
    const char *labels[5] = {"lds", "rds", "cds", "eds", "sds"};
    size_t i;

    emit_one(&api_listener()->base, "api-listener");
    emit_one(&inbound_listener()->base, "inbound");
    emit_one(&route_config("echo-route", "echo-cluster")->base, "echo-route");
    emit_one(&eds_cluster()->base, "eds-mtls-h2");
    emit_one(&cla()->base, "locality-weights");
    emit_one(&secret()->base, "identity");

    res[0] = &api_listener()->base;
    res[1] = &route_config("echo-route", "echo-cluster")->base;
    res[2] = &eds_cluster()->base;
    res[3] = &cla()->base;
    res[4] = &secret()->base;
    for (i = 0; i < 5; i++) {
        char url[256];
        Envoy__Service__Discovery__V3__DiscoveryResponse *r = xcalloc(1, sizeof(*r));
        Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *dr = xcalloc(1, sizeof(*dr));
        Envoy__Service__Discovery__V3__Resource *rr = xcalloc(1, sizeof(*rr));
        Envoy__Service__Discovery__V3__DiscoveryRequest *q = xcalloc(1, sizeof(*q));
        Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *dq = xcalloc(1, sizeof(*dq));
        Envoy__Config__Core__V3__Node *node = xcalloc(1, sizeof(*node));
        Envoy__Config__Core__V3__Locality *loc = xcalloc(1, sizeof(*loc));
        char label[32];

        envoy__service__discovery__v3__discovery_response__init(r);
        envoy__service__discovery__v3__delta_discovery_response__init(dr);
        envoy__service__discovery__v3__resource__init(rr);
        envoy__service__discovery__v3__discovery_request__init(q);
        envoy__service__discovery__v3__delta_discovery_request__init(dq);
        envoy__config__core__v3__node__init(node);
        envoy__config__core__v3__locality__init(loc);
        snprintf(url, sizeof(url), "type.googleapis.com/%s", res[i]->descriptor->name);

        /* A client's first request: node (with locality) on it, no version, no nonce. */
        node->id = xstrdup("default.echo-1");
        node->cluster = xstrdup("echo");
        node->locality = loc;
        node->user_agent_name = xstrdup("kuma-dp");
        q->node = node;
        q->type_url = xstrdup(url);
        q->n_resource_names = 1;
        q->resource_names = xcalloc(1, sizeof(char *));
        q->resource_names[0] = xstrdup("echo");
        snprintf(label, sizeof(label), "%s-first", labels[i]);
        emit_one(&q->base, label);

        dq->type_url = xstrdup(url);
        dq->n_resource_names_subscribe = 1;
        dq->resource_names_subscribe = xcalloc(1, sizeof(char *));
        dq->resource_names_subscribe[0] = xstrdup("echo");
        dq->response_nonce = xstrdup("n1");
        snprintf(label, sizeof(label), "%s-ack", labels[i]);
        emit_one(&dq->base, label);

        r->version_info = xstrdup("v1");
        r->type_url = xstrdup(url);
        r->nonce = xstrdup("n1");
        r->n_resources = 1;
        r->resources = xcalloc(1, sizeof(void *));
        r->resources[0] = to_any(res[i]);
        /* The delta response carries a copy of the same Any. */
        rr->name = xstrdup("echo");
        rr->version = xstrdup("v1");
        rr->resource = xcalloc(1, sizeof(Google__Protobuf__Any));
        google__protobuf__any__init(rr->resource);
        rr->resource->type_url = xstrdup(r->resources[0]->type_url);
        rr->resource->value.len = r->resources[0]->value.len;
        rr->resource->value.data = xcalloc(1, rr->resource->value.len);
        memcpy(rr->resource->value.data, r->resources[0]->value.data, rr->resource->value.len);
        emit_one(&r->base, labels[i]);

        dr->system_version_info = xstrdup("v1");
        dr->type_url = xstrdup(url);
        dr->nonce = xstrdup("n2");
        dr->n_resources = 1;
        dr->resources = xcalloc(1, sizeof(void *));
        dr->resources[0] = rr;
        dr->n_removed_resources = 1;
        dr->removed_resources = xcalloc(1, sizeof(char *));
        dr->removed_resources[0] = xstrdup("gone");
        emit_one(&dr->base, labels[i]);
    }
}

/* ---- the generator's mTLS output ---- */

static struct km_resource *
decode_res(const char *type, const char *text)
{
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    struct km_errs e;
    struct km_resource *r;

    if (!doc) {
        fprintf(stderr, "xds-emit-samples: bad sample JSON: %s\n", jerr.text);
        exit(1);
    }
    km_errs_init(&e);
    r = km_resource_decode(doc, km_registry_find(type), &e);
    if (!r) {
        fprintf(stderr, "xds-emit-samples: cannot decode a sample %s\n", type);
        exit(1);
    }
    km_errs_deinit(&e);
    json_decref(doc);
    return r;
}

static void
emit_generated_mtls(const char *label, const char *mode)
{
    static const char web[] =
        "{\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"web-1\", \"networking\": "
        "{\"address\": \"10.0.0.1\", \"inbound\": [{\"port\": 8080, \"servicePort\": 18080, "
        "\"tags\": {\"kuma.io/service\": \"web\", \"kuma.io/protocol\": \"http\"}}, {\"port\": "
        "8081, \"tags\": {\"kuma.io/service\": \"web-tcp\", \"kuma.io/protocol\": \"tcp\"}}], "
        "\"outbound\": [{\"port\": 33033, \"tags\": {\"kuma.io/service\": \"backend\"}}]}}";
    static const char backend[] =
        "{\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"backend-1\", "
        "\"networking\": {\"address\": \"10.0.0.2\", \"inbound\": [{\"port\": 9090, \"tags\": "
        "{\"kuma.io/service\": \"backend\", \"kuma.io/protocol\": \"grpc\"}}]}}";
    char mesh_text[512];
    struct km_resource *dps[2], *mesh;
    struct km_xds_resources out;
    struct km_mesh_view view = {.mesh = "default"};
    struct km_xds_proxy_id id = {.mesh = "default", .name = "web-1"};

    snprintf(mesh_text, sizeof(mesh_text),
             "{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": {\"enabledBackend\": "
             "\"ca-1\", \"backends\": [{\"name\": \"ca-1\", \"type\": \"builtin\", \"mode\": "
             "\"%s\"}]}}", mode);
    mesh = decode_res("Mesh", mesh_text);
    dps[0] = decode_res("Dataplane", web);
    dps[1] = decode_res("Dataplane", backend);
    view.mesh_res = mesh;
    view.dataplanes = (const struct km_resource *const *)dps;
    view.ndataplanes = 2;
    id.dataplane = dps[0];
    id.cert_pem = "-----BEGIN CERTIFICATE-----\nc2FtcGxl\n-----END CERTIFICATE-----\n";
    id.key_pem = "-----BEGIN PRIVATE KEY-----\nc2FtcGxl\n-----END PRIVATE KEY-----\n";
    id.ca_pem = id.cert_pem;
    km_xds_generate(&view, &id, &out);
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        const ProtobufCMessageDescriptor *d = km_xds_type_descriptor(t);
        const char *name;
        json_t *res;
        unsigned n = 0;

        json_object_foreach(out.by_type[t], name, res) {
            uint8_t *buf = NULL;
            size_t len = 0;
            char err[512], suffix[96];
            ProtobufCMessage *m;

            if (km_pbjson_encode(d, res, &buf, &len, err, sizeof(err)) != 0) {
                fprintf(stderr, "xds-emit-samples: %s %s: %s\n", km_xds_type_short[t], name, err);
                exit(1);
            }
            m = protobuf_c_message_unpack(d, NULL, len, buf);
            if (!m)
                die("unpack of a generated resource");
            snprintf(suffix, sizeof(suffix), "@gen-%s-%s%u", label, km_xds_type_short[t], n++);
            write_msg(m, suffix);
            protobuf_c_message_free_unpacked(m, NULL);
            free(buf);
        }
    }
    km_xds_resources_deinit(&out);
    km_resource_free(dps[0]);
    km_resource_free(dps[1]);
    km_resource_free(mesh);
}

/* A realistic HTTP inbound under mTLS: the traffic permissions as an HTTP RBAC filter
 * (envoy.filters.http.rbac) before the router, both the HCM holding it and the RBAC message
 * alone, built from proto3 JSON by src/common/pbjson.c as the generator's output is. */
static void
emit_json_sample(const char *type, const char *text, const char *label)
{
    const ProtobufCMessageDescriptor *d = km_pbjson_lookup(type);
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[512];
    ProtobufCMessage *m;

    if (!d || !j || km_pbjson_encode(d, j, &buf, &len, err, sizeof(err)) != 0) {
        fprintf(stderr, "xds-emit-samples: sample %s: %s\n", label,
                !d ? "unknown type" : !j ? jerr.text : err);
        exit(1);
    }
    m = protobuf_c_message_unpack(d, NULL, len, buf);
    if (!m)
        die("unpack of a JSON sample");
    emit_one(m, label);
    free(buf);
    json_decref(j);
}

#define HTTP_RBAC_RULES                                                                        \
    "{\"action\": \"ALLOW\", \"policies\": {\"MeshTrafficPermission\": {\"permissions\": "   \
    "[{\"any\": true}], \"principals\": [{\"and_ids\": {\"ids\": [{\"authenticated\": "     \
    "{\"principal_name\": {\"exact\": \"spiffe://default/web\"}}}, {\"not_id\": "            \
    "{\"authenticated\": {\"principal_name\": {\"exact\": \"kuma://version/v2\"}}}}]}}]}}}"

static void
emit_http_rbac(void)
{
    static const char rbac[] =
        "{\"rules\": " HTTP_RBAC_RULES ", \"shadow_rules\": {\"action\": \"DENY\", "
        "\"policies\": {\"MeshTrafficPermission\": {\"permissions\": [{\"any\": true}], "
        "\"principals\": [{\"authenticated\": {\"principal_name\": {\"exact\": "
        "\"spiffe://default/web\"}}}]}}}}";
    static const char hcm_json[] =
        "{\"stat_prefix\": \"localhost_18080\", \"route_config\": {\"name\": "
        "\"inbound:web\", \"virtual_hosts\": [{\"name\": \"web\", \"domains\": [\"*\"], "
        "\"routes\": [{\"match\": {\"prefix\": \"/\"}, \"route\": {\"cluster\": "
        "\"localhost:18080\"}}]}]}, \"http_filters\": [{\"name\": \"envoy.filters.http.rbac\", "
        "\"typed_config\": {\"@type\": "
        "\"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\", \"rules\": "
        HTTP_RBAC_RULES "}}, {\"name\": \"envoy.filters.http.router\", \"typed_config\": "
        "{\"@type\": \"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\"}}]}";

    emit_json_sample("envoy.extensions.filters.http.rbac.v3.RBAC", rbac, "mtp-shadow");
    emit_json_sample(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        hcm_json, "inbound-http-rbac");
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: xds-emit-samples <dir>\n");
        return 2;
    }
    out_dir = argv[1];
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        die(out_dir);
    emit_generated();
    emit_realistic();
    km_xds_register_types();
    emit_http_rbac();
    emit_generated_mtls("mtls-strict", "STRICT");
    emit_generated_mtls("mtls-permissive", "PERMISSIVE");
    printf("xds-emit-samples: wrote %d samples (%zu message types) to %s\n", n_written,
           km_pb_all_messages_count, out_dir);
    return 0;
}
