/* Validation shared by every resource type: names, meta, labels, the REST request checks, and
 * the helpers the per-family validators (validate_*.c) use. Messages follow Kuma 2.14's. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/resource.h>
#include <km/cp/validate.h>

/* ---- paths ---- */

char *
km_vp_field(const char *base, const char *field)
{
    if (!field || !field[0])
        return km_xstrdup(base ? base : "");
    return km_path_key(base, field);
}

char *
km_vp_index(const char *base, size_t i)
{
    return km_path_idx(base, i);
}

char *
km_vp_key(const char *base, const char *key)
{
    struct km_sbuf b;

    km_sbuf_init(&b);
    km_sbuf_puts(&b, base ? base : "");
    km_sbuf_puts(&b, "[\"");
    for (const char *p = key; *p; p++) {
        if (*p == '"' || *p == '\\')
            km_sbuf_add(&b, "\\", 1);
        km_sbuf_add(&b, p, 1);
    }
    km_sbuf_puts(&b, "\"]");
    return km_sbuf_take(&b);
}

void
km_verr_at(struct km_errs *e, const char *base, const char *field, const char *fmt, ...)
{
    char *path = km_vp_field(base, field);
    char *msg;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    km_errs_add(e, path, "%s", msg);
    free(msg);
    free(path);
}

/* ---- JSON helpers ---- */

const char *
km_json_kind(const json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "null";
}

static bool
kind_matches(const json_t *v, const char *want)
{
    if (strcmp(want, "string") == 0)
        return json_is_string(v);
    if (strcmp(want, "integer") == 0)
        return json_is_integer(v);
    if (strcmp(want, "number") == 0)
        return json_is_number(v);
    if (strcmp(want, "boolean") == 0)
        return json_is_boolean(v);
    if (strcmp(want, "object") == 0)
        return json_is_object(v);
    if (strcmp(want, "array") == 0)
        return json_is_array(v);
    return false;
}

bool
km_schema_type(struct km_errs *e, const char *path, const json_t *v, const char *want)
{
    const char *got;

    if (!v || json_is_null(v) || kind_matches(v, want))
        return true;
    got = km_json_kind(v); /* JSON has one number type: whole numbers are "number" too */
    km_errs_add(e, path, "in body must be of type %s: \"%s\"", want, got);
    return false;
}

bool
km_schema_enum(struct km_errs *e, const char *path, const json_t *v, const char *const *vals,
               size_t n)
{
    struct km_sbuf b;

    if (!v || json_is_null(v))
        return true;
    if (!km_schema_type(e, path, v, "string"))
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(json_string_value(v), vals[i]) == 0)
            return true;
    km_sbuf_init(&b);
    for (size_t i = 0; i < n; i++)
        km_sbuf_printf(&b, "%s%s", i ? " " : "", vals[i]);
    km_errs_add(e, path, "in body should be one of [%s]", b.ptr ? b.ptr : "");
    km_sbuf_deinit(&b);
    return false;
}

const char *
km_jstr(const json_t *obj, const char *key)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

bool
km_jint(const json_t *obj, const char *key, long long *out)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    return false;
}

/* ---- scalar checks ---- */

void
km_validate_port(struct km_errs *e, const char *path, const json_t *v)
{
    long long p = 0;

    if (v && !json_is_integer(v)) {
        km_errs_add(e, path, "port must be in the range [1, 65535]");
        return;
    }
    if (v)
        p = json_integer_value(v);
    if (p < 1 || p > 65535)
        km_errs_add(e, path, "port must be in the range [1, 65535]");
}

void
km_validate_duration(struct km_errs *e, const char *path, const json_t *v, bool required)
{
    int64_t ns;

    if (!v || json_is_null(v)) {
        if (required)
            km_errs_add(e, path, "must have a positive value");
        return;
    }
    if (!json_is_string(v) || !km_duration_parse(json_string_value(v), false, &ns)) {
        km_errs_add(e, path, "must have a valid value");
        return;
    }
    if (ns <= 0)
        km_errs_add(e, path, "must have a positive value");
}

/* ---- character classes ---- */

