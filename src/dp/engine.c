/* The proxy engine: worker threads, config publication, readiness and the admin renderings
 * of the active config (see engine.h for the threading contract). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <km/common/util.h>
#include <km/dp/engine.h>
#include <km/dp/engine_int.h>
#include <km/dp/rbac.h>

/* ---- published configs ---- */

static char *
engine_listener_stat_name(const char *addr_str)
{
    char *s = km_xstrdup(addr_str ? addr_str : "");
    for (char *p = s; *p; p++)
        if (*p == ':')
            *p = '_';
    return s;
}

static struct km_dp_pub *
engine_pub_new(struct km_dp_engine *e, struct km_dp_snapshot *snap)
{
    struct km_dp_pub *p = km_xcalloc(1, sizeof(*p));
    atomic_init(&p->refs, 1);
    p->eng = e;
    p->snap = km_dp_snapshot_ref(snap);
    size_t nl = snap->nlisteners, nc = snap->nclusters;
    p->lst = km_xcalloc(nl ? nl : 1, sizeof(*p->lst));
    p->hst_off = km_xcalloc(nl + 1, sizeof(*p->hst_off));
    size_t nchains = 0;
    for (size_t i = 0; i < nl; i++) {
        const struct km_dp_listener *l = &snap->listeners[i];
        char *sn = engine_listener_stat_name(l->addr_str);
        p->lst[i] = km_dp_stats_ref(e->stats, KM_DP_STAT_LISTENER, sn, NULL);
        free(sn);
        p->hst_off[i] = nchains;
        nchains += l->nchains;
    }
    p->hst_off[nl] = nchains;
    p->hst = km_xcalloc(nchains ? nchains : 1, sizeof(*p->hst));
    p->rst = km_xcalloc(nchains ? nchains : 1, sizeof(*p->rst));
    p->hrst = km_xcalloc(nchains ? nchains : 1, sizeof(*p->hrst));
    for (size_t i = 0; i < nl; i++) {
        const struct km_dp_listener *l = &snap->listeners[i];
        for (size_t j = 0; j < l->nchains; j++) {
            const struct km_dp_chain *ch = &l->chains[j];
            if (ch->rbac)
                p->rst[p->hst_off[i] + j] =
                    km_dp_stats_ref(e->stats, KM_DP_STAT_RBAC, ch->rbac->stat_prefix,
                                    NULL);
            if (ch->http_rbac)
                p->hrst[p->hst_off[i] + j] =
                    km_dp_stats_ref(e->stats, KM_DP_STAT_RBAC, ch->http_rbac->stat_prefix,
                                    NULL);
            if (ch->kind != KM_DP_FILTER_HCM)
                continue;
            const char *prefix = ch->stat_prefix && *ch->stat_prefix ? ch->stat_prefix : l->name;
            p->hst[p->hst_off[i] + j] = km_dp_stats_ref(e->stats, KM_DP_STAT_HTTP, prefix, NULL);
        }
    }
    p->cst = km_xcalloc(nc ? nc : 1, sizeof(*p->cst));
    p->est = km_xcalloc(nc ? nc : 1, sizeof(*p->est));
    for (size_t i = 0; i < nc; i++) {
        const struct km_dp_cluster *c = &snap->clusters[i];
        p->cst[i] = km_dp_stats_ref(e->stats, KM_DP_STAT_CLUSTER, c->name, NULL);
        p->est[i] = km_xcalloc(c->neps ? c->neps : 1, sizeof(*p->est[i]));
        for (size_t j = 0; j < c->neps; j++)
            p->est[i][j] =
                km_dp_stats_ref(e->stats, KM_DP_STAT_ENDPOINT, c->name, c->eps[j].addr_str);
    }
    p->lbs = km_xcalloc((nc ? nc : 1) * e->nworkers, sizeof(*p->lbs));
    for (size_t i = 0; i < nc * e->nworkers; i++)
        km_dp_lb_state_init(&p->lbs[i], (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull);
    return p;
}

struct km_dp_pub *
km__dp_pub_ref(struct km_dp_pub *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void
km__dp_pub_unref(struct km_dp_pub *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    struct km_dp_stats *st = p->eng->stats;
    const struct km_dp_snapshot *s = p->snap;
    for (size_t i = 0; i < s->nlisteners; i++)
        km_dp_stats_unref(st, p->lst[i]);
    for (size_t i = 0; i < p->hst_off[s->nlisteners]; i++) {
        km_dp_stats_unref(st, p->hst[i]);
        km_dp_stats_unref(st, p->rst[i]);
        km_dp_stats_unref(st, p->hrst[i]);
    }
    for (size_t i = 0; i < s->nclusters; i++) {
        for (size_t j = 0; j < s->clusters[i].neps; j++)
            km_dp_stats_unref(st, p->est[i][j]);
        free(p->est[i]);
        km_dp_stats_unref(st, p->cst[i]);
    }
    free(p->lst);
    free(p->hst);
    free(p->rst);
    free(p->hrst);
    free(p->hst_off);
    free(p->cst);
    free(p->est);
    for (size_t i = 0; i < s->nclusters * p->eng->nworkers; i++)
        km_dp_lb_state_deinit(&p->lbs[i]);
    free(p->lbs);
    km_dp_snapshot_unref(p->snap);
    free(p);
}

/* ---- engine ---- */

struct km_dp_engine *
km_dp_engine_new(const struct km_dp_engine_opts *opts)
{
    size_t n = opts && opts->concurrency ? opts->concurrency : 0;
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (size_t)c : 1;
    }
    if (n > KM_DP_MAX_WORKERS)
        n = KM_DP_MAX_WORKERS;
    struct km_dp_engine *e = km_xcalloc(1, sizeof(*e));
    e->nworkers = n;
    e->stats = km_dp_stats_new(n);
    e->server = km_dp_stats_ref(e->stats, KM_DP_STAT_SERVER, "", NULL);
    e->workers = km_xcalloc(n, sizeof(*e->workers));
    for (size_t i = 0; i < n; i++) {
        struct km_dp_worker *w = &e->workers[i];
        w->eng = e;
        w->id = i;
        atomic_init(&w->applied_gen, 0);
        atomic_init(&w->bind_failures, 0);
        atomic_init(&w->active_cx, 0);
        w->loop = km_loop_new();
        w->scratch = malloc(KM_DP_IO_CHUNK);
        if (!w->loop || !w->scratch || km__dp_worker_start(w) != 0) {
            km_log_error("dp", "cannot start worker %zu", i);
            km_dp_engine_free(e);
            return NULL;
        }
    }
    return e;
}

void
km_dp_engine_publish(struct km_dp_engine *e, struct km_dp_snapshot *snap)
{
    if (e->draining || !snap)
        return;
    struct km_dp_pub *p = engine_pub_new(e, snap);
    if (e->ready_gen == 0 && snap->nlisteners > 0)
        e->ready_gen = snap->generation ? snap->generation : 1;
    for (size_t i = 0; i < e->nworkers; i++)
        km__dp_worker_apply(&e->workers[i], km__dp_pub_ref(p));
    km__dp_pub_unref(e->cur);
    e->cur = p;
}

uint64_t
km_dp_engine_applied_generation(struct km_dp_engine *e)
{
    uint64_t min = UINT64_MAX;
    for (size_t i = 0; i < e->nworkers; i++) {
        uint64_t g = atomic_load(&e->workers[i].applied_gen);
        if (g < min)
            min = g;
    }
    return e->nworkers ? min : 0;
}

const struct km_dp_snapshot *
km_dp_engine_snapshot(struct km_dp_engine *e)
{
    return e->cur ? e->cur->snap : NULL;
}

bool
km_dp_engine_is_ready(struct km_dp_engine *e)
{
    if (e->draining || e->ready_gen == 0)
        return false;
    for (size_t i = 0; i < e->nworkers; i++) {
        if (atomic_load(&e->workers[i].applied_gen) < e->ready_gen)
            return false;
        if (atomic_load(&e->workers[i].bind_failures) != 0)
            return false;
    }
    return true;
}

bool
km_dp_engine_is_draining(struct km_dp_engine *e)
{
    return e->draining;
}

void
km_dp_engine_drain(struct km_dp_engine *e)
{
    if (e->draining)
        return;
    e->draining = true;
    for (size_t i = 0; i < e->nworkers; i++)
        km__dp_worker_drain(&e->workers[i]);
}

int64_t
km_dp_engine_active_connections(struct km_dp_engine *e)
{
    int64_t sum = 0;
    for (size_t i = 0; i < e->nworkers; i++)
        sum += atomic_load(&e->workers[i].active_cx);
    return sum;
}

unsigned
km_dp_engine_concurrency(const struct km_dp_engine *e)
{
    return (unsigned)e->nworkers;
}

struct km_dp_stats *
km_dp_engine_stats(struct km_dp_engine *e)
{
    return e->stats;
}

void
km_dp_engine_free(struct km_dp_engine *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->nworkers; i++) {
        struct km_dp_worker *w = &e->workers[i];
        if (w->started) {
            km__dp_worker_quit(w);
            pthread_join(w->thread, NULL);
        }
        km_loop_free(w->loop);
        free(w->scratch);
    }
    km__dp_pub_unref(e->cur);
    km_dp_stats_unref(e->stats, e->server);
    km_dp_stats_free(e->stats);
    free(e->workers);
    free(e);
}

