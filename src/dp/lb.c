/* Load balancers (see lb.h for the rules shared by all policies).
 *
 * A worker's state for one cluster is a single block holding the candidate list, the prefix
 * sums of their weights (weighted random: binary search), the smooth weighted round robin
 * current weights and the per-endpoint active request counts and address keys. Binding it to
 * a new snapshot's cluster rebuilds the block and carries the active counts over by address
 * key, because requests started on the old snapshot still end on this worker.
 *
 * Round robin is nginx's smooth weighted round robin: every pick adds each candidate's weight
 * to its current weight, takes the largest and subtracts the total from it; over any window of
 * <total weight> picks each endpoint is chosen exactly <weight> times, interleaved. With equal
 * weights (the common case) it degenerates to a cursor, so that path is O(1).
 *
 * Ring hash and Maglev tables are built from the candidates only (health is fixed within a
 * snapshot), so a lookup is one binary search or one array index. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <km/common/util.h>
#include <km/dp/lb.h>

#define LB_DEFAULT_CHOICES 2u
#define LB_KEY_MAX         160

uint64_t
km_dp_lb_hash(const void *data, size_t len)
{
    return XXH64(data, len, 0);
}

uint64_t
km_dp_lb_hash_combine(uint64_t acc, uint64_t h)
{
    return ((acc << 1) | (acc >> 63)) ^ h;
}

const char *
km_dp_lb_name(enum km_dp_lb lb)
{
    switch (lb) {
    case KM_DP_LB_ROUND_ROBIN: return "ROUND_ROBIN";
    case KM_DP_LB_LEAST_REQUEST: return "LEAST_REQUEST";
    case KM_DP_LB_RANDOM: return "RANDOM";
    case KM_DP_LB_RING_HASH: return "RING_HASH";
    case KM_DP_LB_MAGLEV: return "MAGLEV";
    }
    return "UNKNOWN";
}

static uint64_t
lb_addr_key(const struct km_dp_endpoint *ep)
{
    const char *a = ep->addr_str ? ep->addr_str : "";
    return km_dp_lb_hash(a, strlen(a));
}

/* --- random numbers ------------------------------------------------------------------- */

