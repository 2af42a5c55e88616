/* HTTP router (rules in router.h). Matching reads the immutable snapshot only; regexes are
 * compiled once by the snapshot builder (km_dp_route_compile) and evaluated with glibc's
 * REG_STARTEND, so header values (not NUL terminated, borrowed from the request buffer) need no
 * copy unless several headers of one name must be joined. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <km/common/util.h>
#include <km/dp/router.h>

#define ROUTER_JOIN_STACK 4096
#define ROUTER_REGEX_MAX  4096 /* source length accepted by km_dp_route_compile */

/* --- virtual hosts ------------------------------------------------------------------------ */

/* best match of host[0..n) among <vh>'s domains: 3 exact, 2 suffix wildcard, 1 prefix wildcard
 * (with the wildcard's length in *len for the longest-wins rule), 0 none ("*" is handled by
 * the caller) */
static int
vhost_score(const struct km_dp_vhost *vh, const char *host, size_t n, size_t *len)
{
    int best = 0;
    size_t blen = 0;
    for (size_t d = 0; d < vh->ndomains; d++) {
        const char *dom = vh->domains[d];
        size_t dl = strlen(dom);
        if (dl == 0 || (dl == 1 && dom[0] == '*'))
            continue;
        int s = 0;
        size_t l = 0;
        if (dom[0] == '*') {
            /* suffix wildcard: the '*' stands for at least one character */
            if (n > dl - 1 && strncasecmp(host + n - (dl - 1), dom + 1, dl - 1) == 0) {
                s = 2;
                l = dl - 1;
            }
        } else if (dom[dl - 1] == '*') {
            if (n > dl - 1 && strncasecmp(host, dom, dl - 1) == 0) {
                s = 1;
                l = dl - 1;
            }
        } else if (dl == n && strncasecmp(host, dom, n) == 0) {
            s = 3;
            l = n;
        }
        if (s > best || (s == best && s > 0 && l > blen)) {
            best = s;
            blen = l;
        }
    }
    *len = blen;
    return best;
}

static const struct km_dp_vhost *
vhost_find(const struct km_dp_route_config *rc, const char *host, size_t n)
{
    const struct km_dp_vhost *best = NULL;
    int bscore = 0;
    size_t blen = 0;
    for (size_t i = 0; i < rc->nvhosts; i++) {
        size_t l;
        int s = vhost_score(&rc->vhosts[i], host, n, &l);
        if (s > bscore || (s == bscore && s > 0 && l > blen)) {
            best = &rc->vhosts[i];
            bscore = s;
            blen = l;
        }
    }
    return best;
}

/* length of <host> without its ":port" (IPv6 literals in brackets keep their colons) */
static size_t
host_without_port(const char *host, size_t n)
{
    size_t i = n;
    while (i > 0 && host[i - 1] >= '0' && host[i - 1] <= '9')
        i--;
    if (i == 0 || i == n || host[i - 1] != ':')
        return n;
    size_t h = i - 1;
    if (host[0] == '[')
        return h > 0 && host[h - 1] == ']' ? h : n;
    return memchr(host, ':', h) ? n : h; /* a bare IPv6 address has no port */
}

const struct km_dp_vhost *
km_dp_vhost_match(const struct km_dp_route_config *rc, const char *authority)
{
    if (!rc)
        return NULL;
    const char *host = authority ? authority : "";
    size_t n = strlen(host);
    const struct km_dp_vhost *vh = n ? vhost_find(rc, host, n) : NULL;
    if (!vh && n) {
        size_t np = host_without_port(host, n);
        if (np < n)
            vh = vhost_find(rc, host, np);
    }
    if (vh)
        return vh;
    for (size_t i = 0; i < rc->nvhosts; i++)
        for (size_t d = 0; d < rc->vhosts[i].ndomains; d++)
            if (strcmp(rc->vhosts[i].domains[d], "*") == 0)
                return &rc->vhosts[i];
    return NULL;
}

/* --- regexes ------------------------------------------------------------------------------ */

static bool
regex_full_match(const void *re, const char *s, size_t n)
{
    if (!re)
        return false;
    regmatch_t m[1];
    m[0].rm_so = 0;
    m[0].rm_eo = (regoff_t)n;
    /* the pattern is anchored ^(...)$ so a match is a full match */
    return regexec((const regex_t *)re, s, 1, m, REG_STARTEND) == 0;
}

