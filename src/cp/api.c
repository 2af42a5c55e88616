/* REST API server (port 5681): Kuma's resource paths, list and error shapes.
 *
 * libmicrohttpd parses HTTP/1.1 and runs a small thread pool; this file only routes and
 * speaks Kuma's JSON. Each request collects its body (bounded by apiServer.maxBodyBytes,
 * 413 beyond) and is answered once the body is complete. */
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <km/common/yamljson.h>
#include <km/cp/cp.h>
#include <km/cp/labels.h>
#include <km/cp/policy_match.h>
#include <km/cp/tokens.h>
#include <km/cp/validate.h>

#define API_DEFAULT_PAGE 100
#define API_MAX_PAGE     1000
#define API_MAX_SEGMENTS 8

struct api_req {
    struct km_sbuf body;
    bool too_large;
};

struct api_resp {
    unsigned status;
    json_t *body; /* owned; NULL = empty body */
};

/* ---- responses ---- */

static void
resp_set(struct api_resp *out, unsigned status, json_t *body)
{
    out->status = status;
    json_decref(out->body);
    out->body = body;
}

/* Kuma's error shape (AIP-193 style, with the deprecated "details"/"causes" twins). */
static void
resp_error(struct api_resp *out, unsigned status, const char *title, const char *detail,
           const struct km_errs *errs)
{
    json_t *e = json_object();
    json_object_set_new(e, "type", json_string("/std-errors"));
    json_object_set_new(e, "status", json_integer(status));
    json_object_set_new(e, "title", json_string(title));
    json_object_set_new(e, "detail", json_string(detail));
    if (errs && errs->n) {
        json_t *ip = json_array(), *causes = json_array();
        for (size_t i = 0; i < errs->n; i++) {
            json_array_append_new(ip, json_pack("{s:s, s:s}", "field", errs->v[i].field,
                                                "reason", errs->v[i].reason));
            json_array_append_new(causes, json_pack("{s:s, s:s}", "field", errs->v[i].field,
                                                    "message", errs->v[i].reason));
        }
        json_object_set_new(e, "invalid_parameters", ip);
        json_object_set_new(e, "details", json_string(detail));
        json_object_set_new(e, "causes", causes);
    } else {
        json_object_set_new(e, "details", json_string(detail));
    }
    resp_set(out, status, e);
}

/* Maps a store error to Kuma's answer. <title> is the operation ("Could not retrieve a
 * resource"). */
static void
resp_store_error(struct api_resp *out, int rc, const char *title)
{
    switch (rc) {
    case KM_ENOTFOUND:
        resp_error(out, 404, title, "Not found", NULL);
        break;
    case KM_ECONFLICT:
        resp_error(out, 409, title, "Resource already exists or was modified concurrently",
                   NULL);
        break;
    case KM_EUNAVAIL:
        resp_error(out, 503, title,
                   "Store unavailable: the database cannot be reached, try again later", NULL);
        break;
    default:
        resp_error(out, 500, title, km_strerror(rc), NULL);
        break;
    }
}

/* ---- request context ---- */

struct api_ctx {
    struct km_cp *cp;
    struct MHD_Connection *conn;
    const char *method;
    char *segs[API_MAX_SEGMENTS]; /* owned path segments */
    size_t nsegs;
    const char *body;
    size_t body_len;
    struct api_resp *out;
};

static const char *
query(const struct api_ctx *c, const char *key)
{
    return MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, key);
}

static const char *
json_str(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool
split_path(struct api_ctx *c, const char *url)
{
    const char *p = url;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (c->nsegs == API_MAX_SEGMENTS)
            return false;
        c->segs[c->nsegs++] = km_xstrndup(p, n);
        p += n;
    }
    return true;
}

/* ---- JSON syntax errors in Go's words ----
 *
 * Kuma answers a malformed JSON body with Go's encoding/json message ("invalid character ','
 * looking for beginning of object key string"); jansson words them differently, so a small
 * iterative scanner finds the first error the way Go's does. */

struct gj_scan {
    const unsigned char *p;
    size_t n, i;
    char *msg;
    size_t msglen;
};

/* Go's quoteChar: the character between single quotes, escaped like strconv.Quote. */
static void
gj_error(struct gj_scan *s, int c, const char *context)
{
    char q[16];
    if (c == '\'')
        snprintf(q, sizeof(q), "'\\''");
    else if (c == '"')
        snprintf(q, sizeof(q), "'\"'");
    else if (c == '\\')
        snprintf(q, sizeof(q), "'\\\\'");
    else if (c == '\n')
        snprintf(q, sizeof(q), "'\\n'");
    else if (c == '\r')
        snprintf(q, sizeof(q), "'\\r'");
    else if (c == '\t')
        snprintf(q, sizeof(q), "'\\t'");
    else if (c == '\a' || c == '\b' || c == '\f' || c == '\v')
        snprintf(q, sizeof(q), "'\\%c'", "abfv"[c == '\a' ? 0 : c == '\b' ? 1 : c == '\f' ? 2 : 3]);
    else if (c < 0x20 || c == 0x7f)
        snprintf(q, sizeof(q), "'\\x%02x'", (unsigned)c);
    else if (c >= 0x80 && (c < 0xa1 || c == 0xad))
        snprintf(q, sizeof(q), "'\\u%04x'", (unsigned)c);
    else if (c >= 0x80)
        snprintf(q, sizeof(q), "'%c%c'", (char)(0xc0 | (c >> 6)), (char)(0x80 | (c & 0x3f)));
    else
        snprintf(q, sizeof(q), "'%c'", c);
    snprintf(s->msg, s->msglen, "invalid character %s %s", q, context);
}

/* The next byte, or ' ' at the end (Go's scanner feeds a space at EOF). */
static int
gj_peek(const struct gj_scan *s)
{
    return s->i < s->n ? s->p[s->i] : ' ';
}

static void
gj_ws(struct gj_scan *s)
{
    while (s->i < s->n && (s->p[s->i] == ' ' || s->p[s->i] == '\t' || s->p[s->i] == '\n' ||
                           s->p[s->i] == '\r'))
        s->i++;
}

static bool
gj_eof(struct gj_scan *s)
{
    if (s->i < s->n)
        return false;
    snprintf(s->msg, s->msglen, "unexpected end of JSON input");
    return true;
}

