/* Protobuf <-> JSON by reflection over protobuf-c descriptors (see pbjson.h for why).
 *
 * Encoding builds the C structure that protobuf-c would have produced, with every
 * allocation recorded in an arena, packs it, and frees the arena: no hand-written wire
 * encoder, protobuf-c does the bytes. Decoding unpacks with protobuf-c and walks the
 * structure. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/pbjson.h>
#include <km/common/util.h>

#define TYPE_PREFIX "type.googleapis.com/"

/* ---- registry of message types for Any ---- */

static const ProtobufCMessageDescriptor **registry;
static size_t nregistry, capregistry;

void
km_pbjson_register(const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < nregistry; i++)
        if (registry[i] == d)
            return;
    if (nregistry == capregistry) {
        capregistry = capregistry ? capregistry * 2 : 64;
        registry = km_xrealloc(registry, capregistry * sizeof(*registry));
    }
    registry[nregistry++] = d;
}

const ProtobufCMessageDescriptor *
km_pbjson_lookup(const char *type_url)
{
    const char *slash = strrchr(type_url, '/');
    const char *name = slash ? slash + 1 : type_url;
    for (size_t i = 0; i < nregistry; i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}

/* ---- helpers ---- */

struct arena {
    void **v;
    size_t n, cap;
};

static void *
arena_alloc(struct arena *a, size_t n)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 32;
        a->v = km_xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    void *p = km_xcalloc(1, n ? n : 1);
    a->v[a->n++] = p;
    return p;
}

static char *
arena_strdup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    return p;
}

static void
arena_free(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

struct enc {
    struct arena arena;
    char *err;
    size_t errlen;
    char path[512];
    int depth;
};

static int
enc_fail(struct enc *e, const char *fmt, ...) KM_PRINTF(2, 3);

static int
enc_fail(struct enc *e, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(e->err, e->errlen, "%s%s%s", e->path, e->path[0] ? ": " : "", msg);
    return -1;
}

/* Appends ".name" or "[i]" to the path; returns the old length to restore. */
static size_t
path_push(struct enc *e, const char *name, long idx)
{
    size_t old = strlen(e->path);
    if (idx >= 0 || !name)
        snprintf(e->path + old, sizeof(e->path) - old, "[%ld]", idx);
    else
        snprintf(e->path + old, sizeof(e->path) - old, "%s%s", old ? "." : "", name);
    return old;
}

static bool
is_wkt(const ProtobufCMessageDescriptor *d, const char *short_name)
{
    return strncmp(d->name, "google.protobuf.", 16) == 0 && strcmp(d->name + 16, short_name) == 0;
}

static bool
is_wrapper(const ProtobufCMessageDescriptor *d)
{
    static const char *const w[] = {"DoubleValue", "FloatValue", "Int64Value", "UInt64Value",
                                    "Int32Value",  "UInt32Value", "BoolValue", "StringValue",
                                    "BytesValue"};
    for (size_t i = 0; i < KM_ARRAY_LEN(w); i++)
        if (is_wkt(d, w[i]))
            return true;
    return false;
}

/* A map<K,V> field: repeated nested "...Entry" message with fields key = 1, value = 2. */
static bool
is_map_entry(const ProtobufCMessageDescriptor *d)
{
    size_t l = strlen(d->name);
    return d->n_fields == 2 && l > 5 && strcmp(d->name + l - 5, "Entry") == 0 &&
           strcmp(d->fields[0].name, "key") == 0 && strcmp(d->fields[1].name, "value") == 0;
}

static const ProtobufCFieldDescriptor *
field_by_name(const ProtobufCMessageDescriptor *d, const char *name)
{
    for (unsigned i = 0; i < d->n_fields; i++) {
        const char *fn = d->fields[i].name;
        if (strcmp(fn, name) == 0)
            return &d->fields[i];
        /* lowerCamelCase form of the snake_case name */
        const char *a = fn, *b = name;
        while (*a && *b) {
            if (*a == '_' && a[1]) {
                if (toupper((unsigned char)a[1]) != *b)
                    break;
                a += 2;
                b++;
                continue;
            }
            if (*a != *b)
                break;
            a++;
            b++;
        }
        if (!*a && !*b)
            return &d->fields[i];
    }
    return NULL;
}

static size_t
scalar_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static int enc_message(struct enc *e, const ProtobufCMessageDescriptor *d, const json_t *j,
                       ProtobufCMessage **out);

static int
json_to_int(struct enc *e, const json_t *v, bool is_signed, bool wide, int64_t *si, uint64_t *ui)
{
    long double x;
    if (json_is_integer(v)) {
        x = (long double)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d))
            return enc_fail(e, "expected an integer, got %g", d);
        x = d;
    } else if (json_is_string(v)) {
        char *end;
        errno = 0;
        const char *s = json_string_value(v);
        if (is_signed) {
            long long t = strtoll(s, &end, 10);
            if (!*s || *end || errno)
                return enc_fail(e, "expected an integer, got \"%s\"", s);
            x = t;
        } else {
            if (*s == '-')
                return enc_fail(e, "expected a non-negative integer, got \"%s\"", s);
            unsigned long long t = strtoull(s, &end, 10);
            if (!*s || *end || errno)
                return enc_fail(e, "expected an integer, got \"%s\"", s);
            *ui = t;
            return 0;
        }
    } else {
        return enc_fail(e, "expected an integer");
    }
    if (is_signed) {
        long double lo = wide ? -9223372036854775808.0L : -2147483648.0L;
        long double hi = wide ? 9223372036854775807.0L : 2147483647.0L;
        if (x < lo || x > hi)
            return enc_fail(e, "integer out of range");
        *si = (int64_t)x;
    } else {
        long double hi = wide ? 18446744073709551615.0L : 4294967295.0L;
        if (x < 0 || x > hi)
            return enc_fail(e, "integer out of range");
        *ui = (uint64_t)x;
    }
    return 0;
}

