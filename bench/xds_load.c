/* xds-load: N simulated Envoy-style proxies on one kuma-cp, for the xDS benchmark.
 *
 * Each client opens its own connection and a state-of-the-world ADS stream as node
 * "<mesh>.<prefix><i>", subscribes to LDS and CDS (wildcard), then to EDS for every EDS
 * cluster it receives, and ACKs every response, like Envoy. Phases:
 *   1. storm: all N connect at once; reports when all have a full config (LDS + CDS + EDS)
 *      and the CP's RSS before and after (--cp-pid);
 *   2. change: runs --change-cmd (for example a curl that adds an endpoint), then reports
 *      for how many clients and how fast a new EDS response arrived.
 * Everything on one event loop; bounded by --timeout seconds. Loopback only. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <km/common/grpc.h>
#include <km/common/loop.h>
#include <km/common/util.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"

#define ADS "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define T_LDS "type.googleapis.com/envoy.config.listener.v3.Listener"
#define T_CDS "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#define T_EDS "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

struct client {
    int idx;
    struct km_grpc_client *conn;
    struct km_grpc_call *call;
    bool node_sent;
    bool got_lds, got_cds, got_eds, eds_needed;
    bool configured;
    double configured_at;
    double changed_at; /* first EDS after the change mark, 0 = none */
    unsigned eds_count;
    char **eds_names; /* owned: the EDS subscription, repeated in every EDS ACK */
    size_t neds;
};

static struct km_loop *loop;
static struct client *clients;
static int nclients, nconfigured, nclosed;
static const char *mesh = "default", *prefix = "dp-", *host = "127.0.0.1";
static int port;
static double t_start, t_mark;
static bool marked;

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long
rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

static void
send_req(struct client *c, const char *type, const char *version, const char *nonce,
         char **names, size_t nnames)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest r =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    char id[128];
    if (!c->node_sent) {
        snprintf(id, sizeof(id), "%s.%s%d", mesh, prefix, c->idx);
        node.id = id;
        r.node = &node;
        c->node_sent = true;
    }
    r.type_url = (char *)type;
    r.version_info = (char *)(version ? version : "");
    r.response_nonce = (char *)(nonce ? nonce : "");
    r.n_resource_names = nnames;
    r.resource_names = names;
    size_t n = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *buf = km_xmalloc(n);
    protobuf_c_message_pack(&r.base, buf);
    km_grpc_call_send(c->call, buf, n);
    free(buf);
}

static void
check_configured(struct client *c)
{
    if (c->configured || !c->got_lds || !c->got_cds || (c->eds_needed && !c->got_eds))
        return;
    c->configured = true;
    c->configured_at = now_s();
    nconfigured++;
}

static void
on_msg(struct km_grpc_call *call, const uint8_t *msg, size_t len, void *ud)
{
    struct client *c = ud;
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        envoy__service__discovery__v3__discovery_response__unpack(NULL, len, msg);
    if (!r)
        return;
    if (strcmp(r->type_url, T_CDS) == 0) {
        c->got_cds = true;
        char **names = km_xcalloc(r->n_resources + 1, sizeof(char *));
        size_t n = 0;
        for (size_t i = 0; i < r->n_resources; i++) {
            Envoy__Config__Cluster__V3__Cluster *cl = envoy__config__cluster__v3__cluster__unpack(
                NULL, r->resources[i]->value.len, r->resources[i]->value.data);
            if (cl && cl->eds_cluster_config)
                names[n++] = km_xstrdup(cl->name);
            if (cl)
                envoy__config__cluster__v3__cluster__free_unpacked(cl, NULL);
        }
        send_req(c, T_CDS, r->version_info, r->nonce, NULL, 0);
        c->eds_needed = n > 0;
        if (n)
            send_req(c, T_EDS, "", "", names, n);
        for (size_t i = 0; i < c->neds; i++)
            free(c->eds_names[i]);
        free(c->eds_names);
        c->eds_names = names;
        c->neds = n;
    } else if (strcmp(r->type_url, T_LDS) == 0) {
        c->got_lds = true;
        send_req(c, T_LDS, r->version_info, r->nonce, NULL, 0);
    } else if (strcmp(r->type_url, T_EDS) == 0) {
        c->got_eds = true;
        c->eds_count++;
        if (marked && c->changed_at == 0)
            c->changed_at = now_s();
        send_req(c, T_EDS, r->version_info, r->nonce, c->eds_names, c->neds);
    }
    check_configured(c);
    envoy__service__discovery__v3__discovery_response__free_unpacked(r, NULL);
}

