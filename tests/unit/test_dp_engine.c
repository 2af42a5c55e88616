/* kuma-dp proxy engine: TCP proxy through real sockets on 127.0.0.1 (echo backends on their
 * own loop thread), snapshot swaps, listener removal, drain, connect failures and timeouts,
 * idle timeout, stats and the admin listener. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/dp/engine.h>
#include <km/dp/snapshot.h>
#include <km/dp/stats.h>

#include "dp_util.h"
#include "test.h"

/* ---- small helpers ---- */

/* A port nobody listens on, held (bound, SO_REUSEPORT, not listening) until closed: connects
 * to it are refused, and an engine listener can still bind it. */

static void
recv_exact(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t k = recv(fd, b, n, 0);
        if (k <= 0)
            KM_FAIL_AT("recv_exact: %zd (%s), %zu bytes missing", k, strerror(errno), n);
        b += k;
        n -= (size_t)k;
    }
}

/* Reads until EOF or error; returns bytes read before it, -1 on error/timeout. */
static ssize_t
recv_until_eof(int fd, uint64_t timeout_ms)
{
    uint8_t buf[4096];
    ssize_t total = 0;
    uint64_t end = dpt_now_ms() + timeout_ms;
    while (dpt_now_ms() < end) {
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k == 0)
            return total;
        if (k < 0)
            return errno == ECONNRESET ? total : -1;
        total += k;
    }
    return -1;
}

static void
echo_roundtrip(int fd, const char *msg)
{
    char buf[256];
    size_t n = strlen(msg);
    ASSERT(n < sizeof(buf));
    dpt_send_all(fd, msg, n);
    recv_exact(fd, buf, n);
    buf[n] = 0;
    ASSERT_STR_EQ(buf, msg);
}

/* ---- echo backend on its own loop thread ---- */

struct echo_conn {
    struct echo_srv *s;
    int fd;
    struct km_io *io;
    uint8_t buf[65536];
    size_t off, len;
    bool eof;
    struct echo_conn *prev, *next;
};

struct echo_srv {
    struct km_loop *loop;
    pthread_t th;
    int lfd;
    uint16_t port;
    char tag; /* sent first on every connection when non-zero */
    struct km_io *lio;
    struct echo_conn *conns;
};

