/* DP server (port 5678): one TLS port for POST /bootstrap and Envoy's ADS (state of the world
 * and delta), plus an optional plaintext port. Runs its own event loop thread; everything xDS
 * (subscriptions, snapshots, pushes, insights) happens on that thread. */
#ifndef KM_CP_DP_SERVER_H
#define KM_CP_DP_SERVER_H

#include <stddef.h>

#include <km/cp/store.h>

struct km_cp;
struct km_dp_server;

/* Binds the ports (so a second instance fails early) and prepares the server; the thread
 * starts with km_dp_server_start. NULL with a message in <err> on failure. */
struct km_dp_server *km_dp_server_new(struct km_cp *cp, char *err, size_t errlen);
int km_dp_server_start(struct km_dp_server *s, char *err, size_t errlen);
/* Store change notification; thread safe, cheap (posts to the server's loop). */
void km_dp_server_notify(struct km_dp_server *s, enum km_store_event_kind kind, const char *type,
                         const char *mesh, const char *name);
/* Stops the thread, closes every stream, frees. */
void km_dp_server_free(struct km_dp_server *s);

/* Number of connected ADS streams (for /metrics). */
size_t km_dp_server_streams(struct km_dp_server *s);

#endif
