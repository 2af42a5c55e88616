/* kuma-dp's agent against a fake DP server (its own loop thread): POST /bootstrap, then a
 * delta ADS stream that first sends a cluster the engine cannot take (the agent must NACK it
 * with the snapshot builder's message and keep no config), then a good one (ACK, snapshot
 * published), then the EDS the good cluster asks for. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "test.h"

#include <km/common/grpc.h>
#include <km/common/pb.h>
#include <km/common/pbjson.h>
#include <km/cp/xds_types.h>
#include <km/dp/agent.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"

#define T_CDS "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#define T_EDS "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

struct fake {
    struct km_loop *loop;
    struct km_grpc_server *srv;
    int port;
    atomic_int bootstraps;
    atomic_int done;
    char nack[512];   /* error_detail of the NACK of nonce 1 */
    char eds_sub[64]; /* first EDS name subscribed */
    atomic_int acked2, acked3;
    int published;
};

static void
send_json(struct km_grpc_stream *s, const char *json)
{
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    uint8_t *b;
    size_t n;
    char err[256];
    if (!j || km_pbjson_encode(&envoy__service__discovery__v3__delta_discovery_response__descriptor,
                               j, &b, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "fake server: cannot encode: %s\n", j ? err : je.text);
        abort();
    }
    json_decref(j);
    km_grpc_stream_send(s, b, n);
    free(b);
}

