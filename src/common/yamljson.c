/* YAML <-> JSON with libyaml's event API.
 *
 * Scalars follow the YAML 1.2 core schema (what Kubernetes-style YAML users expect for
 * resource files): plain null/~ -> null, true/false -> bool, decimal/0x/0o integers,
 * decimal floats; anything quoted or explicitly tagged !!str stays a string. Aliases are
 * refused: resource files do not need them and expanding them is a classic memory bomb. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>

static bool
match_any(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return true;
    return false;
}

/* Resolves a plain scalar by the core schema; returns a new JSON value. */
static json_t *
resolve_plain(const char *s, size_t len)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    if (match_any(s, nulls))
        return json_null();
    if (match_any(s, trues))
        return json_true();
    if (match_any(s, falses))
        return json_false();
    if (strlen(s) != len)
        return json_stringn(s, len); /* embedded NUL: keep as string */
    char *end;
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (isdigit((unsigned char)*p)) {
        errno = 0;
        long long v;
        if (p[0] == '0' && (p[1] == 'x' || p[1] == 'o') && p[2]) {
            v = strtoll(p + 2, &end, p[1] == 'x' ? 16 : 8);
            if (*end == '\0' && !errno)
                return json_integer(s[0] == '-' ? -v : v);
        } else {
            v = strtoll(s, &end, 10);
            if (*end == '\0' && !errno)
                return json_integer(v);
        }
    }
    if (isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))) {
        errno = 0;
        double d = strtod(s, &end);
        if (*end == '\0' && !errno && isfinite(d))
            return json_real(d);
    }
    return json_stringn(s, len);
}

struct yparse {
    yaml_parser_t parser;
    char *err;
    size_t errlen;
    int depth;
};

static void yerr(struct yparse *y, const yaml_mark_t *m, const char *fmt, const char *arg)
    KM_PRINTF(3, 0);

static void
yerr(struct yparse *y, const yaml_mark_t *m, const char *fmt, const char *arg)
{
    char msg[256];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(msg, sizeof(msg), fmt, arg);
#pragma GCC diagnostic pop
    snprintf(y->err, y->errlen, "line %zu column %zu: %s", m->line + 1, m->column + 1, msg);
}

static json_t *parse_node(struct yparse *y, yaml_event_t *ev);

/* Parses the node that starts with the event already read into <ev> (consumed here). */
static json_t *
parse_node(struct yparse *y, yaml_event_t *ev)
{
    json_t *out = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        const char *val = (const char *)ev->data.scalar.value;
        size_t len = ev->data.scalar.length;
        const char *tag = (const char *)ev->data.scalar.tag;
        if (tag && strcmp(tag, YAML_STR_TAG) == 0)
            out = json_stringn(val, len);
        else if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !tag)
            out = resolve_plain(val, len);
        else if (tag && strcmp(tag, YAML_INT_TAG) == 0)
            out = resolve_plain(val, len);
        else
            out = json_stringn(val, len);
        if (!out)
            yerr(y, &ev->start_mark, "%s", "scalar is not valid UTF-8");
        yaml_event_delete(ev);
        return out;
    }
    case YAML_ALIAS_EVENT:
        yerr(y, &ev->start_mark, "%s", "YAML aliases (*name) are not supported");
        yaml_event_delete(ev);
        return NULL;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool is_map = ev->type == YAML_MAPPING_START_EVENT;
        yaml_mark_t start = ev->start_mark;
        yaml_event_delete(ev);
        if (++y->depth > KM_YAML_MAX_DEPTH) {
            yerr(y, &start, "nesting deeper than %s levels", "64");
            return NULL;
        }
        out = is_map ? json_object() : json_array();
        for (;;) {
            yaml_event_t e;
            if (!yaml_parser_parse(&y->parser, &e)) {
                yerr(y, &y->parser.problem_mark, "%s", y->parser.problem);
                goto fail;
            }
            if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&e);
                break;
            }
            if (!is_map) {
                json_t *item = parse_node(y, &e);
                if (!item)
                    goto fail;
                json_array_append_new(out, item);
                continue;
            }
            yaml_mark_t km = e.start_mark;
            json_t *key = parse_node(y, &e);
            if (!key)
                goto fail;
            char kbuf[64];
            const char *kstr;
            if (json_is_string(key)) {
                kstr = json_string_value(key);
            } else if (json_is_integer(key)) {
                snprintf(kbuf, sizeof(kbuf), "%lld", (long long)json_integer_value(key));
                kstr = kbuf;
            } else if (json_is_boolean(key)) {
                kstr = json_is_true(key) ? "true" : "false";
            } else if (json_is_null(key)) {
                kstr = "null";
            } else if (json_is_real(key)) {
                snprintf(kbuf, sizeof(kbuf), "%g", json_real_value(key));
                kstr = kbuf;
            } else {
                json_decref(key);
                yerr(y, &km, "%s", "mapping keys must be scalars");
                goto fail;
            }
            if (json_object_get(out, kstr)) {
                yerr(y, &km, "mapping key \"%s\" already defined", kstr);
                json_decref(key);
                goto fail;
            }
            yaml_event_t ve;
            if (!yaml_parser_parse(&y->parser, &ve)) {
                json_decref(key);
                yerr(y, &y->parser.problem_mark, "%s", y->parser.problem);
                goto fail;
            }
            json_t *val = parse_node(y, &ve);
            if (!val) {
                json_decref(key);
                goto fail;
            }
            json_object_set_new(out, kstr, val);
            json_decref(key);
        }
        y->depth--;
        return out;
    fail:
        json_decref(out);
        return NULL;
    }
    default:
        yerr(y, &ev->start_mark, "%s", "unexpected YAML event");
        yaml_event_delete(ev);
        return NULL;
    }
}