static void
echo_conn_close(struct echo_conn *c)
{
    km_io_free(c->io);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void
echo_on_io(struct km_io *io, int fd, unsigned ev, void *arg)
{
    struct echo_conn *c = arg;
    if (c->len > 0) {
        ssize_t n = send(fd, c->buf + c->off, c->len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            echo_conn_close(c);
            return;
        }
        if (n > 0) {
            c->off += (size_t)n;
            c->len -= (size_t)n;
        }
    } else if (!c->eof) {
        ssize_t n = recv(fd, c->buf, sizeof(c->buf), 0);
        if (n < 0 && errno != EAGAIN) {
            echo_conn_close(c);
            return;
        }
        if (n == 0)
            c->eof = true;
        if (n > 0) {
            c->off = 0;
            c->len = (size_t)n;
        }
    }
    if (c->eof && c->len == 0) {
        shutdown(fd, SHUT_WR);
        echo_conn_close(c); /* everything was read: no reset */
        return;
    }
    km_io_set(io, c->len > 0 ? KM_IO_WRITE : KM_IO_READ);
}

static void
echo_on_accept(struct km_io *io, int lfd, unsigned ev, void *arg)
{
    struct echo_srv *s = arg;
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct echo_conn *c = calloc(1, sizeof(*c));
    c->s = s;
    c->fd = fd;
    if (s->tag)
        ASSERT(send(fd, &s->tag, 1, MSG_NOSIGNAL) == 1);
    c->io = km_io_new(s->loop, fd, KM_IO_READ, echo_on_io, c);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
}

static void *
echo_main(void *arg)
{
    struct echo_srv *s = arg;
    km_loop_run(s->loop);
    return NULL;
}

static void
echo_start(struct echo_srv *s, char tag)
{
    memset(s, 0, sizeof(*s));
    s->tag = tag;
    s->loop = km_loop_new();
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(s->lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(s->lfd, 512) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(s->lfd, (struct sockaddr *)&sin, &sl) == 0);
    s->port = ntohs(sin.sin_port);
    s->lio = km_io_new(s->loop, s->lfd, KM_IO_READ, echo_on_accept, s);
    ASSERT(pthread_create(&s->th, NULL, echo_main, s) == 0);
}

static void
echo_on_stop(void *arg)
{
    struct echo_srv *s = arg;
    while (s->conns)
        echo_conn_close(s->conns);
    km_io_free(s->lio);
    close(s->lfd);
    km_loop_stop(s->loop);
}

static void
echo_stop(struct echo_srv *s)
{
    km_loop_post(s->loop, echo_on_stop, s);
    pthread_join(s->th, NULL);
    km_loop_free(s->loop);
}

/* ---- hand-built snapshots (freed by km_dp_snapshot_unref of src/dp/snapshot.c) ---- */

static struct km_dp_snapshot *
tsnap_new(uint64_t gen, size_t nl, size_t nc)
{
    struct km_dp_snapshot *s = km_xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->generation = gen;
    s->nlisteners = nl;
    s->listeners = km_xcalloc(nl ? nl : 1, sizeof(*s->listeners));
    s->nclusters = nc;
    s->clusters = km_xcalloc(nc ? nc : 1, sizeof(*s->clusters));
    return s;
}

/* Listener <i> (names must be added in sorted order) on 127.0.0.1:<port> with one TCP proxy
 * chain to <cluster> (or an HCM chain when <cluster> is NULL); <dest_port> 0 = any. */
static void
tsnap_listener(struct km_dp_snapshot *s, size_t i, const char *name, uint16_t port,
               const char *cluster, uint32_t dest_port, uint32_t idle_ms)
{
    struct km_dp_listener *l = &s->listeners[i];
    l->name = km_xstrdup(name);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, port);
    memcpy(&l->addr, &sin, sizeof(sin));
    l->addrlen = sizeof(sin);
    l->addr_str = km_xasprintf("127.0.0.1:%u", port);
    l->nchains = 1;
    l->chains = km_xcalloc(1, sizeof(*l->chains));
    struct km_dp_chain *ch = &l->chains[0];
    ch->dest_port = dest_port;
    ch->stat_prefix = km_xstrdup(name);
    if (cluster) {
        ch->kind = KM_DP_FILTER_TCP_PROXY;
        ch->nclusters = 1;
        ch->clusters = km_xcalloc(1, sizeof(*ch->clusters));
        ch->clusters[0].cluster = km_xstrdup(cluster);
        ch->clusters[0].weight = 1;
        ch->total_weight = 1;
        ch->idle_timeout_ms = idle_ms;
    } else {
        ch->kind = KM_DP_FILTER_HCM;
    }
}

static void
tsnap_cluster(struct km_dp_snapshot *s, size_t i, const char *name, uint32_t connect_timeout_ms,
              const uint16_t *ports, size_t nports)
{
    struct km_dp_cluster *c = &s->clusters[i];
    c->name = km_xstrdup(name);
    c->lb = KM_DP_LB_ROUND_ROBIN;
    c->connect_timeout_ms = connect_timeout_ms;
    c->neps = nports;
    c->eps = km_xcalloc(nports ? nports : 1, sizeof(*c->eps));
    for (size_t j = 0; j < nports; j++) {
        struct km_dp_endpoint *ep = &c->eps[j];
        struct sockaddr_in sin;
        dpt_sin_loopback(&sin, ports[j]);
        memcpy(&ep->addr, &sin, sizeof(sin));
        ep->addrlen = sizeof(sin);
        ep->addr_str = km_xasprintf("127.0.0.1:%u", ports[j]);
        ep->weight = 1;
        ep->healthy = true;
        ep->zone = km_xstrdup("");
    }
}

static struct km_dp_engine *
engine_new(unsigned workers)
{
    struct km_dp_engine_opts o = {.concurrency = workers};
    struct km_dp_engine *e = km_dp_engine_new(&o);
    ASSERT(e != NULL);
    return e;
}

/* Waits up to 5 s for a stat to reach <want>. */
static void
wait_stat(struct km_dp_engine *e, const char *name, int64_t want)
{
    uint64_t end = dpt_now_ms() + 5000;
    while (dpt_stat_of(e, name) != want && dpt_now_ms() < end)
        dpt_sleep_ms(2);
    int64_t got = dpt_stat_of(e, name);
    if (got != want)
        KM_FAIL_AT("stat %s: %lld, want %lld", name, (long long)got, (long long)want);
}

