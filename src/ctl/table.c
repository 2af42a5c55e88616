/* Aligned text tables and ages, as kumactl prints them (see include/km/ctl/table.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/ctl/table.h>

/* Go's tabwriter settings used by kumactl: minimal width 1, padding 3, space as padding. */
#define KM_TABLE_PADDING 3

void
km_ctl_table_init(struct km_ctl_table *t, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
}

void
km_ctl_table_deinit(struct km_ctl_table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

void
km_ctl_table_row(struct km_ctl_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->cells = km_xrealloc(t->cells, t->cap * t->ncols * sizeof(*t->cells));
    }
    for (size_t c = 0; c < t->ncols; c++)
        t->cells[t->nrows * t->ncols + c] = km_xstrdup(cells[c] ? cells[c] : "");
    t->nrows++;
}

/* Width in characters: UTF-8 continuation bytes do not count. */
static size_t
text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

char *
km_ctl_table_render(const struct km_ctl_table *t)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    size_t *width = km_xcalloc(t->ncols ? t->ncols : 1, sizeof(*width));
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = text_width(t->cells[r * t->ncols + c]) + KM_TABLE_PADDING;
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            km_sbuf_puts(&b, cell);
            if (c + 1 < t->ncols) {
                for (size_t w = text_width(cell); w < width[c]; w++)
                    km_sbuf_add(&b, " ", 1);
            }
        }
        km_sbuf_add(&b, "\n", 1);
    }
    free(width);
    return km_sbuf_take(&b);
}

void
km_ctl_duration_short(int64_t seconds, char *buf, size_t len)
{
    if (seconds < -1)
        snprintf(buf, len, "never");
    else if (seconds < 0)
        snprintf(buf, len, "0s");
    else if (seconds < 60)
        snprintf(buf, len, "%llds", (long long)seconds);
    else if (seconds < 3600)
        snprintf(buf, len, "%lldm", (long long)(seconds / 60));
    else if (seconds < 24 * 3600)
        snprintf(buf, len, "%lldh", (long long)(seconds / 3600));
    else if (seconds < 365LL * 24 * 3600)
        snprintf(buf, len, "%lldd", (long long)(seconds / (24 * 3600)));
    else
        snprintf(buf, len, "%lldy", (long long)(seconds / (365LL * 24 * 3600)));
}

void
km_ctl_ago(const char *ts, int64_t now_us, char *buf, size_t len)
{
    int64_t us;
    if (!ts || !km_time_parse(ts, &us)) {
        snprintf(buf, len, "never");
        return;
    }
    /* Go truncates the duration toward zero when converting to whole seconds */
    int64_t d = now_us - us;
    km_ctl_duration_short(d / 1000000, buf, len);
}
