/* The DP server's ADS state machine, driven in process over real sockets with our gRPC client:
 * per-type versions and nonces, ACK (nothing re-sent), NACK (recorded, nothing re-sent, the
 * insight shows it), stale nonces ignored, a store change pushes a new version, unknown type
 * URLs and bad node ids end the stream with a clear status, delta removals. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/cp/cp.h>
#include <km/cp/dp_server.h>
#include <km/cp/tokens.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "test.h"

#define SOTW  "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define DELTA "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
#define T_CDS "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#define T_EDS "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ASSERT(getsockname(fd, (struct sockaddr *)&a, &l) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

struct fixture {
    struct km_cp_config cfg;
    struct km_cp cp;
    char workdir[64];
    int plain_port;
};

static void
put_dp(struct km_store *st, const char *name, const char *svc, int port, const char *outbound)
{
    struct km_resource *r = km_resource_new(km_registry_find("Dataplane"), "default", name);
    json_decref(r->spec);
    r->spec = json_pack("{s:{s:s, s:[{s:i, s:{s:s}}]}}", "networking", "address", "127.0.0.1",
                        "inbound", "port", port, "tags", "kuma.io/service", svc);
    if (outbound)
        json_object_set_new(json_object_get(r->spec, "networking"), "outbound",
                            json_pack("[{s:i, s:{s:s}}]", "port", 30000, "tags",
                                      "kuma.io/service", outbound));
    ASSERT_INT_EQ(km_store_create(st, r), 0);
    km_resource_free(r);
}

static void
on_event(void *ctx, enum km_store_event_kind kind, const char *type, const char *mesh,
         const char *name)
{
    struct fixture *f = ctx;
    km_dp_server_notify(f->cp.dp, kind, type, mesh, name);
}

static void
fixture_start(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    km_cp_config_defaults(&f->cfg);
    snprintf(f->workdir, sizeof(f->workdir), "/tmp/km-dps-XXXXXX");
    ASSERT(mkdtemp(f->workdir) != NULL);
    free(f->cfg.general.work_dir);
    f->cfg.general.work_dir = km_xstrdup(f->workdir);
    f->cfg.dp_server.port = free_port();
    f->plain_port = free_port();
    f->cfg.dp_server.plaintext_port = f->plain_port;
    free(f->cfg.dp_server.authn_dp_proxy_type);
    f->cfg.dp_server.authn_dp_proxy_type = km_xstrdup("none");
    f->cp.cfg = &f->cfg;
    f->cp.api_fd = f->cp.diag_fd = f->cp.https_fd = -1;
    strcpy(f->cp.hostname, "test");
    strcpy(f->cp.instance_id, "test-0000");
    f->cp.store = km_store_memory_new();
    f->cp.store->on_event = on_event;
    f->cp.store->event_ctx = f;
    struct km_resource *m = km_resource_new(km_registry_mesh(), "", "default");
    ASSERT_INT_EQ(km_store_create(f->cp.store, m), 0);
    km_resource_free(m);
    put_dp(f->cp.store, "backend-1", "backend", 8080, NULL);
    put_dp(f->cp.store, "web-1", "web", 8081, "backend");
    char err[256];
    f->cp.dp = km_dp_server_new(&f->cp, err, sizeof(err));
    if (!f->cp.dp)
        KM_FAIL_AT("dp server: %s", err);
    if (km_dp_server_start(f->cp.dp, err, sizeof(err)) != 0)
        KM_FAIL_AT("dp server start: %s", err);
}

static void
fixture_stop(struct fixture *f)
{
    km_dp_server_free(f->cp.dp);
    km_store_free(f->cp.store);
    km_cp_config_deinit(&f->cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->workdir);
    ASSERT(system(cmd) == 0);
}

/* ---- a scripted ADS client ---- */

struct client {
    struct km_loop *loop;
    struct km_grpc_client *conn;
    struct km_grpc_call *call;
    ProtobufCMessage *last; /* last response, owned */
    int responses;
    bool closed;
    int status;
    char message[256];
    bool delta;
};

static void
cl_msg(struct km_grpc_call *c, const uint8_t *msg, size_t len, void *ud)
{
    struct client *cl = ud;
    if (cl->last)
        protobuf_c_message_free_unpacked(cl->last, NULL);
    cl->last = protobuf_c_message_unpack(
        cl->delta ? &envoy__service__discovery__v3__delta_discovery_response__descriptor
                  : &envoy__service__discovery__v3__discovery_response__descriptor,
        NULL, len, msg);
    ASSERT(cl->last != NULL);
    cl->responses++;
}

static void
cl_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct client *cl = ud;
    cl->closed = true;
    cl->status = status;
    snprintf(cl->message, sizeof(cl->message), "%s", message ? message : "");
    cl->call = NULL;
}

