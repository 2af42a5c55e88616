/* km_dp_snapshot_build: every supported feature from protobuf resources (written as proto3
 * JSON and packed with km_pbjson_encode), the NACK messages of what is not supported, and the
 * ring hash / Maglev tables. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "test.h"

#include <km/common/pbjson.h>
#include <km/cp/xds_types.h>
#include <km/dp/snapshot.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"

#define HCM "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
#define TCP "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
#define ROUTER "{\"name\":\"envoy.filters.http.router\",\"typed_config\":{\"@type\":\"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\"}}"

struct fixture {
    struct km_dp_xds_set sets[KM_DP_TYPES];
};

static const ProtobufCMessageDescriptor *
desc(int t)
{
    switch (t) {
    case KM_DP_LDS:
        return &envoy__config__listener__v3__listener__descriptor;
    case KM_DP_RDS:
        return &envoy__config__route__v3__route_configuration__descriptor;
    case KM_DP_CDS:
        return &envoy__config__cluster__v3__cluster__descriptor;
    default:
        return &envoy__config__endpoint__v3__cluster_load_assignment__descriptor;
    }
}

/* Adds resource <name> of type <t> from JSON text; aborts the test on encoding errors. */
static void
add(struct fixture *f, int t, const char *name, const char *json)
{
    km_xds_register_types();
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    if (!j) {
        fprintf(stderr, "bad test JSON: %s: %s\n", je.text, json);
        abort();
    }
    uint8_t *bytes;
    size_t len;
    char err[256];
    if (km_pbjson_encode(desc(t), j, &bytes, &len, err, sizeof(err)) != 0) {
        fprintf(stderr, "encode: %s\n", err);
        abort();
    }
    json_decref(j);
    struct km_dp_xds_set *s = &f->sets[t];
    s->v = realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].name = strdup(name);
    s->v[s->n].bytes = bytes;
    s->v[s->n].len = len;
    s->v[s->n].version = strdup("1");
    s->n++;
}

static void
fixture_free(struct fixture *f)
{
    for (int t = 0; t < KM_DP_TYPES; t++)
        km_dp_xds_set_clear(&f->sets[t]);
}

/* Builds and expects failure; returns the joined errors (caller frees). */
static char *
build_fail(struct fixture *f)
{
    struct km_errs e;
    km_errs_init(&e);
    struct km_dp_snapshot *s = km_dp_snapshot_build(f->sets, 1, &e);
    if (s) {
        km_dp_snapshot_unref(s);
        km_errs_deinit(&e);
        return NULL;
    }
    char *j = km_errs_join(&e);
    km_errs_deinit(&e);
    return j;
}

static struct km_dp_snapshot *
build_ok(struct fixture *f)
{
    struct km_errs e;
    km_errs_init(&e);
    struct km_dp_snapshot *s = km_dp_snapshot_build(f->sets, 7, &e);
    if (!s) {
        char *j = km_errs_join(&e);
        fprintf(stderr, "unexpected build errors: %s\n", j);
        free(j);
    }
    km_errs_deinit(&e);
    return s;
}

KM_TEST(dp_snapshot_empty)
{
    struct fixture f = {0};
    struct km_dp_snapshot *s = build_ok(&f);
    ASSERT(s != NULL);
    ASSERT_INT_EQ(s->nlisteners, 0);
    ASSERT_INT_EQ(s->generation, 7);
    ASSERT(km_dp_snapshot_ref(s) == s);
    km_dp_snapshot_unref(s);
    km_dp_snapshot_unref(s);
}