/* ---- bulk transfer clients ---- */

static uint8_t
pattern(size_t conn, size_t i)
{
    return (uint8_t)((i * 2654435761u + conn * 97u) >> 7);
}

/* Sends <total> patterned bytes on each of <n> connections, half-closes each once all are
 * sent, and checks every echoed byte and the EOF that must follow (proxy half-close). */
static void
bulk_echo(int *fds, size_t n, size_t total, size_t tag_bytes)
{
    size_t *sent = km_xcalloc(n, sizeof(size_t)), *got = km_xcalloc(n, sizeof(size_t));
    bool *eof = km_xcalloc(n, sizeof(bool));
    struct pollfd *pfd = km_xcalloc(n, sizeof(*pfd));
    uint8_t *buf = km_xmalloc(65536);
    for (size_t i = 0; i < n; i++)
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    size_t done = 0;
    uint64_t end = dpt_now_ms() + 15000;
    while (done < n) {
        ASSERT(dpt_now_ms() < end);
        for (size_t i = 0; i < n; i++) {
            pfd[i].fd = eof[i] ? -1 : fds[i];
            pfd[i].events = POLLIN | (sent[i] < total ? POLLOUT : 0);
            pfd[i].revents = 0;
        }
        int r = poll(pfd, n, 1000);
        ASSERT(r >= 0);
        for (size_t i = 0; i < n; i++) {
            if (eof[i])
                continue;
            if ((pfd[i].revents & POLLOUT) && sent[i] < total) {
                size_t k = total - sent[i] < 65536 ? total - sent[i] : 65536;
                for (size_t j = 0; j < k; j++)
                    buf[j] = pattern(i, sent[i] + j);
                ssize_t m = send(fds[i], buf, k, MSG_NOSIGNAL);
                if (m > 0) {
                    sent[i] += (size_t)m;
                    if (sent[i] == total)
                        ASSERT(shutdown(fds[i], SHUT_WR) == 0);
                }
            }
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t m = recv(fds[i], buf, 65536, 0);
                if (m == 0) {
                    eof[i] = true;
                    done++;
                    continue;
                }
                if (m < 0) {
                    ASSERT(errno == EAGAIN);
                    continue;
                }
                for (ssize_t j = 0; j < m; j++) {
                    size_t pos = got[i] + (size_t)j;
                    if (pos < tag_bytes)
                        continue;
                    if (buf[j] != pattern(i, pos - tag_bytes))
                        KM_FAIL_AT("conn %zu: byte %zu differs", i, pos - tag_bytes);
                }
                got[i] += (size_t)m;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        ASSERT_INT_EQ(sent[i], total);
        ASSERT_INT_EQ(got[i], total + tag_bytes);
    }
    free(sent);
    free(got);
    free(eof);
    free(pfd);
    free(buf);
}

/* ---- tests ---- */

KM_TEST(dp_engine_tcp_large_transfer_half_close)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(2);
    ASSERT(!km_dp_engine_is_ready(e));
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    ASSERT(km_dp_engine_is_ready(e));

    int fd = dpt_tconnect(lport);
    ASSERT(fd >= 0);
    size_t total = 10u * 1024u * 1024u;
    bulk_echo(&fd, 1, total, 0);
    close(fd);

    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_active", lport);
    wait_stat(e, name, 0);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_total", lport);
    ASSERT_INT_EQ(dpt_stat_of(e, name), 1);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_rx_bytes_total", lport);
    ASSERT_INT_EQ(dpt_stat_of(e, name), total);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_tx_bytes_total", lport);
    ASSERT_INT_EQ(dpt_stat_of(e, name), total);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.backend.upstream_cx_total"), 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.backend.upstream_cx_active"), 0);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.backend.upstream_cx_tx_bytes_total"), total);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.backend.upstream_cx_rx_bytes_total"), total);
    ASSERT_INT_EQ(dpt_stat_of(e, "listener_manager.total_listeners_active"), 2);
    ASSERT_INT_EQ(km_dp_engine_active_connections(e), 0);

    km_dp_engine_free(e);
    close(hold);
    echo_stop(&be);
}