json_t *
km_yaml_load_all(const char *buf, size_t len, char *err, size_t errlen)
{
    struct yparse y = {.err = err, .errlen = errlen};
    if (errlen)
        err[0] = '\0';
    if (!yaml_parser_initialize(&y.parser)) {
        snprintf(err, errlen, "cannot initialise YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&y.parser, (const unsigned char *)buf, len);
    json_t *docs = json_array();
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&y.parser, &ev)) {
            yerr(&y, &y.parser.problem_mark, "%s",
                 y.parser.problem ? y.parser.problem : "syntax error");
            goto fail;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_STREAM_START_EVENT || t == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        if (t == YAML_DOCUMENT_START_EVENT) {
            yaml_event_delete(&ev);
            yaml_event_t root;
            if (!yaml_parser_parse(&y.parser, &root)) {
                yerr(&y, &y.parser.problem_mark, "%s",
                     y.parser.problem ? y.parser.problem : "syntax error");
                goto fail;
            }
            if (root.type == YAML_DOCUMENT_END_EVENT) { /* empty document */
                yaml_event_delete(&root);
                continue;
            }
            json_t *doc = parse_node(&y, &root);
            if (!doc)
                goto fail;
            if (json_is_null(doc)) {
                json_decref(doc);
                continue;
            }
            if (json_array_size(docs) >= KM_YAML_MAX_DOCS) {
                json_decref(doc);
                snprintf(err, errlen, "more than %d documents", KM_YAML_MAX_DOCS);
                goto fail;
            }
            json_array_append_new(docs, doc);
            continue;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&y.parser);
    return docs;
fail:
    yaml_parser_delete(&y.parser);
    json_decref(docs);
    return NULL;
}

json_t *
km_yaml_load(const char *buf, size_t len, char *err, size_t errlen)
{
    json_t *docs = km_yaml_load_all(buf, len, err, errlen);
    if (!docs)
        return NULL;
    size_t n = json_array_size(docs);
    json_t *out = NULL;
    if (n == 0) {
        out = json_object();
    } else if (n == 1) {
        out = json_incref(json_array_get(docs, 0));
    } else {
        snprintf(err, errlen, "expected one YAML document, found %zu", n);
    }
    json_decref(docs);
    return out;
}

/* ---- emitter ---- */

static bool
emit_event(yaml_emitter_t *em, yaml_event_t *ev)
{
    return yaml_emitter_emit(em, ev) != 0;
}

static bool
emit_scalar(yaml_emitter_t *em, const char *s, size_t len, yaml_scalar_style_t style)
{
    yaml_event_t ev;
    yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)len, 1, 1, style);
    return emit_event(em, &ev);
}