static bool
is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool
is_alnum(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static bool
label_ok(const char *s, size_t n)
{
    if (n == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return false;
    return true;
}

bool
km_is_dns1123_label(const char *s)
{
    size_t n = strlen(s);
    return n <= 63 && label_ok(s, n);
}

/* RFC 1123 subdomain characters only (no length limit). */
static bool
subdomain_chars(const char *s)
{
    const char *p = s;

    if (!*s)
        return false;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (!label_ok(p, n))
            return false;
        if (!dot)
            return true;
        p = dot + 1;
    }
}

bool
km_is_dns1123_subdomain(const char *s)
{
    return strlen(s) <= 253 && subdomain_chars(s);
}

bool
km_is_dns1035_label(const char *s)
{
    size_t n = strlen(s);
    return n <= 63 && label_ok(s, n) && s[0] >= 'a' && s[0] <= 'z';
}

bool
km_is_ip(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* ---- tags and selectors ---- */

static bool
chars_in(const char *s, const char *extra)
{
    for (; *s; s++)
        if (!is_alnum(*s) && !strchr(extra, *s))
            return false;
    return true;
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void
km_validate_tags(struct km_errs *e, const char *path, const json_t *tags,
                 const struct km_tags_opts *o)
{
    const char **keys = NULL;
    size_t n = 0, i = 0;
    const char *k;
    json_t *v;

    if (tags && !json_is_object(tags)) {
        km_errs_add(e, path, "must be an object of tags");
        return;
    }
    n = tags ? json_object_size(tags) : 0;
    if (o->require_at_least_one && n == 0)
        km_errs_add(e, path, "must have at least one tag");
    if (n) {
        keys = km_xcalloc(n, sizeof(*keys));
        json_object_foreach ((json_t *)tags, k, v)
            keys[i++] = k;
        qsort(keys, n, sizeof(*keys), cmp_str);
    }
    for (i = 0; i < n; i++) {
        const json_t *val = json_object_get(tags, keys[i]);
        const char *s = json_is_string(val) ? json_string_value(val) : NULL;
        char *kp = km_vp_key(path, keys[i]);

        if (!keys[i][0])
            km_errs_add(e, path, "tag name must be non-empty");
        if (!chars_in(keys[i], ".-_:/"))
            km_errs_add(e, kp,
                        "tag name must consist of alphanumeric characters, dots, dashes, "
                        "slashes and underscores");
        if (!s) {
            km_errs_add(e, kp, "tag value must be a string");
        } else {
            if (!s[0])
                km_errs_add(e, kp, "tag value must be non-empty");
            if (o->selector) {
                if (strcmp(s, "*") != 0 && !chars_in(s, ".-_:/"))
                    km_errs_add(e, kp,
                                "tag value must consist of alphanumeric characters, dots, "
                                "dashes, slashes and underscores or be \"*\"");
            } else if (!chars_in(s, ".-_:")) {
                km_errs_add(e, kp,
                            "tag value must consist of alphanumeric characters, dots, dashes "
                            "and underscores");
            }
        }
        free(kp);
    }
    if (o->require_service && !(tags && json_object_get(tags, "kuma.io/service")))
        km_errs_add(e, path, "mandatory tag \"kuma.io/service\" is missing");
    free(keys);
}

void
km_validate_selectors(struct km_errs *e, const char *path, const json_t *arr, bool require_one,
                      const struct km_tags_opts *o)
{
    const json_t *sel;
    size_t i;
    struct km_tags_opts so = *o;

    so.selector = true;
    if (arr && !json_is_array(arr)) {
        km_errs_add(e, path, "must be an array");
        return;
    }
    if (require_one && json_array_size(arr) == 0)
        km_errs_add(e, path, "must have at least one element");
    json_array_foreach (arr, i, sel) {
        char *ip = km_vp_index(path, i);
        char *mp = km_vp_field(ip, "match");
        km_validate_tags(e, mp, json_object_get(sel, "match"), &so);
        free(mp);
        free(ip);
    }
}

/* ---- names, meta, labels ---- */

static const char identifier_msg[] =
    "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric character";
static const char mesh_msg[] =
    "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', "
    "'.' symbols.";

void
km_validate_name(const char *name, struct km_errs *errs)
{
    if (!name || !name[0])
        km_errs_add(errs, "name", "cannot be empty");
    else if (strlen(name) > 253)
        km_errs_add(errs, "name", "value length must less or equal 253");
    else if (!subdomain_chars(name))
        km_errs_add(errs, "name", "%s", identifier_msg);
}

void
km_validate_meta(const struct km_resource *r, struct km_errs *errs)
{
    const char *m = r->mesh ? r->mesh : "";

    km_validate_name(r->name, errs);
    if (!r->type || r->type->scope != KM_SCOPE_MESH)
        return;
    if (!m[0])
        km_errs_add(errs, "mesh", "cannot be empty");
    else if (strlen(m) > 253)
        km_errs_add(errs, "mesh", "value length must less or equal 253");
    else if (!chars_in(m, "-_.") || strpbrk(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        km_errs_add(errs, "mesh", "%s", mesh_msg);
}

static const char qname_fmt[] = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
static const char qname_msg[] =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

static bool
qualified_part_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || !is_alnum(s[0]) || !is_alnum(s[n - 1]))
        return false;
    return chars_in(s, "-_.");
}

static void
validate_label_key(struct km_errs *e, const char *path, const char *k)
{
    const char *slash = strchr(k, '/');
    const char *name = k;

    if (slash && strchr(slash + 1, '/')) {
        km_errs_add(e, path, "a valid label key %s with an optional DNS subdomain prefix and '/' "
                             "(e.g. 'example.com/MyName')",
                    qname_msg);
        return;
    }
    if (slash) {
        char *prefix = km_xstrndup(k, (size_t)(slash - k));
        name = slash + 1;
        if (!prefix[0]) {
            km_errs_add(e, path, "prefix part must be non-empty");
        } else {
            if (strlen(prefix) > 253)
                km_errs_add(e, path, "prefix part must be no more than 253 characters");
            if (!subdomain_chars(prefix))
                km_errs_add(e, path,
                            "prefix part a lowercase RFC 1123 subdomain must consist of lower "
                            "case alphanumeric characters, '-' or '.', and must start and end "
                            "with an alphanumeric character (e.g. 'example.com', regex used for "
                            "validation is "
                            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
        }
        free(prefix);
    }
    if (!name[0])
        km_errs_add(e, path, "name part must be non-empty");
    else if (strlen(name) > 63)
        km_errs_add(e, path, "name part must be no more than 63 characters");
    if (!qualified_part_ok(name))
        km_errs_add(e, path, "name part %s", qname_msg);
    (void)qname_fmt;
}

void
km_validate_labels(const json_t *labels, struct km_errs *errs)
{
    const char *origin;

    if (!json_is_object(labels) || json_object_size(labels) == 0)
        return;
    origin = km_jstr(labels, "kuma.io/origin");
    if (origin && strcmp(origin, "global") != 0 && strcmp(origin, "zone") != 0)
        km_errs_add(errs, "labels[\"kuma.io/origin\"]", "unknown resource origin \"%s\"", origin);
    km_validate_label_entries(labels, errs);
}

void
km_validate_label_entries(const json_t *labels, struct km_errs *errs)
{
    const char **keys;
    size_t n, i = 0;
    const char *k;
    json_t *v;

    if (!json_is_object(labels) || json_object_size(labels) == 0)
        return;
    n = json_object_size(labels);
    keys = km_xcalloc(n, sizeof(*keys));
    json_object_foreach ((json_t *)labels, k, v)
        keys[i++] = k;
    qsort(keys, n, sizeof(*keys), cmp_str);
    for (i = 0; i < n; i++) {
        const char *val = km_jstr(labels, keys[i]);
        char *path = km_vp_key("labels", keys[i]);
        validate_label_key(errs, path, keys[i]);
        if (val && strlen(val) > 63)
            km_errs_add(errs, path, "must be no more than 63 characters");
        if (val && val[0] && !qualified_part_ok(val))
            km_errs_add(errs, path,
                        "a valid label must be an empty string or consist of alphanumeric "
                        "characters, '-', '_' or '.', and must start and end with an "
                        "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
                        "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
                        "[A-Za-z0-9])?')");
        free(path);
    }
    free(keys);
}

void
km_validate_request(const struct km_resource *r, const char *body_type, const char *url_mesh,
                    const char *url_name, struct km_errs *errs)
{
    if (!url_name || strcmp(url_name, r->name ? r->name : "") != 0)
        km_errs_add(errs, "name", "name from the URL has to be the same as in body");
    if (!body_type || strcmp(body_type, r->type->name) != 0)
        km_errs_add(errs, "type", "type from the URL has to be the same as in body");
    if (r->type->scope == KM_SCOPE_MESH &&
        (!url_mesh || strcmp(url_mesh, r->mesh ? r->mesh : "") != 0))
        km_errs_add(errs, "mesh", "mesh from the URL has to be the same as in body");
    km_validate_labels(r->labels, errs);
    km_validate_meta(r, errs);
}

void
km_resource_validate(const struct km_resource *r, struct km_errs *errs)
{
    if (!r || !r->type)
        return;
    if (!json_is_object(r->spec)) {
        km_errs_add(errs, r->type->has_spec ? "spec" : "", "must be an object");
        return;
    }
    if (r->type->validate)
        r->type->validate(r->type, r, errs);
}