KM_TEST(dp_snapshot_full_http)
{
    struct fixture f = {0};
    add(&f, KM_DP_LDS, "outbound:127.0.0.1:10001",
        "{\"name\":\"outbound:127.0.0.1:10001\",\"address\":{\"socket_address\":{\"address\":"
        "\"127.0.0.1\",\"port_value\":10001}},\"traffic_direction\":\"OUTBOUND\","
        "\"filter_chains\":[{\"filter_chain_match\":{\"destination_port\":10001,"
        "\"server_names\":[\"Api.Local\"],\"transport_protocol\":\"raw_buffer\","
        "\"application_protocols\":[\"h2\"]},\"filters\":[{\"name\":\"hcm\",\"typed_config\":"
        "{\"@type\":\"" HCM "\",\"codec_type\":\"HTTP2\",\"stat_prefix\":\"api\","
        "\"rds\":{\"config_source\":{\"ads\":{}},\"route_config_name\":\"r1\"},"
        "\"stream_idle_timeout\":\"10s\",\"http_filters\":[" ROUTER "]}}]}]}");
    add(&f, KM_DP_LDS, "inbound:127.0.0.1:10002",
        "{\"name\":\"inbound:127.0.0.1:10002\",\"address\":{\"socket_address\":{\"address\":"
        "\"127.0.0.1\",\"port_value\":10002}},\"traffic_direction\":\"INBOUND\","
        "\"filter_chains\":[{\"filters\":[{\"name\":\"tcp\",\"typed_config\":{\"@type\":\"" TCP
        "\",\"stat_prefix\":\"web\",\"weighted_clusters\":{\"clusters\":[{\"name\":\"a\","
        "\"weight\":3},{\"name\":\"b\",\"weight\":1}]},\"idle_timeout\":\"0s\"}}]}]}");
    add(&f, KM_DP_RDS, "r1",
        "{\"name\":\"r1\",\"virtual_hosts\":[{\"name\":\"v\",\"domains\":[\"*.Example.com\","
        "\"x\"],\"routes\":[{\"match\":{\"safe_regex\":{\"regex\":\"/api/v[0-9]+\"},"
        "\"headers\":[{\"name\":\"X-Env\",\"string_match\":{\"exact\":\"prod\","
        "\"ignore_case\":true}},{\"name\":\"x-debug\",\"present_match\":false}],"
        "\"grpc\":{}},\"route\":{\"weighted_clusters\":{\"clusters\":[{\"name\":\"a\","
        "\"weight\":90},{\"name\":\"b\",\"weight\":10}]},\"timeout\":\"2.5s\","
        "\"prefix_rewrite\":\"/\",\"host_rewrite_literal\":\"h\",\"retry_policy\":{"
        "\"retry_on\":\"5xx\",\"num_retries\":3}}},{\"match\":{\"path\":\"/exact\","
        "\"case_sensitive\":false},\"route\":{\"cluster\":\"a\"}},{\"match\":{\"prefix\":\"/\"},"
        "\"route\":{\"cluster\":\"b\",\"timeout\":\"0s\"}}]}]}");
    add(&f, KM_DP_CDS, "a",
        "{\"name\":\"a\",\"type\":\"EDS\",\"eds_cluster_config\":{\"eds_config\":{\"ads\":{}},"
        "\"service_name\":\"svc-a\"},\"connect_timeout\":\"1.5s\",\"lb_policy\":"
        "\"LEAST_REQUEST\",\"circuit_breakers\":{\"thresholds\":[{\"max_connections\":10,"
        "\"max_pending_requests\":20,\"max_requests\":30},{\"priority\":\"HIGH\","
        "\"max_connections\":99}]},\"typed_extension_protocol_options\":{"
        "\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":{\"@type\":"
        "\"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\","
        "\"explicit_http_config\":{\"http2_protocol_options\":{}}}}}");
    add(&f, KM_DP_CDS, "b",
        "{\"name\":\"b\",\"type\":\"STATIC\",\"lb_policy\":\"RANDOM\",\"load_assignment\":{"
        "\"cluster_name\":\"b\",\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":{\"address\":"
        "{\"socket_address\":{\"address\":\"::1\",\"port_value\":9000}}}}]}]}}");
    add(&f, KM_DP_EDS, "svc-a",
        "{\"cluster_name\":\"svc-a\",\"endpoints\":[{\"locality\":{\"zone\":\"z1\"},"
        "\"load_balancing_weight\":2,\"lb_endpoints\":[{\"endpoint\":{\"address\":{"
        "\"socket_address\":{\"address\":\"10.0.0.1\",\"port_value\":8080}}},"
        "\"load_balancing_weight\":3},{\"endpoint\":{\"address\":{\"socket_address\":{"
        "\"address\":\"10.0.0.2\",\"port_value\":8080}}},\"health_status\":\"UNHEALTHY\"}]},"
        "{\"priority\":1,\"lb_endpoints\":[{\"endpoint\":{\"address\":{\"socket_address\":{"
        "\"address\":\"10.0.0.3\",\"port_value\":8080}}},\"health_status\":\"HEALTHY\"}]}]}");
    struct km_dp_snapshot *s = build_ok(&f);
    ASSERT(s != NULL);
    ASSERT_INT_EQ(s->nlisteners, 2);
    /* sorted by name */
    ASSERT_STR_EQ(s->listeners[0].name, "inbound:127.0.0.1:10002");
    const struct km_dp_listener *out = km_dp_snapshot_listener(s, "outbound:127.0.0.1:10001");
    ASSERT(out != NULL);
    ASSERT_STR_EQ(out->addr_str, "127.0.0.1:10001");
    ASSERT(!out->inbound);
    ASSERT_INT_EQ(out->nchains, 1);
    const struct km_dp_chain *ch = &out->chains[0];
    ASSERT_INT_EQ(ch->kind, KM_DP_FILTER_HCM);
    ASSERT_INT_EQ(ch->dest_port, 10001);
    ASSERT_STR_EQ(ch->server_names[0], "api.local");
    ASSERT_STR_EQ(ch->transport_protocol, "raw_buffer");
    ASSERT_STR_EQ(ch->alpn[0], "h2");
    ASSERT_INT_EQ(ch->codec, KM_DP_CODEC_HTTP2);
    ASSERT_STR_EQ(ch->rds_name, "r1");
    ASSERT_INT_EQ(ch->stream_idle_timeout_ms, 10000);
    ASSERT(ch->rc == km_dp_snapshot_route(s, "r1"));
    const struct km_dp_route_config *rc = ch->rc;
    ASSERT_INT_EQ(rc->nvhosts, 1);
    ASSERT_STR_EQ(rc->vhosts[0].domains[0], "*.example.com");
    ASSERT_INT_EQ(rc->vhosts[0].nroutes, 3);
    const struct km_dp_route *r = &rc->vhosts[0].routes[0];
    ASSERT_INT_EQ(r->match, KM_DP_MATCH_REGEX);
    ASSERT(r->regex != NULL);
    ASSERT(r->grpc);
    ASSERT_INT_EQ(r->nheaders, 2);
    ASSERT_STR_EQ(r->headers[0].name, "x-env");
    ASSERT_INT_EQ(r->headers[0].kind, KM_DP_HDR_EXACT);
    ASSERT(r->headers[0].ignore_case);
    ASSERT_INT_EQ(r->headers[1].kind, KM_DP_HDR_PRESENT);
    ASSERT(r->headers[1].invert);
    ASSERT_INT_EQ(r->nclusters, 2);
    ASSERT_INT_EQ(r->total_weight, 100);
    ASSERT_INT_EQ(r->timeout_ms, 2500);
    ASSERT_STR_EQ(r->prefix_rewrite, "/");
    ASSERT_STR_EQ(r->host_rewrite, "h");
    ASSERT_INT_EQ(r->num_retries, 3);
    ASSERT_STR_EQ(r->retry_on, "5xx");
    ASSERT_INT_EQ(rc->vhosts[0].routes[1].match, KM_DP_MATCH_PATH);
    ASSERT(!rc->vhosts[0].routes[1].case_sensitive);
    ASSERT_INT_EQ(rc->vhosts[0].routes[1].timeout_ms, 15000); /* Envoy's default */
    ASSERT_INT_EQ(rc->vhosts[0].routes[2].timeout_ms, 0);     /* explicitly disabled */

    const struct km_dp_listener *in = km_dp_snapshot_listener(s, "inbound:127.0.0.1:10002");
    ASSERT(in->inbound);
    ASSERT_INT_EQ(in->chains[0].kind, KM_DP_FILTER_TCP_PROXY);
    ASSERT_INT_EQ(in->chains[0].nclusters, 2);
    ASSERT_INT_EQ(in->chains[0].total_weight, 4);
    ASSERT_INT_EQ(in->chains[0].idle_timeout_ms, 0);

    const struct km_dp_cluster *a = km_dp_snapshot_cluster(s, "a");
    ASSERT(a != NULL);
    ASSERT(a->eds);
    ASSERT_STR_EQ(a->eds_name, "svc-a");
    ASSERT_INT_EQ(a->lb, KM_DP_LB_LEAST_REQUEST);
    ASSERT_INT_EQ(a->choice_count, 2);
    ASSERT_INT_EQ(a->connect_timeout_ms, 1500);
    ASSERT(a->http2);
    ASSERT_INT_EQ(a->max_connections, 10);
    ASSERT_INT_EQ(a->max_pending_requests, 20);
    ASSERT_INT_EQ(a->max_requests, 30);
    ASSERT_INT_EQ(a->neps, 3);
    ASSERT_STR_EQ(a->eps[0].addr_str, "10.0.0.1:8080");
    ASSERT_INT_EQ(a->eps[0].weight, 6); /* 3 x locality 2 */
    ASSERT(a->eps[0].healthy);
    ASSERT_STR_EQ(a->eps[0].zone, "z1");
    ASSERT(!a->eps[1].healthy);
    ASSERT_INT_EQ(a->eps[2].priority, 1);
    const struct km_dp_cluster *b = km_dp_snapshot_cluster(s, "b");
    ASSERT_INT_EQ(b->lb, KM_DP_LB_RANDOM);
    ASSERT_INT_EQ(b->connect_timeout_ms, 5000);
    ASSERT_STR_EQ(b->eps[0].addr_str, "[::1]:9000");
    ASSERT(km_dp_snapshot_cluster(s, "zzz") == NULL);
    km_dp_snapshot_unref(s);
    fixture_free(&f);
}

KM_TEST(dp_snapshot_missing_refs_are_fine)
{
    struct fixture f = {0};
    add(&f, KM_DP_LDS, "l",
        "{\"name\":\"l\",\"address\":{\"socket_address\":{\"address\":\"0.0.0.0\","
        "\"port_value\":80}},\"filter_chains\":[{\"filters\":[{\"name\":\"h\",\"typed_config\":"
        "{\"@type\":\"" HCM "\",\"rds\":{\"route_config_name\":\"later\"},\"http_filters\":["
        "{\"name\":\"envoy.filters.http.router\"}]}}]}]}");
    add(&f, KM_DP_CDS, "c", "{\"name\":\"c\",\"type\":\"EDS\"}");
    struct km_dp_snapshot *s = build_ok(&f);
    ASSERT(s != NULL);
    ASSERT(s->listeners[0].chains[0].rc == NULL);
    ASSERT_INT_EQ(s->clusters[0].neps, 0);
    ASSERT_STR_EQ(s->clusters[0].eds_name, "c");
    km_dp_snapshot_unref(s);
    fixture_free(&f);
}

static char *
one_cluster_err(const char *json)
{
    struct fixture f = {0};
    add(&f, KM_DP_CDS, "c", json);
    char *e = build_fail(&f);
    fixture_free(&f);
    return e;
}

KM_TEST(dp_snapshot_cluster_nacks)
{
    char *e = one_cluster_err("{\"name\":\"c\",\"lb_policy\":\"CLUSTER_PROVIDED\"}");
    ASSERT_STR_EQ(e, "cluster \"c\".lb_policy: CLUSTER_PROVIDED is not supported");
    free(e);
    e = one_cluster_err("{\"name\":\"c\",\"type\":\"STRICT_DNS\"}");
    ASSERT_STR_EQ(e, "cluster \"c\".type: STRICT_DNS is not supported (only STATIC and EDS)");
    free(e);
    e = one_cluster_err("{\"name\":\"c\",\"connect_timeout\":\"0s\"}");
    ASSERT_STR_EQ(e, "cluster \"c\".connect_timeout: must be greater than 0");
    free(e);
    e = one_cluster_err(
        "{\"name\":\"c\",\"load_assignment\":{\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":"
        "{\"address\":{\"socket_address\":{\"address\":\"example.com\",\"port_value\":1}}}}]}]}}");
    ASSERT_STR_EQ(e, "cluster \"c\".load_assignment.endpoints[0].lb_endpoints[0].endpoint."
                     "address.socket_address.address: \"example.com\" is not an IP address "
                     "(DNS names are not supported)");
    free(e);
    e = one_cluster_err("{\"name\":\"c\",\"transport_socket\":{\"name\":\"envoy.transport_"
                        "sockets.tls\"}}");
    ASSERT_STR_EQ(e, "cluster \"c\".transport_socket.typed_config: transport socket "
                     "envoy.transport_sockets.tls (no typed_config) is not supported (expected "
                     "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext)");
    free(e);
    e = one_cluster_err("{\"name\":\"other\"}");
    ASSERT_STR_EQ(e, "cluster \"c\".name: \"other\" differs from the resource name");
    free(e);
}

static char *
one_listener_err(const char *json)
{
    struct fixture f = {0};
    add(&f, KM_DP_LDS, "l", json);
    char *e = build_fail(&f);
    fixture_free(&f);
    return e;
}

#define LADDR "\"name\":\"l\",\"address\":{\"socket_address\":{\"address\":\"127.0.0.1\"," \
              "\"port_value\":1}}"

KM_TEST(dp_snapshot_listener_nacks)
{
    char *e = one_listener_err("{\"name\":\"l\",\"api_listener\":{}}");
    ASSERT_STR_EQ(e, "listener \"l\".api_listener: api listeners are for proxyless clients");
    free(e);
    e = one_listener_err("{" LADDR "}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains: must not be empty");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"h\",\"typed_config\":{"
        "\"@type\":\"" HCM "\",\"route_config\":{\"virtual_hosts\":[{\"domains\":[\"*\"]}]},"
        "\"http_filters\":[{\"name\":\"envoy.filters.http.fault\"}," ROUTER "]}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filters[0].typed_config.http_filters[0]: "
                     "HTTP filter \"envoy.filters.http.fault\" (no typed_config) is not "
                     "supported");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"h\",\"typed_config\":{"
        "\"@type\":\"" HCM "\",\"route_config\":{}}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filters[0].typed_config.http_filters: the "
                     "last HTTP filter must be the router (envoy.filters.http.router)");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"h\",\"typed_config\":{"
        "\"@type\":\"" HCM "\",\"http_filters\":[" ROUTER "]}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filters[0].typed_config: one of rds, "
                     "route_config is required");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"t\",\"typed_config\":{"
        "\"@type\":\"" TCP "\"}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filters[0].typed_config: one of cluster, "
                     "weighted_clusters is required");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"rbac\",\"typed_config\":{"
        "\"@type\":\"type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\","
        "\"rules\":{\"policies\":{\"p\":{\"permissions\":[{\"destination_port\":80}],"
        "\"principals\":[{\"any\":true}]}}}}},"
        "{\"name\":\"t\",\"typed_config\":{\"@type\":\"" TCP "\",\"cluster\":\"c\"}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filters[0].typed_config.rules."
                     "policies[\"p\"].permissions[0]: only `any: true` is supported");
    free(e);
    /* two chains with the same match */
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filters\":[{\"name\":\"t\",\"typed_config\":{"
        "\"@type\":\"" TCP "\",\"cluster\":\"c\"}}]},{\"filters\":[{\"name\":\"t\","
        "\"typed_config\":{\"@type\":\"" TCP "\",\"cluster\":\"d\"}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[1]: has the same filter_chain_match as "
                     "filter_chains[0]");
    free(e);
    e = one_listener_err(
        "{" LADDR ",\"filter_chains\":[{\"filter_chain_match\":{\"transport_protocol\":\"quic\"},"
        "\"filters\":[{\"name\":\"t\",\"typed_config\":{\"@type\":\"" TCP "\",\"cluster\":"
        "\"c\"}}]}]}");
    ASSERT_STR_EQ(e, "listener \"l\".filter_chains[0].filter_chain_match.transport_protocol: "
                     "\"quic\" is not supported (tls, raw_buffer)");
    free(e);
}