static bool
gj_string(struct gj_scan *s)
{
    s->i++; /* opening quote */
    for (;;) {
        if (gj_eof(s))
            return false;
        int c = s->p[s->i];
        if (c == '"') {
            s->i++;
            return true;
        }
        if (c < 0x20) {
            gj_error(s, c, "in string literal");
            return false;
        }
        s->i++;
        if (c != '\\')
            continue;
        if (gj_eof(s))
            return false;
        c = s->p[s->i];
        if (strchr("\"\\/bfnrt", c) && c) {
            s->i++;
        } else if (c == 'u') {
            s->i++;
            for (int k = 0; k < 4; k++) {
                if (gj_eof(s))
                    return false;
                if (!isxdigit(s->p[s->i])) {
                    gj_error(s, s->p[s->i], "in \\u hexadecimal character escape");
                    return false;
                }
                s->i++;
            }
        } else {
            gj_error(s, c, "in string escape code");
            return false;
        }
    }
}

static bool
gj_digits(struct gj_scan *s, const char *context)
{
    if (!isdigit(gj_peek(s))) {
        gj_error(s, gj_peek(s), context);
        return false;
    }
    while (s->i < s->n && isdigit(s->p[s->i]))
        s->i++;
    return true;
}

static bool
gj_number(struct gj_scan *s)
{
    if (s->p[s->i] == '-')
        s->i++;
    if (gj_peek(s) == '0')
        s->i++;
    else if (!gj_digits(s, "in numeric literal"))
        return false;
    if (s->i < s->n && s->p[s->i] == '.') {
        s->i++;
        if (!gj_digits(s, "after decimal point in numeric literal"))
            return false;
    }
    if (s->i < s->n && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        s->i++;
        if (s->i < s->n && (s->p[s->i] == '+' || s->p[s->i] == '-'))
            s->i++;
        if (!gj_digits(s, "in exponent of numeric literal"))
            return false;
    }
    return true;
}

static bool
gj_literal(struct gj_scan *s)
{
    const char *lit = s->p[s->i] == 't' ? "true" : s->p[s->i] == 'f' ? "false" : "null";
    s->i++;
    for (const char *q = lit + 1; *q; q++) {
        if (gj_peek(s) != *q) {
            char ctx[48];
            snprintf(ctx, sizeof(ctx), "in literal %s (expecting '%c')", lit, *q);
            gj_error(s, gj_peek(s), ctx);
            return false;
        }
        s->i++;
    }
    return true;
}

/* Object key and colon, after '{' or ','. */
static bool
gj_key(struct gj_scan *s)
{
    gj_ws(s);
    if (gj_eof(s))
        return false;
    if (s->p[s->i] != '"') {
        gj_error(s, s->p[s->i], "looking for beginning of object key string");
        return false;
    }
    if (!gj_string(s))
        return false;
    gj_ws(s);
    if (gj_eof(s))
        return false;
    if (s->p[s->i] != ':') {
        gj_error(s, s->p[s->i], "after object key");
        return false;
    }
    s->i++;
    return true;
}

/* Returns true when <buf> is valid JSON; else writes Go's message into <msg>. */
static bool
go_json_check(const char *buf, size_t len, char *msg, size_t msglen)
{
    struct gj_scan s = {(const unsigned char *)buf, len, 0, msg, msglen};
    char *stack = km_xmalloc(len + 1); /* 'O' object, 'A' array */
    size_t depth = 0;
    bool ok = false;

    for (;;) {
        /* a value */
        gj_ws(&s);
        if (gj_eof(&s))
            goto out;
        int c = s.p[s.i];
        if (c == '{') {
            s.i++;
            stack[depth++] = 'O';
            gj_ws(&s);
            if (gj_eof(&s))
                goto out;
            if (s.p[s.i] == '}') {
                s.i++;
                depth--;
            } else {
                if (!gj_key(&s))
                    goto out;
                continue;
            }
        } else if (c == '[') {
            s.i++;
            stack[depth++] = 'A';
            gj_ws(&s);
            if (gj_eof(&s))
                goto out;
            if (s.p[s.i] == ']') {
                s.i++;
                depth--;
            } else {
                continue;
            }
        } else if (c == '"') {
            if (!gj_string(&s))
                goto out;
        } else if (c == '-' || isdigit(c)) {
            if (!gj_number(&s))
                goto out;
        } else if (c == 't' || c == 'f' || c == 'n') {
            if (!gj_literal(&s))
                goto out;
        } else {
            gj_error(&s, c, "looking for beginning of value");
            goto out;
        }
        /* after a value: close containers until one wants another element */
        for (;;) {
            gj_ws(&s);
            if (depth == 0) {
                if (s.i < s.n) {
                    gj_error(&s, s.p[s.i], "after top-level value");
                    goto out;
                }
                ok = true;
                goto out;
            }
            if (gj_eof(&s))
                goto out;
            c = s.p[s.i];
            if (stack[depth - 1] == 'O') {
                if (c == '}') {
                    s.i++;
                    depth--;
                    continue;
                }
                if (c != ',') {
                    gj_error(&s, c, "after object key:value pair");
                    goto out;
                }
                s.i++;
                if (!gj_key(&s))
                    goto out;
            } else {
                if (c == ']') {
                    s.i++;
                    depth--;
                    continue;
                }
                if (c != ',') {
                    gj_error(&s, c, "after array element");
                    goto out;
                }
                s.i++;
            }
            break;
        }
    }
out:
    free(stack);
    return ok;
}

/* Parses the request body: JSON as Kuma takes it, or YAML (kumactl and curl users may send
 * either). On error writes the reason into <err>: Go's wording for JSON. */
static json_t *
parse_body(struct api_ctx *c, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < c->body_len && isspace((unsigned char)c->body[i]))
        i++;
    if (i == c->body_len || c->body[i] == '{' || c->body[i] == '[') {
        if (!go_json_check(c->body, c->body_len, err, errlen))
            return NULL;
        return km_json_parse(c->body, c->body_len, err, errlen);
    }
    return km_yaml_load(c->body, c->body_len, err, errlen);
}

/* ---- list helpers ---- */