static void
client_open_auth(struct client *cl, int port, bool delta, const char *token)
{
    memset(cl, 0, sizeof(*cl));
    cl->delta = delta;
    cl->loop = km_loop_new();
    cl->conn = km_grpc_client_new(cl->loop, "127.0.0.1", port, false, NULL);
    struct km_grpc_call_cbs cbs = {cl_msg, cl_close, cl};
    const char *hdrs[] = {token ? "authorization" : NULL, token, NULL};
    cl->call = km_grpc_call_start(cl->conn, delta ? DELTA : SOTW, (const char *const *)hdrs, &cbs);
    ASSERT(cl->call != NULL);
}

static void
client_open(struct client *cl, int port, bool delta)
{
    client_open_auth(cl, port, delta, NULL);
}

static void
client_close(struct client *cl)
{
    if (cl->last)
        protobuf_c_message_free_unpacked(cl->last, NULL);
    km_grpc_client_free(cl->conn);
    km_loop_free(cl->loop);
}

/* Runs the client loop until <n> responses arrived or the stream closed (false on timeout). */
static bool
wait_responses(struct client *cl, int n, int timeout_ms)
{
    int64_t end = km_now_us() / 1000 + timeout_ms;
    while (cl->responses < n && !cl->closed && km_now_us() / 1000 < end)
        km_loop_run_once(cl->loop, 20);
    return cl->responses >= n;
}

static void
send_sotw(struct client *cl, const char *node, const char *type, const char *version,
          const char *nonce, const char *error, char **names, size_t nnames)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest r =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node nd = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    if (node) {
        nd.id = (char *)node;
        r.node = &nd;
    }
    r.type_url = (char *)type;
    r.version_info = (char *)(version ? version : "");
    r.response_nonce = (char *)(nonce ? nonce : "");
    r.resource_names = names;
    r.n_resource_names = nnames;
    if (error) {
        st.code = 3;
        st.message = (char *)error;
        r.error_detail = &st;
    }
    size_t n = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *buf = km_xmalloc(n);
    protobuf_c_message_pack(&r.base, buf);
    ASSERT_INT_EQ(km_grpc_call_send(cl->call, buf, n), 0);
    free(buf);
}

static void
send_delta(struct client *cl, const char *node, const char *type, char **subscribe, size_t nsub)
{
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node nd = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    nd.id = (char *)node;
    r.node = &nd;
    r.type_url = (char *)type;
    r.resource_names_subscribe = subscribe;
    r.n_resource_names_subscribe = nsub;
    size_t n = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *buf = km_xmalloc(n);
    protobuf_c_message_pack(&r.base, buf);
    ASSERT_INT_EQ(km_grpc_call_send(cl->call, buf, n), 0);
    free(buf);
}

static Envoy__Service__Discovery__V3__DiscoveryResponse *
last_sotw(struct client *cl)
{
    return (Envoy__Service__Discovery__V3__DiscoveryResponse *)cl->last;
}

static json_t *
insight_status(struct fixture *f, const char *name, const char *type)
{
    struct km_resource *r = NULL;
    if (km_store_get(f->cp.store, km_registry_find("DataplaneInsight"), "default", name, &r))
        return NULL;
    json_t *subs = json_object_get(r->spec, "subscriptions");
    json_t *st = json_object_get(json_object_get(json_array_get(subs, json_array_size(subs) - 1),
                                                 "status"),
                                 type);
    json_t *out = json_deep_copy(st);
    km_resource_free(r);
    return out;
}