KM_TEST(dp_snapshot_route_nacks)
{
    struct fixture f = {0};
    add(&f, KM_DP_RDS, "r",
        "{\"name\":\"r\",\"virtual_hosts\":[{\"name\":\"a\",\"domains\":[\"x\",\"a*b\"],"
        "\"routes\":[{\"match\":{\"safe_regex\":{\"regex\":\"([\"}},\"route\":{\"cluster\":"
        "\"c\"}},{\"match\":{\"prefix\":\"/\"},\"route\":{\"cluster_header\":\"h\"}},"
        "{\"match\":{\"prefix\":\"/\"}}]},{\"name\":\"b\",\"domains\":[\"X\"]}]}");
    char *e = build_fail(&f);
    ASSERT_STR_CONTAINS(e, "route_configuration \"r\".virtual_hosts[0].domains[1]: \"a*b\" is "
                           "not a valid domain");
    ASSERT_STR_CONTAINS(e, "route_configuration \"r\".virtual_hosts[0].routes[0].match."
                           "safe_regex.regex: ");
    ASSERT_STR_CONTAINS(e, "route_configuration \"r\".virtual_hosts[0].routes[1].route."
                           "cluster_header: is not supported");
    ASSERT_STR_CONTAINS(e, "route_configuration \"r\".virtual_hosts[0].routes[2]: route is "
                           "required");
    ASSERT_STR_CONTAINS(e, "route_configuration \"r\".virtual_hosts[1].domains[0]: domain \"x\" "
                           "is also in virtual_hosts[0]");
    free(e);
    fixture_free(&f);
}