KM_TEST(dp_engine_tcp_half_close_response_after_eof)
{
    /* The client sends, half-closes, and only then reads: the echo (and its EOF) must still
     * come back through the proxy. */
    struct echo_srv be;
    echo_start(&be, 0);
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    int fd = dpt_tconnect(lport);
    ASSERT(fd >= 0);
    dpt_send_all(fd, "hello, half close", 17);
    ASSERT(shutdown(fd, SHUT_WR) == 0);
    char buf[32];
    recv_exact(fd, buf, 17);
    ASSERT(memcmp(buf, "hello, half close", 17) == 0);
    ASSERT_INT_EQ(recv_until_eof(fd, 3000), 0);
    close(fd);
    km_dp_engine_free(e);
    close(hold);
    echo_stop(&be);
}

KM_TEST(dp_engine_tcp_many_connections_two_workers)
{
    struct echo_srv be1, be2;
    echo_start(&be1, 0);
    echo_start(&be2, 0);
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(2);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "backend", 0, 0);
    uint16_t ports[2] = {be1.port, be2.port};
    tsnap_cluster(s, 0, "backend", 1000, ports, 2);
    dpt_publish_and_wait(e, s);

    enum { N = 64 };
    int fds[N];
    for (size_t i = 0; i < N; i++) {
        fds[i] = dpt_tconnect(lport);
        ASSERT(fds[i] >= 0);
    }
    bulk_echo(fds, N, 200000, 0);
    for (size_t i = 0; i < N; i++)
        close(fds[i]);
    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_active", lport);
    wait_stat(e, name, 0);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.backend.upstream_cx_total"), N);

    /* Both workers accepted connections (SO_REUSEPORT balancing), and both endpoints got some. */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1_%u", lport);
    struct km_dp_stat_block *lb = km_dp_stats_ref(km_dp_engine_stats(e), KM_DP_STAT_LISTENER,
                                                  addr, NULL);
    int64_t w0 = atomic_load(&lb->v[0 * lb->n + KM_DP_LS_CX_TOTAL]);
    int64_t w1 = atomic_load(&lb->v[1 * lb->n + KM_DP_LS_CX_TOTAL]);
    km_dp_stats_unref(km_dp_engine_stats(e), lb);
    ASSERT_INT_EQ(w0 + w1, N);
    ASSERT(w0 > 0 && w1 > 0);
    char *clusters = km_dp_engine_clusters_text(e);
    char line[128];
    snprintf(line, sizeof(line), "backend::127.0.0.1:%u::cx_total::", be1.port);
    ASSERT_STR_CONTAINS(clusters, line);
    snprintf(line, sizeof(line), "backend::127.0.0.1:%u::cx_total::0\n", be1.port);
    ASSERT(strstr(clusters, line) == NULL);
    snprintf(line, sizeof(line), "backend::127.0.0.1:%u::cx_total::0\n", be2.port);
    ASSERT(strstr(clusters, line) == NULL);
    free(clusters);

    km_dp_engine_free(e);
    close(hold);
    echo_stop(&be1);
    echo_stop(&be2);
}

