/* kuma-dp's agent: everything around the proxy engine. It registers the Dataplane with
 * POST /bootstrap, holds the ADS stream (delta by default, state of the world as fallback),
 * ACKs what km_dp_snapshot_build accepts and NACKs the rest with its errors (keeping the last
 * good snapshot), publishes every new snapshot to the engine, reconnects with backoff when the
 * control plane goes away (never exits because of it) and drains on SIGTERM/SIGINT.
 *
 * The agent runs on the main thread's km_loop; every hook is called on that thread. */
#ifndef KM_DP_AGENT_H
#define KM_DP_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/loop.h>
#include <km/dp/dp_config.h>
#include <km/dp/snapshot.h>

/* A new snapshot: borrowed for the call (the agent keeps its own reference until the next
 * one); take km_dp_snapshot_ref() to keep it. */
typedef void (*km_dp_publish_fn)(struct km_dp_snapshot *s, void *ud);

/* What the proxy engine plugs in (every member may be NULL). */
struct km_dp_engine_hooks {
    km_dp_publish_fn publish;
    /* SIGTERM/SIGINT: close the listeners, let established connections finish. */
    void (*stop_accepting)(void *ud);
    /* During the drain: connections still open; the agent exits as soon as it is 0, else
     * after the drain time. NULL = wait the whole drain time. */
    size_t (*active_connections)(void *ud);
    void *ud;
};

struct km_dp_agent;

/* Per-type xDS counters (indexed KM_DP_LDS..KM_DP_SDS). */
struct km_dp_xds_stats {
    uint64_t responses, acks, nacks;
    char *last_nack; /* owned by the agent, NULL when none */
};

/* <cfg> (finished with km_dp_config_finish) and <loop> are borrowed and must outlive the
 * agent. Blocks SIGTERM and SIGINT in the calling thread (call before starting workers, so
 * they inherit the mask) and watches them with a signalfd. */
struct km_dp_agent *km_dp_agent_new(const struct km_dp_config *cfg, struct km_loop *loop,
                                    const struct km_dp_engine_hooks *hooks);
/* Schedules the first bootstrap on the loop (km_dp_agent_run does it; tests that drive the
 * loop themselves call it instead). */
void km_dp_agent_start(struct km_dp_agent *a);
/* Runs the loop until the drain after SIGTERM/SIGINT ends (returns 0) or the first bootstrap
 * failed for good (invalid request, or the control plane unreachable for
 * retry-max-duration: returns 1). */
int km_dp_agent_run(struct km_dp_agent *a);
/* Starts the drain as SIGTERM does. Loop thread only. */
void km_dp_agent_shutdown(struct km_dp_agent *a);
void km_dp_agent_free(struct km_dp_agent *a);

/* Current state for the admin server (loop thread only). */
struct km_dp_snapshot *km_dp_agent_snapshot(const struct km_dp_agent *a); /* borrowed */
const struct km_dp_xds_set *km_dp_agent_resources(const struct km_dp_agent *a); /* [TYPES] */
const struct km_dp_xds_stats *km_dp_agent_stats(const struct km_dp_agent *a);  /* [TYPES] */
bool km_dp_agent_connected(const struct km_dp_agent *a);
/* The held xDS resources as JSON (caller frees): {"lds": {name: {"version", "resource"}},
 * "rds": ..., "cds": ..., "eds": ..., "sds": ...} with each resource in proto3 JSON (private
 * keys of SDS secrets shown as "[redacted]"). */
char *km_dp_agent_config_dump(const struct km_dp_agent *a);
const char *km_dp_agent_node_id(const struct km_dp_agent *a); /* NULL before bootstrap */

#endif
