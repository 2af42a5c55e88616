/* Allocation, logging, time and duration helpers shared by the three programs. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <km/common/util.h>

enum km_log_level km_log_level = KM_LOG_INFO;

const char *
km_strerror(int err)
{
    switch (err) {
    case KM_OK:
        return "ok";
    case KM_ENOTFOUND:
        return "not found";
    case KM_ECONFLICT:
        return "conflict";
    case KM_EUNAVAIL:
        return "store unavailable";
    case KM_EINVAL:
        return "invalid input";
    case KM_ELIMIT:
        return "limit exceeded";
    case KM_EIO:
        return "I/O error";
    case KM_ESCHEMA:
        return "database schema missing";
    default:
        return err < 0 && err > -1000 ? strerror(-err) : "unknown error";
    }
}

static void
oom(size_t n)
{
    fprintf(stderr, "out of memory allocating %zu bytes\n", n);
    abort();
}

void *
km_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *
km_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *
km_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *
km_xstrdup(const char *s)
{
    return km_xstrndup(s, strlen(s));
}

char *
km_xstrndup(const char *s, size_t n)
{
    char *p = km_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
km_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    return p;
}

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void
km_log(enum km_log_level lvl, const char *module, const char *fmt, ...)
{
    if (lvl > km_log_level)
        return;
    char ts[40];
    km_time_format(km_now_us(), ts, sizeof(ts));
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s %-5s %s: ", ts, level_names[lvl], module);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&log_lock);
    va_end(ap);
}

bool
km_log_level_parse(const char *s, enum km_log_level *out)
{
    static const struct {
        const char *name;
        enum km_log_level lvl;
    } tab[] = {{"off", KM_LOG_ERROR},  {"error", KM_LOG_ERROR}, {"warn", KM_LOG_WARN},
               {"info", KM_LOG_INFO},  {"debug", KM_LOG_DEBUG}};
    for (size_t i = 0; i < KM_ARRAY_LEN(tab); i++) {
        if (strcmp(s, tab[i].name) == 0) {
            *out = tab[i].lvl;
            return true;
        }
    }
    return false;
}

int64_t
km_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void
km_time_format(int64_t us, char *buf, size_t len)
{
    time_t sec = (time_t)(us / 1000000);
    int64_t frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        sec -= 1;
    }
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    if (frac) {
        /* Go's RFC3339Nano drops trailing zeros of the fraction. */
        char f[8];
        snprintf(f, sizeof(f), "%06" PRId64, frac);
        size_t fl = 6;
        while (fl > 0 && f[fl - 1] == '0')
            fl--;
        f[fl] = '\0';
        snprintf(buf + n, len - n, ".%sZ", f);
    } else {
        snprintf(buf + n, len - n, "Z");
    }
}

bool
km_time_parse(const char *s, int64_t *us)
{
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return false;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 6) {
                frac = frac * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        while (digits++ < 6)
            frac *= 10;
    }
    int64_t off = 0;
    if (*p == 'Z') {
        p++;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int h = (p[1] - '0') * 10 + (p[2] - '0'), m = (p[4] - '0') * 10 + (p[5] - '0');
        off = (int64_t)(h * 3600 + m * 60) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return false;
    }
    if (*p)
        return false;
    time_t t = timegm(&tm);
    *us = ((int64_t)t - off) * 1000000 + frac;
    return true;
}

bool
km_duration_parse(const char *s, bool allow_days, int64_t *ns)
{
    /* Go's time.ParseDuration grammar: [-+]? (number unit)+, or "0". */
    static const struct {
        const char *unit;
        double mult;
        bool day;
    } units[] = {{"ns", 1, false},           {"us", 1e3, false},       {"\xc2\xb5s", 1e3, false},
                 {"ms", 1e6, false},          {"s", 1e9, false},        {"m", 60e9, false},
                 {"h", 3600e9, false},        {"d", 86400e9, true},     {"y", 365 * 86400e9, true}};
    const char *p = s;
    bool neg = false;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (strcmp(p, "0") == 0) {
        *ns = 0;
        return true;
    }
    if (!*p)
        return false;
    double total = 0;
    while (*p) {
        char *end;
        if (!((*p >= '0' && *p <= '9') || *p == '.'))
            return false;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno)
            return false;
        p = end;
        size_t best = 0;
        int found = -1;
        for (size_t i = 0; i < KM_ARRAY_LEN(units); i++) {
            size_t l = strlen(units[i].unit);
            if (strncmp(p, units[i].unit, l) == 0 && l > best) {
                best = l;
                found = (int)i;
            }
        }
        if (found < 0 || (units[found].day && !allow_days))
            return false;
        total += v * units[found].mult;
        p += best;
    }
    if (total > 9.2e18)
        return false;
    *ns = (int64_t)(neg ? -total : total);
    return true;
}

void
km_sbuf_init(struct km_sbuf *b)
{
    b->cap = 64;
    b->len = 0;
    b->ptr = km_xmalloc(b->cap);
    b->ptr[0] = '\0';
}

void
km_sbuf_add(struct km_sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap)
            b->cap *= 2;
        b->ptr = km_xrealloc(b->ptr, b->cap);
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
    b->ptr[b->len] = '\0';
}

void
km_sbuf_puts(struct km_sbuf *b, const char *s)
{
    km_sbuf_add(b, s, strlen(s));
}

void
km_sbuf_printf(struct km_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    km_sbuf_add(b, p, (size_t)n);
    free(p);
}

void
km_sbuf_deinit(struct km_sbuf *b)
{
    KM_FREE(b->ptr);
    b->len = b->cap = 0;
}

char *
km_sbuf_take(struct km_sbuf *b)
{
    char *p = b->ptr;
    b->ptr = NULL;
    b->len = b->cap = 0;
    return p;
}

char *
km_read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct km_sbuf b;
    km_sbuf_init(&b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > max) {
            fclose(f);
            km_sbuf_deinit(&b);
            errno = EFBIG;
            return NULL;
        }
        km_sbuf_add(&b, chunk, n);
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        km_sbuf_deinit(&b);
        errno = EIO;
        return NULL;
    }
    if (len)
        *len = b.len;
    return km_sbuf_take(&b);
}