KM_TEST(ads_sotw_ack_nack_and_stale_nonce)
{
    struct fixture f;
    fixture_start(&f);
    struct client cl;
    client_open(&cl, f.plain_port, false);
    send_sotw(&cl, "default.web-1", T_CDS, NULL, NULL, NULL, NULL, 0);
    ASSERT(wait_responses(&cl, 1, 3000));
    Envoy__Service__Discovery__V3__DiscoveryResponse *r = last_sotw(&cl);
    ASSERT_STR_EQ(r->type_url, T_CDS);
    ASSERT(r->n_resources >= 1); /* the outbound cluster "backend" */
    char *v1 = km_xstrdup(r->version_info), *n1 = km_xstrdup(r->nonce);
    ASSERT(strlen(v1) > 0 && strlen(n1) > 0);

    /* ACK: nothing new is sent. */
    send_sotw(&cl, NULL, T_CDS, v1, n1, NULL, NULL, 0);
    ASSERT(!wait_responses(&cl, 2, 300));

    /* A NACK is recorded, nothing is re-sent, the last good config stays the proxy's. */
    send_sotw(&cl, NULL, T_CDS, v1, n1, "cluster backend: unsupported thing", NULL, 0);
    ASSERT(!wait_responses(&cl, 2, 300));

    /* A request answering an unknown nonce is stale and ignored. */
    send_sotw(&cl, NULL, T_CDS, "x", "no-such-nonce", NULL, NULL, 0);
    ASSERT(!wait_responses(&cl, 2, 300));

    /* The insight (flushed within 1 s) shows 1 ACK and 1 NACK with its text. */
    json_t *st = NULL;
    for (int i = 0; i < 40; i++) {
        json_decref(st);
        st = insight_status(&f, "web-1", "cds");
        if (st && json_object_get(st, "lastNackError"))
            break;
        usleep(50000);
    }
    ASSERT(st != NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "responsesSent")), "1");
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "responsesAcknowledged")), "1");
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "responsesRejected")), "1");
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "lastNackError")),
                  "cluster backend: unsupported thing");
    json_decref(st);

    /* A store change that affects the proxy pushes a new version with a new nonce. */
    put_dp(f.cp.store, "backend-2", "backend", 8082, NULL);
    send_sotw(&cl, NULL, T_EDS, NULL, NULL, NULL, (char *[]){"backend"}, 1);
    ASSERT(wait_responses(&cl, 2, 3000));
    ASSERT_STR_EQ(last_sotw(&cl)->type_url, T_EDS);
    ASSERT_INT_EQ(last_sotw(&cl)->n_resources, 1);
    ASSERT(strcmp(last_sotw(&cl)->nonce, n1) != 0);
    ASSERT(!cl.closed);
    free(v1);
    free(n1);
    client_close(&cl);
    fixture_stop(&f);
}

KM_TEST(ads_eds_follows_endpoint_changes)
{
    struct fixture f;
    fixture_start(&f);
    struct client cl;
    client_open(&cl, f.plain_port, false);
    send_sotw(&cl, "default.web-1", T_EDS, NULL, NULL, NULL, (char *[]){"backend"}, 1);
    ASSERT(wait_responses(&cl, 1, 3000));
    char *v1 = km_xstrdup(last_sotw(&cl)->version_info);
    char *n1 = km_xstrdup(last_sotw(&cl)->nonce);
    send_sotw(&cl, NULL, T_EDS, v1, n1, NULL, (char *[]){"backend"}, 1);
    put_dp(f.cp.store, "backend-2", "backend", 8082, NULL);
    ASSERT(wait_responses(&cl, 2, 3000));
    ASSERT(strcmp(last_sotw(&cl)->version_info, v1) != 0);
    /* An unrelated service changing does not reach this proxy. */
    char *v2 = km_xstrdup(last_sotw(&cl)->version_info);
    send_sotw(&cl, NULL, T_EDS, v2, last_sotw(&cl)->nonce, NULL, (char *[]){"backend"}, 1);
    put_dp(f.cp.store, "other-1", "other", 8083, NULL);
    ASSERT(!wait_responses(&cl, 3, 400));
    free(v1);
    free(v2);
    free(n1);
    client_close(&cl);
    fixture_stop(&f);
}

KM_TEST(ads_bad_requests_end_the_stream_with_a_status)
{
    struct fixture f;
    fixture_start(&f);
    const struct {
        const char *node, *type, *status_text;
        int status;
    } cases[] = {
        {"default.web-1", "type.googleapis.com/no.such.Type", "unknown type_url", 3},
        {"nodot", T_CDS, "is not of the form", 3},
        {"nomesh.web-1", T_CDS, "mesh \"nomesh\" of node.id does not exist", 5},
        {NULL, T_CDS, "must carry node.id", 3},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        struct client cl;
        client_open(&cl, f.plain_port, false);
        send_sotw(&cl, cases[i].node, cases[i].type, NULL, NULL, NULL, NULL, 0);
        wait_responses(&cl, 1, 3000);
        ASSERT(cl.closed);
        ASSERT_INT_EQ(cl.status, cases[i].status);
        ASSERT_STR_CONTAINS(cl.message, cases[i].status_text);
        client_close(&cl);
    }
    /* Malformed protobuf. */
    struct client cl;
    client_open(&cl, f.plain_port, false);
    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    ASSERT_INT_EQ(km_grpc_call_send(cl.call, junk, sizeof(junk)), 0);
    wait_responses(&cl, 1, 3000);
    ASSERT(cl.closed);
    ASSERT_INT_EQ(cl.status, 3);
    ASSERT_STR_CONTAINS(cl.message, "malformed DiscoveryRequest");
    client_close(&cl);
    ASSERT_INT_EQ(km_dp_server_streams(f.cp.dp), 0);
    fixture_stop(&f);
}

