/* Validation error lists with field paths. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/errs.h>

void
km_errs_init(struct km_errs *e)
{
    e->v = NULL;
    e->n = e->cap = 0;
}

void
km_errs_deinit(struct km_errs *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->v[i].field);
        free(e->v[i].reason);
    }
    KM_FREE(e->v);
    e->n = e->cap = 0;
}

void
km_errs_add(struct km_errs *e, const char *field, const char *fmt, ...)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 8;
        e->v = km_xrealloc(e->v, e->cap * sizeof(e->v[0]));
    }
    va_list ap;
    va_start(ap, fmt);
    char *reason = NULL;
    if (vasprintf(&reason, fmt, ap) < 0)
        reason = km_xstrdup("(error formatting message)");
    va_end(ap);
    e->v[e->n].field = km_xstrdup(field ? field : "");
    e->v[e->n].reason = reason;
    e->n++;
}

char *
km_errs_join(const struct km_errs *e)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (size_t i = 0; i < e->n; i++) {
        if (i)
            km_sbuf_puts(&b, "; ");
        if (e->v[i].field[0])
            km_sbuf_printf(&b, "%s: ", e->v[i].field);
        km_sbuf_puts(&b, e->v[i].reason);
    }
    return km_sbuf_take(&b);
}

char *
km_path_key(const char *base, const char *key)
{
    if (!base || !base[0])
        return km_xstrdup(key);
    return km_xasprintf("%s.%s", base, key);
}

char *
km_path_idx(const char *base, size_t idx)
{
    return km_xasprintf("%s[%zu]", base ? base : "", idx);
}
