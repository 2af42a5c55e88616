/* Internals of the proxy engine shared by src/dp/{engine,worker,listener,tcp_proxy,upstream,
 * admin}.c. Not an API: only those files include it. */
#ifndef KM_DP_ENGINE_INT_H
#define KM_DP_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/loop.h>
#include <km/dp/engine.h>
#include <km/dp/lb.h>
#include <km/dp/snapshot.h>
#include <km/dp/stats.h>

#define KM_DP_MAX_WORKERS 64
#define KM_DP_IO_CHUNK    (64u * 1024u) /* bytes in flight per direction of a TCP proxy pair */

/* A published config: the snapshot plus the stat blocks and per-worker LB state that go with
 * it. Shared by the workers and every connection accepted under it (atomic refcount); freed by
 * whichever thread drops the last reference. */
struct km_dp_pub {
    atomic_uint refs;
    struct km_dp_engine *eng;          /* borrowed */
    struct km_dp_snapshot *snap;       /* ref */
    struct km_dp_stat_block **lst;     /* owned array of refs, one per snapshot listener */
    struct km_dp_stat_block **cst;     /* owned array of refs, one per snapshot cluster */
    struct km_dp_stat_block ***est;    /* owned [cluster][endpoint] refs */
    struct km_dp_stat_block **hst;     /* owned [listener * max chains] HCM blocks, or NULL */
    size_t *hst_off;                   /* owned: first hst index of each listener */
    struct km_dp_stat_block **rst;     /* owned [listener * max chains] RBAC blocks (indexed
                                          like hst), NULL entries for chains without RBAC */
    struct km_dp_stat_block **hrst;    /* owned, like rst for the HTTP RBAC filters */
    struct km_dp_lb_state *lbs;        /* owned [cluster * nworkers]: row w is worker w's */
};

struct km_dp_pub *km__dp_pub_ref(struct km_dp_pub *p);
void km__dp_pub_unref(struct km_dp_pub *p);

struct km_dp_worker;
struct km_dp_uconn;
struct km_dp_h2up;

/* A listening socket of one worker. */
struct km_dp_wlistener {
    struct km_dp_worker *w;      /* borrowed */
    char *name;                  /* owned copy (the snapshot may go away first) */
    char *addr_str;              /* owned copy */
    size_t idx;                  /* index in the worker's current snapshot */
    int fd;
    struct km_io *io;            /* owned */
    struct km_timer *pause;      /* owned: accept paused after EMFILE, or NULL */
    struct km_dp_wlistener *next;
};

/* The verified TLS peer of a downstream connection (tls.c), for the HTTP RBAC filter. */
struct km_dp_peer {
    bool authenticated;             /* a certificate the mesh CA verified */
    char **uri_sans;                /* owned strings */
    size_t nsans;
};
void km__dp_peer_free(struct km_dp_peer *p);

/* A downstream connection of any filter kind, in its worker's list. */
struct km_dp_conn {
    struct km_dp_worker *w;         /* borrowed */
    struct km_dp_pub *pub;          /* ref: the config this connection was accepted with */
    const struct km_dp_listener *l; /* borrowed (from pub) */
    const struct km_dp_chain *chain; /* borrowed (from pub) */
    struct km_dp_stat_block *lst;   /* borrowed (from pub) */
    struct km_dp_peer *peer;        /* owned: the TLS peer (HTTP connections), or NULL */
    void (*close)(struct km_dp_conn *c); /* tears the connection down and frees it */
    /* Optional: the listener is gone or the worker drains; close now if idle, else finish
     * the current exchange and close (HTTP keep-alive). May free the connection. */
    void (*drain)(struct km_dp_conn *c);
    struct km_dp_conn *prev, *next;
};