KM_TEST(dp_engine_connect_refused_counts_and_retries)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int hold, dead_hold;
    uint16_t lport = dpt_reserve_port(&hold);
    uint16_t dead = dpt_reserve_port(&dead_hold);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 2, 2);
    /* listeners sorted by name: "a" -> cluster with only the dead endpoint, "b" -> mixed */
    int hold2;
    uint16_t lport2 = dpt_reserve_port(&hold2);
    tsnap_listener(s, 0, "a", lport, "deadonly", 0, 0);
    tsnap_listener(s, 1, "b", lport2, "mixed", 0, 0);
    tsnap_cluster(s, 0, "deadonly", 1000, &dead, 1);
    uint16_t mixed[2] = {dead, be.port};
    tsnap_cluster(s, 1, "mixed", 1000, mixed, 2);
    dpt_publish_and_wait(e, s);

    /* Only a dead endpoint: the downstream is closed, the failure counted. */
    int fd = dpt_tconnect(lport);
    ASSERT(fd >= 0);
    ASSERT(recv_until_eof(fd, 3000) == 0);
    close(fd);
    wait_stat(e, "cluster.deadonly.upstream_cx_connect_fail", 1);
    wait_stat(e, "cluster.deadonly.upstream_cx_connect_attempts_exceeded", 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.deadonly.upstream_cx_active"), 0);

    /* One dead, one live endpoint: every connection works (the retry avoids the dead one). */
    for (int i = 0; i < 6; i++) {
        fd = dpt_tconnect(lport2);
        ASSERT(fd >= 0);
        echo_roundtrip(fd, "retry me");
        close(fd);
    }
    ASSERT(dpt_stat_of(e, "cluster.mixed.upstream_cx_connect_fail") >= 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.mixed.upstream_cx_connect_attempts_exceeded"), 0);
    char *clusters = km_dp_engine_clusters_text(e);
    char line[128];
    snprintf(line, sizeof(line), "mixed::127.0.0.1:%u::cx_connect_fail::", dead);
    ASSERT_STR_CONTAINS(clusters, line);
    free(clusters);

    km_dp_engine_free(e);
    close(hold);
    close(hold2);
    close(dead_hold);
    echo_stop(&be);
}

KM_TEST(dp_engine_connect_timeout)
{
    /* A blackhole: a listener whose accept queue is full drops further SYNs, so a connect to
     * it stays in progress. */
    int bh = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(bh, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(bh, 0) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(bh, (struct sockaddr *)&sin, &sl) == 0);
    uint16_t bport = ntohs(sin.sin_port);
    int fill[8];
    size_t nfill = 0;
    bool blackholed = false;
    while (nfill < 8 && !blackholed) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int r = connect(c, (struct sockaddr *)&sin, sizeof(sin));
        ASSERT(r == 0 || errno == EINPROGRESS);
        struct pollfd p = {.fd = c, .events = POLLOUT};
        if (poll(&p, 1, 200) == 0)
            blackholed = true;
        fill[nfill++] = c;
    }
    ASSERT(blackholed);

    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "hole", 0, 0);
    tsnap_cluster(s, 0, "hole", 200, &bport, 1);
    dpt_publish_and_wait(e, s);
    uint64_t t0 = dpt_now_ms();
    int fd = dpt_tconnect(lport);
    ASSERT(fd >= 0);
    ASSERT(recv_until_eof(fd, 4000) == 0);
    uint64_t dt = dpt_now_ms() - t0;
    ASSERT(dt >= 150 && dt < 3000);
    close(fd);
    wait_stat(e, "cluster.hole.upstream_cx_connect_timeout", 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.hole.upstream_cx_connect_fail"), 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "cluster.hole.upstream_cx_active"), 0);
    km_dp_engine_free(e);
    close(hold);
    for (size_t i = 0; i < nfill; i++)
        close(fill[i]);
    close(bh);
}

KM_TEST(dp_engine_snapshot_swap_keeps_connections)
{
    struct echo_srv a, b;
    echo_start(&a, 'A');
    echo_start(&b, 'B');
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(2);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "svc", 0, 0);
    tsnap_cluster(s, 0, "svc", 1000, &a.port, 1);
    dpt_publish_and_wait(e, s);

    int c1 = dpt_tconnect(lport);
    ASSERT(c1 >= 0);
    char tag;
    recv_exact(c1, &tag, 1);
    ASSERT_INT_EQ(tag, 'A');
    echo_roundtrip(c1, "before swap");

    /* Same listener, the cluster now points at B (an EDS change). */
    s = tsnap_new(2, 1, 1);
    tsnap_listener(s, 0, "out", lport, "svc", 0, 0);
    tsnap_cluster(s, 0, "svc", 1000, &b.port, 1);
    dpt_publish_and_wait(e, s);

    echo_roundtrip(c1, "after swap, old connection");
    int c2 = dpt_tconnect(lport);
    ASSERT(c2 >= 0);
    recv_exact(c2, &tag, 1);
    ASSERT_INT_EQ(tag, 'B');
    echo_roundtrip(c2, "new connection");
    /* the listening sockets were kept, not reopened */
    ASSERT_INT_EQ(dpt_stat_of(e, "listener_manager.total_listeners_active"), 2);
    ASSERT_INT_EQ(dpt_stat_of(e, "listener_manager.listener_create_failure"), 0);
    ASSERT_INT_EQ(dpt_stat_of(e, "server.snapshots_applied"), 4);
    echo_roundtrip(c1, "still there");
    close(c1);
    close(c2);
    km_dp_engine_free(e);
    close(hold);
    echo_stop(&a);
    echo_stop(&b);
}