static int
b64_decode(struct enc *e, const char *s, ProtobufCBinaryData *out)
{
    size_t n = strlen(s);
    /* accept URL-safe alphabet and missing padding, as proto3 JSON does */
    char *t = arena_alloc(&e->arena, n + 4);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        t[m++] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (m % 4)
        t[m++] = '=';
    uint8_t *buf = arena_alloc(&e->arena, m / 4 * 3 + 1);
    int r = EVP_DecodeBlock(buf, (const unsigned char *)t, (int)m);
    if (r < 0)
        return enc_fail(e, "invalid base64");
    size_t pad = 0;
    while (pad < m && t[m - 1 - pad] == '=')
        pad++;
    out->data = buf;
    out->len = (size_t)r - (pad > 2 ? 2 : pad);
    return 0;
}

/* Writes one value of field <f> at <dst> (the member, or an array element). */
static int
enc_value(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v, void *dst)
{
    int64_t si = 0;
    uint64_t ui = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if (json_to_int(e, v, true, false, &si, &ui))
            return -1;
        *(int32_t *)dst = (int32_t)si;
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (json_to_int(e, v, true, true, &si, &ui))
            return -1;
        *(int64_t *)dst = si;
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (json_to_int(e, v, false, false, &si, &ui))
            return -1;
        *(uint32_t *)dst = (uint32_t)ui;
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (json_to_int(e, v, false, true, &si, &ui))
            return -1;
        *(uint64_t *)dst = ui;
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        double d;
        if (json_is_number(v))
            d = json_number_value(v);
        else if (json_is_string(v) && strcmp(json_string_value(v), "NaN") == 0)
            d = NAN;
        else if (json_is_string(v) && strcmp(json_string_value(v), "Infinity") == 0)
            d = INFINITY;
        else if (json_is_string(v) && strcmp(json_string_value(v), "-Infinity") == 0)
            d = -INFINITY;
        else
            return enc_fail(e, "expected a number");
        if (f->type == PROTOBUF_C_TYPE_FLOAT)
            *(float *)dst = (float)d;
        else
            *(double *)dst = d;
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v))
            return enc_fail(e, "expected true or false");
        *(protobuf_c_boolean *)dst = json_is_true(v);
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (json_is_string(v)) {
            const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(
                ed, json_string_value(v));
            if (!ev)
                return enc_fail(e, "unknown %s value \"%s\"", ed->name, json_string_value(v));
            *(int *)dst = ev->value;
            return 0;
        }
        if (json_is_integer(v)) {
            *(int *)dst = (int)json_integer_value(v);
            return 0;
        }
        return enc_fail(e, "expected an enum name");
    }
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(v))
            return enc_fail(e, "expected a string");
        *(char **)dst = arena_strdup(&e->arena, json_string_value(v), json_string_length(v));
        return 0;
    case PROTOBUF_C_TYPE_BYTES:
        if (!json_is_string(v))
            return enc_fail(e, "expected base64 text");
        return b64_decode(e, json_string_value(v), dst);
    case PROTOBUF_C_TYPE_MESSAGE:
        return enc_message(e, f->descriptor, v, dst);
    }
    return enc_fail(e, "unsupported field type");
}