struct km_dp_worker {
    struct km_dp_engine *eng;        /* borrowed */
    size_t id;
    pthread_t thread;
    bool started;
    struct km_loop *loop;            /* owned */
    struct km_dp_pub *pub;           /* ref: the current config, NULL before the first */
    struct km_dp_wlistener *listeners; /* owned list */
    struct km_dp_conn *conns;        /* live connections (each owns itself) */
    bool draining;
    atomic_uint_least64_t applied_gen;
    atomic_uint bind_failures;       /* listeners of the current config that failed to bind */
    atomic_int_least64_t active_cx;  /* downstream connections open (this worker writes) */
    uint64_t seq;                    /* per-connection seed for weighted picks */
    uint8_t *scratch;                /* owned KM_DP_IO_CHUNK bytes */
    struct km_dp_uconn *idle;        /* owned: idle upstream HTTP connections (the pool) */
    struct km_dp_h2up *h2up;         /* owned: upstream HTTP/2 connections (http2_proxy.c) */
    struct km_dp_tls_pipe *tls_pipes; /* owned: TLS handshakes and relays (tls.c) */
    size_t nidle;
};

struct km_dp_engine {
    size_t nworkers;
    struct km_dp_worker *workers;    /* owned array */
    struct km_dp_stats *stats;       /* owned */
    struct km_dp_stat_block *server; /* ref */
    struct km_dp_pub *cur;           /* ref: last published (main thread) */
    uint64_t ready_gen;              /* first published generation with listeners, 0 = none */
    bool draining;
};

/* worker.c */
int km__dp_worker_start(struct km_dp_worker *w);
void km__dp_worker_apply(struct km_dp_worker *w, struct km_dp_pub *pub); /* takes the ref */
void km__dp_worker_drain(struct km_dp_worker *w);
void km__dp_worker_quit(struct km_dp_worker *w);
void km__dp_conn_link(struct km_dp_worker *w, struct km_dp_conn *c);
void km__dp_conn_unlink(struct km_dp_conn *c);
/* <c> takes <old>'s place in its worker's list (a protocol hand-off: no stats change); <old>
 * is no longer listed and c->w is set. */
void km__dp_conn_replace(struct km_dp_conn *old, struct km_dp_conn *c);

/* listener.c */
struct km_dp_wlistener *km__dp_listener_open(struct km_dp_worker *w, const struct km_dp_listener *l,
                                             size_t idx);
void km__dp_listener_close(struct km_dp_wlistener *wl);
/* The chain for a connection to <local> (destination port match, exact beats any); NULL when
 * none matches. */
const struct km_dp_chain *km__dp_chain_select(const struct km_dp_listener *l,
                                              const struct sockaddr_storage *local);

/* tcp_proxy.c: takes ownership of <fd>; always consumes it (closes on failure). */
void km__dp_tcp_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                       const struct km_dp_chain *chain, int fd);
/* The same for a TLS connection whose handshake tls.c did: the proxy reads and writes through
 * <ssl> (an SSL *, taken) on <fd> itself. */
void km__dp_tcp_accept_tls(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                           const struct km_dp_chain *chain, int fd, void *ssl);
/* http_proxy.c: the HTTP connection manager, takes ownership of <fd>. */
void km__dp_http_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                        const struct km_dp_chain *chain, int fd);
/* The same for a connection relayed from TLS (tls.c): takes <peer> (may be NULL). */
void km__dp_http_accept_peer(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                             const struct km_dp_chain *chain, int fd, struct km_dp_peer *peer);
/* The same, reading and writing through <ssl> (an SSL *, taken, handshake done) on <fd>. */
void km__dp_http_accept_tls(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                            const struct km_dp_chain *chain, int fd, void *ssl,
                            struct km_dp_peer *peer);
/* The HTTP RBAC filter of <chain> (listener <lidx> of <pub>) for one request of a connection
 * whose TLS peer is <peer> (NULL: plaintext, no identity): counts
 * "http.<prefix>.rbac.allowed/denied" (and shadow_*) and returns whether the request may go
 * on. Chains without the filter allow everything (nothing counted). */
bool km__dp_http_rbac_allow(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                            const struct km_dp_chain *chain, const struct km_dp_peer *peer);
/* Closes the worker's idle upstream connections (worker quit). */
void km__dp_http_worker_deinit(struct km_dp_worker *w);

/* http2_proxy.c: HTTP/2 (h2c prior knowledge) in the HTTP connection manager. */
/* 1 when p[0..n) starts with the HTTP/2 client preface, 0 when it is a proper prefix of it
 * (wait for more), -1 when it is not HTTP/2. */