KM_TEST(dp_snapshot_bad_bytes_and_duplicate_address)
{
    struct fixture f = {0};
    f.sets[KM_DP_CDS].v = calloc(1, sizeof(struct km_dp_xds_res));
    f.sets[KM_DP_CDS].n = 1;
    f.sets[KM_DP_CDS].v[0].name = strdup("junk");
    f.sets[KM_DP_CDS].v[0].bytes = (uint8_t *)strdup("\x0a\xff\xff");
    f.sets[KM_DP_CDS].v[0].len = 3;
    char *e = build_fail(&f);
    ASSERT_STR_CONTAINS(e, "cluster \"junk\": cannot decode envoy.config.cluster.v3.Cluster");
    free(e);
    fixture_free(&f);

    struct fixture g = {0};
    add(&g, KM_DP_LDS, "l1",
        "{\"name\":\"l1\",\"address\":{\"socket_address\":{\"address\":\"127.0.0.1\","
        "\"port_value\":5}},\"filter_chains\":[{\"filters\":[{\"name\":\"t\",\"typed_config\":"
        "{\"@type\":\"" TCP "\",\"cluster\":\"c\"}}]}]}");
    add(&g, KM_DP_LDS, "l2",
        "{\"name\":\"l2\",\"address\":{\"socket_address\":{\"address\":\"127.0.0.1\","
        "\"port_value\":5}},\"filter_chains\":[{\"filters\":[{\"name\":\"t\",\"typed_config\":"
        "{\"@type\":\"" TCP "\",\"cluster\":\"c\"}}]}]}");
    e = build_fail(&g);
    ASSERT_STR_EQ(e, "listener \"l2\".address: 127.0.0.1:5 is also the address of listener "
                     "\"l1\"");
    free(e);
    fixture_free(&g);
}

