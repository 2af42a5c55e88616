/* Event loop: one per thread (epoll), fd watchers, timers, and a thread-safe post queue so
 * other threads hand work to the loop's thread. Shared by kuma-cp (DP server) and kuma-dp.
 *
 * Every callback runs on the loop's thread. Nothing here blocks except km_loop_run(). */
#ifndef KM_COMMON_LOOP_H
#define KM_COMMON_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct km_loop;
struct km_io;
struct km_timer;

enum { KM_IO_READ = 1, KM_IO_WRITE = 2 };

typedef void (*km_io_fn)(struct km_io *io, int fd, unsigned events, void *arg);
typedef void (*km_timer_fn)(struct km_timer *t, void *arg);
typedef void (*km_post_fn)(void *arg);

struct km_loop *km_loop_new(void);
/* Frees the loop; watchers and timers still registered are freed too (without callbacks). */
void km_loop_free(struct km_loop *l);
/* Runs until km_loop_stop() is called (from any thread). Returns 0. */
int km_loop_run(struct km_loop *l);
/* One iteration: waits at most <max_wait_ms> (-1 = until something happens, 0 = poll), runs
 * ready watchers, due timers and posts. For tests and for driving several loops by hand. */
void km_loop_run_once(struct km_loop *l, int max_wait_ms);
/* Thread-safe. */
void km_loop_stop(struct km_loop *l);
/* Thread-safe: runs fn(arg) on the loop's thread soon, in posting order. */
void km_loop_post(struct km_loop *l, km_post_fn fn, void *arg);
/* Cached monotonic time of the current iteration, milliseconds. */
uint64_t km_loop_now_ms(struct km_loop *l);

/* Watches <fd> for <events> (KM_IO_READ|KM_IO_WRITE, level triggered). The fd stays the
 * caller's; km_io_free stops watching and frees the watcher (safe from inside its callback). */
struct km_io *km_io_new(struct km_loop *l, int fd, unsigned events, km_io_fn fn, void *arg);
int km_io_set(struct km_io *io, unsigned events);
void km_io_free(struct km_io *io);

/* One-shot timer after <ms>; km_timer_free cancels (safe from inside its callback, also after
 * it fired). Re-arm with km_timer_arm. */
struct km_timer *km_timer_new(struct km_loop *l, uint64_t ms, km_timer_fn fn, void *arg);
void km_timer_arm(struct km_timer *t, uint64_t ms);
/* Disarms without freeing (no-op when not armed). */
void km_timer_stop(struct km_timer *t);
void km_timer_free(struct km_timer *t);

#endif