static uint64_t
lb_splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* xorshift64* (Vigna): fast, good enough to spread requests, not for secrets */
static uint64_t
lb_rand(struct km_dp_lb_state *st)
{
    uint64_t x = st->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    st->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* uniform in [0, n), n > 0 (the modulo bias is below n / 2^64) */
static uint64_t
lb_rand_below(struct km_dp_lb_state *st, uint64_t n)
{
    return lb_rand(st) % n;
}

void
km_dp_lb_state_init(struct km_dp_lb_state *st, uint64_t seed)
{
    memset(st, 0, sizeof(*st));
    st->rng = lb_splitmix(seed);
    if (st->rng == 0)
        st->rng = 0x9e3779b97f4a7c15ull;
}

void
km_dp_lb_state_deinit(struct km_dp_lb_state *st)
{
    free(st->keys);
    memset(st, 0, sizeof(*st));
}

/* --- candidates --------------------------------------------------------------------------- */

/* Writes the indexes of <c>'s candidates into <out> (room for c->neps) and returns how many:
 * the healthy endpoints of the lowest priority that has one, else all (panic). */
static size_t
lb_candidates(const struct km_dp_cluster *c, uint32_t *out)
{
    bool any = false;
    uint32_t prio = 0;
    for (size_t i = 0; i < c->neps; i++) {
        if (c->eps[i].healthy && (!any || c->eps[i].priority < prio)) {
            prio = c->eps[i].priority;
            any = true;
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < c->neps; i++) {
        if (!any || (c->eps[i].healthy && c->eps[i].priority == prio))
            out[n++] = (uint32_t)i;
    }
    return n;
}

static uint32_t
lb_weight(const struct km_dp_endpoint *ep)
{
    return ep->weight ? ep->weight : 1;
}

/* --- state binding ------------------------------------------------------------------------ */

struct lb_carry {
    uint64_t key;
    uint32_t active;
};

static int
lb_carry_cmp(const void *a, const void *b)
{
    const struct lb_carry *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

int
km_dp_lb_state_sync(struct km_dp_lb_state *st, const struct km_dp_cluster *c)
{
    size_t n = c->neps;
    /* the requests still active on the old binding, by address key */
    struct lb_carry *carry = NULL;
    size_t ncarry = 0;
    for (size_t i = 0; st->keys && i < st->neps; i++)
        ncarry += st->active[i] > 0;
    if (ncarry) {
        carry = malloc(ncarry * sizeof(*carry));
        if (carry) {
            size_t k = 0;
            for (size_t i = 0; i < st->neps; i++)
                if (st->active[i] > 0)
                    carry[k++] = (struct lb_carry){st->keys[i], st->active[i]};
            qsort(carry, ncarry, sizeof(*carry), lb_carry_cmp);
        } else {
            ncarry = 0;
        }
    }
    free(st->keys);
    st->cand = NULL;
    st->cum = NULL;
    st->cur = NULL;
    st->active = NULL;
    st->keys = NULL;
    st->cluster = NULL;
    st->eps = NULL;
    st->neps = st->ncand = 0;
    st->total_weight = 0;
    st->rr = 0;

    /* one block: keys (n), cum (n), cur (n), active (n), cand (n); 8-byte members first */
    size_t m = n ? n : 1;
    size_t bytes = m * (sizeof(uint64_t) * 2 + sizeof(int64_t) + sizeof(uint32_t) * 2);
    char *blk = calloc(1, bytes);
    if (!blk) {
        free(carry);
        return KM_ELIMIT;
    }
    st->keys = (uint64_t *)(void *)blk;
    st->cum = st->keys + m;
    st->cur = (int64_t *)(void *)(st->cum + m);
    st->active = (uint32_t *)(void *)(st->cur + m);
    st->cand = st->active + m;

    st->cluster = c;
    st->eps = c->eps;
    st->neps = n;
    for (size_t i = 0; i < n; i++) {
        st->keys[i] = lb_addr_key(&c->eps[i]);
        if (ncarry) {
            struct lb_carry probe = {st->keys[i], 0};
            struct lb_carry *hit =
                bsearch(&probe, carry, ncarry, sizeof(*carry), lb_carry_cmp);
            if (hit)
                st->active[i] = hit->active;
        }
    }
    free(carry);
    st->ncand = lb_candidates(c, st->cand);
    uint64_t sum = 0;
    st->uniform = true;
    for (size_t i = 0; i < st->ncand; i++) {
        uint32_t w = lb_weight(&c->eps[st->cand[i]]);
        sum += w;
        st->cum[i] = sum;
        if (w != lb_weight(&c->eps[st->cand[0]]))
            st->uniform = false;
    }
    st->total_weight = sum;
    /* start each worker at a different place so that they do not all hit endpoint 0 first */
    if (st->ncand)
        st->rr = (size_t)lb_rand_below(st, st->ncand);
    return 0;
}

/* --- picking ------------------------------------------------------------------------------ */

/* Without a usable state (out of memory): a random healthy endpoint, else any. */
static const struct km_dp_endpoint *
lb_pick_stateless(const struct km_dp_cluster *c, struct km_dp_lb_state *st)
{
    size_t start = (size_t)lb_rand_below(st, c->neps);
    for (size_t k = 0; k < c->neps; k++) {
        size_t i = (start + k) % c->neps;
        if (c->eps[i].healthy)
            return &c->eps[i];
    }
    return &c->eps[start];
}

/* a candidate position drawn in proportion to weight */
static size_t
lb_weighted_random(struct km_dp_lb_state *st)
{
    if (st->uniform)
        return (size_t)lb_rand_below(st, st->ncand);
    uint64_t r = lb_rand_below(st, st->total_weight);
    /* first position whose prefix sum exceeds r */
    size_t lo = 0, hi = st->ncand - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->cum[mid] > r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static size_t
lb_round_robin(struct km_dp_lb_state *st, const struct km_dp_cluster *c)
{
    if (st->uniform) {
        size_t k = st->rr % st->ncand;
        st->rr = k + 1;
        return k;
    }
    size_t best = 0;
    for (size_t k = 0; k < st->ncand; k++) {
        st->cur[k] += lb_weight(&c->eps[st->cand[k]]);
        if (st->cur[k] > st->cur[best])
            best = k;
    }
    st->cur[best] -= (int64_t)st->total_weight;
    return best;
}

/* Is candidate position <a> a better least-request choice than <b>? Fewer active requests
 * per unit of weight ((active + 1) / weight, Envoy's active_request_bias 1.0), then the larger
 * weight. */
static bool
lb_lr_better(const struct km_dp_lb_state *st, const struct km_dp_cluster *c, size_t a, size_t b)
{
    uint64_t aa = (uint64_t)st->active[st->cand[a]] + 1, ab = (uint64_t)st->active[st->cand[b]] + 1;
    uint64_t wa = lb_weight(&c->eps[st->cand[a]]), wb = lb_weight(&c->eps[st->cand[b]]);
    if (aa * wb != ab * wa)
        return aa * wb < ab * wa;
    return wa > wb;
}

static size_t
lb_least_request(struct km_dp_lb_state *st, const struct km_dp_cluster *c)
{
    uint32_t choices = c->choice_count ? c->choice_count : LB_DEFAULT_CHOICES;
    size_t best = (size_t)lb_rand_below(st, st->ncand);
    for (uint32_t k = 1; k < choices; k++) {
        size_t other = (size_t)lb_rand_below(st, st->ncand);
        if (lb_lr_better(st, c, other, best))
            best = other;
    }
    return best;
}

static const struct km_dp_endpoint *
lb_table_entry(const struct km_dp_cluster *c, size_t slot)
{
    uint32_t i = c->table[slot];
    return i < c->neps ? &c->eps[i] : NULL;
}

static const struct km_dp_endpoint *
lb_ring_lookup(const struct km_dp_cluster *c, uint64_t hash)
{
    const uint64_t *h = km_dp_lb_ring_hashes(c);
    if (!h)
        return NULL;
    /* the first point at or after <hash>, wrapping around */
    size_t lo = 0, hi = c->table_size;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h[mid] < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lb_table_entry(c, lo == c->table_size ? 0 : lo);
}

const struct km_dp_endpoint *
km_dp_lb_pick(const struct km_dp_cluster *c, struct km_dp_lb_state *st, uint64_t hash,
              bool has_hash)
{
    if (c->neps == 0)
        return NULL;
    if (has_hash && c->table && c->table_size) {
        const struct km_dp_endpoint *ep = NULL;
        if (c->lb == KM_DP_LB_RING_HASH)
            ep = lb_ring_lookup(c, hash);
        else if (c->lb == KM_DP_LB_MAGLEV)
            ep = lb_table_entry(c, (size_t)(hash % c->table_size));
        if (ep)
            return ep;
    }
    if (st->cluster != c || st->eps != c->eps || st->neps != c->neps || !st->keys) {
        if (km_dp_lb_state_sync(st, c) < 0)
            return lb_pick_stateless(c, st);
    }
    if (st->ncand == 0)
        return lb_pick_stateless(c, st);
    size_t k;
    switch (c->lb) {
    case KM_DP_LB_ROUND_ROBIN:
        k = lb_round_robin(st, c);
        break;
    case KM_DP_LB_LEAST_REQUEST:
        k = lb_least_request(st, c);
        break;
    case KM_DP_LB_RANDOM:
    case KM_DP_LB_RING_HASH: /* without a hash (or a table): random, like Envoy */
    case KM_DP_LB_MAGLEV:
    default:
        k = lb_weighted_random(st);
        break;
    }
    return &c->eps[st->cand[k]];
}

/* --- active request counts ----------------------------------------------------------------- */

static bool
lb_index_of(const struct km_dp_lb_state *st, const struct km_dp_endpoint *ep, size_t *idx)
{
    if (!st->keys || !ep)
        return false;
    uintptr_t p = (uintptr_t)ep, base = (uintptr_t)st->eps;
    if (st->eps && p >= base && p < base + st->neps * sizeof(*ep) &&
        (p - base) % sizeof(*ep) == 0) {
        *idx = (p - base) / sizeof(*ep);
        return true;
    }
    /* an endpoint of an older snapshot: find it by address */
    uint64_t key = lb_addr_key(ep);
    for (size_t i = 0; i < st->neps; i++) {
        if (st->keys[i] == key) {
            *idx = i;
            return true;
        }
    }
    return false;
}

void
km_dp_lb_begin(struct km_dp_lb_state *st, const struct km_dp_endpoint *ep)
{
    size_t i;
    if (lb_index_of(st, ep, &i) && st->active[i] < UINT32_MAX)
        st->active[i]++;
}

void
km_dp_lb_end(struct km_dp_lb_state *st, const struct km_dp_endpoint *ep)
{
    size_t i;
    if (lb_index_of(st, ep, &i) && st->active[i] > 0)
        st->active[i]--;
}

uint32_t
km_dp_lb_active(const struct km_dp_lb_state *st, const struct km_dp_endpoint *ep)
{
    size_t i;
    return lb_index_of(st, ep, &i) ? st->active[i] : 0;
}

/* --- ring hash ---------------------------------------------------------------------------- */

struct lb_point {
    uint64_t hash;
    uint32_t ep;
};

static int
lb_point_cmp(const void *a, const void *b)
{
    const struct lb_point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->ep < y->ep ? -1 : x->ep > y->ep;
}

const uint64_t *
km_dp_lb_ring_hashes(const struct km_dp_cluster *c)
{
    if (c->lb != KM_DP_LB_RING_HASH || !c->table || !c->table_size)
        return NULL;
    return c->ring_hashes;
}

static void
lb_table_reset(struct km_dp_cluster *c)
{
    free(c->table);
    free(c->ring_hashes);
    c->table = NULL;
    c->ring_hashes = NULL;
    c->table_size = 0;
}

void
km_dp_lb_build_ring(struct km_dp_cluster *c, size_t min_ring)
{
    lb_table_reset(c);
    if (c->neps == 0)
        return;
    if (min_ring == 0)
        min_ring = KM_DP_LB_RING_MIN_DEFAULT;
    if (min_ring > KM_DP_LB_RING_MAX)
        min_ring = KM_DP_LB_RING_MAX;
    uint32_t *cand = malloc(c->neps * sizeof(*cand));
    if (!cand)
        return;
    size_t ncand = lb_candidates(c, cand);
    double sum = 0, minw = 0;
    for (size_t i = 0; i < ncand; i++) {
        double w = lb_weight(&c->eps[cand[i]]);
        sum += w;
        if (i == 0 || w < minw)
            minw = w;
    }
    /* Points per endpoint: the lightest one gets at least its share of min_ring, rounded up
     * to a power of two, and the others proportionally more. The power of two keeps the point
     * counts of the remaining endpoints unchanged when an endpoint comes or goes (unless the
     * lightest weight changes or the count crosses a power of two), so that only the keys of
     * that endpoint move; Envoy's exact scaling resizes every endpoint's share instead. */
    double min_pts = ceil(minw / sum * (double)min_ring);
    double base = 1;
    while (base < min_pts)
        base *= 2;
    double scale = base * sum / minw; /* points of the whole ring */
    if (scale > (double)KM_DP_LB_RING_MAX)
        scale = (double)KM_DP_LB_RING_MAX;
    size_t total = 0;
    size_t *counts = malloc(ncand * sizeof(*counts));
    if (!counts) {
        free(cand);
        return;
    }
    for (size_t i = 0; i < ncand; i++) {
        double n = scale * (double)lb_weight(&c->eps[cand[i]]) / sum + 0.5;
        counts[i] = n < 1 ? 1 : (size_t)n;
        total += counts[i];
    }
    struct lb_point *pts = malloc(total * sizeof(*pts));
    uint32_t *tab = malloc(total * sizeof(*tab));
    uint64_t *hashes = malloc(total * sizeof(*hashes));
    if (!pts || !tab || !hashes) {
        free(pts);
        free(tab);
        free(hashes);
        free(counts);
        free(cand);
        return;
    }
    size_t np = 0;
    for (size_t i = 0; i < ncand; i++) {
        const struct km_dp_endpoint *ep = &c->eps[cand[i]];
        const char *a = ep->addr_str ? ep->addr_str : "";
        for (size_t j = 0; j < counts[i]; j++) {
            char key[LB_KEY_MAX];
            int kl = snprintf(key, sizeof(key), "%s_%zu", a, j);
            size_t klen = kl < 0 ? 0 : (size_t)kl < sizeof(key) ? (size_t)kl : sizeof(key) - 1;
            pts[np].hash = km_dp_lb_hash(key, klen);
            pts[np].ep = cand[i];
            np++;
        }
    }
    qsort(pts, np, sizeof(*pts), lb_point_cmp);
    for (size_t i = 0; i < np; i++) {
        tab[i] = pts[i].ep;
        hashes[i] = pts[i].hash;
    }
    c->table = tab;
    c->ring_hashes = hashes;
    c->table_size = np;
    free(pts);
    free(counts);
    free(cand);
}

/* --- Maglev ------------------------------------------------------------------------------- */

void
km_dp_lb_build_maglev(struct km_dp_cluster *c, size_t table_size)
{
    lb_table_reset(c);
    size_t m = table_size ? table_size : KM_DP_LB_MAGLEV_SIZE;
    if (c->neps == 0 || m < 2 || m > UINT32_MAX)
        return;
    uint32_t *cand = malloc(c->neps * sizeof(*cand));
    uint32_t *tab = malloc(m * sizeof(*tab));
    size_t ncand = cand ? lb_candidates(c, cand) : 0;
    struct maglev_perm {
        uint64_t offset, skip, next;
        double weight, credit;
    } *perm = ncand ? calloc(ncand, sizeof(*perm)) : NULL;
    if (!cand || !tab || !perm) {
        free(cand);
        free(tab);
        free(perm);
        return;
    }
    double maxw = 0;
    for (size_t i = 0; i < ncand; i++) {
        double w = lb_weight(&c->eps[cand[i]]);
        if (w > maxw)
            maxw = w;
    }
    for (size_t i = 0; i < ncand; i++) {
        const struct km_dp_endpoint *ep = &c->eps[cand[i]];
        const char *a = ep->addr_str ? ep->addr_str : "";
        size_t alen = strlen(a);
        perm[i].offset = XXH64(a, alen, 0) % m;
        perm[i].skip = XXH64(a, alen, 1) % (m - 1) + 1;
        perm[i].weight = lb_weight(ep) / maxw;
    }
    for (size_t s = 0; s < m; s++)
        tab[s] = UINT32_MAX;
    /* Rounds: every endpoint earns its normalized weight (the heaviest earns 1, so each round
     * fills at least one slot) and, for each whole unit earned, claims the next free slot of
     * its own permutation. With a prime <m> every permutation visits every slot. */
    size_t filled = 0;
    while (filled < m) {
        size_t before = filled;
        for (size_t i = 0; i < ncand && filled < m; i++) {
            perm[i].credit += perm[i].weight;
            if (perm[i].credit < 1.0 - 1e-9)
                continue;
            perm[i].credit -= 1.0;
            uint64_t slot;
            do {
                slot = (perm[i].offset + perm[i].next * perm[i].skip) % m;
                perm[i].next++;
            } while (tab[slot] != UINT32_MAX && perm[i].next <= m);
            if (tab[slot] != UINT32_MAX)
                continue; /* <m> not prime: this permutation is exhausted */
            tab[slot] = cand[i];
            filled++;
        }
        if (filled == before) {
            /* only when <m> is not prime: give the remaining slots out in turn */
            size_t k = 0;
            for (size_t s = 0; s < m; s++)
                if (tab[s] == UINT32_MAX)
                    tab[s] = cand[k++ % ncand];
            break;
        }
    }
    c->table = tab;
    c->table_size = m;
    free(perm);
    free(cand);
}