KM_TEST(dp_engine_listener_removal_drains)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int h1, h2;
    uint16_t p1 = dpt_reserve_port(&h1), p2 = dpt_reserve_port(&h2);
    struct km_dp_engine *e = engine_new(2);
    struct km_dp_snapshot *s = tsnap_new(1, 2, 1);
    tsnap_listener(s, 0, "one", p1, "backend", 0, 0);
    tsnap_listener(s, 1, "two", p2, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    int c = dpt_tconnect(p2);
    ASSERT(c >= 0);
    echo_roundtrip(c, "on two");

    s = tsnap_new(2, 1, 1);
    tsnap_listener(s, 0, "one", p1, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    /* "two" no longer accepts, its established connection keeps working */
    ASSERT_INT_EQ(dpt_tconnect(p2), -ECONNREFUSED);
    echo_roundtrip(c, "still proxied after removal");
    ASSERT_INT_EQ(km_dp_engine_active_connections(e), 1);
    int d = dpt_tconnect(p1);
    ASSERT(d >= 0);
    echo_roundtrip(d, "on one");
    close(d);
    close(c);
    uint64_t end = dpt_now_ms() + 5000;
    while (km_dp_engine_active_connections(e) != 0 && dpt_now_ms() < end)
        dpt_sleep_ms(2);
    ASSERT_INT_EQ(km_dp_engine_active_connections(e), 0);
    /* the removed listener's stats went away with its last connection */
    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_total", p2);
    ASSERT_INT_EQ(dpt_stat_of(e, name), -1);
    ASSERT_INT_EQ(dpt_stat_of(e, "listener_manager.total_listeners_active"), 2);
    km_dp_engine_free(e);
    close(h1);
    close(h2);
    echo_stop(&be);
}

KM_TEST(dp_engine_drain_stops_accepting)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(2);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "out", lport, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    int c = dpt_tconnect(lport);
    ASSERT(c >= 0);
    echo_roundtrip(c, "before drain");
    km_dp_engine_drain(e);
    ASSERT(!km_dp_engine_is_ready(e));
    ASSERT(km_dp_engine_is_draining(e));
    wait_stat(e, "listener_manager.total_listeners_active", 0);
    ASSERT_INT_EQ(dpt_tconnect(lport), -ECONNREFUSED);
    echo_roundtrip(c, "during drain");
    /* a snapshot published while draining is ignored */
    s = tsnap_new(2, 1, 1);
    tsnap_listener(s, 0, "out", lport, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    km_dp_engine_publish(e, s);
    km_dp_snapshot_unref(s);
    ASSERT_INT_EQ(km_dp_engine_applied_generation(e), 1);
    /* freeing with a connection still open closes it */
    km_dp_engine_free(e);
    ASSERT_INT_EQ(recv_until_eof(c, 3000), 0);
    close(c);
    close(hold);
    echo_stop(&be);
}

KM_TEST(dp_engine_idle_timeout_and_no_chain)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int h1, h2;
    uint16_t p1 = dpt_reserve_port(&h1), p2 = dpt_reserve_port(&h2);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 2, 1);
    tsnap_listener(s, 0, "idle", p1, "backend", 0, 300);
    tsnap_listener(s, 1, "nomatch", p2, "backend", 1, 0); /* chain for port 1 only */
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    dpt_publish_and_wait(e, s);
    int c = dpt_tconnect(p1);
    ASSERT(c >= 0);
    /* traffic keeps it open past the timeout... */
    for (int i = 0; i < 4; i++) {
        if (i > 0)
            dpt_sleep_ms(120);
        echo_roundtrip(c, "ping");
    }
    /* ...silence closes it */
    uint64_t t0 = dpt_now_ms();
    ASSERT_INT_EQ(recv_until_eof(c, 3000), 0);
    ASSERT(dpt_now_ms() - t0 >= 200);
    close(c);
    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_idle_timeout", p1);
    wait_stat(e, name, 1);

    c = dpt_tconnect(p2);
    ASSERT(c >= 0);
    ASSERT(recv_until_eof(c, 3000) == 0);
    close(c);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.no_filter_chain_match", p2);
    wait_stat(e, name, 1);
    km_dp_engine_free(e);
    close(h1);
    close(h2);
    echo_stop(&be);
}