static void
http(const struct km_http_request *req, struct km_http_response *resp, void *ud)
{
    struct fake *f = ud;
    atomic_fetch_add(&f->bootstraps, 1);
    char *body = km_xasprintf(
        "{\"bootstrap\":{\"node\":{\"id\":\"default.web\",\"cluster\":\"web\"},"
        "\"static_resources\":{\"clusters\":[{\"name\":\"ads_cluster\",\"load_assignment\":{"
        "\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":{\"address\":{\"socket_address\":{"
        "\"address\":\"127.0.0.1\",\"port_value\":%d}}}}]}]}}]}}}",
        f->port);
    resp->status = 200;
    resp->content_type = km_xstrdup("application/json");
    resp->body = body;
    resp->body_len = strlen(body);
}

static int
on_open(struct km_grpc_stream *s, void *ud)
{
    return 0;
}

static void
on_msg(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    struct fake *f = ud;
    char err[256];
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *r = (void *)km_pb_unpack(
        &envoy__service__discovery__v3__delta_discovery_request__descriptor, msg, len, err,
        sizeof(err));
    if (!r)
        return;
    const char *nonce = r->response_nonce ? r->response_nonce : "";
    bool cds = strcmp(r->type_url, T_CDS) == 0, eds = strcmp(r->type_url, T_EDS) == 0;
    if (cds && !*nonce) {
        send_json(s, "{\"type_url\":\"" T_CDS "\",\"nonce\":\"1\",\"resources\":[{\"name\":\"c\","
                     "\"version\":\"v1\",\"resource\":{\"@type\":\"" T_CDS "\",\"name\":\"c\","
                     "\"lb_policy\":\"CLUSTER_PROVIDED\"}}]}");
    } else if (cds && strcmp(nonce, "1") == 0) {
        if (r->error_detail && r->error_detail->message)
            snprintf(f->nack, sizeof(f->nack), "%s", r->error_detail->message);
        send_json(s, "{\"type_url\":\"" T_CDS "\",\"nonce\":\"2\",\"resources\":[{\"name\":\"c\","
                     "\"version\":\"v2\",\"resource\":{\"@type\":\"" T_CDS "\",\"name\":\"c\","
                     "\"type\":\"EDS\",\"eds_cluster_config\":{\"service_name\":\"svc\"}}}]}");
    } else if (cds && strcmp(nonce, "2") == 0 && !r->error_detail) {
        atomic_store(&f->acked2, 1);
    } else if (eds && !*nonce && r->n_resource_names_subscribe) {
        snprintf(f->eds_sub, sizeof(f->eds_sub), "%s", r->resource_names_subscribe[0]);
        send_json(s, "{\"type_url\":\"" T_EDS "\",\"nonce\":\"3\",\"resources\":[{\"name\":"
                     "\"svc\",\"version\":\"e1\",\"resource\":{\"@type\":\"" T_EDS "\","
                     "\"cluster_name\":\"svc\",\"endpoints\":[{\"lb_endpoints\":[{\"endpoint\":"
                     "{\"address\":{\"socket_address\":{\"address\":\"10.1.1.1\","
                     "\"port_value\":80}}}}]}]}}]}");
    } else if (eds && strcmp(nonce, "3") == 0 && !r->error_detail) {
        atomic_store(&f->acked3, 1);
    }
    km_pb_free(&r->base);
}

static void
on_close(struct km_grpc_stream *s, void *ud)
{
}

static void *
server_main(void *arg)
{
    struct fake *f = arg;
    km_loop_run(f->loop);
    return NULL;
}

static void
server_stop(void *arg)
{
    struct fake *f = arg;
    km_grpc_server_free(f->srv);
    km_loop_stop(f->loop);
}

static void
publish(struct km_dp_snapshot *s, void *ud)
{
    struct fake *f = ud;
    f->published++;
}

KM_TEST(dp_agent_nack_then_ack_then_eds)
{
    km_xds_register_types();
    struct fake f;
    memset(&f, 0, sizeof(f));
    f.loop = km_loop_new();
    struct km_grpc_method m = {.path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
                                       "DeltaAggregatedResources",
                               .on_open = on_open,
                               .on_message = on_msg,
                               .on_close = on_close,
                               .ud = &f};
    struct km_grpc_server_opts o = {.methods = &m, .nmethods = 1, .http_handler = http,
                                    .http_ud = &f};
    f.srv = km_grpc_server_new(f.loop, &o);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ASSERT(listen(fd, 16) == 0);
    ASSERT(getsockname(fd, (struct sockaddr *)&a, &l) == 0);
    f.port = ntohs(a.sin_port);
    char err[256];
    ASSERT(km_grpc_server_listen(f.srv, fd, NULL, NULL, err, sizeof(err)) == 0);
    pthread_t th;
    pthread_create(&th, NULL, server_main, &f);

    char url[64], port_arg[16];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", f.port);
    snprintf(port_arg, sizeof(port_arg), "%d", f.port);
    char *argv[] = {"--cp-address", url, "--name", "web", "--mesh", "default",
                    "--retry-backoff", "100ms"};
    struct km_dp_config cfg;
    ASSERT(km_dp_config_load(&cfg, 8, argv, err, sizeof(err)) == 0);
    ASSERT(km_dp_config_finish(&cfg, err, sizeof(err)) == 0);
    struct km_loop *loop = km_loop_new();
    struct km_dp_engine_hooks hooks = {.publish = publish, .ud = &f};
    struct km_dp_agent *ag = km_dp_agent_new(&cfg, loop, &hooks);
    km_dp_agent_start(ag);
    for (int i = 0; i < 500 && !atomic_load(&f.acked3); i++)
        km_loop_run_once(loop, 20);

    ASSERT_INT_EQ(atomic_load(&f.bootstraps), 1);
    ASSERT_STR_EQ(f.nack, "cluster \"c\".lb_policy: CLUSTER_PROVIDED is not supported");
    ASSERT_INT_EQ(atomic_load(&f.acked2), 1);
    ASSERT_STR_EQ(f.eds_sub, "svc");
    ASSERT_INT_EQ(atomic_load(&f.acked3), 1);
    ASSERT_STR_EQ(km_dp_agent_node_id(ag), "default.web");
    const struct km_dp_xds_stats *st = km_dp_agent_stats(ag);
    ASSERT_INT_EQ(st[KM_DP_CDS].nacks, 1);
    ASSERT_INT_EQ(st[KM_DP_CDS].acks, 1);
    ASSERT_STR_EQ(st[KM_DP_CDS].last_nack, f.nack);
    ASSERT_INT_EQ(f.published, 2); /* CDS v2, then EDS */
    struct km_dp_snapshot *s = km_dp_agent_snapshot(ag);
    ASSERT(s != NULL);
    const struct km_dp_cluster *c = km_dp_snapshot_cluster(s, "c");
    ASSERT(c != NULL);
    ASSERT_INT_EQ(c->neps, 1);
    ASSERT_STR_EQ(c->eps[0].addr_str, "10.1.1.1:80");
    ASSERT_STR_EQ(km_dp_agent_resources(ag)[KM_DP_CDS].v[0].version, "v2");
    ASSERT(km_dp_agent_connected(ag));

    km_dp_agent_free(ag);
    km_loop_free(loop);
    km_dp_config_deinit(&cfg);
    km_loop_post(f.loop, server_stop, &f);
    pthread_join(th, NULL);
    km_loop_free(f.loop);
}
