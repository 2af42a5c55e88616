/* Event loop: epoll (level triggered), a binary heap of timers, an eventfd-driven post queue.
 * Watchers and timers freed while the loop runs are unlinked at once and released at the end
 * of the iteration, so a callback may free any watcher or timer, including its own. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <km/common/loop.h>
#include <km/common/util.h>

#define LOOP_MAX_EVENTS 256

struct km_io {
    struct km_loop *loop; /* borrowed */
    int fd;
    unsigned events;
    km_io_fn fn;
    void *arg;
    bool dead;
    struct km_io *prev, *next; /* live list, or dead list (next only) */
};

struct km_timer {
    struct km_loop *loop; /* borrowed */
    uint64_t deadline_ms;
    uint64_t seq;    /* arming order: ties fire in arming order, re-arms wait a turn */
    size_t heap_idx; /* SIZE_MAX when not armed */
    km_timer_fn fn;
    void *arg;
    bool dead;
    struct km_timer *prev, *next;
};

struct post_item {
    km_post_fn fn;
    void *arg;
    struct post_item *next;
};

struct km_loop {
    int epfd;
    int evfd;
    atomic_bool stop;
    uint64_t now_ms;
    uint64_t seq;
    struct km_io *ios;         /* live watchers */
    struct km_io *dead_ios;    /* freed during this iteration */
    struct km_timer *timers;   /* live timers */
    struct km_timer *dead_timers;
    struct km_timer **heap;    /* owned array of borrowed timers */
    size_t heap_len, heap_cap;
    pthread_mutex_t mu;
    struct post_item *post_head, *post_tail; /* under mu */
};

static uint64_t
loop_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- timer heap ---- */

static bool
timer_before(const struct km_timer *a, const struct km_timer *b)
{
    if (a->deadline_ms != b->deadline_ms)
        return a->deadline_ms < b->deadline_ms;
    return a->seq < b->seq;
}

static void
heap_set(struct km_loop *l, size_t i, struct km_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void
heap_up(struct km_loop *l, size_t i)
{
    struct km_timer *t = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_before(t, l->heap[p]))
            break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void
heap_down(struct km_loop *l, size_t i)
{
    struct km_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->heap_len)
            break;
        if (c + 1 < l->heap_len && timer_before(l->heap[c + 1], l->heap[c]))
            c++;
        if (!timer_before(l->heap[c], t))
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static void
heap_remove(struct km_loop *l, struct km_timer *t)
{
    size_t i = t->heap_idx;
    if (i == SIZE_MAX)
        return;
    t->heap_idx = SIZE_MAX;
    l->heap_len--;
    if (i == l->heap_len)
        return;
    struct km_timer *m = l->heap[l->heap_len];
    heap_set(l, i, m);
    heap_up(l, i);
    heap_down(l, m->heap_idx);
}

static void
heap_push(struct km_loop *l, struct km_timer *t)
{
    if (l->heap_len == l->heap_cap) {
        l->heap_cap = l->heap_cap ? l->heap_cap * 2 : 16;
        l->heap = km_xrealloc(l->heap, l->heap_cap * sizeof(*l->heap));
    }
    heap_set(l, l->heap_len++, t);
    heap_up(l, l->heap_len - 1);
}

/* ---- loop ---- */

struct km_loop *
km_loop_new(void)
{
    struct km_loop *l = km_xcalloc(1, sizeof(*l));
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->epfd < 0 || l->evfd < 0) {
        if (l->epfd >= 0)
            close(l->epfd);
        if (l->evfd >= 0)
            close(l->evfd);
        free(l);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev);
    pthread_mutex_init(&l->mu, NULL);
    atomic_init(&l->stop, false);
    l->now_ms = loop_clock_ms();
    return l;
}

static void
loop_reap(struct km_loop *l)
{
    while (l->dead_ios) {
        struct km_io *io = l->dead_ios;
        l->dead_ios = io->next;
        free(io);
    }
    while (l->dead_timers) {
        struct km_timer *t = l->dead_timers;
        l->dead_timers = t->next;
        free(t);
    }
}

void
km_loop_free(struct km_loop *l)
{
    if (!l)
        return;
    loop_reap(l);
    while (l->ios) {
        struct km_io *io = l->ios;
        l->ios = io->next;
        free(io);
    }
    while (l->timers) {
        struct km_timer *t = l->timers;
        l->timers = t->next;
        free(t);
    }
    free(l->heap);
    struct post_item *p = l->post_head;
    while (p) {
        struct post_item *n = p->next;
        free(p);
        p = n;
    }
    pthread_mutex_destroy(&l->mu);
    close(l->epfd);
    close(l->evfd);
    free(l);
}

static void
loop_wake(struct km_loop *l)
{
    uint64_t one = 1;
    ssize_t r = write(l->evfd, &one, sizeof(one));
    (void)r; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
}

void
km_loop_stop(struct km_loop *l)
{
    atomic_store(&l->stop, true);
    loop_wake(l);
}

void
km_loop_post(struct km_loop *l, km_post_fn fn, void *arg)
{
    struct post_item *p = km_xmalloc(sizeof(*p));
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&l->mu);
    bool was_empty = l->post_head == NULL;
    if (l->post_tail)
        l->post_tail->next = p;
    else
        l->post_head = p;
    l->post_tail = p;
    pthread_mutex_unlock(&l->mu);
    if (was_empty)
        loop_wake(l);
}