struct rx_buf {
    char *p;
    size_t len, cap;
};

static bool
rx_put(struct rx_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap)
        return false;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

/* Translates an RE2 pattern (Envoy's safe_regex) into an anchored POSIX extended one. */
static int
rx_translate(const char *src, struct rx_buf *out, int *cflags, char *err, size_t errlen)
{
    const char *s = src;
    if (strncmp(s, "(?i)", 4) == 0) {
        *cflags |= REG_ICASE;
        s += 4;
    }
    if (!rx_put(out, "^("))
        goto toolong;
    bool in_bracket = false, prev_quant = false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        char one[3] = {c, 0, 0};
        bool quant = false;
        if (c == '\\') {
            char e = s[i + 1];
            if (e == '\0') {
                snprintf(err, errlen, "trailing backslash");
                return KM_EINVAL;
            }
            i++;
            const char *rep = NULL;
            switch (e) {
            case 'd': rep = in_bracket ? "0-9" : "[0-9]"; break;
            case 'w': rep = in_bracket ? "A-Za-z0-9_" : "[A-Za-z0-9_]"; break;
            case 's': rep = in_bracket ? " \t\r\n\f\v" : "[ \t\r\n\f\v]"; break;
            case 'D': rep = in_bracket ? NULL : "[^0-9]"; break;
            case 'W': rep = in_bracket ? NULL : "[^A-Za-z0-9_]"; break;
            case 'S': rep = in_bracket ? NULL : "[^ \t\r\n\f\v]"; break;
            default:
                if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
                    break;
                if (in_bracket) {
                    /* POSIX has no escapes inside brackets: only plain literals pass */
                    if (e == ']' || e == '^' || e == '-' || e == '\\' || e == '[')
                        break;
                    one[0] = e;
                } else {
                    one[0] = '\\';
                    one[1] = e;
                }
                rep = one;
            }
            if (!rep) {
                snprintf(err, errlen, "unsupported escape \\%c%s", e,
                         in_bracket ? " inside brackets" : "");
                return KM_EINVAL;
            }
            if (!rx_put(out, rep))
                goto toolong;
            prev_quant = false;
            continue;
        }
        if (in_bracket) {
            if (c == '[' && s[i + 1] && strchr(":.=", s[i + 1])) {
                /* [:alpha:] and friends, copied whole */
                const char *end = strchr(s + i + 2, s[i + 1]);
                while (end && end[1] != ']')
                    end = strchr(end + 1, s[i + 1]);
                if (!end) {
                    snprintf(err, errlen, "unterminated character class");
                    return KM_EINVAL;
                }
                size_t len = (size_t)(end + 2 - (s + i));
                if (out->len + len + 1 > out->cap)
                    goto toolong;
                memcpy(out->p + out->len, s + i, len);
                out->len += len;
                out->p[out->len] = '\0';
                i += len - 1;
                continue;
            }
            if (c == ']' && !(s[i - 1] == '[' || (s[i - 1] == '^' && s[i - 2] == '[')))
                in_bracket = false;
        } else if (c == '[') {
            in_bracket = true;
        } else if (c == '(' && s[i + 1] == '?') {
            if (s[i + 2] != ':') {
                snprintf(err, errlen, "unsupported group syntax \"(?%c\"", s[i + 2]);
                return KM_EINVAL;
            }
            i += 2; /* "(?:" -> "(": capturing does not change a full match */
        } else if (c == '?' && prev_quant) {
            /* a lazy quantifier: greediness does not change a full match */
            prev_quant = false;
            continue;
        } else if (c == '*' || c == '+' || c == '?' || c == '}') {
            quant = true;
        }
        prev_quant = quant;
        if (!rx_put(out, one))
            goto toolong;
    }
    if (!rx_put(out, ")$"))
        goto toolong;
    return 0;
toolong:
    snprintf(err, errlen, "longer than %d bytes", ROUTER_REGEX_MAX);
    return KM_EINVAL;
}