struct list_opts {
    size_t size;
    size_t offset;
    const char *name_filter; /* substring, may be NULL */
    json_t *label_filters;   /* object key -> value, owned */
    json_t *tag_filters;     /* object key -> value, owned (Dataplane, ExternalService) */
    const char *gateway;     /* Dataplane gateway filter: "true" | "false" | "builtin" |
                                "delegated" (lower case), NULL = any */
};

struct filter_scan {
    struct list_opts *o;
    struct km_errs *errs;
    const char *path_tmpl;
};

static enum MHD_Result
scan_filter_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct filter_scan *fs = cls;
    if (strncmp(key, "filter[", 7) != 0)
        return MHD_YES;
    const char *inner = key + 7;
    if (strncmp(inner, "labels.", 7) != 0) {
        char *f = km_xasprintf("%s.%s", fs->path_tmpl, key);
        km_errs_add(fs->errs, f, "filters are only supported on labels");
        free(f);
        return MHD_YES;
    }
    const char *close = strchr(inner + 7, ']');
    if (!close || close[1] != '\0') {
        char *f = km_xasprintf("%s.%s", fs->path_tmpl, key);
        km_errs_add(fs->errs, f, "advanced filters are not supported");
        free(f);
        return MHD_YES;
    }
    char *lk = km_xstrndup(inner + 7, (size_t)(close - inner - 7));
    json_object_set_new(fs->o->label_filters, lk, json_string(value ? value : ""));
    free(lk);
    return MHD_YES;
}

static enum MHD_Result
scan_tag_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct list_opts *o = cls;
    if (strcmp(key, "tag") != 0 || !value)
        return MHD_YES;
    /* "key:value"; the value may hold ':' too; a tag without ':' is ignored (as Kuma). */
    const char *colon = strchr(value, ':');
    if (!colon)
        return MHD_YES;
    char *k = km_xstrndup(value, (size_t)(colon - value));
    json_object_set_new(o->tag_filters, k, json_string(colon + 1));
    free(k);
    return MHD_YES;
}

static void
page_size_error(struct api_ctx *c, const char *reason)
{
    struct km_errs e;
    km_errs_init(&e);
    km_errs_add(&e, "size", "%s", reason);
    resp_error(c->out, 400, "Could not retrieve resources", "Invalid page size", &e);
    km_errs_deinit(&e);
}

/* Reads size/name/filter/tag/gateway in Kuma's order (page size first, then filters); on
 * error answers 400 and returns false. The offset is read by parse_offset, after the mesh
 * check, as Kuma's store does. */
static bool
parse_list_opts(struct api_ctx *c, struct list_opts *o, const struct km_rtype *t,
                const char *path_tmpl)
{
    memset(o, 0, sizeof(*o));
    o->size = API_DEFAULT_PAGE;
    o->label_filters = json_object();
    o->tag_filters = json_object();
    const char *s = query(c, "size");
    if (s && *s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (*end || errno || isspace((unsigned char)*s)) {
            page_size_error(c, "invalid format");
            return false;
        }
        if (v <= 0) {
            page_size_error(c, "must be greater than 0");
            return false;
        }
        if (v > API_MAX_PAGE) {
            char *r = km_xasprintf("invalid page size of %ld. Maximum page size is %d", v,
                                   API_MAX_PAGE);
            page_size_error(c, r);
            free(r);
            return false;
        }
        o->size = (size_t)v;
    }
    o->name_filter = query(c, "name");
    struct km_errs errs;
    km_errs_init(&errs);
    struct filter_scan fs = {o, &errs, path_tmpl};
    MHD_get_connection_values(c->conn, MHD_GET_ARGUMENT_KIND, scan_filter_arg, &fs);
    bool dp = strcmp(t->name, "Dataplane") == 0;
    if (dp || strcmp(t->name, "ExternalService") == 0)
        MHD_get_connection_values(c->conn, MHD_GET_ARGUMENT_KIND, scan_tag_arg, o);
    if (dp && !km_errs_any(&errs)) {
        const char *g = query(c, "gateway");
        if (g && *g) {
            static const char *const modes[] = {"true", "false", "builtin", "delegated"};
            for (size_t i = 0; i < KM_ARRAY_LEN(modes) && !o->gateway; i++)
                if (strcasecmp(g, modes[i]) == 0)
                    o->gateway = modes[i];
            if (!o->gateway) {
                char *f = km_xasprintf("%s.gateway", path_tmpl);
                char *low = km_xstrdup(g);
                for (char *p = low; *p; p++)
                    *p = (char)tolower((unsigned char)*p);
                km_errs_add(&errs, f,
                            "shoud use `true`, `false`, 'builtin' or 'delegated' instead of %s",
                            low);
                free(low);
                free(f);
            }
        }
    }
    if (km_errs_any(&errs)) {
        resp_error(c->out, 400, "Could not retrieve resources", "Resource is not valid", &errs);
        km_errs_deinit(&errs);
        return false;
    }
    km_errs_deinit(&errs);
    return true;
}

/* The page offset (Kuma's memory store takes a number). */
static bool
parse_offset(struct api_ctx *c, struct list_opts *o)
{
    const char *off = query(c, "offset");
    if (!off || !*off)
        return true;
    char *end;
    errno = 0;
    long v = strtol(off, &end, 10);
    bool range = errno == ERANGE;
    if (*end || errno || isspace((unsigned char)*off)) {
        struct km_sbuf b;
        km_sbuf_init(&b);
        km_sbuf_puts(&b, "invalid: invalid offset: strconv.Atoi: parsing ");
        /* Go's %q; keep the echoed value short. */
        km_sbuf_puts(&b, "\"");
        for (size_t i = 0; off[i] && i < 64; i++) {
            unsigned char ch = (unsigned char)off[i];
            if (ch == '"' || ch == '\\')
                km_sbuf_printf(&b, "\\%c", ch);
            else if (ch < 0x20 || ch == 0x7f)
                km_sbuf_printf(&b, "\\x%02x", ch);
            else
                km_sbuf_add(&b, (const char *)&ch, 1);
        }
        km_sbuf_printf(&b, "\": %s", range ? "value out of range" : "invalid syntax");
        resp_error(c->out, 400, "Could not retrieve resources", b.ptr, NULL);
        km_sbuf_deinit(&b);
        return false;
    }
    if (v < 0) {
        resp_error(c->out, 400, "Could not retrieve resources",
                   "invalid: invalid offset: must be non-negative", NULL);
        return false;
    }
    o->offset = (size_t)v;
    return true;
}

