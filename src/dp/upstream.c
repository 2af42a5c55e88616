/* Upstream selection and connection: cluster lookup, weighted cluster choice, healthy endpoint
 * choice with the cluster's load balancer (lb.h, per worker state), non-blocking connect.
 * TCP connections carry no request hash: ring hash and Maglev pick at random for them, like
 * Envoy's tcp_proxy without a hash policy. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/dp/engine_int.h>
#include <km/dp/tls.h>

long
km__dp_cluster_index(const struct km_dp_snapshot *s, const char *name)
{
    if (!name)
        return -1;
    size_t lo = 0, hi = s->nclusters;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->clusters[mid].name, name);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static uint64_t
upstream_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

long
km__dp_weighted_pick(const struct km_dp_snapshot *s, const struct km_dp_weighted *wc, size_t n,
                     uint32_t total_weight, uint64_t seed)
{
    if (n == 0)
        return -1;
    if (n == 1)
        return km__dp_cluster_index(s, wc[0].cluster);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += wc[i].weight;
    (void)total_weight; /* recomputed: the sum is what the weights say */
    if (total == 0)
        return km__dp_cluster_index(s, wc[0].cluster);
    uint64_t r = upstream_mix(seed) % total;
    for (size_t i = 0; i < n; i++) {
        if (r < wc[i].weight)
            return km__dp_cluster_index(s, wc[i].cluster);
        r -= wc[i].weight;
    }
    return km__dp_cluster_index(s, wc[n - 1].cluster);
}

long
km__dp_endpoint_pick(struct km_dp_pub *pub, size_t w, size_t ci, long exclude)
{
    const struct km_dp_cluster *c = &pub->snap->clusters[ci];
    struct km_dp_lb_state *st = &pub->lbs[ci * pub->eng->nworkers + w];
    long pick = -1;
    /* The balancer knows nothing of <exclude>: ask it a few times, then take the next
     * endpoint in order (healthy first) so that a retry never lands on the failed one. */
    for (int i = 0; i < 4 && pick < 0; i++) {
        const struct km_dp_endpoint *ep = km_dp_lb_pick(c, st, 0, false);
        if (!ep)
            return -1;
        long idx = (long)(ep - c->eps);
        if (idx >= 0 && (size_t)idx < c->neps && idx != exclude)
            pick = idx;
    }
    for (int pass = 0; pass < 2 && pick < 0; pass++) {
        for (size_t k = 1; k <= c->neps && pick < 0; k++) {
            size_t idx = ((size_t)(exclude < 0 ? 0 : exclude) + k) % c->neps;
            if ((long)idx != exclude && (pass == 1 || c->eps[idx].healthy))
                pick = (long)idx;
        }
    }
    if (pick >= 0)
        km_dp_lb_begin(st, &c->eps[pick]);
    return pick;
}

void
km__dp_endpoint_done(struct km_dp_pub *pub, size_t w, size_t ci, long ei)
{
    if (ei < 0)
        return;
    const struct km_dp_cluster *c = &pub->snap->clusters[ci];
    km_dp_lb_end(&pub->lbs[ci * pub->eng->nworkers + w], &c->eps[ei]);
}

int
km__dp_connect(const struct km_dp_endpoint *ep)
{
    int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -errno;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) == -1 &&
        errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int
km__dp_connect_cluster(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei)
{
    const struct km_dp_cluster *c = &pub->snap->clusters[ci];
    if (c->tls)
        return km__dp_tls_connect(w, pub, ci, ei);
    return km__dp_connect(&c->eps[ei]);
}