uint64_t
km_loop_now_ms(struct km_loop *l)
{
    return l->now_ms;
}

static void
loop_run_posts(struct km_loop *l)
{
    uint64_t v;
    while (read(l->evfd, &v, sizeof(v)) > 0) {
    }
    pthread_mutex_lock(&l->mu);
    struct post_item *p = l->post_head;
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (p) {
        struct post_item *n = p->next;
        p->fn(p->arg);
        free(p);
        p = n;
    }
}

static void
loop_run_timers(struct km_loop *l)
{
    uint64_t limit_seq = l->seq; /* timers armed by these callbacks wait for the next turn */
    while (l->heap_len > 0) {
        struct km_timer *t = l->heap[0];
        if (t->deadline_ms > l->now_ms || t->seq >= limit_seq)
            break;
        heap_remove(l, t);
        t->fn(t, t->arg);
    }
}

static void
loop_iterate(struct km_loop *l, int max_wait_ms)
{
    struct epoll_event evs[LOOP_MAX_EVENTS];
    int timeout = max_wait_ms;
    if (l->heap_len > 0) {
        uint64_t d = l->heap[0]->deadline_ms;
        int t = d <= l->now_ms ? 0 : (d - l->now_ms > 60000 ? 60000 : (int)(d - l->now_ms));
        if (timeout < 0 || t < timeout)
            timeout = t;
    }
    int n = epoll_wait(l->epfd, evs, LOOP_MAX_EVENTS, timeout);
    l->now_ms = loop_clock_ms();
    for (int i = 0; i < n; i++) {
        struct km_io *io = evs[i].data.ptr;
        if (!io) {
            loop_run_posts(l);
            continue;
        }
        if (io->dead)
            continue;
        unsigned ev = 0;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
            ev |= KM_IO_READ;
        if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            ev |= KM_IO_WRITE;
        ev &= io->events;
        if (ev == 0 && (evs[i].events & (EPOLLERR | EPOLLHUP)))
            ev = KM_IO_READ; /* an error is reported even without interest: let the owner see it */
        if (ev == 0)
            continue;
        io->fn(io, io->fd, ev, io->arg);
    }
    loop_run_timers(l);
    loop_reap(l);
}

int
km_loop_run(struct km_loop *l)
{
    l->now_ms = loop_clock_ms();
    while (!atomic_load(&l->stop))
        loop_iterate(l, -1);
    atomic_store(&l->stop, false); /* the loop can run again */
    return 0;
}

void
km_loop_run_once(struct km_loop *l, int max_wait_ms)
{
    loop_iterate(l, max_wait_ms);
}

/* ---- fd watchers ---- */

static uint32_t
io_epoll_events(unsigned events)
{
    uint32_t e = 0;
    if (events & KM_IO_READ)
        e |= EPOLLIN | EPOLLRDHUP;
    if (events & KM_IO_WRITE)
        e |= EPOLLOUT;
    return e;
}

struct km_io *
km_io_new(struct km_loop *l, int fd, unsigned events, km_io_fn fn, void *arg)
{
    struct km_io *io = km_xcalloc(1, sizeof(*io));
    io->loop = l;
    io->fd = fd;
    io->events = events;
    io->fn = fn;
    io->arg = arg;
    struct epoll_event ev = {.events = io_epoll_events(events), .data.ptr = io};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(io);
        return NULL;
    }
    io->next = l->ios;
    if (l->ios)
        l->ios->prev = io;
    l->ios = io;
    return io;
}

int
km_io_set(struct km_io *io, unsigned events)
{
    if (io->dead)
        return -1;
    if (io->events == events)
        return 0;
    struct epoll_event ev = {.events = io_epoll_events(events), .data.ptr = io};
    if (epoll_ctl(io->loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) != 0)
        return -1;
    io->events = events;
    return 0;
}

void
km_io_free(struct km_io *io)
{
    if (!io || io->dead)
        return;
    struct km_loop *l = io->loop;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->dead = true;
    if (io->prev)
        io->prev->next = io->next;
    else
        l->ios = io->next;
    if (io->next)
        io->next->prev = io->prev;
    io->prev = NULL;
    io->next = l->dead_ios;
    l->dead_ios = io;
}

/* ---- timers ---- */

struct km_timer *
km_timer_new(struct km_loop *l, uint64_t ms, km_timer_fn fn, void *arg)
{
    struct km_timer *t = km_xcalloc(1, sizeof(*t));
    t->loop = l;
    t->fn = fn;
    t->arg = arg;
    t->heap_idx = SIZE_MAX;
    t->next = l->timers;
    if (l->timers)
        l->timers->prev = t;
    l->timers = t;
    km_timer_arm(t, ms);
    return t;
}

void
km_timer_arm(struct km_timer *t, uint64_t ms)
{
    if (t->dead)
        return;
    struct km_loop *l = t->loop;
    heap_remove(l, t);
    t->deadline_ms = l->now_ms + ms;
    t->seq = l->seq++;
    heap_push(l, t);
}

void
km_timer_stop(struct km_timer *t)
{
    if (!t->dead)
        heap_remove(t->loop, t);
}

void
km_timer_free(struct km_timer *t)
{
    if (!t || t->dead)
        return;
    struct km_loop *l = t->loop;
    heap_remove(l, t);
    t->dead = true;
    if (t->prev)
        t->prev->next = t->next;
    else
        l->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = NULL;
    t->next = l->dead_timers;
    l->dead_timers = t;
}
