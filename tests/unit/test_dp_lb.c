/* kuma-dp load balancers: exact smooth weighted round robin, weighted random and least request
 * distributions, health / priority / panic handling, ring hash and Maglev stability and the
 * fraction of keys that move when an endpoint goes away. */
#include <km/dp/lb.h>

#include "test.h"

#define MAXEP 16

struct tc {
    struct km_dp_cluster c;
    struct km_dp_endpoint eps[MAXEP];
    char addrs[MAXEP][32];
};

/* <n> endpoints 10.0.0.<i+1>:8080, healthy, weight <w[i]> (1 when w is NULL) */
static void
tc_init(struct tc *t, enum km_dp_lb lb, size_t n, const uint32_t *w)
{
    memset(t, 0, sizeof(*t));
    t->c.name = "backend";
    t->c.lb = lb;
    t->c.eps = t->eps;
    t->c.neps = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(t->addrs[i], sizeof(t->addrs[i]), "10.0.0.%zu:8080", i + 1);
        t->eps[i].addr_str = t->addrs[i];
        t->eps[i].weight = w ? w[i] : 1;
        t->eps[i].healthy = true;
        t->eps[i].zone = "";
    }
}

static void
tc_free(struct tc *t)
{
    free(t->c.table);
    free(t->c.ring_hashes);
    t->c.table = NULL;
    t->c.ring_hashes = NULL;
    t->c.table_size = 0;
}

static size_t
ep_index(const struct tc *t, const struct km_dp_endpoint *ep)
{
    if (ep == NULL)
        KM_FAIL_AT("no endpoint picked");
    for (size_t i = 0; i < t->c.neps; i++)
        if (ep == &t->eps[i])
            return i;
    KM_FAIL_AT("picked endpoint is not one of the cluster's");
}

static void
count_picks(struct tc *t, struct km_dp_lb_state *st, size_t picks, size_t *counts)
{
    memset(counts, 0, sizeof(size_t) * MAXEP);
    for (size_t k = 0; k < picks; k++)
        counts[ep_index(t, km_dp_lb_pick(&t->c, st, 0, false))]++;
}

/* each count within +/- <tol> (relative) of picks * w[i] / sum(w) */
static void
assert_shares(const size_t *counts, const uint32_t *w, size_t n, size_t picks, double tol)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += w[i];
    for (size_t i = 0; i < n; i++) {
        double want = (double)picks * w[i] / sum;
        double got = (double)counts[i];
        if (got < want * (1 - tol) || got > want * (1 + tol))
            KM_FAIL_AT("endpoint %zu: %.0f picks, want %.0f +/- %.0f%%", i, got, want, tol * 100);
    }
}