static void
list_opts_deinit(struct list_opts *o)
{
    json_decref(o->label_filters);
    json_decref(o->tag_filters);
}

static bool
labels_match(const struct km_resource *r, const json_t *filters)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)filters, k, v)
    {
        json_t *have = r->labels ? json_object_get(r->labels, k) : NULL;
        if (!json_is_string(have) || strcmp(json_string_value(have), json_string_value(v)) != 0)
            return false;
    }
    return true;
}

/* Kuma's fuzzy tag selector: every filter key present in <tags> with a value containing the
 * filter value ("*" matches any value). */
static bool
tags_match_fuzzy(const json_t *tags, const json_t *filters)
{
    const char *k;
    json_t *want;
    json_object_foreach ((json_t *)filters, k, want) {
        json_t *have = json_object_get(tags, k);
        if (!json_is_string(have))
            return false;
        const char *w = json_string_value(want);
        if (strcmp(w, "*") != 0 && !strstr(json_string_value(have), w))
            return false;
    }
    return true;
}

/* tag=k:v filters: a Dataplane matches when one inbound (or its gateway) matches them all; an
 * ExternalService when its tags do. */
static bool
tags_match(const struct km_resource *r, const json_t *filters)
{
    if (json_object_size(filters) == 0)
        return true;
    if (strcmp(r->type->name, "ExternalService") == 0)
        return tags_match_fuzzy(json_object_get(r->spec, "tags"), filters);
    json_t *net = json_object_get(r->spec, "networking");
    size_t i;
    json_t *item;
    json_array_foreach (json_object_get(net, "inbound"), i, item) {
        if (tags_match_fuzzy(json_object_get(item, "tags"), filters))
            return true;
    }
    return tags_match_fuzzy(json_object_get(json_object_get(net, "gateway"), "tags"), filters);
}

static bool
gateway_match(const struct km_resource *r, const char *mode)
{
    if (!mode)
        return true;
    json_t *gw = json_object_get(json_object_get(r->spec, "networking"), "gateway");
    bool has = json_is_object(gw);
    if (strcmp(mode, "true") == 0)
        return has;
    if (strcmp(mode, "false") == 0)
        return !has;
    const char *gt = has ? json_str(gw, "type") : NULL;
    bool builtin = gt && strcmp(gt, "BUILTIN") == 0;
    return has && (strcmp(mode, "builtin") == 0 ? builtin : !builtin);
}

/* Builds the "next" URL for the page after [offset, offset+size). */
static json_t *
next_url(struct api_ctx *c, const char *path, size_t offset, size_t size, size_t total)
{
    if (offset + size >= total)
        return json_null();
    const char *host = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "Host");
    char *u = km_xasprintf("http://%s%s?offset=%zu&size=%zu", host ? host : "localhost", path,
                           offset + size, size);
    json_t *j = json_string(u);
    free(u);
    return j;
}

static char *
request_path(struct api_ctx *c)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (size_t i = 0; i < c->nsegs; i++) {
        km_sbuf_puts(&b, "/");
        km_sbuf_puts(&b, c->segs[i]);
    }
    return km_sbuf_take(&b);
}

typedef json_t *(*encode_fn)(struct api_ctx *c, const struct km_resource *r);

static json_t *
encode_plain(struct api_ctx *c, const struct km_resource *r)
{
    return km_resource_encode(r);
}

/* Kuma looks the mesh of a mesh-scoped path up first: 404 "Failed to retrieve Mesh". Returns
 * false after answering. */
static bool
mesh_exists(struct api_ctx *c, const struct km_rtype *t, const char *mesh)
{
    if (!mesh || !mesh[0] || t->scope != KM_SCOPE_MESH)
        return true;
    struct km_resource *m = NULL;
    int rc = km_store_get(c->cp->store, km_registry_mesh(), "", mesh, &m);
    km_resource_free(m);
    if (rc) {
        resp_store_error(c->out, rc, "Failed to retrieve Mesh");
        return false;
    }
    return true;
}

/* Mode, environment and zone name the computed labels depend on. The zone is Kuma's default
 * zone name: kuma-cp has no multizone settings yet. */
static void
labels_ctx(const struct api_ctx *c, struct km_labels_ctx *lc)
{
    const struct km_cp_config *cfg = c->cp->cfg;
    lc->global = cfg->mode && strcmp(cfg->mode, "global") == 0;
    lc->kubernetes = cfg->environment && strcmp(cfg->environment, "kubernetes") == 0;
    lc->zone = KM_DEFAULT_ZONE_NAME;
}

static void
handle_list(struct api_ctx *c, const struct km_rtype *t, const char *mesh, const char *tmpl,
            encode_fn enc)
{
    struct list_opts o;
    if (!parse_list_opts(c, &o, t, tmpl) || !mesh_exists(c, t, mesh) || !parse_offset(c, &o)) {
        list_opts_deinit(&o);
        return;
    }
    struct km_resource_list l;
    km_resource_list_init(&l);
    int rc = km_store_list(c->cp->store, t, mesh, &l);
    if (rc) {
        resp_store_error(c->out, rc, "Could not retrieve resources");
        goto out;
    }
    json_t *items = json_array();
    size_t total = 0;
    for (size_t i = 0; i < l.n; i++) {
        struct km_resource *r = l.items[i];
        if (o.name_filter && !strstr(r->name, o.name_filter))
            continue;
        if (!labels_match(r, o.label_filters) || !tags_match(r, o.tag_filters) ||
            !gateway_match(r, o.gateway))
            continue;
        if (total >= o.offset && total < o.offset + o.size)
            json_array_append_new(items, enc(c, r));
        total++;
    }
    char *path = request_path(c);
    json_t *body = json_object();
    json_object_set_new(body, "total", json_integer((json_int_t)total));
    json_object_set_new(body, "items", items);
    json_object_set_new(body, "next", next_url(c, path, o.offset, o.size, total));
    free(path);
    resp_set(c->out, 200, body);
out:
    km_resource_list_deinit(&l);
    list_opts_deinit(&o);
}

/* ---- single resource ---- */