KM_TEST(ads_delta_resends_changed_resources)
{
    struct fixture f;
    fixture_start(&f);
    struct client cl;
    client_open(&cl, f.plain_port, true);
    send_delta(&cl, "default.web-1", T_EDS, (char *[]){"backend"}, 1);
    ASSERT(wait_responses(&cl, 1, 3000));
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *d =
        (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)cl.last;
    ASSERT_INT_EQ(d->n_resources, 1);
    ASSERT_STR_EQ(d->resources[0]->name, "backend");
    ASSERT(strlen(d->resources[0]->version) > 0);
    /* Changing the service's endpoints sends the resource again with a new version. */
    char *ver = km_xstrdup(d->resources[0]->version);
    put_dp(f.cp.store, "backend-2", "backend", 8082, NULL);
    ASSERT(wait_responses(&cl, 2, 3000));
    d = (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)cl.last;
    ASSERT_INT_EQ(d->n_resources, 1);
    ASSERT(strcmp(d->resources[0]->version, ver) != 0);
    free(ver);
    client_close(&cl);
    fixture_stop(&f);
}

KM_TEST(ads_delta_wildcard_cds_reports_removals)
{
    struct fixture f;
    fixture_start(&f);
    struct client cl;
    client_open(&cl, f.plain_port, true);
    send_delta(&cl, "default.web-1", T_CDS, NULL, 0); /* no names: wildcard */
    ASSERT(wait_responses(&cl, 1, 3000));
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *d =
        (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)cl.last;
    bool has_backend = false;
    for (size_t i = 0; i < d->n_resources; i++)
        has_backend |= strcmp(d->resources[i]->name, "backend") == 0;
    ASSERT(has_backend);
    ASSERT_INT_EQ(d->n_removed_resources, 0);
    /* web-1 drops its outbound: the "backend" cluster is removed by name. */
    struct km_resource *cur = NULL;
    ASSERT_INT_EQ(km_store_get(f.cp.store, km_registry_find("Dataplane"), "default", "web-1", &cur),
                  0);
    json_object_del(json_object_get(cur->spec, "networking"), "outbound");
    ASSERT_INT_EQ(km_store_update(f.cp.store, cur), 0);
    km_resource_free(cur);
    ASSERT(wait_responses(&cl, 2, 3000));
    d = (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)cl.last;
    ASSERT_INT_EQ(d->n_removed_resources, 1);
    ASSERT_STR_EQ(d->removed_resources[0], "backend");
    client_close(&cl);
    fixture_stop(&f);
}

KM_TEST(ads_dp_token_required_and_checked)
{
    struct fixture f;
    fixture_start(&f);
    free(f.cfg.dp_server.authn_dp_proxy_type);
    f.cfg.dp_server.authn_dp_proxy_type = km_xstrdup("dpToken");
    char err[256];
    ASSERT_INT_EQ(km_tokens_ensure_signing_key(f.cp.store, "default", err, sizeof(err)), 0);
    char *web = NULL, *other = NULL;
    json_t *tags = json_pack("{s:[s]}", "kuma.io/service", "web");
    ASSERT_INT_EQ(km_token_issue_dataplane(f.cp.store, "default", "web-1", tags, "dataplane", NULL,
                                           3600, &web, err, sizeof(err)),
                  0);
    ASSERT_INT_EQ(km_token_issue_dataplane(f.cp.store, "default", "backend-1", NULL, "dataplane",
                                           NULL, 3600, &other, err, sizeof(err)),
                  0);
    json_decref(tags);
    const struct {
        const char *token, *status_text;
    } refused[] = {
        {NULL, "no dataplane token"},
        {"not-a-jwt", "authentication failed"},
        {other, "authentication failed"}, /* a token of another Dataplane */
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(refused); i++) {
        struct client cl;
        client_open_auth(&cl, f.plain_port, false, refused[i].token);
        send_sotw(&cl, "default.web-1", T_CDS, NULL, NULL, NULL, NULL, 0);
        wait_responses(&cl, 1, 3000);
        ASSERT(cl.closed);
        ASSERT_INT_EQ(cl.status, KM_GRPC_UNAUTHENTICATED);
        ASSERT_STR_CONTAINS(cl.message, refused[i].status_text);
        client_close(&cl);
    }
    struct client cl;
    client_open_auth(&cl, f.plain_port, false, web);
    send_sotw(&cl, "default.web-1", T_CDS, NULL, NULL, NULL, NULL, 0);
    ASSERT(wait_responses(&cl, 1, 3000));
    ASSERT(!cl.closed);
    client_close(&cl);
    free(web);
    free(other);
    fixture_stop(&f);
}