KM_TEST(lb_round_robin_smooth_weighted)
{
    struct tc t;
    uint32_t w[] = {5, 1, 1};
    tc_init(&t, KM_DP_LB_ROUND_ROBIN, 3, w);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 1);
    /* nginx's example: weights 5, 1, 1 give a a b a c a a, then repeat */
    const char *want = "aabacaaaabacaa";
    for (size_t k = 0; want[k]; k++) {
        size_t i = ep_index(&t, km_dp_lb_pick(&t.c, &st, 0, false));
        ASSERT_INT_EQ(i, want[k] - 'a');
    }
    km_dp_lb_state_deinit(&st);

    uint32_t w2[] = {1, 2, 3, 4};
    tc_init(&t, KM_DP_LB_ROUND_ROBIN, 4, w2);
    km_dp_lb_state_init(&st, 2);
    size_t counts[MAXEP];
    count_picks(&t, &st, 100000, counts);
    /* exact over whole windows of 10 picks */
    ASSERT_INT_EQ(counts[0], 10000);
    ASSERT_INT_EQ(counts[1], 20000);
    ASSERT_INT_EQ(counts[2], 30000);
    ASSERT_INT_EQ(counts[3], 40000);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_round_robin_uniform_skips_unhealthy)
{
    struct tc t;
    tc_init(&t, KM_DP_LB_ROUND_ROBIN, 4, NULL);
    t.eps[2].healthy = false;
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 3);
    size_t first = ep_index(&t, km_dp_lb_pick(&t.c, &st, 0, false));
    ASSERT(first != 2);
    /* a strict rotation over 0, 1, 3 from wherever this worker started */
    size_t prev = first;
    for (int k = 0; k < 30; k++) {
        size_t i = ep_index(&t, km_dp_lb_pick(&t.c, &st, 0, false));
        size_t want = prev == 0 ? 1 : prev == 1 ? 3 : 0;
        ASSERT_INT_EQ(i, want);
        prev = i;
    }
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_random_weighted_distribution)
{
    struct tc t;
    uint32_t w[] = {1, 2, 3, 4};
    tc_init(&t, KM_DP_LB_RANDOM, 4, w);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 42);
    size_t counts[MAXEP];
    count_picks(&t, &st, 100000, counts);
    assert_shares(counts, w, 4, 100000, 0.03);
    km_dp_lb_state_deinit(&st);

    uint32_t u[] = {1, 1, 1, 1, 1};
    tc_init(&t, KM_DP_LB_RANDOM, 5, u);
    km_dp_lb_state_init(&st, 43);
    count_picks(&t, &st, 100000, counts);
    assert_shares(counts, u, 5, 100000, 0.03);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_least_request_prefers_idle)
{
    struct tc t;
    tc_init(&t, KM_DP_LB_LEAST_REQUEST, 4, NULL);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 7);
    /* all idle: even spread */
    size_t counts[MAXEP];
    count_picks(&t, &st, 100000, counts);
    uint32_t u[] = {1, 1, 1, 1};
    assert_shares(counts, u, 4, 100000, 0.03);

    /* endpoints 0 and 1 busy: a busy one wins only when both choices are busy (1/4) */
    for (int k = 0; k < 10; k++) {
        km_dp_lb_begin(&st, &t.eps[0]);
        km_dp_lb_begin(&st, &t.eps[1]);
    }
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t.eps[0]), 10);
    count_picks(&t, &st, 100000, counts);
    size_t idle = counts[2] + counts[3];
    ASSERT(idle > 72000 && idle < 78000);

    /* more choices: the idle ones almost always win */
    t.c.choice_count = 8;
    count_picks(&t, &st, 10000, counts);
    ASSERT(counts[2] + counts[3] > 9800);

    /* requests end: counts go back to 0 and never below */
    for (int k = 0; k < 12; k++) {
        km_dp_lb_end(&st, &t.eps[0]);
        km_dp_lb_end(&st, &t.eps[1]);
    }
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t.eps[0]), 0);
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t.eps[1]), 0);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_least_request_ties_go_to_weight)
{
    struct tc t;
    uint32_t w[] = {1, 3};
    tc_init(&t, KM_DP_LB_LEAST_REQUEST, 2, w);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 9);
    size_t counts[MAXEP];
    count_picks(&t, &st, 100000, counts);
    /* the heavier one wins whenever it is among the two choices: 1 - 1/4 */
    ASSERT(counts[1] > 72000 && counts[1] < 78000);
    /* three active requests on the heavy one: (3+1)/3 > (0+1)/1, the light one now wins */
    for (int k = 0; k < 3; k++)
        km_dp_lb_begin(&st, &t.eps[1]);
    count_picks(&t, &st, 100000, counts);
    ASSERT(counts[0] > 72000 && counts[0] < 78000);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_active_counts_survive_a_new_snapshot)
{
    struct tc t, t2;
    tc_init(&t, KM_DP_LB_LEAST_REQUEST, 3, NULL);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 11);
    ASSERT_INT_EQ(km_dp_lb_state_sync(&st, &t.c), 0);
    km_dp_lb_begin(&st, &t.eps[1]);
    km_dp_lb_begin(&st, &t.eps[1]);
    /* the new snapshot: endpoint 0 removed, so 10.0.0.2 is now at index 0 */
    tc_init(&t2, KM_DP_LB_LEAST_REQUEST, 3, NULL);
    memmove(&t2.addrs[0], &t2.addrs[1], sizeof(t2.addrs[0]) * 2);
    t2.c.neps = 2;
    ASSERT_INT_EQ(km_dp_lb_state_sync(&st, &t2.c), 0);
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t2.eps[0]), 2);
    /* a request picked on the old snapshot ends: found by address */
    km_dp_lb_end(&st, &t.eps[1]);
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t2.eps[0]), 1);
    /* the removed endpoint is unknown: ignored */
    km_dp_lb_end(&st, &t.eps[0]);
    ASSERT_INT_EQ(km_dp_lb_active(&st, &t.eps[0]), 0);
    km_dp_lb_state_deinit(&st);
}