static void
handle_get(struct api_ctx *c, const struct km_rtype *t, const char *mesh, const char *name,
           encode_fn enc)
{
    if (!mesh_exists(c, t, mesh))
        return;
    struct km_resource *r = NULL;
    int rc = km_store_get(c->cp->store, t, mesh, name, &r);
    if (rc) {
        resp_store_error(c->out, rc, "Could not retrieve a resource");
        return;
    }
    resp_set(c->out, 200, enc(c, r));
    km_resource_free(r);
}

static void
handle_delete(struct api_ctx *c, const struct km_rtype *t, const char *mesh, const char *name)
{
    if (c->cp->cfg->api_server.read_only || t->read_only) {
        resp_error(c->out, 405, "Could not delete a resource",
                   "On this control plane the resource is read-only", NULL);
        return;
    }
    if (!mesh_exists(c, t, mesh))
        return;
    struct km_resource *cur = NULL;
    int rc = km_store_get(c->cp->store, t, mesh, name, &cur);
    if (rc) {
        resp_store_error(c->out, rc, "Could not delete a resource");
        return;
    }
    struct km_labels_ctx lc;
    labels_ctx(c, &lc);
    struct km_errs errs;
    km_errs_init(&errs);
    km_labels_check_origin_for_write(cur->labels, &lc, "", &errs);
    km_resource_free(cur);
    if (km_errs_any(&errs)) {
        resp_error(c->out, 400, "Could not delete a resource", "Resource is not valid", &errs);
        km_errs_deinit(&errs);
        return;
    }
    km_errs_deinit(&errs);
    rc = km_store_remove(c->cp->store, t, mesh, name, 0);
    if (rc) {
        resp_store_error(c->out, rc, "Could not delete a resource");
        return;
    }
    resp_set(c->out, 200, json_object());
}

/* Kuma's validateResourceRequest: the body against the URL, the labels, then name and mesh
 * characters. */
static void
validate_request(const struct km_resource *r, const char *body_type, const char *url_mesh,
                 const char *url_name, const struct km_labels_ctx *lc, struct km_errs *errs)
{
    if (strcmp(url_name, r->name ? r->name : "") != 0)
        km_errs_add(errs, "name", "name from the URL has to be the same as in body");
    if (!body_type || strcmp(body_type, r->type->name) != 0)
        km_errs_add(errs, "type", "type from the URL has to be the same as in body");
    if (r->type->scope == KM_SCOPE_MESH && strcmp(url_mesh, r->mesh ? r->mesh : "") != 0)
        km_errs_add(errs, "mesh", "mesh from the URL has to be the same as in body");
    km_labels_validate_request(r->labels, r->mesh, lc, errs);
    km_validate_meta(r, errs);
}

static void
mesh_not_found(struct api_ctx *c, const char *title, const char *mesh)
{
    struct km_errs e;
    km_errs_init(&e);
    km_errs_add(&e, "mesh", "mesh of name %s is not found", mesh);
    resp_error(c->out, 400, title, "Mesh is not found", &e);
    km_errs_deinit(&e);
}

static void
add_warnings(struct api_ctx *c, const struct km_resource *r)
{
    json_t *warn = km_resource_warnings(r);
    if (warn && json_array_size(warn) && c->out->body)
        json_object_set_new(c->out->body, "warnings", warn);
    else
        json_decref(warn);
}

static void
put_create(struct api_ctx *c, struct km_resource *r, const struct km_labels_ctx *lc)
{
    const char *title = "Could not process a resource";
    if (strcmp(r->type->name, "Dataplane") == 0) {
        char *d = km_labels_check_workload(r->labels, lc);
        if (d) {
            resp_error(c->out, 400, "Bad Request", d, NULL);
            free(d);
            return;
        }
    }
    /* Kuma keeps only the spec of a new resource: status is the control plane's. */
    json_decref(r->status);
    r->status = NULL;
    json_t *labels = km_labels_compute(r->type, r->spec, r->labels, r->mesh, lc);
    json_decref(r->labels);
    r->labels = labels;
    int rc = km_store_create(c->cp->store, r);
    if (rc == KM_ENOTFOUND) {
        mesh_not_found(c, title, r->mesh);
        return;
    }
    if (rc) {
        resp_store_error(c->out, rc, title);
        return;
    }
    if (r->type == km_registry_mesh()) {
        /* Like Kuma: a new mesh gets its dataplane token signing key at once. */
        char err[256];
        if (km_tokens_ensure_signing_key(c->cp->store, r->name, err, sizeof(err)) != 0)
            km_log_warn("tokens", "mesh %s: dataplane token signing key: %s", r->name, err);
    }
    resp_set(c->out, 201, json_object());
    add_warnings(c, r);
}

static void
put_update(struct api_ctx *c, struct km_resource *r, struct km_resource *cur,
           const struct km_labels_ctx *lc)
{
    json_t *was = km_labels_compute(cur->type, cur->spec, cur->labels, cur->mesh, lc);
    json_t *labels = km_labels_compute(r->type, r->spec, r->labels, r->mesh, lc);
    struct km_errs errs;
    km_errs_init(&errs);
    km_labels_check_immutable(was, labels, &errs);
    json_decref(was);
    if (km_errs_any(&errs)) {
        resp_error(c->out, 400, "Could not update a resource", "Resource is not valid", &errs);
        json_decref(labels);
        km_errs_deinit(&errs);
        return;
    }
    km_errs_deinit(&errs);
    json_decref(r->labels);
    r->labels = labels;
    /* The spec is replaced; the status stays the stored one. */
    json_decref(r->status);
    r->status = cur->status ? json_deep_copy(cur->status) : NULL;
    r->version = cur->version;
    r->creation_us = cur->creation_us;
    int rc = km_store_update(c->cp->store, r);
    if (rc == KM_ENOTFOUND && r->type->scope == KM_SCOPE_MESH) {
        mesh_not_found(c, "Could not process a resource", r->mesh);
        return;
    }
    if (rc) {
        resp_store_error(c->out, rc, "Could not process a resource");
        return;
    }
    resp_set(c->out, 200, json_object());
    add_warnings(c, r);
}