static int
enc_field(struct enc *e, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, const json_t *v)
{
    char *base = (char *)m;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t esz = scalar_size(f->type);
        const ProtobufCMessageDescriptor *md =
            f->type == PROTOBUF_C_TYPE_MESSAGE ? f->descriptor : NULL;
        if (md && is_map_entry(md)) {
            if (!json_is_object(v))
                return enc_fail(e, "expected an object (map)");
            size_t n = json_object_size(v);
            void **arr = arena_alloc(&e->arena, n * sizeof(void *));
            size_t i = 0;
            const char *k;
            json_t *val;
            json_object_foreach((json_t *)v, k, val)
            {
                ProtobufCMessage *entry = arena_alloc(&e->arena, md->sizeof_message);
                md->message_init(entry);
                size_t old = path_push(e, k, -1);
                json_t *kj = json_string(k);
                int rc = enc_value(e, &md->fields[0], kj, (char *)entry + md->fields[0].offset);
                json_decref(kj);
                if (!rc)
                    rc = enc_value(e, &md->fields[1], val, (char *)entry + md->fields[1].offset);
                e->path[old] = '\0';
                if (rc)
                    return -1;
                arr[i++] = entry;
            }
            *(size_t *)(base + f->quantifier_offset) = n;
            *(void **)(base + f->offset) = arr;
            return 0;
        }
        if (!json_is_array(v))
            return enc_fail(e, "expected a list");
        size_t n = json_array_size(v);
        char *arr = arena_alloc(&e->arena, n * esz);
        for (size_t i = 0; i < n; i++) {
            size_t old = path_push(e, NULL, (long)i);
            int rc = enc_value(e, f, json_array_get(v, i), arr + i * esz);
            e->path[old] = '\0';
            if (rc)
                return -1;
        }
        *(size_t *)(base + f->quantifier_offset) = n;
        *(void **)(base + f->offset) = arr;
        return 0;
    }
    if (json_is_null(v) && !(f->type == PROTOBUF_C_TYPE_MESSAGE &&
                             is_wkt(f->descriptor, "Value")))
        return 0; /* null means "not set" in proto3 JSON */
    if (enc_value(e, f, v, base + f->offset))
        return -1;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)(base + f->quantifier_offset) = f->id;
    else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
             f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING)
        *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
    return 0;
}

static ProtobufCMessage *
new_msg(struct enc *e, const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = arena_alloc(&e->arena, d->sizeof_message);
    d->message_init(m);
    return m;
}

static int
set_named(struct enc *e, ProtobufCMessage *m, const char *field, const json_t *v)
{
    const ProtobufCFieldDescriptor *f = field_by_name(m->descriptor, field);
    if (!f)
        return enc_fail(e, "%s has no field %s", m->descriptor->name, field);
    return enc_field(e, m, f, v);
}