static int
rx_compile(const char *src, void **out, const char *field, char *err, size_t errlen)
{
    *out = NULL;
    char why[160] = "";
    if (!src || strlen(src) > ROUTER_REGEX_MAX) {
        snprintf(err, errlen, "%s: %s", field, src ? "longer than 4096 bytes" : "missing");
        return KM_EINVAL;
    }
    char tmp[ROUTER_REGEX_MAX * 2 + 64];
    struct rx_buf b = {tmp, 0, sizeof(tmp)};
    tmp[0] = '\0';
    int cflags = REG_EXTENDED | REG_NOSUB;
    if (rx_translate(src, &b, &cflags, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: invalid regex \"%.100s\": %s", field, src, why);
        return KM_EINVAL;
    }
    regex_t *re = malloc(sizeof(*re));
    if (!re) {
        snprintf(err, errlen, "%s: out of memory", field);
        return KM_EINVAL;
    }
    int rc = regcomp(re, tmp, cflags);
    if (rc != 0) {
        regerror(rc, re, why, sizeof(why));
        snprintf(err, errlen, "%s: invalid regex \"%.100s\": %s", field, src, why);
        free(re);
        return KM_EINVAL;
    }
    *out = re;
    return 0;
}

static void
rx_free(void **re)
{
    if (*re) {
        regfree((regex_t *)*re);
        free(*re);
        *re = NULL;
    }
}

void
km_dp_route_release(struct km_dp_route *r)
{
    rx_free(&r->regex);
    for (size_t i = 0; i < r->nheaders; i++)
        rx_free(&r->headers[i].regex);
}

int
km_dp_route_compile(struct km_dp_route *r, char *err, size_t errlen)
{
    km_dp_route_release(r);
    if (r->match == KM_DP_MATCH_REGEX &&
        rx_compile(r->path, &r->regex, "match.safe_regex.regex", err, errlen) < 0)
        return KM_EINVAL;
    for (size_t i = 0; i < r->nheaders; i++) {
        if (r->headers[i].kind != KM_DP_HDR_REGEX)
            continue;
        char field[96];
        snprintf(field, sizeof(field), "match.headers[%zu].string_match.safe_regex.regex", i);
        if (rx_compile(r->headers[i].value, &r->headers[i].regex, field, err, errlen) < 0) {
            km_dp_route_release(r);
            return KM_EINVAL;
        }
    }
    return 0;
}

/* --- route matching ----------------------------------------------------------------------- */

static bool
bytes_eq(const char *a, const char *b, size_t n, bool ci)
{
    return ci ? strncasecmp(a, b, n) == 0 : memcmp(a, b, n) == 0;
}

static bool
path_matches(const struct km_dp_route *r, const char *path)
{
    size_t n = strlen(path);
    const char *q = memchr(path, '?', n);
    size_t plen = q ? (size_t)(q - path) : n;
    const char *want = r->path ? r->path : "";
    size_t wl = strlen(want);
    switch (r->match) {
    case KM_DP_MATCH_PREFIX:
        return n >= wl && bytes_eq(path, want, wl, !r->case_sensitive);
    case KM_DP_MATCH_PATH:
        return plen == wl && bytes_eq(path, want, wl, !r->case_sensitive);
    case KM_DP_MATCH_REGEX:
        return regex_full_match(r->regex, path, plen);
    }
    return false;
}

static bool
name_is(const struct km_http1_header *h, const char *name, size_t nl)
{
    return h->name_len == nl && strncasecmp(h->name, name, nl) == 0;
}

static bool
value_matches(const struct km_dp_header_match *m, const char *v, size_t n)
{
    const char *want = m->value ? m->value : "";
    size_t wl = strlen(want);
    switch (m->kind) {
    case KM_DP_HDR_EXACT:
        return n == wl && memcmp(v, want, n) == 0;
    case KM_DP_HDR_PREFIX:
        return n >= wl && memcmp(v, want, wl) == 0;
    case KM_DP_HDR_SUFFIX:
        return n >= wl && memcmp(v + n - wl, want, wl) == 0;
    case KM_DP_HDR_CONTAINS:
        return wl == 0 || (n >= wl && memmem(v, n, want, wl) != NULL);
    case KM_DP_HDR_PRESENT:
        return true;
    case KM_DP_HDR_REGEX:
        return regex_full_match(m->regex, v, n);
    }
    return false;
}