static void
handle_put(struct api_ctx *c, const struct km_rtype *t, const char *mesh, const char *name)
{
    const char *title = "Could not process a resource";
    if (c->cp->cfg->api_server.read_only || t->read_only) {
        resp_error(c->out, 405, title, "On this control plane the resource is read-only", NULL);
        return;
    }
    char perr[256];
    json_t *doc = parse_body(c, perr, sizeof(perr));
    if (!doc) {
        struct km_sbuf d;
        km_sbuf_init(&d);
        km_sbuf_printf(&d, "invalid %s object: \"", t->name);
        for (const char *p = perr; *p; p++) {
            if (*p == '"' || *p == '\\')
                km_sbuf_add(&d, "\\", 1);
            km_sbuf_add(&d, p, 1);
        }
        km_sbuf_puts(&d, "\"");
        resp_error(c->out, 400, "Bad Request", d.ptr, NULL);
        km_sbuf_deinit(&d);
        return;
    }
    struct km_labels_ctx lc;
    labels_ctx(c, &lc);
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_resource *cur = NULL;
    struct km_resource *r = km_resource_decode(doc, t, &errs);
    if (!r) {
        /* Shape errors (a meta field of the wrong JSON type...) are a plain 400. */
        if (errs.n && !errs.v[0].field[0] &&
            strncmp(errs.v[0].reason, KM_DECODE_BAD_REQUEST_PREFIX,
                    strlen(KM_DECODE_BAD_REQUEST_PREFIX)) == 0) {
            resp_error(c->out, 400, "Bad Request", errs.v[0].reason, NULL);
            goto out;
        }
        goto invalid;
    }
    /* Kuma checks the body against its type while decoding it, and stops there. */
    km_resource_validate(r, &errs);
    if (km_errs_any(&errs))
        goto invalid;
    int rc = km_store_get(c->cp->store, t, mesh, name, &cur);
    if (rc && rc != KM_ENOTFOUND) {
        resp_store_error(c->out, rc, "Failed to find a resource");
        goto out;
    }
    validate_request(r, json_str(doc, "type"), mesh, name, &lc, &errs);
    if (km_errs_any(&errs))
        goto invalid;
    /* The URL names the resource. */
    free(r->name);
    r->name = km_xstrdup(name);
    free(r->mesh);
    r->mesh = km_xstrdup(t->scope == KM_SCOPE_MESH ? mesh : "");
    if (cur)
        put_update(c, r, cur, &lc);
    else
        put_create(c, r, &lc);
    goto out;
invalid:
    resp_error(c->out, 400, title, "Resource is not valid", &errs);
out:
    km_resource_free(cur);
    km_resource_free(r);
    km_errs_deinit(&errs);
    json_decref(doc);
}

/* ---- resources by KRI ---- */

static void
handle_kri(struct api_ctx *c, const char *kri)
{
    struct km_kri k;
    char err[512];
    if (km_kri_parse(kri, &k, err, sizeof(err)) != 0) {
        char *d = km_xasprintf("bad request: %s", err);
        resp_error(c->out, 400, "Bad Request", d, NULL);
        free(d);
        return;
    }
    struct km_labels_ctx lc;
    labels_ctx(c, &lc);
    char *name = km_kri_store_name(&k, &lc);
    const char *mesh = k.type->scope == KM_SCOPE_MESH ? k.mesh : "";
    struct km_resource *r = NULL;
    int rc = km_store_get(c->cp->store, k.type, mesh, name, &r);
    if (rc)
        resp_store_error(c->out, rc, "Could not retrieve a resource");
    else
        resp_set(c->out, 200, km_resource_encode(r));
    km_resource_free(r);
    free(name);
    km_kri_deinit(&k);
}

/* ---- overviews ---- */

static json_t *
encode_dp_overview(struct api_ctx *c, const struct km_resource *r)
{
    json_t *full = km_resource_encode(r);
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("DataplaneOverview"));
    json_object_set_new(o, "mesh", json_string(r->mesh));
    json_object_set_new(o, "name", json_string(r->name));
    json_object_set(o, "creationTime", json_object_get(full, "creationTime"));
    json_object_set(o, "modificationTime", json_object_get(full, "modificationTime"));
    if (r->labels && json_object_size(r->labels))
        json_object_set(o, "labels", r->labels);
    json_object_set(o, "dataplane", r->spec);
    json_decref(full);
    json_t *insight = NULL;
    const struct km_rtype *it = km_registry_find("DataplaneInsight");
    struct km_resource *ir = NULL;
    if (it && km_store_get(c->cp->store, it, r->mesh, r->name, &ir) == 0) {
        insight = json_deep_copy(ir->spec);
        km_resource_free(ir);
    }
    if (!insight)
        insight = json_pack("{s:[]}", "subscriptions");
    json_object_set_new(o, "dataplaneInsight", insight);
    return o;
}

/* ---- fixed endpoints ---- */

static void
handle_index(struct api_ctx *c)
{
    json_t *b = json_object();
    json_object_set_new(b, "hostname", json_string(c->cp->hostname));
    json_object_set_new(b, "tagline", json_string("Kuma"));
    json_object_set_new(b, "product", json_string("Kuma"));
    json_object_set_new(b, "version", json_string(KM_KUMA_VERSION));
    json_object_set_new(b, "buildVersion", json_string(KM_VERSION));
    json_object_set_new(b, "instanceId", json_string(c->cp->instance_id));
    json_object_set_new(b, "clusterId", json_string(c->cp->cluster_id));
    json_object_set_new(b, "gui", json_string("The gui is available at /gui"));
    json_object_set_new(b, "basedOnKuma", json_string(KM_KUMA_VERSION));
    json_object_set_new(b, "implementation", json_string("kuma-c"));
    resp_set(c->out, 200, b);
}

/* "MeshTrafficPermission" -> "Mesh Traffic Permission". */
static char *
display_singular(const char *name)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (const char *p = name; *p; p++) {
        if (p != name && isupper((unsigned char)*p) && !isupper((unsigned char)p[-1]))
            km_sbuf_add(&b, " ", 1);
        km_sbuf_add(&b, p, 1);
    }
    return km_sbuf_take(&b);
}