/* Duration text "1.5s" -> seconds + nanos. */
static int
enc_duration(struct enc *e, ProtobufCMessage *m, const json_t *v)
{
    if (json_is_object(v)) { /* {"seconds": 1, "nanos": 0} is accepted too */
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            if (set_named(e, m, k, x))
                return -1;
        }
        return 0;
    }
    if (!json_is_string(v))
        return enc_fail(e, "expected a duration such as \"1.5s\"");
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    if (n < 2 || s[n - 1] != 's')
        return enc_fail(e, "expected a duration such as \"1.5s\", got \"%s\"", s);
    char *end;
    errno = 0;
    bool neg = s[0] == '-';
    long long sec = strtoll(s, &end, 10);
    long long nanos = 0;
    if (errno || end == s)
        return enc_fail(e, "invalid duration \"%s\"", s);
    if (*end == '.') {
        end++;
        int digits = 0;
        while (isdigit((unsigned char)*end)) {
            if (digits < 9) {
                nanos = nanos * 10 + (*end - '0');
                digits++;
            }
            end++;
        }
        while (digits++ < 9)
            nanos *= 10;
    }
    if (*end != 's' || end[1])
        return enc_fail(e, "invalid duration \"%s\"", s);
    json_t *js = json_integer(sec), *jn = json_integer(neg ? -nanos : nanos);
    int rc = set_named(e, m, "seconds", js) || set_named(e, m, "nanos", jn) ? -1 : 0;
    json_decref(js);
    json_decref(jn);
    return rc;
}

static int enc_struct_value(struct enc *e, ProtobufCMessage *m, const json_t *v);

static int
enc_struct(struct enc *e, ProtobufCMessage *m, const json_t *v)
{
    if (!json_is_object(v))
        return enc_fail(e, "expected an object");
    const ProtobufCFieldDescriptor *f = field_by_name(m->descriptor, "fields");
    const ProtobufCMessageDescriptor *entry_d = f->descriptor;
    const ProtobufCMessageDescriptor *value_d = entry_d->fields[1].descriptor;
    size_t n = json_object_size(v);
    void **arr = arena_alloc(&e->arena, n * sizeof(void *));
    size_t i = 0;
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)v, k, val)
    {
        ProtobufCMessage *entry = new_msg(e, entry_d);
        *(char **)((char *)entry + entry_d->fields[0].offset) =
            arena_strdup(&e->arena, k, strlen(k));
        ProtobufCMessage *vm = new_msg(e, value_d);
        size_t old = path_push(e, k, -1);
        int rc = enc_struct_value(e, vm, val);
        e->path[old] = '\0';
        if (rc)
            return -1;
        *(ProtobufCMessage **)((char *)entry + entry_d->fields[1].offset) = vm;
        arr[i++] = entry;
    }
    *(size_t *)((char *)m + f->quantifier_offset) = n;
    *(void **)((char *)m + f->offset) = arr;
    return 0;
}

/* google.protobuf.Value from any JSON value. */
static int
enc_struct_value(struct enc *e, ProtobufCMessage *m, const json_t *v)
{
    if (++e->depth > KM_PBJSON_MAX_DEPTH)
        return enc_fail(e, "nesting deeper than %d", KM_PBJSON_MAX_DEPTH);
    int rc = 0;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (json_is_null(v)) {
        json_t *z = json_integer(0);
        rc = set_named(e, m, "null_value", z);
        json_decref(z);
    } else if (json_is_number(v)) {
        rc = set_named(e, m, "number_value", v);
    } else if (json_is_string(v)) {
        rc = set_named(e, m, "string_value", v);
    } else if (json_is_boolean(v)) {
        rc = set_named(e, m, "bool_value", v);
    } else if (json_is_object(v)) {
        const ProtobufCFieldDescriptor *f = field_by_name(d, "struct_value");
        ProtobufCMessage *sm = new_msg(e, f->descriptor);
        rc = enc_struct(e, sm, v);
        *(ProtobufCMessage **)((char *)m + f->offset) = sm;
        *(uint32_t *)((char *)m + f->quantifier_offset) = f->id;
    } else {
        const ProtobufCFieldDescriptor *f = field_by_name(d, "list_value");
        const ProtobufCMessageDescriptor *ld = f->descriptor;
        ProtobufCMessage *lm = new_msg(e, ld);
        const ProtobufCFieldDescriptor *vf = field_by_name(ld, "values");
        size_t n = json_array_size(v);
        void **arr = arena_alloc(&e->arena, n * sizeof(void *));
        for (size_t i = 0; i < n && !rc; i++) {
            arr[i] = new_msg(e, vf->descriptor);
            size_t old = path_push(e, NULL, (long)i);
            rc = enc_struct_value(e, arr[i], json_array_get(v, i));
            e->path[old] = '\0';
        }
        *(size_t *)((char *)lm + vf->quantifier_offset) = n;
        *(void **)((char *)lm + vf->offset) = arr;
        *(ProtobufCMessage **)((char *)m + f->offset) = lm;
        *(uint32_t *)((char *)m + f->quantifier_offset) = f->id;
    }
    e->depth--;
    return rc;
}