static void
on_close(struct km_grpc_call *call, int status, const char *message, void *ud)
{
    struct client *c = ud;
    c->call = NULL;
    nclosed++;
    if (nclosed <= 5)
        fprintf(stderr, "client %d: stream closed: %d %s\n", c->idx, status,
                message ? message : "");
}

static const struct km_grpc_call_cbs cbs = {on_msg, on_close, NULL};

static void
start_client(struct client *c)
{
    c->conn = km_grpc_client_new(loop, host, port, false, NULL);
    struct km_grpc_call_cbs cb = cbs;
    cb.ud = c;
    c->call = km_grpc_call_start(c->conn, ADS, NULL, &cb);
    send_req(c, T_CDS, "", "", NULL, 0);
    send_req(c, T_LDS, "", "", NULL, 0);
}

static double timeout_s = 120;
static int phase; /* 0 storm, 1 change */
static const char *change_cmd;
static int cp_pid;
static long rss_before;

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double
pct(double *v, int n, double p)
{
    if (n == 0)
        return NAN;
    int i = (int)ceil(p / 100.0 * n) - 1;
    return v[i < 0 ? 0 : i];
}

static void
tick(struct km_timer *t, void *arg)
{
    double now = now_s();
    if (phase == 0 && (nconfigured == nclients || now - t_start > timeout_s)) {
        double *v = km_xcalloc((size_t)nclients + 1, sizeof(double));
        int n = 0;
        for (int i = 0; i < nclients; i++)
            if (clients[i].configured)
                v[n++] = clients[i].configured_at - t_start;
        qsort(v, (size_t)n, sizeof(double), cmp_double);
        long rss_after = cp_pid ? rss_kb(cp_pid) : -1;
        printf("storm: clients=%d configured=%d all_configured_s=%.3f p50_s=%.3f p99_s=%.3f\n",
               nclients, n, n ? v[n - 1] : NAN, pct(v, n, 50), pct(v, n, 99));
        if (cp_pid)
            printf("cp_rss: before_kb=%ld after_kb=%ld per_proxy_kb=%.1f\n", rss_before,
                   rss_after, (double)(rss_after - rss_before) / (nclients ? nclients : 1));
        free(v);
        fflush(stdout);
        if (!change_cmd) {
            km_loop_stop(loop);
            return;
        }
        phase = 1;
        marked = true;
        t_mark = now_s();
        if (system(change_cmd) != 0)
            fprintf(stderr, "change command failed: %s\n", change_cmd);
    } else if (phase == 1 && now - t_mark > 5) {
        double *v = km_xcalloc((size_t)nclients + 1, sizeof(double));
        int n = 0;
        for (int i = 0; i < nclients; i++)
            if (clients[i].changed_at > 0)
                v[n++] = clients[i].changed_at - t_mark;
        qsort(v, (size_t)n, sizeof(double), cmp_double);
        printf("change: clients_updated=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n", n,
               pct(v, n, 50) * 1000, pct(v, n, 99) * 1000, n ? v[n - 1] * 1000 : NAN);
        free(v);
        fflush(stdout);
        km_loop_stop(loop);
        return;
    }
    km_timer_arm(t, 50);
}

int
main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--clients") == 0)
            nclients = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--port") == 0)
            port = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--mesh") == 0)
            mesh = argv[i + 1];
        else if (strcmp(argv[i], "--prefix") == 0)
            prefix = argv[i + 1];
        else if (strcmp(argv[i], "--cp-pid") == 0)
            cp_pid = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--change-cmd") == 0)
            change_cmd = argv[i + 1];
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = strtod(argv[i + 1], NULL);
    }
    if (nclients <= 0 || port <= 0) {
        fprintf(stderr, "usage: xds-load --port P --clients N [--mesh M] [--prefix dp-] "
                        "[--cp-pid PID] [--change-cmd CMD] [--timeout S]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    loop = km_loop_new();
    clients = km_xcalloc((size_t)nclients, sizeof(*clients));
    if (cp_pid)
        rss_before = rss_kb(cp_pid);
    t_start = now_s();
    for (int i = 0; i < nclients; i++) {
        clients[i].idx = i;
        start_client(&clients[i]);
    }
    struct km_timer *t = km_timer_new(loop, 50, tick, NULL);
    km_loop_run(loop);
    km_timer_free(t);
    printf("closed_streams=%d\n", nclosed);
    for (int i = 0; i < nclients; i++) {
        km_grpc_client_free(clients[i].conn);
        for (size_t k = 0; k < clients[i].neds; k++)
            free(clients[i].eds_names[k]);
        free(clients[i].eds_names);
    }
    free(clients);
    km_loop_free(loop);
    return 0;
}
