/* Event loop: timers (order, re-arm, cancel, free inside callbacks), cross-thread posts and
 * stop, fd watchers (level triggered, free from inside callbacks). */
#include <pthread.h>
#include <unistd.h>

#include <km/common/loop.h>

#include "test.h"

struct order_ctx {
    struct km_loop *loop;
    int seen[8];
    int n;
};

struct order_timer {
    struct order_ctx *ctx;
    int id;
};

static void
order_cb(struct km_timer *t, void *arg)
{
    struct order_timer *ot = arg;
    ot->ctx->seen[ot->ctx->n++] = ot->id;
    km_timer_free(t);
    if (ot->ctx->n == 4)
        km_loop_stop(ot->ctx->loop);
}

KM_TEST(loop_timers_fire_in_deadline_order)
{
    struct km_loop *l = km_loop_new();
    struct order_ctx ctx = {.loop = l};
    struct order_timer ts[4] = {{&ctx, 3}, {&ctx, 1}, {&ctx, 2}, {&ctx, 0}};
    uint64_t ms[4] = {30, 10, 20, 0};
    for (int i = 0; i < 4; i++)
        km_timer_new(l, ms[i], order_cb, &ts[i]);
    /* a cancelled timer never fires */
    struct order_timer never = {&ctx, 99};
    struct km_timer *c = km_timer_new(l, 5, order_cb, &never);
    km_timer_free(c);
    uint64_t t0 = km_loop_now_ms(l);
    km_loop_run(l);
    ASSERT_INT_EQ(ctx.n, 4);
    for (int i = 0; i < 4; i++)
        ASSERT_INT_EQ(ctx.seen[i], i);
    ASSERT(km_loop_now_ms(l) - t0 >= 30);
    km_loop_free(l);
}

struct rearm_ctx {
    struct km_loop *loop;
    int fired;
    struct km_timer *other;
};

static void
rearm_cb(struct km_timer *t, void *arg)
{
    struct rearm_ctx *rc = arg;
    rc->fired++;
    if (rc->fired == 1 && rc->other) {
        km_timer_free(rc->other); /* free another timer that is due in the same turn */
        rc->other = NULL;
    }
    if (rc->fired < 5)
        km_timer_arm(t, 0); /* re-arming with 0 must not starve the loop */
    else
        km_loop_stop(rc->loop);
}

static void
never_cb(struct km_timer *t, void *arg)
{
    *(int *)arg = 1;
}

KM_TEST(loop_timer_rearm_and_free_inside_callbacks)
{
    struct km_loop *l = km_loop_new();
    int never = 0;
    struct rearm_ctx rc = {.loop = l};
    struct km_timer *t = km_timer_new(l, 1, rearm_cb, &rc);
    rc.other = km_timer_new(l, 1, never_cb, &never);
    km_loop_run(l);
    ASSERT_INT_EQ(rc.fired, 5);
    ASSERT_INT_EQ(never, 0);
    km_timer_stop(t);
    km_loop_free(l); /* frees the remaining timer */
}

struct post_ctx {
    struct km_loop *loop;
    int got[1000];
    int n;
};

struct post_item_arg {
    struct post_ctx *ctx;
    int v;
};

static void
post_cb(void *arg)
{
    struct post_item_arg *p = arg;
    p->ctx->got[p->ctx->n++] = p->v;
    if (p->ctx->n == 1000)
        km_loop_stop(p->ctx->loop);
}

static void *
post_thread(void *arg)
{
    struct post_item_arg *items = arg;
    for (int i = 0; i < 1000; i++)
        km_loop_post(items[0].ctx->loop, post_cb, &items[i]);
    return NULL;
}

KM_TEST(loop_post_from_another_thread_keeps_order)
{
    struct km_loop *l = km_loop_new();
    struct post_ctx ctx = {.loop = l};
    struct post_item_arg *items = calloc(1000, sizeof(*items));
    for (int i = 0; i < 1000; i++)
        items[i] = (struct post_item_arg){&ctx, i};
    pthread_t th;
    pthread_create(&th, NULL, post_thread, items);
    km_loop_run(l);
    pthread_join(th, NULL);
    ASSERT_INT_EQ(ctx.n, 1000);
    for (int i = 0; i < 1000; i++)
        ASSERT_INT_EQ(ctx.got[i], i);
    free(items);
    km_loop_free(l);
}

static void *
stop_thread(void *arg)
{
    usleep(20000);
    km_loop_stop(arg);
    return NULL;
}

KM_TEST(loop_stop_from_another_thread)
{
    struct km_loop *l = km_loop_new();
    pthread_t th;
    pthread_create(&th, NULL, stop_thread, l);
    km_loop_run(l); /* nothing registered: only the stop wakes it */
    pthread_join(th, NULL);
    km_loop_free(l);
}

struct io_ctx {
    struct km_loop *loop;
    int reads;
    int writes;
    struct km_io *other;
    char buf[16];
};

static void
io_read_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct io_ctx *c = arg;
    ASSERT(events & KM_IO_READ);
    c->reads++;
    if (c->reads < 3)
        return; /* level triggered: fires again while data is unread */
    ssize_t n = read(fd, c->buf, sizeof(c->buf) - 1);
    ASSERT_INT_EQ(n, 5);
    km_io_free(io); /* own watcher, from inside its callback */
    km_io_free(c->other); /* another watcher possibly in the same epoll batch */
    km_loop_stop(c->loop);
}

static void
io_write_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct io_ctx *c = arg;
    ASSERT(events & KM_IO_WRITE);
    c->writes++;
    ASSERT_INT_EQ(write(fd, "hello", 5), 5);
    km_io_set(io, 0);
}

KM_TEST(loop_io_level_triggered_and_free_inside_callback)
{
    struct km_loop *l = km_loop_new();
    int p[2];
    ASSERT(pipe(p) == 0);
    struct io_ctx c = {.loop = l};
    struct km_io *r = km_io_new(l, p[0], KM_IO_READ, io_read_cb, &c);
    struct km_io *w = km_io_new(l, p[1], KM_IO_WRITE, io_write_cb, &c);
    ASSERT(r && w);
    c.other = w;
    km_loop_run(l);
    ASSERT_INT_EQ(c.reads, 3);
    ASSERT_INT_EQ(c.writes, 1);
    ASSERT_STR_EQ(c.buf, "hello");
    km_loop_free(l);
    close(p[0]);
    close(p[1]);
}

KM_TEST(loop_free_releases_registered_watchers_and_timers)
{
    struct km_loop *l = km_loop_new();
    int p[2];
    ASSERT(pipe(p) == 0);
    km_io_new(l, p[0], KM_IO_READ, io_read_cb, NULL);
    km_timer_new(l, 100000, never_cb, NULL);
    km_loop_run_once(l, 0);
    km_loop_free(l);
    close(p[0]);
    close(p[1]);
}