static int
pack_arena(struct enc *e, const ProtobufCMessage *m, ProtobufCBinaryData *out)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    out->data = arena_alloc(&e->arena, n);
    out->len = protobuf_c_message_pack(m, out->data);
    return 0;
}

static int
enc_any(struct enc *e, ProtobufCMessage *m, const json_t *v)
{
    if (!json_is_object(v))
        return enc_fail(e, "expected an object with \"@type\"");
    json_t *t = json_object_get(v, "@type");
    if (!json_is_string(t))
        return enc_fail(e, "Any needs \"@type\"");
    const ProtobufCMessageDescriptor *inner = km_pbjson_lookup(json_string_value(t));
    if (!inner)
        return enc_fail(e, "unknown type \"%s\"", json_string_value(t));
    json_t *body;
    bool special = is_wkt(inner, "Duration") || is_wrapper(inner) || is_wkt(inner, "Struct") ||
                   is_wkt(inner, "Value") || is_wkt(inner, "ListValue") || is_wkt(inner, "Any");
    if (special) {
        body = json_incref(json_object_get(v, "value"));
        if (!body)
            return enc_fail(e, "Any of %s needs \"value\"", inner->name);
    } else {
        body = json_deep_copy(v);
        json_object_del(body, "@type");
    }
    ProtobufCMessage *im = NULL;
    int rc = enc_message(e, inner, body, &im);
    json_decref(body);
    if (rc)
        return -1;
    ProtobufCBinaryData bytes;
    pack_arena(e, im, &bytes);
    char *url = km_xasprintf(TYPE_PREFIX "%s", inner->name);
    const ProtobufCFieldDescriptor *ft = field_by_name(m->descriptor, "type_url");
    const ProtobufCFieldDescriptor *fv = field_by_name(m->descriptor, "value");
    *(char **)((char *)m + ft->offset) = arena_strdup(&e->arena, url, strlen(url));
    free(url);
    *(ProtobufCBinaryData *)((char *)m + fv->offset) = bytes;
    return 0;
}

static int
enc_message(struct enc *e, const ProtobufCMessageDescriptor *d, const json_t *j,
            ProtobufCMessage **out)
{
    if (++e->depth > KM_PBJSON_MAX_DEPTH)
        return enc_fail(e, "nesting deeper than %d", KM_PBJSON_MAX_DEPTH);
    ProtobufCMessage *m = new_msg(e, d);
    *out = m;
    int rc = 0;
    if (is_wkt(d, "Any")) {
        rc = enc_any(e, m, j);
    } else if (is_wkt(d, "Duration")) {
        rc = enc_duration(e, m, j);
    } else if (is_wrapper(d)) {
        rc = set_named(e, m, "value", j);
    } else if (is_wkt(d, "Struct")) {
        rc = enc_struct(e, m, j);
    } else if (is_wkt(d, "Value")) {
        e->depth--;
        rc = enc_struct_value(e, m, j);
        e->depth++;
    } else if (!json_is_object(j)) {
        rc = enc_fail(e, "expected an object (%s)", d->name);
    } else {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            const ProtobufCFieldDescriptor *f = field_by_name(d, k);
            size_t old = path_push(e, k, -1);
            if (!f)
                rc = enc_fail(e, "unknown field of %s", d->name);
            else
                rc = enc_field(e, m, f, v);
            e->path[old] = '\0';
            if (rc)
                break;
        }
    }
    e->depth--;
    return rc;
}