int km__dp_h2_preface(const uint8_t *p, size_t n);
/* Runs the downstream connection <old> (an HTTP/1 connection manager that has not served a
 * request) as HTTP/2 from here: takes <fd>, the bytes already read (copied) and <old>'s place
 * in the worker's list (a new reference on old->pub). The caller then frees <old> without
 * closing <fd> or unlinking it. */
void km__dp_h2_takeover(struct km_dp_conn *old, int fd, const struct sockaddr_storage *local,
                        const uint8_t *data, size_t len);
/* Closes the worker's upstream HTTP/2 connections (worker quit, after its connections). */
void km__dp_h2_worker_deinit(struct km_dp_worker *w);

/* HTTP/1.1 downstream requests to an HTTP/2 cluster (protocol translation): one exchange on
 * the worker's upstream HTTP/2 connections. Every call comes from the HTTP/1 connection's own
 * events; the exchange calls <wake>(<arg>) (never freeing anything) when there is something
 * new to look at, and the connection looks from a later event. */
struct km_dp_h2x;
struct km_http1_header;
/* Sends the request to cluster <ci> of <pub>: <method>, <path> (rewritten) and <authority>
 * become the pseudo-headers, fields are lowercased, hop-by-hop ones dropped. <body>: a
 * request body follows (km__dp_h2x_send). Errors come back as local responses (503). */
struct km_dp_h2x *km__dp_h2x_start(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci,
                                   const char *method, size_t mlen, const char *path,
                                   size_t plen, const char *authority,
                                   const struct km_http1_header *h, size_t nh, bool body,
                                   void (*wake)(void *arg), void *arg);
/* Request body bytes the exchange takes before it wants a pause (soft limit). */
size_t km__dp_h2x_room(const struct km_dp_h2x *hx);
/* Request body bytes; <end>: the body is complete. */
void km__dp_h2x_send(struct km_dp_h2x *hx, const void *data, size_t len, bool end);
/* The response head, once: its status (0: not there yet) with its fields as HTTP/1.1 lines
 * ("name: value\r\n", hop-by-hop fields dropped) in buf[0..*hl) (*hl -1: they do not fit in
 * <cap>), *clen its content-length or -1. */
int km__dp_h2x_head(struct km_dp_h2x *hx, char *buf, size_t cap, long *hl, int64_t *clen);
/* Takes up to <cap> response body bytes (after the head). */
size_t km__dp_h2x_read(struct km_dp_h2x *hx, uint8_t *buf, size_t cap);
/* 1: the response was read completely, -1: it was cut short, 0: more to come. */
int km__dp_h2x_state(const struct km_dp_h2x *hx);
/* The HTTP/1 connection is done with the exchange (cancels it upstream when unfinished). */
void km__dp_h2x_free(struct km_dp_h2x *hx);

/* upstream.c */
/* Index of the cluster named <name> in <s>, or -1. */
long km__dp_cluster_index(const struct km_dp_snapshot *s, const char *name);
/* Picks a cluster of a weighted list with a per-call random-ish <seed>; -1 when none exists. */
long km__dp_weighted_pick(const struct km_dp_snapshot *s, const struct km_dp_weighted *wc,
                          size_t n, uint32_t total_weight, uint64_t seed);
/* Picks an endpoint of cluster <ci> for worker <w> with the cluster's load balancer (lb.h),
 * avoiding <exclude> (-1 = none), and counts it active (least request). Returns the endpoint
 * index or -1 when there is none (other than <exclude>). */
long km__dp_endpoint_pick(struct km_dp_pub *pub, size_t w, size_t ci, long exclude);
/* The connection or request sent to endpoint <ei> by km__dp_endpoint_pick is over. */
void km__dp_endpoint_done(struct km_dp_pub *pub, size_t w, size_t ci, long ei);
/* Starts a non-blocking connect; returns the fd (connect in progress or done) or -errno. */
int km__dp_connect(const struct km_dp_endpoint *ep);
/* Connects to endpoint <ei> of cluster <ci>: km__dp_connect, or for a cluster with a TLS
 * transport socket the plaintext end of a TLS pipe (tls.h). Returns the fd or -errno. */
int km__dp_connect_cluster(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei);

#endif
