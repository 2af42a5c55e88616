/* Diagnostics server (port 5680): /ready, /healthy and Prometheus /metrics. */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/cp/cp.h>
#include <km/cp/dp_server.h>

static const char *const op_names[KM_STORE_OP_COUNT_] = {"create", "update", "delete", "get",
                                                         "list"};
static const char *const ev_names[3] = {"create", "update", "delete"};

static char *
render_metrics(struct km_cp *cp)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    struct km_store_stats *st = &cp->store->stats;
    km_sbuf_puts(&b, "# HELP kuma_store_operations_total Store operations by kind.\n"
                     "# TYPE kuma_store_operations_total counter\n");
    for (int i = 0; i < KM_STORE_OP_COUNT_; i++)
        km_sbuf_printf(&b, "kuma_store_operations_total{operation=\"%s\",store=\"%s\"} %llu\n",
                       op_names[i], cp->store->ops->name,
                       (unsigned long long)atomic_load(&st->ops[i]));
    km_sbuf_puts(&b, "# HELP kuma_store_errors_total Failed store operations by kind.\n"
                     "# TYPE kuma_store_errors_total counter\n");
    for (int i = 0; i < KM_STORE_OP_COUNT_; i++)
        km_sbuf_printf(&b, "kuma_store_errors_total{operation=\"%s\",store=\"%s\"} %llu\n",
                       op_names[i], cp->store->ops->name,
                       (unsigned long long)atomic_load(&st->errors[i]));
    km_sbuf_puts(&b, "# HELP kuma_store_events_total Change events received from the store "
                     "(including other instances on the same database).\n"
                     "# TYPE kuma_store_events_total counter\n");
    for (int i = 0; i < 3; i++)
        km_sbuf_printf(&b, "kuma_store_events_total{kind=\"%s\"} %llu\n", ev_names[i],
                       (unsigned long long)atomic_load(&cp->events[i]));
    km_sbuf_puts(&b, "# HELP kuma_resources Number of stored resources by type.\n"
                     "# TYPE kuma_resources gauge\n");
    for (size_t i = 0; i < km_registry_count(); i++) {
        const struct km_rtype *t = km_registry_at(i);
        int64_t n = 0;
        if (cp->store->ops->count(cp->store, t, &n) == 0)
            km_sbuf_printf(&b, "kuma_resources{type=\"%s\"} %lld\n", t->name, (long long)n);
    }
    km_sbuf_puts(&b, "# HELP kuma_api_requests_total API server answers by status class.\n"
                     "# TYPE kuma_api_requests_total counter\n");
    for (int i = 1; i < 6; i++)
        km_sbuf_printf(&b, "kuma_api_requests_total{code=\"%dxx\"} %llu\n", i,
                       (unsigned long long)atomic_load(&cp->api_requests[i]));
    km_sbuf_printf(&b, "# HELP kuma_xds_streams Connected ADS streams.\n"
                       "# TYPE kuma_xds_streams gauge\nkuma_xds_streams %zu\n",
                   km_dp_server_streams(cp->dp));
    km_sbuf_printf(&b, "# HELP process_start_time_seconds Start time of the process.\n"
                       "# TYPE process_start_time_seconds gauge\n"
                       "process_start_time_seconds %lld\n",
                   (long long)(cp->start_us / 1000000));
    return km_sbuf_take(&b);
}

static enum MHD_Result
reply(struct MHD_Connection *conn, unsigned status, char *text, const char *ctype)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result
diag_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
             const char *version, const char *upload_data, size_t *upload_data_size,
             void **con_cls)
{
    struct km_cp *cp = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, 405, km_xstrdup("method not allowed\n"), "text/plain");
    if (strcmp(url, "/healthy") == 0)
        return reply(conn, 200, km_xstrdup(""), "text/plain");
    if (strcmp(url, "/ready") == 0) {
        if (!atomic_load(&cp->api_listening))
            return reply(conn, 503, km_xstrdup("API server is not listening yet\n"),
                         "text/plain");
        int rc = cp->store->ops->ping(cp->store);
        if (rc)
            return reply(conn, 503, km_xasprintf("store not reachable: %s\n", km_strerror(rc)),
                         "text/plain");
        return reply(conn, 200, km_xstrdup(""), "text/plain");
    }
    if (strcmp(url, "/metrics") == 0)
        return reply(conn, 200, render_metrics(cp), "text/plain; version=0.0.4");
    return reply(conn, 404, km_xstrdup("not found\n"), "text/plain");
}

int
km_diag_start(struct km_cp *cp, char *err, size_t errlen)
{
    cp->diag = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                                    MHD_USE_ERROR_LOG,
                                0, NULL, NULL, diag_handler, cp, MHD_OPTION_LISTEN_SOCKET,
                                cp->diag_fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!cp->diag) {
        snprintf(err, errlen, "cannot start the diagnostics server");
        return -1;
    }
    cp->diag_fd = -1;
    return 0;
}

void
km_diag_stop(struct km_cp *cp)
{
    if (cp->diag) {
        MHD_stop_daemon(cp->diag);
        cp->diag = NULL;
    }
}
