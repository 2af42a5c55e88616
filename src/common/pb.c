/* Bounded protobuf-c unpacking: a descriptor-guided pre-scan for depth and framing, then
 * protobuf_c_message_unpack() with a budgeted allocator. See include/km/common/pb.h. */
#include <km/common/pb.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pb_scan {
    const char *names[KM_PB_MAX_DEPTH + 2]; /* field names from the top message down */
    char *err;
    size_t errlen;
};

struct pb_budget {
    size_t used;
    size_t limit;
    bool exhausted;
};

static void pb_fail(struct pb_scan *s, unsigned depth, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
pb_fail(struct pb_scan *s, unsigned depth, const char *fmt, ...)
{
    size_t off = 0;
    unsigned i;

    if (!s->err || s->errlen == 0)
        return;
    s->err[0] = '\0';
    /* Deep paths keep their first and last three names: "a.b.c.(58 more).x.y.z". */
    for (i = 0; i < depth && off + 1 < s->errlen; i++) {
        int n;
        if (depth > 8 && i == 3) {
            n = snprintf(s->err + off, s->errlen - off, ".(%u more)", depth - 6);
            i = depth - 4;
        } else {
            n = snprintf(s->err + off, s->errlen - off, "%s%s", i ? "." : "", s->names[i]);
        }
        if (n < 0)
            break;
        off += (size_t)n;
    }
    if (off >= s->errlen)
        return;
    if (depth == 0) {
        int n = snprintf(s->err + off, s->errlen - off, "(message)");
        off += n > 0 ? (size_t)n : 0;
    }
    if (off + 2 >= s->errlen)
        return;
    s->err[off++] = ':';
    s->err[off++] = ' ';
    s->err[off] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err + off, s->errlen - off, fmt, ap);
    va_end(ap);
}

static bool
pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    unsigned shift;

    for (shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Walks one message body; recurses into fields that the descriptor says are messages. */
static int
pb_scan_message(struct pb_scan *s, const ProtobufCMessageDescriptor *d, const uint8_t *p,
                const uint8_t *end, unsigned depth)
{
    while (p < end) {
        uint64_t key, n;
        if (!pb_varint(&p, end, &key)) {
            pb_fail(s, depth, "truncated field tag in %s", d->name);
            return -1;
        }
        uint64_t tag = key >> 3;
        unsigned wt = (unsigned)(key & 7);
        if (tag == 0 || tag > 0x1fffffff) {
            pb_fail(s, depth, "invalid field number %llu in %s", (unsigned long long)tag,
                    d->name);
            return -1;
        }
        switch (wt) {
        case 0:
            if (!pb_varint(&p, end, &n)) {
                pb_fail(s, depth, "truncated varint in field %llu of %s",
                        (unsigned long long)tag, d->name);
                return -1;
            }
            break;
        case 1:
        case 5: {
            size_t w = wt == 1 ? 8 : 4;
            if ((size_t)(end - p) < w) {
                pb_fail(s, depth, "truncated fixed-size field %llu of %s",
                        (unsigned long long)tag, d->name);
                return -1;
            }
            p += w;
            break;
        }
        case 2: {
            if (!pb_varint(&p, end, &n) || n > (uint64_t)(end - p)) {
                pb_fail(s, depth, "length of field %llu of %s runs past the end",
                        (unsigned long long)tag, d->name);
                return -1;
            }
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field(d, (unsigned)tag);
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                s->names[depth] = f->name;
                if (depth + 1 > KM_PB_MAX_DEPTH) {
                    pb_fail(s, depth + 1, "nested deeper than %d messages", KM_PB_MAX_DEPTH);
                    return -1;
                }
                if (pb_scan_message(s, f->descriptor, p, p + n, depth + 1) < 0)
                    return -1;
            }
            p += n;
            break;
        }
        default:
            pb_fail(s, depth, "unsupported wire type %u in field %llu of %s", wt,
                    (unsigned long long)tag, d->name);
            return -1;
        }
    }
    return 0;
}

static void *
pb_budget_alloc(void *data, size_t size)
{
    struct pb_budget *b = data;

    if (size == 0)
        size = 1;
    if (size > b->limit - b->used) {
        b->exhausted = true;
        return NULL;
    }
    b->used += size;
    return malloc(size);
}

static void
pb_budget_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

ProtobufCMessage *
km_pb_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len, char *err,
             size_t errlen)
{
    struct pb_scan s = {.err = err, .errlen = errlen};
    struct pb_budget budget = {.used = 0, .limit = KM_PB_MAX_ALLOC, .exhausted = false};
    static const uint8_t empty[1];
    ProtobufCAllocator alloc = {
        .alloc = pb_budget_alloc, .free = pb_budget_free, .allocator_data = &budget};
    ProtobufCMessage *m;

    if (err && errlen)
        err[0] = '\0';
    if (len > KM_PB_MAX_MESSAGE) {
        pb_fail(&s, 0, "%s of %zu bytes is larger than the limit of %u bytes", d->name, len,
                KM_PB_MAX_MESSAGE);
        return NULL;
    }
    if (len > 0 && !data) {
        pb_fail(&s, 0, "no data");
        return NULL;
    }
    if (len > 0 && pb_scan_message(&s, d, data, data + len, 0) < 0)
        return NULL;
    m = protobuf_c_message_unpack(d, &alloc, len, len ? data : empty);
    if (!m) {
        if (budget.exhausted)
            pb_fail(&s, 0, "%s needs more than %u bytes of memory to unpack", d->name,
                    KM_PB_MAX_ALLOC);
        else
            pb_fail(&s, 0, "invalid %s (a field has the wrong wire type or bad contents)",
                    d->name);
        return NULL;
    }
    return m;
}

void
km_pb_free(ProtobufCMessage *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

const char *
km_pb_type_name(const char *type_url)
{
    const char *slash;

    if (!type_url)
        return "";
    slash = strrchr(type_url, '/');
    return slash ? slash + 1 : type_url;
}