/* N endpoints 10.0.0.i:80 with the given weights and policy. */
static struct km_dp_snapshot *
lb_cluster(const char *policy, const unsigned *w, size_t n)
{
    struct fixture f = {0};
    char buf[8192];
    size_t off = (size_t)snprintf(buf, sizeof(buf),
                                  "{\"name\":\"c\",\"lb_policy\":\"%s\",\"load_assignment\":{"
                                  "\"endpoints\":[{\"lb_endpoints\":[",
                                  policy);
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, sizeof(buf) - off,
                                "%s{\"endpoint\":{\"address\":{\"socket_address\":{\"address\":"
                                "\"10.0.0.%zu\",\"port_value\":80}}},\"load_balancing_weight\":"
                                "%u}",
                                i ? "," : "", i + 1, w[i]);
    snprintf(buf + off, sizeof(buf) - off, "]}]}}");
    add(&f, KM_DP_CDS, "c", buf);
    struct km_dp_snapshot *s = build_ok(&f);
    fixture_free(&f);
    return s;
}

KM_TEST(dp_snapshot_ring_hash)
{
    const unsigned w[] = {1, 1, 2};
    struct km_dp_snapshot *s = lb_cluster("RING_HASH", w, 3);
    ASSERT(s != NULL);
    const struct km_dp_cluster *c = &s->clusters[0];
    ASSERT(c->table_size >= KM_DP_RING_MIN_SIZE);
    size_t count[3] = {0};
    for (size_t i = 0; i < c->table_size; i++) {
        ASSERT(c->table[i] < 3);
        count[c->table[i]]++;
        if (i)
            ASSERT(c->ring_hashes[i - 1] <= c->ring_hashes[i]);
    }
    /* points in proportion to the weights */
    ASSERT(count[2] > count[0] * 18 / 10 && count[2] < count[0] * 22 / 10);
    /* keys spread roughly by weight */
    size_t hits[3] = {0};
    for (unsigned k = 0; k < 40000; k++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "key-%u", k);
        uint64_t h = km_dp_hash64(key, (size_t)kl);
        size_t lo = 0, hi = c->table_size;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c->ring_hashes[mid] < h)
                lo = mid + 1;
            else
                hi = mid;
        }
        hits[c->table[lo == c->table_size ? 0 : lo]]++;
    }
    ASSERT(hits[2] > 16000 && hits[2] < 24000);
    ASSERT(hits[0] > 6000 && hits[0] < 14000);
    km_dp_snapshot_unref(s);
}

