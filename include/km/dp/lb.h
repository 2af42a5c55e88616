/* Load balancers of kuma-dp: round robin (smooth weighted), least request (power of two
 * choices), random (weighted), ring hash (consistent hashing on a sorted ring) and Maglev.
 *
 * Who runs what:
 * - km_dp_lb_build_ring / km_dp_lb_build_maglev run once per cluster while a snapshot is built
 *   (main thread): they fill cluster->table (and ring_hashes), malloc'd, freed by the snapshot
 *   with free(). km_dp_lb_pick reads any table laid out as snapshot.h documents, whoever
 *   built it; a request key may be hashed with km_dp_lb_hash or km_dp_hash64.
 * - Everything else runs on a worker: each worker keeps one struct km_dp_lb_state per cluster
 *   it routes to (round robin weights, active request counts, its own RNG); no locks.
 *
 * Candidates: only healthy endpoints are picked, from the lowest priority level that has a
 * healthy endpoint. When no endpoint of the cluster is healthy, every endpoint is a candidate
 * (Envoy's "panic mode", here with a threshold of 0 %: Envoy's default panics below 50 %
 * healthy; EDS health is the only health source so far). Health is fixed within a snapshot, so
 * the candidate set is computed once per (worker, snapshot) and the ring / Maglev tables hold
 * candidates only.
 *
 * Hashing: xxHash64 (Debian libxxhash-dev, header only, XXH_INLINE_ALL), seed 0, as Envoy's ring
 * hash and Maglev do for their points and as its hash policies do for header values. */
#ifndef KM_DP_LB_H
#define KM_DP_LB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/dp/snapshot.h>

/* Envoy's ring hash defaults: minimum_ring_size 1024, maximum_ring_size 8M. */
#define KM_DP_LB_RING_MIN_DEFAULT 1024u
#define KM_DP_LB_RING_MAX         (8u * 1024u * 1024u)
/* Envoy's Maglev default table size (a prime). */
#define KM_DP_LB_MAGLEV_SIZE 65537u

/* Per worker, per cluster load balancer state. Initialize with km_dp_lb_state_init, release
 * with km_dp_lb_state_deinit. It never dereferences a cluster except the one passed to the
 * current call, so the snapshot a state was last bound to may already be gone. */
struct km_dp_lb_state {
    uint64_t rng;                          /* xorshift64* state, never 0 */
    const struct km_dp_cluster *cluster;   /* borrowed: identity of the bound cluster only */
    const struct km_dp_endpoint *eps;      /* borrowed: its endpoint array (identity only) */
    size_t neps;
    size_t ncand;                          /* candidates (see above) */
    uint64_t *keys;                        /* owned, one block with the arrays below:
                                              xxHash64 of each endpoint's addr_str (neps) */
    uint64_t *cum;                         /* prefix sums of candidate weights (ncand) */
    int64_t *cur;                          /* smooth weighted round robin weights (ncand) */
    uint32_t *active;                      /* active requests per endpoint (neps) */
    uint32_t *cand;                        /* endpoint indexes of the candidates (ncand) */
    uint64_t total_weight;                 /* of the candidates */
    bool uniform;                          /* all candidate weights are equal */
    size_t rr;                             /* round robin cursor (uniform weights) */
};

/* Initializes <st> for a worker: <seed> should differ between workers (e.g. worker id mixed
 * with the cluster name's hash); 0 is allowed. Allocates nothing. */
void km_dp_lb_state_init(struct km_dp_lb_state *st, uint64_t seed);
/* Frees what <st> owns. */
void km_dp_lb_state_deinit(struct km_dp_lb_state *st);

/* Binds <st> to <c> (call when a worker swaps in a new snapshot; km_dp_lb_pick also does it
 * when it sees another cluster). Active request counts carry over to the endpoints of <c>
 * with the same address. Returns 0, or KM_ELIMIT when memory is short: then <st> is unbound
 * and km_dp_lb_pick still answers, with a stateless random choice. */
int km_dp_lb_state_sync(struct km_dp_lb_state *st, const struct km_dp_cluster *c);

/* Picks the endpoint for one request or connection of cluster <c> with its policy; <hash>
 * (with <has_hash>) is the request's hash for ring hash and Maglev (from the route's hash
 * policy, see km_dp_lb_hash); without one, those two pick at random like Envoy. Returns NULL
 * only when the cluster has no endpoint. The endpoint is borrowed from <c>'s snapshot.
 * Worker only. It does not count the request: call km_dp_lb_begin / km_dp_lb_end around it. */
const struct km_dp_endpoint *km_dp_lb_pick(const struct km_dp_cluster *c,
                                           struct km_dp_lb_state *st, uint64_t hash,
                                           bool has_hash);

/* Count a request (or TCP connection) sent to <ep> as active / finished, for least request.
 * <ep> may belong to an older snapshot than the one <st> is bound to (it is then found by
 * address); unknown endpoints are ignored and the counts never go below 0. */
void km_dp_lb_begin(struct km_dp_lb_state *st, const struct km_dp_endpoint *ep);
void km_dp_lb_end(struct km_dp_lb_state *st, const struct km_dp_endpoint *ep);
/* Active requests <st> counts for <ep> (0 when unknown). */
uint32_t km_dp_lb_active(const struct km_dp_lb_state *st, const struct km_dp_endpoint *ep);

/* xxHash64 (seed 0) of <len> bytes, for hash policies (header value, source IP, cookie). */
uint64_t km_dp_lb_hash(const void *data, size_t len);
/* Combines the hashes of several hash policies like Envoy: rotate left by 1, then xor. */
uint64_t km_dp_lb_hash_combine(uint64_t acc, uint64_t h);

/* Builds the ring hash table of <c> (policy KM_DP_LB_RING_HASH) from its candidates: each
 * endpoint gets points proportional to its weight, at least one; the lightest gets its share
 * of <min_ring> (0 = 1024) rounded up to a power of two (so that the others' point counts stay
 * put when an endpoint comes or goes); at most about KM_DP_LB_RING_MAX points in total; point
 * j of endpoint "A:P" hashes "A:P_j" (xxHash64). Fills c->table (endpoint indexes sorted by
 * point hash) and c->ring_hashes (the sorted point hashes), both malloc'd, freed by the
 * snapshot; frees previous ones. No endpoints (or out of memory): both NULL, table_size 0. */
void km_dp_lb_build_ring(struct km_dp_cluster *c, size_t min_ring);
/* c->ring_hashes of a ring hash cluster with a table, else NULL. */
const uint64_t *km_dp_lb_ring_hashes(const struct km_dp_cluster *c);

/* Builds the Maglev lookup table of <c> (policy KM_DP_LB_MAGLEV): <table_size> entries (should
 * be a prime larger than the number of endpoints; 0 = 65537), filled with Google's
 * permutation algorithm (offset = h0 mod M, skip = h1 mod (M-1) + 1, over "A:P" with seeds 0
 * and 1), weighted: an endpoint takes a turn in proportion to its weight. Frees previous
 * tables (table, ring_hashes); no endpoints (or out of memory) leaves table NULL, size 0. */
void km_dp_lb_build_maglev(struct km_dp_cluster *c, size_t table_size /* 65537 */);

/* Policy name for logs and /clusters ("ROUND_ROBIN", ... as in Envoy's enum). */
const char *km_dp_lb_name(enum km_dp_lb lb);

#endif