static void
handle_resources(struct api_ctx *c)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < km_registry_count(); i++) {
        const struct km_rtype *t = km_registry_at(i);
        char *single = display_singular(t->name);
        json_t *d = json_object();
        json_object_set_new(d, "name", json_string(t->name));
        json_object_set_new(d, "scope", json_string(t->scope == KM_SCOPE_MESH ? "Mesh" : "Global"));
        json_object_set_new(d, "readOnly", json_boolean(t->read_only));
        json_object_set_new(d, "path", json_string(t->plural));
        json_object_set_new(d, "singularDisplayName", json_string(single));
        json_object_set_new(d, "pluralDisplayName",
                            json_string(t->display_plural ? t->display_plural : t->plural));
        json_object_set_new(d, "includeInFederation", json_true());
        if (t->short_name)
            json_object_set_new(d, "shortName", json_string(t->short_name));
        if (t->kumactl_plural)
            json_object_set_new(d, "kumactlArg", json_string(t->kumactl_plural));
        if (t->is_policy)
            json_object_set_new(d, "policy",
                                json_pack("{s:b}", "isTargetRef", t->is_targetref_policy));
        json_array_append_new(arr, d);
        free(single);
    }
    resp_set(c->out, 200, json_pack("{s:o}", "resources", arr));
}

static bool
method_is(const struct api_ctx *c, const char *m)
{
    return strcmp(c->method, m) == 0;
}

static void
method_not_allowed(struct api_ctx *c)
{
    char *d = km_xasprintf("method %s is not allowed on this path", c->method);
    resp_error(c->out, 405, "Method not allowed", d, NULL);
    free(d);
}

static void
not_found_path(struct api_ctx *c)
{
    resp_error(c->out, 404, "Not found", "no such API path", NULL);
}

/* One resource path: GET/PUT/DELETE. */
static void
resource_item(struct api_ctx *c, const struct km_rtype *t, const char *mesh, const char *name)
{
    if (method_is(c, "GET"))
        handle_get(c, t, mesh, name, encode_plain);
    else if (method_is(c, "PUT"))
        handle_put(c, t, mesh, name);
    else if (method_is(c, "DELETE"))
        handle_delete(c, t, mesh, name);
    else
        method_not_allowed(c);
}

/* GET /meshes/{mesh}/dataplanes/{name}/policies: the policies that apply to each inbound,
 * outbound and service of a Dataplane (km_pm_inspect_dataplane). */
static void
handle_dp_policies(struct api_ctx *c, const char *mesh, const char *name)
{
    const struct km_rtype *dpt = km_registry_find("Dataplane");
    struct km_resource *dp = NULL;
    struct km_resource_list l;
    int rc;

    if (!mesh_exists(c, dpt, mesh))
        return;
    rc = km_store_get(c->cp->store, dpt, mesh, name, &dp);
    if (rc) {
        resp_store_error(c->out, rc, "Could not get MatchedPolicies");
        return;
    }
    km_resource_list_init(&l);
    for (size_t i = 0; i < km_registry_count(); i++) {
        const struct km_rtype *t = km_registry_at(i);
        struct km_resource_list tl;
        if (!t->is_policy || t->scope != KM_SCOPE_MESH)
            continue;
        km_resource_list_init(&tl);
        rc = km_store_list(c->cp->store, t, mesh, &tl);
        if (rc == 0)
            for (size_t k = 0; k < tl.n; k++) {
                km_resource_list_push(&l, tl.items[k]);
                tl.items[k] = NULL;
            }
        tl.n = 0;
        km_resource_list_deinit(&tl);
        if (rc) {
            resp_store_error(c->out, rc, "Could not get MatchedPolicies");
            goto out;
        }
    }
    resp_set(c->out, 200,
             km_pm_inspect_dataplane(dp, (const struct km_resource *const *)l.items, l.n));
out:
    km_resource_list_deinit(&l);
    km_resource_free(dp);
}

static void
route(struct api_ctx *c)
{
    char **s = c->segs;
    size_t n = c->nsegs;
    if (n == 0) {
        method_is(c, "GET") ? handle_index(c) : method_not_allowed(c);
        return;
    }
    if (n == 1 && strcmp(s[0], "_resources") == 0) {
        method_is(c, "GET") ? handle_resources(c) : method_not_allowed(c);
        return;
    }
    if (n == 2 && strcmp(s[0], "_kri") == 0) {
        method_is(c, "GET") ? handle_kri(c, s[1]) : method_not_allowed(c);
        return;
    }
    if (strcmp(s[0], "meshes") == 0 && n >= 3) {
        const char *mesh = s[1];
        if (strcmp(s[2], "dataplanes+insights") == 0 ||
            (n >= 4 && strcmp(s[2], "dataplanes") == 0 && strcmp(s[3], "_overview") == 0)) {
            const struct km_rtype *dp = km_registry_find("Dataplane");
            size_t name_at = strcmp(s[2], "dataplanes+insights") == 0 ? 3 : 4;
            if (!method_is(c, "GET"))
                method_not_allowed(c);
            else if (n == name_at)
                handle_list(c, dp, mesh, "/meshes/{mesh}/dataplanes+insights",
                            encode_dp_overview);
            else if (n == name_at + 1)
                handle_get(c, dp, mesh, s[name_at], encode_dp_overview);
            else
                not_found_path(c);
            return;
        }
        if (n == 5 && strcmp(s[2], "dataplanes") == 0 && strcmp(s[4], "policies") == 0) {
            method_is(c, "GET") ? handle_dp_policies(c, mesh, s[3]) : method_not_allowed(c);
            return;
        }
        const struct km_rtype *t = km_registry_by_path(s[2]);
        if (!t || t->scope != KM_SCOPE_MESH) {
            not_found_path(c);
            return;
        }
        if (n == 3) {
            char *tmpl = km_xasprintf("/meshes/{mesh}/%s", s[2]);
            method_is(c, "GET") ? handle_list(c, t, mesh, tmpl, encode_plain)
                                : method_not_allowed(c);
            free(tmpl);
        } else if (n == 4) {
            resource_item(c, t, mesh, s[3]);
        } else {
            not_found_path(c);
        }
        return;
    }
    const struct km_rtype *t = km_registry_by_path(s[0]);
    if (!t) {
        not_found_path(c);
        return;
    }
    if (n == 1) {
        /* Global types, or a mesh-scoped type across all meshes. */
        char *tmpl = km_xasprintf("/%s", s[0]);
        method_is(c, "GET") ? handle_list(c, t, NULL, tmpl, encode_plain) : method_not_allowed(c);
        free(tmpl);
    } else if (n == 2 && t->scope == KM_SCOPE_GLOBAL) {
        resource_item(c, t, "", s[1]);
    } else {
        not_found_path(c);
    }
}

