/* A list of validation errors, each naming the field path it is about ("networking.inbound[0].port").
 * Validators collect every problem before the caller reports them together. */
#ifndef KM_COMMON_ERRS_H
#define KM_COMMON_ERRS_H

#include <km/common/util.h>

struct km_err_item {
    char *field;  /* owned; "" when the error is about the whole document */
    char *reason; /* owned */
};

struct km_errs {
    struct km_err_item *v; /* owned */
    size_t n;
    size_t cap;
};

void km_errs_init(struct km_errs *e);
void km_errs_deinit(struct km_errs *e);
void km_errs_add(struct km_errs *e, const char *field, const char *fmt, ...) KM_PRINTF(3, 4);
static inline bool
km_errs_any(const struct km_errs *e)
{
    return e->n > 0;
}
/* Joins the errors as "field: reason; field: reason". Caller frees. */
char *km_errs_join(const struct km_errs *e);

/* Field path builder: km_path_key("spec", "targetRef") -> "spec.targetRef",
 * km_path_idx("from", 2) -> "from[2]". Caller frees. An empty base gives just the key. */
char *km_path_key(const char *base, const char *key);
char *km_path_idx(const char *base, size_t idx);

#endif
