/* `kumactl apply --var` templating: a Mustache subset (see include/km/ctl/template.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/ctl/template.h>

#define KM_TEMPLATE_MAX_DEPTH 32

struct tpl {
    const char *s;
    size_t len;
    size_t pos;
    char *const *keys;
    char *const *vals;
    size_t n;
    char *err;
    size_t errlen;
};

static size_t
line_of(const struct tpl *t, size_t pos)
{
    size_t line = 1;
    for (size_t i = 0; i < pos && i < t->len; i++)
        line += t->s[i] == '\n';
    return line;
}

static const char *
lookup(const struct tpl *t, const char *name, size_t len)
{
    /* the last definition of a key wins, like a map filled in order */
    for (size_t i = t->n; i-- > 0;) {
        if (strlen(t->keys[i]) == len && memcmp(t->keys[i], name, len) == 0)
            return t->vals[i];
    }
    return NULL;
}

static void
put_escaped(struct km_sbuf *b, const char *v)
{
    for (; *v; v++) {
        switch (*v) {
        case '&':
            km_sbuf_puts(b, "&amp;");
            break;
        case '<':
            km_sbuf_puts(b, "&lt;");
            break;
        case '>':
            km_sbuf_puts(b, "&gt;");
            break;
        case '"':
            km_sbuf_puts(b, "&#34;");
            break;
        case '\'':
            km_sbuf_puts(b, "&#39;");
            break;
        default:
            km_sbuf_add(b, v, 1);
        }
    }
}

static void
trim(const char **p, size_t *len)
{
    while (*len && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')) {
        (*p)++;
        (*len)--;
    }
    while (*len && ((*p)[*len - 1] == ' ' || (*p)[*len - 1] == '\t' || (*p)[*len - 1] == '\n' ||
                    (*p)[*len - 1] == '\r'))
        (*len)--;
}

static const char *
find(const struct tpl *t, size_t from, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t i = from; i + nl <= t->len; i++) {
        if (memcmp(t->s + i, needle, nl) == 0)
            return t->s + i;
    }
    return NULL;
}

/* Renders from t->pos until the end, or until the closing tag of section <section> (then
 * t->pos is just past it). Output goes to <b> when <b> is not NULL (a skipped section still
 * has to be parsed to find its end). */
static bool
render(struct tpl *t, struct km_sbuf *b, const char *section, size_t seclen, int depth)
{
    if (depth > KM_TEMPLATE_MAX_DEPTH) {
        snprintf(t->err, t->errlen, "line %zu: sections nested too deeply", line_of(t, t->pos));
        return false;
    }
    for (;;) {
        const char *open = find(t, t->pos, "{{");
        if (!open) {
            if (section) {
                snprintf(t->err, t->errlen, "line %zu: section %.*s has no closing tag",
                         line_of(t, t->pos), (int)seclen, section);
                return false;
            }
            if (b)
                km_sbuf_add(b, t->s + t->pos, t->len - t->pos);
            t->pos = t->len;
            return true;
        }
        size_t open_at = (size_t)(open - t->s);
        if (b)
            km_sbuf_add(b, t->s + t->pos, open_at - t->pos);
        bool triple = open_at + 2 < t->len && t->s[open_at + 2] == '{';
        size_t body = open_at + (triple ? 3 : 2);
        const char *close = find(t, body, triple ? "}}}" : "}}");
        if (!close) {
            snprintf(t->err, t->errlen, "line %zu: unmatched open tag", line_of(t, open_at));
            return false;
        }
        const char *tag = t->s + body;
        size_t taglen = (size_t)(close - tag);
        t->pos = (size_t)(close - t->s) + (triple ? 3 : 2);
        trim(&tag, &taglen);
        if (taglen == 0) {
            snprintf(t->err, t->errlen, "line %zu: empty tag", line_of(t, open_at));
            return false;
        }
        char kind = triple ? '{' : tag[0];
        if (!triple && strchr("!#^/&>=", kind)) {
            tag++;
            taglen--;
            trim(&tag, &taglen);
        } else if (!triple) {
            kind = 0;
        }
        switch (kind) {
        case '!':
            break;
        case '>':
        case '=':
            snprintf(t->err, t->errlen, "line %zu: partials and delimiter changes are not "
                     "supported", line_of(t, open_at));
            return false;
        case '/':
            if (!section || taglen != seclen || memcmp(tag, section, seclen) != 0) {
                snprintf(t->err, t->errlen, "line %zu: unmatched close tag %.*s",
                         line_of(t, open_at), (int)taglen, tag);
                return false;
            }
            return true;
        case '#':
        case '^': {
            const char *v = lookup(t, tag, taglen);
            bool truthy = v && *v;
            bool show = kind == '#' ? truthy : !truthy;
            /* a newline right after the opening tag belongs to the tag */
            if (t->pos < t->len && t->s[t->pos] == '\n')
                t->pos++;
            else if (t->pos + 1 < t->len && t->s[t->pos] == '\r' && t->s[t->pos + 1] == '\n')
                t->pos += 2;
            if (!render(t, show ? b : NULL, tag, taglen, depth + 1))
                return false;
            break;
        }
        case '{':
        case '&': {
            const char *v = lookup(t, tag, taglen);
            if (v && b)
                km_sbuf_puts(b, v);
            break;
        }
        default: {
            const char *v = lookup(t, tag, taglen);
            if (v && b)
                put_escaped(b, v);
            break;
        }
        }
    }
}

char *
km_ctl_template_render(const char *tmpl, size_t len, char *const *keys, char *const *vals,
                       size_t n, char *err, size_t errlen)
{
    struct tpl t = {tmpl, len, 0, keys, vals, n, err, errlen};
    struct km_sbuf b;
    km_sbuf_init(&b);
    if (!render(&t, &b, NULL, 0, 0)) {
        km_sbuf_deinit(&b);
        return NULL;
    }
    return km_sbuf_take(&b);
}