static void
assert_never_picks(struct tc *t, size_t bad)
{
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 5);
    for (uint64_t k = 0; k < 2000; k++) {
        const struct km_dp_endpoint *ep =
            km_dp_lb_pick(&t->c, &st, k * 0x9e3779b97f4a7c15ull, k % 2 == 0);
        ASSERT(ep_index(t, ep) != bad);
    }
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_health_priority_and_panic)
{
    enum km_dp_lb all[] = {KM_DP_LB_ROUND_ROBIN, KM_DP_LB_LEAST_REQUEST, KM_DP_LB_RANDOM,
                           KM_DP_LB_RING_HASH, KM_DP_LB_MAGLEV};
    for (size_t p = 0; p < KM_ARRAY_LEN(all); p++) {
        struct tc t;
        tc_init(&t, all[p], 3, NULL);
        t.eps[1].healthy = false;
        if (all[p] == KM_DP_LB_RING_HASH)
            km_dp_lb_build_ring(&t.c, 0);
        if (all[p] == KM_DP_LB_MAGLEV)
            km_dp_lb_build_maglev(&t.c, 0);
        assert_never_picks(&t, 1);
        tc_free(&t);
    }
    /* priority 0 first; priority 1 only when priority 0 has no healthy endpoint */
    struct tc t;
    tc_init(&t, KM_DP_LB_ROUND_ROBIN, 3, NULL);
    t.eps[2].priority = 1;
    assert_never_picks(&t, 2);
    t.eps[0].healthy = t.eps[1].healthy = false;
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 5);
    for (int k = 0; k < 10; k++)
        ASSERT_INT_EQ(ep_index(&t, km_dp_lb_pick(&t.c, &st, 0, false)), 2);
    km_dp_lb_state_deinit(&st);
    /* none healthy: panic, every endpoint takes traffic */
    t.eps[2].healthy = false;
    km_dp_lb_state_init(&st, 5);
    size_t counts[MAXEP];
    count_picks(&t, &st, 3000, counts);
    ASSERT(counts[0] == 1000 && counts[1] == 1000 && counts[2] == 1000);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_empty_cluster)
{
    struct tc t;
    tc_init(&t, KM_DP_LB_RING_HASH, 0, NULL);
    km_dp_lb_build_ring(&t.c, 0);
    ASSERT(t.c.table == NULL && t.c.table_size == 0);
    km_dp_lb_build_maglev(&t.c, 0);
    ASSERT(t.c.table == NULL && t.c.table_size == 0);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 0);
    ASSERT(km_dp_lb_pick(&t.c, &st, 1, true) == NULL);
    t.c.lb = KM_DP_LB_ROUND_ROBIN;
    ASSERT(km_dp_lb_pick(&t.c, &st, 0, false) == NULL);
    km_dp_lb_state_deinit(&st);
}

/* --- consistent hashing ----------------------------------------------------------------- */

#define NKEYS 100000

static uint64_t
key_hash(size_t k)
{
    char b[32];
    int n = snprintf(b, sizeof(b), "user-%zu", k);
    return km_dp_lb_hash(b, (size_t)n);
}

static void
build(struct tc *t, size_t min_ring)
{
    if (t->c.lb == KM_DP_LB_RING_HASH)
        km_dp_lb_build_ring(&t->c, min_ring);
    else
        km_dp_lb_build_maglev(&t->c, 0);
}

static void
check_consistent(enum km_dp_lb lb, double max_moved, double max_moved_others)
{
    struct tc t, t2;
    tc_init(&t, lb, 10, NULL);
    build(&t, 0);
    ASSERT(t.c.table != NULL && t.c.table_size > 0);
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 1);
    /* the new snapshot without endpoint 3 (the others keep their addresses) */
    tc_init(&t2, lb, 10, NULL);
    memmove(&t2.addrs[3], &t2.addrs[4], sizeof(t2.addrs[0]) * 6);
    t2.c.neps = 9;
    build(&t2, 0);
    size_t *before = malloc(NKEYS * sizeof(size_t));
    size_t counts[MAXEP] = {0};
    size_t moved = 0, moved_others = 0;
    for (size_t k = 0; k < NKEYS; k++) {
        uint64_t h = key_hash(k);
        before[k] = ep_index(&t, km_dp_lb_pick(&t.c, &st, h, true));
        /* stable: the same key always lands on the same endpoint */
        ASSERT_INT_EQ(ep_index(&t, km_dp_lb_pick(&t.c, &st, h, true)), before[k]);
        counts[before[k]]++;
    }
    for (size_t k = 0; k < NKEYS; k++) {
        const struct km_dp_endpoint *ep = km_dp_lb_pick(&t2.c, &st, key_hash(k), true);
        size_t i = ep_index(&t2, ep);
        ASSERT(strcmp(ep->addr_str, t.addrs[3]) != 0);
        size_t old = before[k];
        if (strcmp(ep->addr_str, t.addrs[old]) != 0) {
            moved++;
            if (old != 3)
                moved_others++;
        }
        (void)i;
    }
    double fm = (double)moved / NKEYS, fo = (double)moved_others / NKEYS;
    fprintf(stderr, "%s: 1 of 10 endpoints removed: %.2f%% of keys moved, %.3f%% not from it\n",
            km_dp_lb_name(lb), fm * 100, fo * 100);
    ASSERT(fm <= max_moved);
    ASSERT(fo <= max_moved_others);
    uint32_t u[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    assert_shares(counts, u, 10, NKEYS, lb == KM_DP_LB_MAGLEV ? 0.05 : 0.25);
    free(before);
    tc_free(&t);
    tc_free(&t2);
    km_dp_lb_state_deinit(&st);
}

