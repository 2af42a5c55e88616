/* Small helpers every part of kuma-c uses: allocation that aborts on OOM, logging,
 * error codes, time formatting, Go-style durations. */
#ifndef KM_COMMON_UTIL_H
#define KM_COMMON_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef KM_VERSION
#define KM_VERSION "dev"
#endif
/* The Kuma release whose behaviour we follow (reported by GET / and `version`). */
#define KM_KUMA_VERSION "2.14.3"

#define KM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Error codes (negative, libuv style). */
enum {
    KM_OK = 0,
    KM_ENOTFOUND = -1001, /* resource does not exist */
    KM_ECONFLICT = -1002, /* already exists, or stale version */
    KM_EUNAVAIL = -1003,  /* backend (database) unreachable */
    KM_EINVAL = -1004,    /* invalid input */
    KM_ELIMIT = -1005,    /* a size limit was exceeded */
    KM_EIO = -1006,       /* other I/O failure */
    KM_ESCHEMA = -1007,   /* database schema missing: run `kuma-cp migrate up` */
};
const char *km_strerror(int err);

/* Allocation: abort with file:line on OOM (control plane and CLI paths only). */
void *km_xmalloc(size_t n);
void *km_xcalloc(size_t n, size_t size);
void *km_xrealloc(void *p, size_t n);
char *km_xstrdup(const char *s);
char *km_xstrndup(const char *s, size_t n);
char *km_xasprintf(const char *fmt, ...) KM_PRINTF(1, 2);
#define KM_FREE(p)                                                                                 \
    do {                                                                                           \
        free(p);                                                                                   \
        (p) = NULL;                                                                                \
    } while (0)

/* Logging to stderr: "2026-11-27T12:00:00.000Z INFO  module: message". */
enum km_log_level { KM_LOG_ERROR = 0, KM_LOG_WARN, KM_LOG_INFO, KM_LOG_DEBUG };
extern enum km_log_level km_log_level;
void km_log(enum km_log_level lvl, const char *module, const char *fmt, ...) KM_PRINTF(3, 4);
#define km_log_error(m, ...) km_log(KM_LOG_ERROR, m, __VA_ARGS__)
#define km_log_warn(m, ...)  km_log(KM_LOG_WARN, m, __VA_ARGS__)
#define km_log_info(m, ...)  km_log(KM_LOG_INFO, m, __VA_ARGS__)
#define km_log_debug(m, ...)                                                                       \
    do {                                                                                           \
        if (km_log_level >= KM_LOG_DEBUG)                                                          \
            km_log(KM_LOG_DEBUG, m, __VA_ARGS__);                                                  \
    } while (0)
/* Parses "error|warn|info|debug" (also "off" = error); returns false when unknown. */
bool km_log_level_parse(const char *s, enum km_log_level *out);

/* Wall clock in microseconds since the Unix epoch. */
int64_t km_now_us(void);
/* Formats <us> as RFC 3339 UTC with nanoseconds trimmed like Go's time.RFC3339Nano
 * ("2026-11-27T12:00:00.123456Z"); <buf> must hold 40 bytes. */
void km_time_format(int64_t us, char *buf, size_t len);
/* Parses an RFC 3339 timestamp; returns false when malformed. */
bool km_time_parse(const char *s, int64_t *us);

/* Parses a Go duration ("1h30m", "300ms", "1.5s", "0"); Kuma also accepts "d" (24h) and "y"
 * (365d) in a few fields, allowed when <allow_days> is set. Returns false when malformed;
 * the result is in nanoseconds. */
bool km_duration_parse(const char *s, bool allow_days, int64_t *ns);

/* Growable string buffer. */
struct km_sbuf {
    char *ptr; /* owned, NUL terminated */
    size_t len;
    size_t cap;
};
void km_sbuf_init(struct km_sbuf *b);
void km_sbuf_add(struct km_sbuf *b, const char *s, size_t n);
void km_sbuf_puts(struct km_sbuf *b, const char *s);
void km_sbuf_printf(struct km_sbuf *b, const char *fmt, ...) KM_PRINTF(2, 3);
void km_sbuf_deinit(struct km_sbuf *b);
/* Returns the buffer's string (caller frees) and leaves <b> empty. */
char *km_sbuf_take(struct km_sbuf *b);

/* Reads a whole file (at most <max> bytes); returns NULL and sets errno on failure
 * (EFBIG when larger than <max>). */
char *km_read_file(const char *path, size_t max, size_t *len);

#endif
