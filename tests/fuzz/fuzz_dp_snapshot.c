/* libFuzzer target: kuma-dp's xDS resource decoder. The input is cut into resources of the
 * five types kuma-dp holds (a 1-byte type and a 2-byte length before each, repeated), which
 * km_dp_snapshot_build decodes and validates; it must accept or NACK, never crash, leak or
 * hang, whatever the bytes. Seeds are real resources written by xds-emit-samples. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/dp/snapshot.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct km_dp_xds_set sets[KM_DP_TYPES];
    memset(sets, 0, sizeof(sets));
    size_t off = 0;
    unsigned n = 0;
    while (off + 3 <= size && n < 64) {
        int t = data[off] % KM_DP_TYPES;
        size_t len = (size_t)data[off + 1] << 8 | data[off + 2];
        off += 3;
        if (len > size - off)
            len = size - off;
        struct km_dp_xds_set *s = &sets[t];
        s->v = km_xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
        struct km_dp_xds_res *r = &s->v[s->n++];
        memset(r, 0, sizeof(*r));
        r->name = km_xasprintf("r%u", n++);
        r->bytes = km_xmalloc(len ? len : 1);
        memcpy(r->bytes, data + off, len);
        r->len = len;
        r->version = km_xstrdup("1");
        off += len;
    }
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_dp_snapshot *snap = km_dp_snapshot_build(sets, 1, &errs);
    if (snap)
        km_dp_snapshot_unref(snap);
    km_errs_deinit(&errs);
    for (int t = 0; t < KM_DP_TYPES; t++) {
        km_dp_xds_set_clear(&sets[t]);
        free(sets[t].v);
    }
    return 0;
}

#include "replay.h"