/* ---- libmicrohttpd glue ---- */

static enum MHD_Result
send_resp(struct MHD_Connection *conn, const struct api_resp *r)
{
    char *text = r->body ? json_dumps(r->body, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    size_t len = text ? strlen(text) : 0;
    enum MHD_ResponseMemoryMode mode = text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text ? text : (void *)"", mode);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    if (text)
        MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result
api_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
            const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    struct km_cp *cp = cls;
    struct api_req *req = *con_cls;
    if (!req) {
        req = km_xcalloc(1, sizeof(*req));
        km_sbuf_init(&req->body);
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (req->body.len + *upload_data_size > (size_t)cp->cfg->api_server.max_body_bytes)
            req->too_large = true;
        else
            km_sbuf_add(&req->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    struct api_resp out = {500, NULL};
    struct api_ctx c = {.cp = cp, .conn = conn, .method = method, .out = &out};
    struct km_api_answer ans = {0};
    if (req->too_large) {
        char *d = km_xasprintf("request body is larger than %lld bytes",
                               (long long)cp->cfg->api_server.max_body_bytes);
        resp_error(&out, 413, "Request too large", d, NULL);
        free(d);
    } else if (km_api_access(cp, conn, method, url, req->body.ptr, req->body.len, &ans)) {
        out.status = ans.status; /* refused (401/403) or a token endpoint: api_tokens.c */
    } else if (!split_path(&c, url)) {
        not_found_path(&c);
    } else {
        c.body = req->body.ptr;
        c.body_len = req->body.len;
        route(&c);
    }
    for (size_t i = 0; i < c.nsegs; i++)
        free(c.segs[i]);
    unsigned cls_idx = out.status / 100;
    if (cls_idx < 6)
        atomic_fetch_add(&cp->api_requests[cls_idx], 1);
    km_log_debug("api", "%s %s -> %u", method, url, out.status);
    enum MHD_Result ret =
        ans.status ? (enum MHD_Result)km_api_answer_send(conn, &ans) : send_resp(conn, &out);
    json_decref(out.body);
    return ret;
}

static void
api_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
              enum MHD_RequestTerminationCode toe)
{
    struct api_req *req = *con_cls;
    if (req) {
        km_sbuf_deinit(&req->body);
        free(req);
        *con_cls = NULL;
    }
}

/* Test seam: KM_CP_SEED_FILE names a multi-document YAML file whose resources are written
 * straight into the store before the API listens, as Kuma's own API tests do (no labels
 * computed, no validation). Documents that cannot be stored are logged and skipped. */
#define API_SEED_MAX_BYTES (16 * 1024 * 1024)

static void
api_load_seed(struct km_cp *cp)
{
    const char *path = getenv("KM_CP_SEED_FILE");
    if (!path || !*path)
        return;
    size_t len = 0;
    char *text = km_read_file(path, API_SEED_MAX_BYTES, &len);
    if (!text) {
        km_log_warn("api", "seed file %s: %s", path, strerror(errno));
        return;
    }
    char perr[256];
    json_t *docs = km_yaml_load_all(text, len, perr, sizeof(perr));
    free(text);
    if (!docs) {
        km_log_warn("api", "seed file %s: %s", path, perr);
        return;
    }
    size_t i, loaded = 0;
    json_t *doc;
    json_array_foreach (docs, i, doc) {
        struct km_errs errs;
        km_errs_init(&errs);
        const struct km_rtype *t = km_registry_find(json_str(doc, "type"));
        struct km_resource *r = t ? km_resource_decode(doc, t, &errs) : NULL;
        if (!r) {
            char *why = km_errs_join(&errs);
            km_log_warn("api", "seed file %s: document %zu skipped: %s", path, i + 1,
                        !t ? "unknown type" : why ? why : "cannot be decoded");
            free(why);
        } else {
            if (t->scope != KM_SCOPE_MESH) {
                free(r->mesh);
                r->mesh = km_xstrdup("");
            }
            int rc = km_store_create(cp->store, r);
            if (rc)
                km_log_warn("api", "seed file %s: document %zu (%s %s) not stored: %s", path,
                            i + 1, t->name, r->name ? r->name : "", km_strerror(rc));
            else
                loaded++;
        }
        km_resource_free(r);
        km_errs_deinit(&errs);
    }
    km_log_info("api", "seed file %s: %zu resources loaded", path, loaded);
    json_decref(docs);
}

int
km_api_start(struct km_cp *cp, char *err, size_t errlen)
{
    api_load_seed(cp);
    cp->api = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        api_handler, cp, MHD_OPTION_LISTEN_SOCKET, cp->api_fd, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)2, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)60, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, api_completed, NULL, MHD_OPTION_END);
    if (!cp->api) {
        snprintf(err, errlen, "cannot start the API server");
        return -1;
    }
    cp->api_fd = -1; /* owned by the daemon now */
    if (cp->https_fd >= 0) {
        cp->api_tls = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_USE_TLS, 0,
            NULL, NULL, api_handler, cp, MHD_OPTION_LISTEN_SOCKET, cp->https_fd,
            MHD_OPTION_HTTPS_MEM_CERT, cp->tls_cert_pem, MHD_OPTION_HTTPS_MEM_KEY,
            cp->tls_key_pem, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024, MHD_OPTION_CONNECTION_TIMEOUT,
            (unsigned)60, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
            MHD_OPTION_NOTIFY_COMPLETED, api_completed, NULL, MHD_OPTION_END);
        if (!cp->api_tls) {
            snprintf(err, errlen, "cannot start the HTTPS API server (check the certificate "
                                  "and key in apiServer.https)");
            return -1;
        }
        cp->https_fd = -1;
    }
    atomic_store(&cp->api_listening, true);
    return 0;
}

void
km_api_stop(struct km_cp *cp)
{
    if (cp->api) {
        atomic_store(&cp->api_listening, false);
        MHD_stop_daemon(cp->api);
        cp->api = NULL;
    }
    if (cp->api_tls) {
        MHD_stop_daemon(cp->api_tls);
        cp->api_tls = NULL;
    }
}