/* A string must be quoted when read back as plain it would not be the same string. */
static bool
string_needs_quotes(const char *s, size_t len)
{
    json_t *r = resolve_plain(s, len);
    bool q = !json_is_string(r);
    json_decref(r);
    return q;
}

static bool
emit_value(yaml_emitter_t *em, const json_t *v)
{
    yaml_event_t ev;
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        if (!emit_event(em, &ev))
            return false;
        const char *k;
        json_t *val;
        json_object_foreach((json_t *)v, k, val)
        {
            size_t kl = strlen(k);
            if (!emit_scalar(em, k, kl,
                             string_needs_quotes(k, kl) ? YAML_SINGLE_QUOTED_SCALAR_STYLE
                                                        : YAML_ANY_SCALAR_STYLE))
                return false;
            if (!emit_value(em, val))
                return false;
        }
        yaml_mapping_end_event_initialize(&ev);
        return emit_event(em, &ev);
    }
    case JSON_ARRAY: {
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        if (!emit_event(em, &ev))
            return false;
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            if (!emit_value(em, item))
                return false;
        }
        yaml_sequence_end_event_initialize(&ev);
        return emit_event(em, &ev);
    }
    case JSON_STRING: {
        const char *s = json_string_value(v);
        size_t l = json_string_length(v);
        return emit_scalar(em, s, l,
                           string_needs_quotes(s, l) ? YAML_SINGLE_QUOTED_SCALAR_STYLE
                                                     : YAML_ANY_SCALAR_STYLE);
    }
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        return emit_scalar(em, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        if (!strpbrk(num, ".eE"))
            strcat(num, ".0"); /* keep it a float when read back */
        return emit_scalar(em, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    case JSON_TRUE:
        return emit_scalar(em, "true", 4, YAML_PLAIN_SCALAR_STYLE);
    case JSON_FALSE:
        return emit_scalar(em, "false", 5, YAML_PLAIN_SCALAR_STYLE);
    case JSON_NULL:
    default:
        return emit_scalar(em, "null", 4, YAML_PLAIN_SCALAR_STYLE);
    }
}

static int
sbuf_write(void *data, unsigned char *buffer, size_t size)
{
    km_sbuf_add(data, (const char *)buffer, size);
    return 1;
}

char *
km_yaml_dump(const json_t *v)
{
    yaml_emitter_t em;
    struct km_sbuf b;
    km_sbuf_init(&b);
    if (!yaml_emitter_initialize(&em))
        abort();
    yaml_emitter_set_output(&em, sbuf_write, &b);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    yaml_emitter_set_indent(&em, 2);
    yaml_event_t ev;
    bool ok = true;
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    ok = ok && emit_event(&em, &ev);
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    ok = ok && emit_event(&em, &ev);
    ok = ok && emit_value(&em, v);
    yaml_document_end_event_initialize(&ev, 1);
    ok = ok && emit_event(&em, &ev);
    yaml_stream_end_event_initialize(&ev);
    ok = ok && emit_event(&em, &ev);
    yaml_emitter_delete(&em);
    if (!ok) {
        km_sbuf_deinit(&b);
        return km_xstrdup("# error: value cannot be written as YAML\n");
    }
    return km_sbuf_take(&b);
}

static int
json_depth(const json_t *v, int depth)
{
    if (depth > KM_YAML_MAX_DEPTH)
        return depth;
    int max = depth;
    if (json_is_object(v)) {
        const char *k;
        json_t *val;
        json_object_foreach((json_t *)v, k, val)
        {
            int d = json_depth(val, depth + 1);
            if (d > max)
                max = d;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *val;
        json_array_foreach(v, i, val)
        {
            int d = json_depth(val, depth + 1);
            if (d > max)
                max = d;
        }
    }
    return max;
}

json_t *
km_json_parse(const char *buf, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!v) {
        snprintf(err, errlen, "line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (json_depth(v, 1) > KM_YAML_MAX_DEPTH) {
        snprintf(err, errlen, "nesting deeper than %d levels", KM_YAML_MAX_DEPTH);
        json_decref(v);
        return NULL;
    }
    return v;
}