/* ---- /clusters ---- */

char *
km_dp_engine_clusters_text(struct km_dp_engine *e)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    if (!e->cur)
        return km_sbuf_take(&b);
    const struct km_dp_snapshot *s = e->cur->snap;
    for (size_t i = 0; i < s->nclusters; i++) {
        const struct km_dp_cluster *c = &s->clusters[i];
        const char *n = c->name;
        km_sbuf_printf(&b, "%s::observability_name::%s\n", n, n);
        static const char *const prios[] = {"default_priority", "high_priority"};
        for (size_t p = 0; p < 2; p++) {
            km_sbuf_printf(&b, "%s::%s::max_connections::%u\n", n, prios[p],
                           c->max_connections ? c->max_connections : 1024u);
            km_sbuf_printf(&b, "%s::%s::max_pending_requests::%u\n", n, prios[p],
                           c->max_pending_requests ? c->max_pending_requests : 1024u);
            km_sbuf_printf(&b, "%s::%s::max_requests::%u\n", n, prios[p],
                           c->max_requests ? c->max_requests : 1024u);
            km_sbuf_printf(&b, "%s::%s::max_retries::3\n", n, prios[p]);
        }
        km_sbuf_printf(&b, "%s::added_via_api::true\n", n);
        for (size_t j = 0; j < c->neps; j++) {
            const struct km_dp_endpoint *ep = &c->eps[j];
            const struct km_dp_stat_block *sb = e->cur->est[i][j];
            const char *a = ep->addr_str;
            for (size_t k = 0; k < KM_DP_ES_N; k++)
                km_sbuf_printf(&b, "%s::%s::%s::%lld\n", n, a,
                               km_dp_stat_name(KM_DP_STAT_ENDPOINT, k),
                               (long long)km_dp_stat_get(sb, k));
            km_sbuf_printf(&b, "%s::%s::hostname::\n", n, a);
            km_sbuf_printf(&b, "%s::%s::health_flags::%s\n", n, a,
                           ep->healthy ? "healthy" : "/failed_eds_health");
            km_sbuf_printf(&b, "%s::%s::weight::%u\n", n, a, ep->weight);
            km_sbuf_printf(&b, "%s::%s::region::\n", n, a);
            km_sbuf_printf(&b, "%s::%s::zone::%s\n", n, a, ep->zone ? ep->zone : "");
            km_sbuf_printf(&b, "%s::%s::sub_zone::\n", n, a);
            km_sbuf_printf(&b, "%s::%s::canary::false\n", n, a);
            km_sbuf_printf(&b, "%s::%s::priority::%u\n", n, a, ep->priority);
            km_sbuf_printf(&b, "%s::%s::success_rate::-1\n", n, a);
            km_sbuf_printf(&b, "%s::%s::local_origin_success_rate::-1\n", n, a);
        }
    }
    return km_sbuf_take(&b);
}