int
km_pbjson_encode(const ProtobufCMessageDescriptor *d, const json_t *j, uint8_t **out, size_t *len,
                 char *err, size_t errlen)
{
    struct enc e = {.err = err, .errlen = errlen};
    ProtobufCMessage *m = NULL;
    int rc = enc_message(&e, d, j, &m);
    if (rc == 0) {
        size_t n = protobuf_c_message_get_packed_size(m);
        *out = km_xmalloc(n);
        *len = protobuf_c_message_pack(m, *out);
    }
    arena_free(&e.arena);
    return rc;
}

int
km_pbjson_encode_any(const ProtobufCMessageDescriptor *d, const json_t *j, uint8_t **out,
                     size_t *len, char *err, size_t errlen)
{
    const ProtobufCMessageDescriptor *any = km_pbjson_lookup("google.protobuf.Any");
    if (!any) {
        snprintf(err, errlen, "google.protobuf.Any is not registered");
        return -1;
    }
    json_t *w = json_deep_copy(j);
    char *url = km_xasprintf(TYPE_PREFIX "%s", d->name);
    json_object_set_new(w, "@type", json_string(url));
    free(url);
    int rc = km_pbjson_encode(any, w, out, len, err, errlen);
    json_decref(w);
    return rc;
}

/* ---- decoding ---- */

struct dec {
    char *err;
    size_t errlen;
    int depth;
};

static json_t *dec_message(struct dec *x, const ProtobufCMessage *m);

static json_t *
b64_encode(const uint8_t *p, size_t n)
{
    char *t = km_xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)t, p, (int)n);
    json_t *j = json_string(t);
    free(t);
    return j;
}

static json_t *
dec_value(struct dec *x, const ProtobufCFieldDescriptor *f, const void *src)
{
    char num[32];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)src);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)src);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: /* proto3 JSON writes 64-bit integers as strings */
        snprintf(num, sizeof(num), "%" PRId64, *(const int64_t *)src);
        return json_string(num);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *)src);
        return json_string(num);
    case PROTOBUF_C_TYPE_FLOAT:
        return json_real(*(const float *)src);
    case PROTOBUF_C_TYPE_DOUBLE:
        return json_real(*(const double *)src);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)src);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)src;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)src;
        json_t *j = json_string(s ? s : "");
        return j ? j : json_string("(invalid UTF-8)");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = src;
        return b64_encode(b->data, b->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)src;
        return m ? dec_message(x, m) : json_null();
    }
    }
    return json_null();
}

static bool
field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)m;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        return *(ProtobufCMessage *const *)(base + f->offset) != NULL;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING)
        return *(const protobuf_c_boolean *)(base + f->quantifier_offset);
    const void *p = base + f->offset;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s && *s;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len > 0;
    default: {
        size_t sz = scalar_size(f->type);
        static const uint8_t zero[8];
        return memcmp(p, zero, sz) != 0;
    }
    }
}

static json_t *
dec_struct_value(struct dec *x, const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->descriptor->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &m->descriptor->fields[i];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || !field_present(m, f))
            continue;
        if (strcmp(f->name, "null_value") == 0)
            return json_null();
        return dec_value(x, f, (const char *)m + f->offset);
    }
    return json_null();
}

