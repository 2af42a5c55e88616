/* Aligned text tables as kumactl prints them (Go's tabwriter with padding 3): every column but
 * the last is padded to its widest cell (counted in UTF-8 characters) plus three spaces. */
#ifndef KM_CTL_TABLE_H
#define KM_CTL_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct km_ctl_table {
    size_t ncols;
    char **cells; /* owned, nrows * ncols, row-major */
    size_t nrows;
    size_t cap;
};

void km_ctl_table_init(struct km_ctl_table *t, size_t ncols);
void km_ctl_table_deinit(struct km_ctl_table *t);
/* Adds one row of <t->ncols> cells (copied; NULL cells print empty). */
void km_ctl_table_row(struct km_ctl_table *t, const char *const *cells);
/* Renders the table; caller frees. */
char *km_ctl_table_render(const struct km_ctl_table *t);

/* Age as kumactl shows it: "never" (< -1s), "0s", "42s", "5m", "3h", "12d", "2y". */
void km_ctl_duration_short(int64_t seconds, char *buf, size_t len);
/* Age of an RFC 3339 timestamp relative to <now_us>; "never" when <ts> is NULL or malformed. */
void km_ctl_ago(const char *ts, int64_t now_us, char *buf, size_t len);

#endif