static bool
header_matches(const struct km_dp_header_match *m, const char *authority, const char *path,
               const struct km_http1_header *headers, size_t nheaders)
{
    const char *name = m->name ? m->name : "";
    size_t nl = strlen(name);
    bool matched;
    if ((strcmp(name, ":authority") == 0 && authority) || strcmp(name, ":path") == 0) {
        const char *v = name[1] == 'p' ? path : authority;
        matched = v && value_matches(m, v, strlen(v));
        return matched != m->invert;
    }
    /* the first header of that name, and whether there are more */
    size_t first = nheaders, count = 0, total = 0;
    for (size_t i = 0; i < nheaders; i++) {
        if (name_is(&headers[i], name, nl)) {
            if (count++ == 0)
                first = i;
            total += headers[i].value_len + 1;
        }
    }
    if (count == 0) {
        matched = false;
    } else if (m->kind == KM_DP_HDR_PRESENT) {
        matched = true;
    } else if (count == 1) {
        matched = value_matches(m, headers[first].value, headers[first].value_len);
    } else {
        /* Envoy joins the values of a repeated header with "," before matching */
        char stack[ROUTER_JOIN_STACK];
        char *buf = total <= sizeof(stack) ? stack : malloc(total);
        if (!buf)
            return false;
        memset(buf, 0, total);
        size_t len = 0;
        for (size_t i = first; i < nheaders; i++) {
            if (!name_is(&headers[i], name, nl))
                continue;
            if (len)
                buf[len++] = ',';
            memcpy(buf + len, headers[i].value, headers[i].value_len);
            len += headers[i].value_len;
        }
        matched = value_matches(m, buf, len);
        if (buf != stack)
            free(buf);
    }
    return matched != m->invert;
}

static const struct km_dp_route *
routes_match(const struct km_dp_vhost *vh, const char *authority, const char *path,
             const struct km_http1_header *headers, size_t nheaders)
{
    if (!vh || !path)
        return NULL;
    for (size_t i = 0; i < vh->nroutes; i++) {
        const struct km_dp_route *r = &vh->routes[i];
        if (!path_matches(r, path))
            continue;
        bool ok = true;
        for (size_t h = 0; ok && h < r->nheaders; h++)
            ok = header_matches(&r->headers[h], authority, path, headers, nheaders);
        if (ok)
            return r;
    }
    return NULL;
}

const struct km_dp_route *
km_dp_vhost_route_match(const struct km_dp_vhost *vh, const char *path,
                        const struct km_http1_header *headers, size_t nheaders)
{
    return routes_match(vh, NULL, path, headers, nheaders);
}

const struct km_dp_route *
km_dp_route_match(const struct km_dp_route_config *rc, const char *authority, const char *path,
                  const struct km_http1_header *headers, size_t nheaders)
{
    return routes_match(km_dp_vhost_match(rc, authority), authority, path, headers, nheaders);
}

const struct km_dp_weighted *
km_dp_route_pick_cluster(const struct km_dp_route *r, uint64_t rnd)
{
    if (!r || r->nclusters == 0)
        return NULL;
    uint64_t sum = 0;
    for (size_t i = 0; i < r->nclusters; i++)
        sum += r->clusters[i].weight;
    if (sum == 0)
        return &r->clusters[0];
    uint64_t x = rnd % sum;
    for (size_t i = 0; i < r->nclusters; i++) {
        if (x < r->clusters[i].weight)
            return &r->clusters[i];
        x -= r->clusters[i].weight;
    }
    return &r->clusters[r->nclusters - 1];
}

long
km_dp_route_rewrite_path(const struct km_dp_route *r, const char *path, size_t path_len,
                         char *out, size_t cap)
{
    if (!r->prefix_rewrite)
        return 0;
    const char *q = memchr(path, '?', path_len);
    size_t plen = q ? (size_t)(q - path) : path_len;
    size_t cut;
    if (r->match == KM_DP_MATCH_PREFIX) {
        cut = r->path ? strlen(r->path) : 0;
        if (cut > path_len)
            cut = path_len;
    } else {
        cut = plen;
    }
    size_t rl = strlen(r->prefix_rewrite);
    size_t total = rl + (path_len - cut);
    if (total + 1 > cap)
        return KM_ELIMIT;
    memcpy(out, r->prefix_rewrite, rl);
    memcpy(out + rl, path + cut, path_len - cut);
    out[total] = '\0';
    return (long)total;
}