static json_t *
dec_message(struct dec *x, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (++x->depth > KM_PBJSON_MAX_DEPTH) {
        x->depth--;
        return json_string("(nesting too deep)");
    }
    json_t *out = NULL;
    const char *base = (const char *)m;
    if (is_wkt(d, "Duration")) {
        const ProtobufCFieldDescriptor *fs = field_by_name(d, "seconds");
        const ProtobufCFieldDescriptor *fn = field_by_name(d, "nanos");
        int64_t s = *(const int64_t *)(base + fs->offset);
        int32_t n = *(const int32_t *)(base + fn->offset);
        char buf[48];
        if (n) {
            snprintf(buf, sizeof(buf), "%s%" PRId64 ".%09ds", (s == 0 && n < 0) ? "-" : "", s,
                     abs(n));
            /* trim trailing zeros of the fraction */
            size_t l = strlen(buf) - 1;
            while (buf[l - 1] == '0')
                l--;
            buf[l] = 's';
            buf[l + 1] = '\0';
        } else {
            snprintf(buf, sizeof(buf), "%" PRId64 "s", s);
        }
        out = json_string(buf);
    } else if (is_wrapper(d)) {
        out = dec_value(x, &d->fields[0], base + d->fields[0].offset);
    } else if (is_wkt(d, "Value")) {
        out = dec_struct_value(x, m);
    } else if (is_wkt(d, "Any")) {
        const ProtobufCFieldDescriptor *ft = field_by_name(d, "type_url");
        const ProtobufCFieldDescriptor *fv = field_by_name(d, "value");
        const char *url = *(char *const *)(base + ft->offset);
        const ProtobufCBinaryData *val = (const void *)(base + fv->offset);
        const ProtobufCMessageDescriptor *inner = url ? km_pbjson_lookup(url) : NULL;
        ProtobufCMessage *im =
            inner ? protobuf_c_message_unpack(inner, NULL, val->len, val->data) : NULL;
        if (im) {
            json_t *body = dec_message(x, im);
            protobuf_c_message_free_unpacked(im, NULL);
            if (json_is_object(body)) {
                out = json_object();
                json_object_set_new(out, "@type", json_string(url));
                json_object_update(out, body);
                json_decref(body);
            } else {
                out = json_pack("{s:s, s:o}", "@type", url, "value", body);
            }
        } else {
            out = json_pack("{s:s, s:o}", "@type", url ? url : "", "value",
                            b64_encode(val->data, val->len));
        }
    } else {
        bool is_struct = is_wkt(d, "Struct");
        out = json_object();
        for (unsigned i = 0; i < d->n_fields; i++) {
            const ProtobufCFieldDescriptor *f = &d->fields[i];
            json_t *v = NULL;
            if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                size_t n = *(const size_t *)(base + f->quantifier_offset);
                if (!n)
                    continue;
                const char *arr = *(char *const *)(base + f->offset);
                size_t esz = scalar_size(f->type);
                const ProtobufCMessageDescriptor *md =
                    f->type == PROTOBUF_C_TYPE_MESSAGE ? f->descriptor : NULL;
                if (md && is_map_entry(md)) {
                    v = json_object();
                    for (size_t k = 0; k < n; k++) {
                        const ProtobufCMessage *entry = ((ProtobufCMessage *const *)arr)[k];
                        json_t *key = dec_value(x, &md->fields[0],
                                                (const char *)entry + md->fields[0].offset);
                        json_t *val = dec_value(x, &md->fields[1],
                                                (const char *)entry + md->fields[1].offset);
                        char kb[32];
                        const char *ks = json_is_string(key) ? json_string_value(key) : kb;
                        if (!json_is_string(key))
                            snprintf(kb, sizeof(kb), "%lld", (long long)json_integer_value(key));
                        json_object_set_new(v, ks, val);
                        json_decref(key);
                    }
                    if (is_struct) {
                        json_decref(out);
                        out = v;
                        goto done;
                    }
                } else {
                    v = json_array();
                    for (size_t k = 0; k < n; k++)
                        json_array_append_new(v, dec_value(x, f, arr + k * esz));
                }
            } else {
                if (!field_present(m, f))
                    continue;
                v = dec_value(x, f, base + f->offset);
            }
            json_object_set_new(out, f->name, v);
        }
        if (is_struct && json_object_size(out) == 0) {
            /* empty Struct */
        }
    }
done:
    x->depth--;
    return out;
}

json_t *
km_pbjson_from_message(const ProtobufCMessage *m, char *err, size_t errlen)
{
    struct dec x = {err, errlen, 0};
    return dec_message(&x, m);
}

json_t *
km_pbjson_decode(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len, char *err,
                 size_t errlen)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, buf);
    if (!m) {
        snprintf(err, errlen, "bytes are not a valid %s message", d->name);
        return NULL;
    }
    json_t *j = km_pbjson_from_message(m, err, errlen);
    protobuf_c_message_free_unpacked(m, NULL);
    return j;
}
