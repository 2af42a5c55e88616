/* kuma-dp's proxy engine: N worker threads, each with its own event loop, SO_REUSEPORT
 * listeners and the connections accepted on them; the main thread (xDS agent, admin) publishes
 * configuration snapshots to them.
 *
 * Threads. Everything in this API is called from the main thread only. The workers never
 * block; what crosses threads is: km_loop_post messages (main -> worker: a new snapshot, drain,
 * quit), atomic reference counts (snapshots, the engine's published config), relaxed-atomic
 * per-worker counters (stats.h) and one atomic "applied generation" per worker (readiness).
 *
 * Snapshots. km_dp_engine_publish takes its own reference on the snapshot; each worker swaps
 * it in between events and diffs its listeners against the previous one by name + address:
 * kept listeners keep their sockets (no connection is refused during a change), new ones are
 * bound (SO_REUSEPORT, one socket per worker, the kernel balances connections) before removed
 * ones stop accepting; connections of removed listeners drain (TCP pairs finish on their own,
 * idle HTTP keep-alive connections close, busy ones close after the current response). Every
 * connection holds a reference to the config it was accepted with, so a change never breaks
 * it; a kept-alive HTTP connection takes the newest config at each new request.
 *
 * Filter chains are chosen by destination port (exact match beats dest_port 0). A listener
 * with chains matching on transport_protocol, server names or ALPN peeks at the first bytes
 * (ClientHello) and matches as Envoy does; chains with a DownstreamTlsContext do the TLS
 * handshake, peer verification and network RBAC first (tls.h, rbac.h), and clusters with an
 * UpstreamTlsContext connect with TLS.
 *
 * KM_DP_FILTER_TCP_PROXY (tcp_proxy.c): weighted cluster, endpoint from the cluster's load
 * balancer (lb.h, per worker), a non-blocking connect bounded by connect_timeout_ms; on a
 * connect failure or timeout the connection is retried once on another endpoint when the
 * cluster has one (two attempts in all; Envoy's tcp_proxy max_connect_attempts defaults to 1),
 * then the downstream is closed and upstream_cx_connect_attempts_exceeded counts it (a
 * timeout counts in both upstream_cx_connect_timeout and upstream_cx_connect_fail, as in
 * Envoy). Bytes are relayed with at most 64 KiB pending per direction (the source is not read
 * while the other side has not taken them), EOF is propagated with shutdown(SHUT_WR), and the
 * chain's idle_timeout_ms (used as is, 0 = none; the snapshot builder maps an unset xDS value
 * to Envoy's 1 h) closes pairs without traffic.
 *
 * KM_DP_FILTER_HCM (http_proxy.c): HTTP/1.1 downstream and upstream, see the comment at the
 * top of that file: keep-alive, pipelining, Content-Length and chunked bodies streamed,
 * routing with router.h, per-worker upstream connection pools, local replies 400/403/404/
 * 503/504, CONNECT and Upgrade refused with 403. HTTP/2 is not implemented. */
#ifndef KM_DP_ENGINE_H
#define KM_DP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/dp/snapshot.h>
#include <km/dp/stats.h>

struct km_dp_engine;

struct km_dp_engine_opts {
    unsigned concurrency; /* worker threads; 0 = the number of online CPUs (capped at 64) */
};

/* Starts the workers. Returns NULL (with a log line) when a thread or loop cannot be created. */
struct km_dp_engine *km_dp_engine_new(const struct km_dp_engine_opts *opts);

/* Hands <snap> to every worker; the engine takes its own reference (the caller keeps its
 * own). Asynchronous: km_dp_engine_applied_generation tells when all workers use it. A
 * snapshot published after km_dp_engine_drain is ignored. */
void km_dp_engine_publish(struct km_dp_engine *e, struct km_dp_snapshot *snap);

/* The lowest snapshot generation every worker has applied (0 before the first). */
uint64_t km_dp_engine_applied_generation(struct km_dp_engine *e);

/* The last published snapshot (borrowed; valid until the next publish or free), or NULL. */
const struct km_dp_snapshot *km_dp_engine_snapshot(struct km_dp_engine *e);

/* LIVE: a snapshot with at least one listener was published, every worker applied it (or a
 * later one) and no listener failed to bind; false while draining. */
bool km_dp_engine_is_ready(struct km_dp_engine *e);
bool km_dp_engine_is_draining(struct km_dp_engine *e);

/* Stops accepting everywhere (listening sockets are closed); established connections go on
 * until they end. Asynchronous, idempotent. */
void km_dp_engine_drain(struct km_dp_engine *e);

/* Downstream connections currently open on all workers (for the drain wait). */
int64_t km_dp_engine_active_connections(struct km_dp_engine *e);

unsigned km_dp_engine_concurrency(const struct km_dp_engine *e);

/* The stats registry (borrowed, lives as long as the engine). */
struct km_dp_stats *km_dp_engine_stats(struct km_dp_engine *e);

/* Admin renderings of the active config (caller frees): Envoy's /clusters text and a JSON
 * config dump {"generation", "listeners", "clusters", "routes"}. */
char *km_dp_engine_clusters_text(struct km_dp_engine *e);
char *km_dp_engine_config_json(struct km_dp_engine *e);

/* Stops the workers (closing every connection at once), joins them and frees everything.
 * Free the admin listener (which borrows the engine) first. */
void km_dp_engine_free(struct km_dp_engine *e);

/* ---- Admin listener (main thread's loop) ---- */

struct km_dp_admin_hooks {
    /* /config_dump: a JSON document of the raw xDS resources (caller-owned string, freed by
     * the admin with free()), or NULL to serve the engine's own view. May be NULL. */
    char *(*config_dump)(void *arg);
    /* POST /quitquitquit: start the shutdown (the admin answers 200 "OK" first). May be NULL. */
    void (*quit)(void *arg);
    void *arg;
};

struct km_dp_admin;

/* Listens on 127.0.0.1:<port> (0 = an ephemeral port, see km_dp_admin_port) on <loop>:
 *   GET  /ready               200 "LIVE" / 503 "PRE_INITIALIZING" or "DRAINING"
 *   GET  /stats               "name: value" lines (Envoy text format)
 *   GET  /stats/prometheus    Prometheus exposition, envoy_ prefixed
 *   GET  /config_dump         hooks->config_dump's JSON, else the engine's view
 *   GET  /config_dump/engine  the engine's view (listeners, clusters, endpoints, routes)
 *   GET  /clusters            Envoy's "cluster::addr::stat::value" text
 *   POST /quitquitquit        calls hooks->quit
 * One request per connection (Connection: close), requests bounded to 16 KiB, at most 64
 * admin connections, 10 s to send the request. Returns NULL when it cannot listen. */
struct km_dp_admin *km_dp_admin_start(struct km_loop *loop, struct km_dp_engine *e,
                                      uint16_t port, const struct km_dp_admin_hooks *hooks);
uint16_t km_dp_admin_port(const struct km_dp_admin *a);
void km_dp_admin_free(struct km_dp_admin *a);

#endif
