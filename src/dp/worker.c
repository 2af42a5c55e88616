/* A worker thread: its loop, its listening sockets, its connections, and the messages the main
 * thread posts to it (apply a config, drain, quit). Everything here except the three
 * km__dp_worker_{apply,drain,quit} entry points runs on the worker's own thread. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/tls.h>

static void *
worker_main(void *arg)
{
    struct km_dp_worker *w = arg;
    /* OpenSSL writes to TLS sockets with write(): a peer gone must be EPIPE, not a signal */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    km_loop_run(w->loop);
    return NULL;
}

int
km__dp_worker_start(struct km_dp_worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    w->started = true;
    return 0;
}

void
km__dp_conn_link(struct km_dp_worker *w, struct km_dp_conn *c)
{
    c->w = w;
    c->prev = NULL;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    km_dp_stat_inc(c->lst, w->id, KM_DP_LS_CX_TOTAL);
    km_dp_stat_inc(c->lst, w->id, KM_DP_LS_CX_ACTIVE);
    atomic_store_explicit(&w->active_cx,
                          atomic_load_explicit(&w->active_cx, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void
km__dp_conn_unlink(struct km_dp_conn *c)
{
    struct km_dp_worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    km_dp_stat_add(c->lst, w->id, KM_DP_LS_CX_ACTIVE, -1);
    km_dp_stat_inc(c->lst, w->id, KM_DP_LS_CX_DESTROY);
    atomic_store_explicit(&w->active_cx,
                          atomic_load_explicit(&w->active_cx, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

void
km__dp_conn_replace(struct km_dp_conn *old, struct km_dp_conn *c)
{
    c->w = old->w;
    c->prev = old->prev;
    c->next = old->next;
    if (c->prev)
        c->prev->next = c;
    else
        c->w->conns = c;
    if (c->next)
        c->next->prev = c;
    old->prev = old->next = NULL;
}

/* Asks the connections whose listener is gone from <s> (all when <s> is NULL) to drain. */
static void
worker_drain_conns(struct km_dp_worker *w, const struct km_dp_snapshot *s)
{
    struct km_dp_conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (!c->drain)
            continue;
        bool gone = true;
        for (size_t i = 0; s && i < s->nlisteners && gone; i++) {
            const struct km_dp_listener *l = &s->listeners[i];
            if (strcmp(l->name ? l->name : "", c->l->name ? c->l->name : "") == 0 &&
                strcmp(l->addr_str ? l->addr_str : "", c->l->addr_str ? c->l->addr_str : "") == 0)
                gone = false;
        }
        if (gone)
            c->drain(c);
    }
}

static void
worker_close_listeners(struct km_dp_worker *w)
{
    while (w->listeners) {
        struct km_dp_wlistener *wl = w->listeners;
        w->listeners = wl->next;
        km__dp_listener_close(wl);
    }
}

/* ---- apply a new config (posted) ---- */

struct worker_msg {
    struct km_dp_worker *w;
    struct km_dp_pub *pub; /* ref, for apply */
};

static void
worker_on_apply(void *arg)
{
    struct worker_msg *m = arg;
    struct km_dp_worker *w = m->w;
    struct km_dp_pub *pub = m->pub;
    free(m);
    struct km_dp_pub *old = w->pub;
    w->pub = pub;
    const struct km_dp_snapshot *s = pub->snap;
    unsigned failures = 0;
    if (!w->draining) {
        /* Diff by name + address: matched sockets move to the new list (kept open), new
         * listeners are bound before the removed ones close. */
        struct km_dp_wlistener *keep = NULL, **tail = &keep;
        for (size_t i = 0; i < s->nlisteners; i++) {
            const struct km_dp_listener *l = &s->listeners[i];
            struct km_dp_wlistener **pp = &w->listeners, *wl = NULL;
            for (; *pp; pp = &(*pp)->next) {
                if (strcmp((*pp)->name, l->name ? l->name : "") == 0 &&
                    strcmp((*pp)->addr_str, l->addr_str ? l->addr_str : "") == 0) {
                    wl = *pp;
                    *pp = wl->next;
                    break;
                }
            }
            if (wl) {
                wl->idx = i;
            } else {
                wl = km__dp_listener_open(w, l, i);
                if (!wl) {
                    failures++;
                    continue;
                }
            }
            wl->next = NULL;
            *tail = wl;
            tail = &wl->next;
        }
        worker_close_listeners(w); /* the ones no longer configured */
        w->listeners = keep;
    }
    worker_drain_conns(w, w->draining ? NULL : s);
    km_dp_stat_inc(w->eng->server, w->id, KM_DP_SV_SNAPSHOTS_APPLIED);
    atomic_store(&w->bind_failures, failures);
    atomic_store(&w->applied_gen, s->generation);
    km__dp_pub_unref(old);
}

void
km__dp_worker_apply(struct km_dp_worker *w, struct km_dp_pub *pub)
{
    struct worker_msg *m = km_xcalloc(1, sizeof(*m));
    m->w = w;
    m->pub = pub;
    km_loop_post(w->loop, worker_on_apply, m);
}

/* ---- drain and quit (posted) ---- */

static void
worker_on_drain(void *arg)
{
    struct km_dp_worker *w = arg;
    w->draining = true;
    worker_close_listeners(w);
    worker_drain_conns(w, NULL);
}

void
km__dp_worker_drain(struct km_dp_worker *w)
{
    km_loop_post(w->loop, worker_on_drain, w);
}

static void
worker_on_quit(void *arg)
{
    struct km_dp_worker *w = arg;
    w->draining = true;
    worker_close_listeners(w);
    while (w->conns)
        w->conns->close(w->conns);
    km__dp_http_worker_deinit(w);
    km__dp_h2_worker_deinit(w);
    km__dp_tls_worker_deinit(w);
    km__dp_pub_unref(w->pub);
    w->pub = NULL;
    km_loop_stop(w->loop);
}

void
km__dp_worker_quit(struct km_dp_worker *w)
{
    km_loop_post(w->loop, worker_on_quit, w);
}