KM_TEST(dp_snapshot_maglev)
{
    const unsigned w[] = {1, 3};
    struct km_dp_snapshot *s = lb_cluster("MAGLEV", w, 2);
    ASSERT(s != NULL);
    const struct km_dp_cluster *c = &s->clusters[0];
    ASSERT_INT_EQ(c->table_size, KM_DP_MAGLEV_TABLE_SIZE);
    size_t count[2] = {0};
    for (size_t i = 0; i < c->table_size; i++) {
        ASSERT(c->table[i] < 2);
        count[c->table[i]]++;
    }
    ASSERT(count[1] > count[0] * 28 / 10 && count[1] < count[0] * 32 / 10);
    km_dp_snapshot_unref(s);
    /* adding a host moves few keys (consistency) */
    const unsigned w2[] = {1, 1, 1}, w3[] = {1, 1, 1, 1};
    struct km_dp_snapshot *s3 = lb_cluster("MAGLEV", w2, 3), *s4 = lb_cluster("MAGLEV", w3, 4);
    size_t same = 0;
    for (size_t i = 0; i < KM_DP_MAGLEV_TABLE_SIZE; i++)
        same += s3->clusters[0].table[i] == s4->clusters[0].table[i];
    ASSERT(same > KM_DP_MAGLEV_TABLE_SIZE * 6 / 10);
    km_dp_snapshot_unref(s3);
    km_dp_snapshot_unref(s4);
}