/* ---- /config_dump (engine view) ---- */

static const char *
engine_lb_name(enum km_dp_lb lb)
{
    switch (lb) {
    case KM_DP_LB_ROUND_ROBIN:
        return "ROUND_ROBIN";
    case KM_DP_LB_LEAST_REQUEST:
        return "LEAST_REQUEST";
    case KM_DP_LB_RANDOM:
        return "RANDOM";
    case KM_DP_LB_RING_HASH:
        return "RING_HASH";
    case KM_DP_LB_MAGLEV:
        return "MAGLEV";
    }
    return "UNKNOWN";
}

static json_t *
engine_json_str(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *
engine_json_weighted(const struct km_dp_weighted *w, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:o,s:I}", "name", engine_json_str(w[i].cluster),
                                           "weight", (json_int_t)w[i].weight));
    return a;
}

static json_t *
engine_json_rc(const struct km_dp_route_config *rc)
{
    static const char *const hk[] = {"exact", "prefix", "suffix", "contains", "present", "regex"};
    static const char *const pk[] = {"prefix", "path", "safe_regex"};
    json_t *vhs = json_array();
    for (size_t i = 0; i < rc->nvhosts; i++) {
        const struct km_dp_vhost *vh = &rc->vhosts[i];
        json_t *doms = json_array();
        for (size_t j = 0; j < vh->ndomains; j++)
            json_array_append_new(doms, engine_json_str(vh->domains[j]));
        json_t *routes = json_array();
        for (size_t j = 0; j < vh->nroutes; j++) {
            const struct km_dp_route *r = &vh->routes[j];
            json_t *hdrs = json_array();
            for (size_t k = 0; k < r->nheaders; k++) {
                const struct km_dp_header_match *h = &r->headers[k];
                json_array_append_new(
                    hdrs, json_pack("{s:o,s:s,s:o,s:b}", "name", engine_json_str(h->name), "match",
                                    (unsigned)h->kind < 6 ? hk[h->kind] : "unknown", "value",
                                    engine_json_str(h->value), "invert", h->invert));
            }
            json_t *match = json_object();
            json_object_set_new(match, (unsigned)r->match < 3 ? pk[r->match] : "unknown",
                                engine_json_str(r->path));
            json_object_set_new(match, "case_sensitive", json_boolean(r->case_sensitive));
            json_object_set_new(match, "headers", hdrs);
            json_t *jr = json_object();
            json_object_set_new(jr, "match", match);
            if (r->direct_status)
                json_object_set_new(jr, "direct_response_status", json_integer(r->direct_status));
            else
                json_object_set_new(jr, "clusters",
                                    engine_json_weighted(r->clusters, r->nclusters));
            json_object_set_new(jr, "timeout_ms", json_integer(r->timeout_ms));
            if (r->prefix_rewrite)
                json_object_set_new(jr, "prefix_rewrite", json_string(r->prefix_rewrite));
            if (r->host_rewrite)
                json_object_set_new(jr, "host_rewrite", json_string(r->host_rewrite));
            json_object_set_new(jr, "num_retries", json_integer(r->num_retries));
            json_array_append_new(routes, jr);
        }
        json_array_append_new(vhs, json_pack("{s:o,s:o,s:o}", "name", engine_json_str(vh->name),
                                             "domains", doms, "routes", routes));
    }
    return json_pack("{s:o,s:o}", "name", engine_json_str(rc->name), "virtual_hosts", vhs);
}