KM_TEST(dp_engine_bind_failure_not_ready)
{
    /* A port held by a listening socket without SO_REUSEPORT cannot be bound. */
    int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(busy, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(busy, 1) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(busy, (struct sockaddr *)&sin, &sl) == 0);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 1);
    tsnap_listener(s, 0, "taken", ntohs(sin.sin_port), "backend", 0, 0);
    uint16_t none = 1;
    tsnap_cluster(s, 0, "backend", 1000, &none, 1);
    dpt_publish_and_wait(e, s);
    ASSERT(!km_dp_engine_is_ready(e));
    ASSERT_INT_EQ(dpt_stat_of(e, "listener_manager.listener_create_failure"), 1);
    km_dp_engine_free(e);
    close(busy);
}

/* ---- admin ---- */

struct admin_env {
    struct km_loop *loop;
    pthread_t th;
    struct km_dp_engine *e;
    struct km_dp_admin *admin;
    atomic_int quit_calls;
};

static void *
admin_main(void *arg)
{
    struct admin_env *env = arg;
    km_loop_run(env->loop);
    return NULL;
}

static void
admin_quit_hook(void *arg)
{
    struct admin_env *env = arg;
    atomic_fetch_add(&env->quit_calls, 1);
}

struct publish_msg {
    struct km_dp_engine *e;
    struct km_dp_snapshot *s;
};

/* The admin reads the engine on its loop's thread, so publish from that thread too (in
 * kuma-dp both run on the main thread). */
static void
admin_publish_on_loop(void *arg)
{
    struct publish_msg *m = arg;
    km_dp_engine_publish(m->e, m->s);
    km_dp_snapshot_unref(m->s);
    free(m);
}

/* One HTTP exchange with the admin; returns the whole response (caller frees). */
static char *
http_raw(uint16_t port, const char *req)
{
    int fd = dpt_tconnect(port);
    ASSERT(fd >= 0);
    dpt_send_all(fd, req, strlen(req));
    struct km_sbuf b;
    km_sbuf_init(&b);
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        ASSERT(n >= 0);
        if (n == 0)
            break;
        km_sbuf_add(&b, buf, (size_t)n);
    }
    close(fd);
    return km_sbuf_take(&b);
}

static char *
http_get(uint16_t port, const char *path)
{
    char req[256];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    return http_raw(port, req);
}