KM_TEST(lb_ring_hash_stable_minimal_disruption)
{
    /* a ring only moves the keys of the removed endpoint */
    check_consistent(KM_DP_LB_RING_HASH, 0.13, 0.0);
}

KM_TEST(lb_maglev_stable_minimal_disruption)
{
    check_consistent(KM_DP_LB_MAGLEV, 0.14, 0.04);
}

KM_TEST(lb_ring_hash_layout_and_weights)
{
    struct tc t;
    uint32_t w[] = {1, 2, 5};
    tc_init(&t, KM_DP_LB_RING_HASH, 3, w);
    km_dp_lb_build_ring(&t.c, 4096);
    /* the lightest gets about its share of 4096 points */
    size_t pts[MAXEP] = {0};
    const uint64_t *h = km_dp_lb_ring_hashes(&t.c);
    ASSERT(h != NULL);
    for (size_t i = 0; i < t.c.table_size; i++) {
        ASSERT(t.c.table[i] < 3);
        pts[t.c.table[i]]++;
        if (i > 0)
            ASSERT(h[i - 1] <= h[i]);
    }
    /* the lightest: 1/8 of 4096 = 512 points (a power of two), the others in proportion */
    ASSERT_INT_EQ(pts[0], 512);
    ASSERT_INT_EQ(pts[1], 1024);
    ASSERT_INT_EQ(pts[2], 2560);
    assert_shares(pts, w, 3, t.c.table_size, 0.01);
    /* traffic follows the weights */
    struct km_dp_lb_state st;
    km_dp_lb_state_init(&st, 1);
    size_t counts[MAXEP] = {0};
    for (size_t k = 0; k < NKEYS; k++)
        counts[ep_index(&t, km_dp_lb_pick(&t.c, &st, key_hash(k), true))]++;
    assert_shares(counts, w, 3, NKEYS, 0.10);
    /* no hash: random over the endpoints, weighted */
    count_picks(&t, &st, NKEYS, counts);
    assert_shares(counts, w, 3, NKEYS, 0.03);
    km_dp_lb_state_deinit(&st);
    /* another policy never reads the ring's hashes */
    t.c.lb = KM_DP_LB_MAGLEV;
    ASSERT(km_dp_lb_ring_hashes(&t.c) == NULL);
    tc_free(&t);
}

KM_TEST(lb_maglev_weights_and_table)
{
    struct tc t;
    uint32_t w[] = {1, 2, 3, 4};
    tc_init(&t, KM_DP_LB_MAGLEV, 4, w);
    km_dp_lb_build_maglev(&t.c, 0);
    ASSERT_INT_EQ(t.c.table_size, KM_DP_LB_MAGLEV_SIZE);
    size_t slots[MAXEP] = {0};
    for (size_t i = 0; i < t.c.table_size; i++) {
        ASSERT(t.c.table[i] < 4);
        slots[t.c.table[i]]++;
    }
    assert_shares(slots, w, 4, t.c.table_size, 0.01);
    /* the same table for the same endpoints (every worker, every snapshot) */
    struct tc t2;
    tc_init(&t2, KM_DP_LB_MAGLEV, 4, w);
    km_dp_lb_build_maglev(&t2.c, 0);
    ASSERT(memcmp(t.c.table, t2.c.table, t.c.table_size * sizeof(uint32_t)) == 0);
    tc_free(&t2);
    /* a size that is not prime still terminates with every slot filled */
    km_dp_lb_build_maglev(&t2.c, 1000);
    ASSERT_INT_EQ(t2.c.table_size, 1000);
    for (size_t i = 0; i < 1000; i++)
        ASSERT(t2.c.table[i] < 4);
    tc_free(&t2);
    tc_free(&t);
}

KM_TEST(lb_hash_helpers)
{
    /* xxHash64 of the empty input with seed 0 (the reference value) */
    ASSERT(km_dp_lb_hash("", 0) == 0xef46db3751d8e999ull);
    ASSERT(km_dp_lb_hash_combine(0, 5) == 5);
    ASSERT(km_dp_lb_hash_combine(1ull << 63, 0) == 1);
    ASSERT_STR_EQ(km_dp_lb_name(KM_DP_LB_MAGLEV), "MAGLEV");
}