char *
km_dp_engine_config_json(struct km_dp_engine *e)
{
    json_t *root = json_object();
    const struct km_dp_snapshot *s = e->cur ? e->cur->snap : NULL;
    json_object_set_new(root, "generation", json_integer(s ? (json_int_t)s->generation : 0));
    json_t *ls = json_array(), *cs = json_array(), *rs = json_array();
    for (size_t i = 0; s && i < s->nlisteners; i++) {
        const struct km_dp_listener *l = &s->listeners[i];
        json_t *chains = json_array();
        for (size_t j = 0; j < l->nchains; j++) {
            const struct km_dp_chain *ch = &l->chains[j];
            json_t *jc = json_object();
            json_object_set_new(jc, "dest_port", json_integer(ch->dest_port));
            json_object_set_new(jc, "stat_prefix", engine_json_str(ch->stat_prefix));
            if (ch->kind == KM_DP_FILTER_TCP_PROXY) {
                json_object_set_new(jc, "filter", json_string("tcp_proxy"));
                json_object_set_new(jc, "clusters",
                                    engine_json_weighted(ch->clusters, ch->nclusters));
                json_object_set_new(jc, "idle_timeout_ms", json_integer(ch->idle_timeout_ms));
            } else {
                static const char *const codecs[] = {"AUTO", "HTTP1", "HTTP2"};
                json_object_set_new(jc, "filter", json_string("http_connection_manager"));
                json_object_set_new(jc, "codec",
                                    json_string((unsigned)ch->codec < 3 ? codecs[ch->codec] : "?"));
                if (ch->rds_name)
                    json_object_set_new(jc, "rds_route_config_name", json_string(ch->rds_name));
                if (ch->inline_rc)
                    json_object_set_new(jc, "route_config", engine_json_rc(ch->inline_rc));
                json_object_set_new(jc, "request_timeout_ms",
                                    json_integer(ch->request_timeout_ms));
                json_object_set_new(jc, "stream_idle_timeout_ms",
                                    json_integer(ch->stream_idle_timeout_ms));
            }
            json_array_append_new(chains, jc);
        }
        json_array_append_new(ls, json_pack("{s:o,s:o,s:b,s:o}", "name", engine_json_str(l->name),
                                            "address", engine_json_str(l->addr_str), "inbound",
                                            l->inbound, "filter_chains", chains));
    }
    for (size_t i = 0; s && i < s->nclusters; i++) {
        const struct km_dp_cluster *c = &s->clusters[i];
        json_t *eps = json_array();
        for (size_t j = 0; j < c->neps; j++) {
            const struct km_dp_endpoint *ep = &c->eps[j];
            json_array_append_new(eps, json_pack("{s:o,s:I,s:b,s:I,s:o}", "address",
                                                 engine_json_str(ep->addr_str), "weight",
                                                 (json_int_t)ep->weight, "healthy", ep->healthy,
                                                 "priority", (json_int_t)ep->priority, "zone",
                                                 engine_json_str(ep->zone)));
        }
        json_t *jc = json_pack("{s:o,s:s,s:I,s:b,s:o}", "name", engine_json_str(c->name), "lb",
                               engine_lb_name(c->lb), "connect_timeout_ms",
                               (json_int_t)c->connect_timeout_ms, "http2", c->http2, "endpoints",
                               eps);
        if (c->eds)
            json_object_set_new(jc, "eds_service_name", engine_json_str(c->eds_name));
        json_array_append_new(cs, jc);
    }
    for (size_t i = 0; s && i < s->nroutes; i++)
        json_array_append_new(rs, engine_json_rc(&s->routes[i]));
    json_object_set_new(root, "listeners", ls);
    json_object_set_new(root, "clusters", cs);
    json_object_set_new(root, "routes", rs);
    char *out = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return out ? out : km_xstrdup("{}");
}