KM_TEST(dp_engine_admin_endpoints)
{
    struct echo_srv be;
    echo_start(&be, 0);
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct admin_env env = {0};
    atomic_init(&env.quit_calls, 0);
    env.loop = km_loop_new();
    env.e = engine_new(2);
    struct km_dp_admin_hooks hooks = {.quit = admin_quit_hook, .arg = &env};
    env.admin = km_dp_admin_start(env.loop, env.e, 0, &hooks);
    ASSERT(env.admin != NULL);
    uint16_t ap = km_dp_admin_port(env.admin);
    ASSERT(pthread_create(&env.th, NULL, admin_main, &env) == 0);

    char *r = http_get(ap, "/ready");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 503 ");
    ASSERT_STR_CONTAINS(r, "PRE_INITIALIZING");
    free(r);

    struct km_dp_snapshot *s = tsnap_new(7, 1, 1);
    tsnap_listener(s, 0, "outbound:backend", lport, "backend", 0, 0);
    tsnap_cluster(s, 0, "backend", 1000, &be.port, 1);
    struct publish_msg *m = km_xcalloc(1, sizeof(*m));
    m->e = env.e;
    m->s = s;
    km_loop_post(env.loop, admin_publish_on_loop, m);
    uint64_t end = dpt_now_ms() + 5000;
    while (km_dp_engine_applied_generation(env.e) < 7 && dpt_now_ms() < end)
        dpt_sleep_ms(1);

    r = http_get(ap, "/ready");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 200 OK");
    ASSERT_STR_CONTAINS(r, "\r\n\r\nLIVE\n");
    free(r);

    for (int i = 0; i < 3; i++) {
        int c = dpt_tconnect(lport);
        ASSERT(c >= 0);
        echo_roundtrip(c, "0123456789");
        close(c);
    }
    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_active", lport);
    wait_stat(env.e, name, 0);

    r = http_get(ap, "/stats");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 200 OK");
    ASSERT_STR_CONTAINS(r, "cluster.backend.upstream_cx_total: 3\n");
    ASSERT_STR_CONTAINS(r, "cluster.backend.upstream_cx_tx_bytes_total: 30\n");
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_total: 3\n", lport);
    ASSERT_STR_CONTAINS(r, name);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.downstream_cx_rx_bytes_total: 30\n", lport);
    ASSERT_STR_CONTAINS(r, name);
    free(r);

    r = http_get(ap, "/stats/prometheus");
    ASSERT_STR_CONTAINS(r, "# TYPE envoy_cluster_upstream_cx_total counter\n");
    ASSERT_STR_CONTAINS(r, "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"} 3\n");
    ASSERT_STR_CONTAINS(r, "# TYPE envoy_listener_downstream_cx_active gauge\n");
    snprintf(name, sizeof(name),
             "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_%u\"} 3\n",
             lport);
    ASSERT_STR_CONTAINS(r, name);
    free(r);

    r = http_get(ap, "/clusters");
    snprintf(name, sizeof(name), "backend::127.0.0.1:%u::cx_total::3\n", be.port);
    ASSERT_STR_CONTAINS(r, name);
    snprintf(name, sizeof(name), "backend::127.0.0.1:%u::health_flags::healthy\n", be.port);
    ASSERT_STR_CONTAINS(r, name);
    snprintf(name, sizeof(name), "backend::127.0.0.1:%u::cx_active::0\n", be.port);
    ASSERT_STR_CONTAINS(r, name);
    ASSERT_STR_CONTAINS(r, "backend::default_priority::max_connections::1024\n");
    free(r);

    r = http_get(ap, "/config_dump");
    ASSERT_STR_CONTAINS(r, "application/json");
    const char *body = strstr(r, "\r\n\r\n");
    ASSERT(body);
    json_error_t jerr;
    json_t *j = json_loads(body + 4, 0, &jerr);
    ASSERT(j != NULL);
    ASSERT_INT_EQ(json_integer_value(json_object_get(j, "generation")), 7);
    json_t *l0 = json_array_get(json_object_get(j, "listeners"), 0);
    ASSERT_STR_EQ(json_string_value(json_object_get(l0, "name")), "outbound:backend");
    json_t *c0 = json_array_get(json_object_get(j, "clusters"), 0);
    ASSERT_STR_EQ(json_string_value(json_object_get(c0, "name")), "backend");
    json_t *ep0 = json_array_get(json_object_get(c0, "endpoints"), 0);
    snprintf(name, sizeof(name), "127.0.0.1:%u", be.port);
    ASSERT_STR_EQ(json_string_value(json_object_get(ep0, "address")), name);
    json_decref(j);
    free(r);

    r = http_get(ap, "/nope");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 404 ");
    free(r);
    r = http_get(ap, "/quitquitquit");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 405 ");
    free(r);
    ASSERT_INT_EQ(atomic_load(&env.quit_calls), 0);
    r = http_raw(ap, "GET /stats HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 400 ");
    free(r);
    r = http_raw(ap, "POST /quitquitquit HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    ASSERT_STR_CONTAINS(r, "HTTP/1.1 200 OK");
    free(r);
    end = dpt_now_ms() + 3000;
    while (atomic_load(&env.quit_calls) == 0 && dpt_now_ms() < end)
        dpt_sleep_ms(1);
    ASSERT_INT_EQ(atomic_load(&env.quit_calls), 1);

    km_loop_stop(env.loop);
    pthread_join(env.th, NULL);
    km_dp_admin_free(env.admin);
    km_dp_engine_free(env.e);
    km_loop_free(env.loop);
    close(hold);
    echo_stop(&be);
}

KM_TEST(dp_engine_hcm_without_route_config_404)
{
    int hold;
    uint16_t lport = dpt_reserve_port(&hold);
    struct km_dp_engine *e = engine_new(1);
    struct km_dp_snapshot *s = tsnap_new(1, 1, 0);
    tsnap_listener(s, 0, "http", lport, NULL, 0, 0); /* HCM whose RDS config is not there yet */
    dpt_publish_and_wait(e, s);
    int c = dpt_tconnect(lport);
    ASSERT(c >= 0);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    dpt_send_all(c, req, strlen(req));
    char buf[512];
    ssize_t n = recv(c, buf, sizeof(buf) - 1, 0);
    ASSERT(n > 0);
    buf[n] = 0;
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 404 Not Found\r\n");
    ASSERT_STR_CONTAINS(buf, "content-length: 0\r\n");
    close(c);
    wait_stat(e, "http.http.no_route", 1);
    ASSERT_INT_EQ(dpt_stat_of(e, "http.http.downstream_rq_4xx"), 1);
    km_dp_engine_free(e);
    close(hold);
}
