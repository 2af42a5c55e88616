/* Strict HTTP/1.1 parsing (see http1.h for the rules). One linear pass over a head locates
 * its end and rejects stray CR, LF and NUL bytes before any field is looked at; then the start
 * line and the fields are parsed, collecting the facts that decide the body's framing
 * (RFC 9112 section 6), which is decided once, in one place per direction. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <km/common/http1.h>
#include <km/common/util.h>

#define HTTP1_DEFAULT_MAX_HEAD  (16u * 1024u)
#define HTTP1_DEFAULT_MAX_BODY  (1u * 1024u * 1024u)
#define HTTP1_MAX_METHOD        16
#define HTTP1_MAX_LEADING_CRLF  8

static int
http1_fail(int *status, int code, char *err, size_t errlen, const char *fmt, ...)
    KM_PRINTF(5, 6);

static int
http1_fail(int *status, int code, char *err, size_t errlen, const char *fmt, ...)
{
    *status = code;
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return KM_HTTP1_ERROR;
}

/* RFC 9110 tchar */
static bool
http1_is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool
http1_is_value_char(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static bool
http1_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

/* Does the comma-separated list value contain <tok> (case-insensitive)? */
static bool
http1_list_has(const char *v, size_t len, const char *tok)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s && http1_eq(v + s, e - s, tok))
            return true;
    }
    return false;
}

const char *
km_http1_headers_get(const struct km_http1_header *h, size_t n, const char *name, size_t *len)
{
    for (size_t i = 0; i < n; i++) {
        if (http1_eq(h[i].name, h[i].name_len, name)) {
            if (len)
                *len = h[i].value_len;
            return h[i].value;
        }
    }
    return NULL;
}

const char *
km_http1_header_get(const struct km_http1_request *req, const char *name, size_t *len)
{
    return km_http1_headers_get(req->headers, req->nheaders, name, len);
}

static int
http1_parse_line0(const char *p, size_t n, struct km_http1_request *req, int *status, char *err,
                  size_t errlen)
{
    size_t i = 0;
    while (i < n && http1_is_tchar((uint8_t)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ' ')
        return http1_fail(status, 400, err, errlen, "request line: malformed method");
    if (i > HTTP1_MAX_METHOD)
        return http1_fail(status, 400, err, errlen, "request line: method too long");
    req->method = p;
    req->method_len = i;
    size_t t = ++i;
    while (i < n && (uint8_t)p[i] > 0x20 && (uint8_t)p[i] < 0x7f)
        i++;
    if (i == t || i >= n || p[i] != ' ')
        return http1_fail(status, 400, err, errlen, "request line: malformed request target");
    req->target = p + t;
    req->target_len = i - t;
    i++;
    if (n - i != 8 || memcmp(p + i, "HTTP/1.", 7) != 0) {
        if (n - i == 8 && memcmp(p + i, "HTTP/", 5) == 0)
            return http1_fail(status, 505, err, errlen, "request line: unsupported HTTP version");
        return http1_fail(status, 400, err, errlen, "request line: malformed HTTP version");
    }
    if (p[i + 7] != '0' && p[i + 7] != '1')
        return http1_fail(status, 505, err, errlen, "request line: unsupported HTTP version");
    req->minor_version = p[i + 7] - '0';
    return 0;
}

static int
http1_parse_header(const char *p, size_t n, struct km_http1_header *h, int bad, int *status,
                   char *err, size_t errlen)
{
    if (n > 0 && (p[0] == ' ' || p[0] == '\t'))
        return http1_fail(status, bad, err, errlen, "headers: obsolete line folding");
    size_t i = 0;
    while (i < n && http1_is_tchar((uint8_t)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ':')
        return http1_fail(status, bad, err, errlen, "headers: malformed header name");
    h->name = p;
    h->name_len = i;
    i++;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    size_t e = n;
    while (e > i && (p[e - 1] == ' ' || p[e - 1] == '\t'))
        e--;
    for (size_t k = i; k < e; k++) {
        if (!http1_is_value_char((uint8_t)p[k]))
            return http1_fail(status, bad, err, errlen, "headers.%.*s: invalid character",
                              (int)(h->name_len > 64 ? 64 : h->name_len), h->name);
    }
    h->value = p + i;
    h->value_len = e - i;
    return 0;
}

/* Finds the end of the head that starts at buf[start]: returns 1 with *end just after the
 * empty line, 0 when more bytes are needed (or the head is over <max_head>: *end == 0 and
 * the caller decides), or an error for NUL, bare LF and bare CR. <what> names the head. */
static int
http1_find_head(const uint8_t *buf, size_t len, size_t start, size_t max_head, size_t *end,
                const char *what, int bad, int *status, char *err, size_t errlen)
{
    size_t scan = len < max_head ? len : max_head;
    *end = 0;
    for (size_t i = start; i < scan; i++) {
        uint8_t c = buf[i];
        if (c == '\0')
            return http1_fail(status, bad, err, errlen, "%s: NUL byte", what);
        if (c == '\n')
            return http1_fail(status, bad, err, errlen, "%s: bare LF", what);
        if (c != '\r')
            continue;
        if (i + 1 >= len)
            break; /* need the next byte */
        if (buf[i + 1] != '\n')
            return http1_fail(status, bad, err, errlen, "%s: bare CR", what);
        if (i + 3 < len && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            *end = i + 4;
            break;
        }
        if (i + 2 < len && buf[i + 2] == '\r' && i + 3 >= len)
            break; /* need the byte after CR */
        i++; /* skip LF */
    }
    if (*end > max_head)
        *end = 0;
    return *end ? 1 : 0;
}

/* What the fields say about framing and the connection. */
struct http1_facts {
    bool have_cl, have_te, have_host, conn_close, conn_keep, conn_upgrade, have_upgrade;
    bool expect_continue;
    size_t cl;
    size_t te_codings, te_chunked;
    bool te_last_chunked, te_other;
    const char *host;
    size_t host_len;
};

static bool
http1_parse_cl(const char *v, size_t n, size_t *out)
{
    if (n == 0 || n > 15)
        return false;
    size_t x = 0;
    for (size_t k = 0; k < n; k++) {
        if (v[k] < '0' || v[k] > '9')
            return false;
        x = x * 10 + (size_t)(v[k] - '0');
    }
    *out = x;
    return true;
}

/* Records the codings of one Transfer-Encoding field. */
static void
http1_note_te(struct http1_facts *f, const char *v, size_t len)
{
    size_t i = 0;
    f->have_te = true;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e == s)
            continue;
        f->te_codings++;
        /* transfer-coding names are case-insensitive (RFC 9112 7) */
        if (http1_eq(v + s, e - s, "chunked")) {
            f->te_chunked++;
            f->te_last_chunked = true;
        } else {
            f->te_other = true;
            f->te_last_chunked = false;
        }
    }
}

/* Parses the field lines of a head (s[pos..end - 2) is a series of CRLF-terminated lines). */
static int
http1_parse_fields(const char *s, size_t pos, size_t end, struct km_http1_header *hdrs,
                   size_t *nh, size_t max_headers, bool response, struct http1_facts *f,
                   int *status, char *err, size_t errlen)
{
    int bad = response ? 502 : 400, big = response ? 502 : 431;
    while (pos < end - 2) {
        const char *nl = memchr(s + pos, '\r', end - pos);
        size_t n = (size_t)(nl - (s + pos));
        if (*nh >= max_headers)
            return http1_fail(status, big, err, errlen, "more than %zu headers", max_headers);
        struct km_http1_header *h = &hdrs[*nh];
        if (http1_parse_header(s + pos, n, h, bad, status, err, errlen) < 0)
            return KM_HTTP1_ERROR;
        (*nh)++;
        if (http1_eq(h->name, h->name_len, "content-length")) {
            size_t v;
            if (!http1_parse_cl(h->value, h->value_len, &v))
                return http1_fail(status, bad, err, errlen,
                                  "headers.content-length: invalid value");
            /* a response may repeat the same length (RFC 9110 8.6); a request may not */
            if (f->have_cl && (!response || v != f->cl))
                return http1_fail(status, bad, err, errlen, "headers.content-length: repeated");
            f->have_cl = true;
            f->cl = v;
        } else if (http1_eq(h->name, h->name_len, "transfer-encoding")) {
            http1_note_te(f, h->value, h->value_len);
        } else if (!response && http1_eq(h->name, h->name_len, "host")) {
            if (f->have_host)
                return http1_fail(status, 400, err, errlen, "headers.host: repeated");
            f->have_host = true;
            f->host = h->value;
            f->host_len = h->value_len;
        } else if (http1_eq(h->name, h->name_len, "connection")) {
            if (http1_list_has(h->value, h->value_len, "close"))
                f->conn_close = true;
            if (http1_list_has(h->value, h->value_len, "keep-alive"))
                f->conn_keep = true;
            if (http1_list_has(h->value, h->value_len, "upgrade"))
                f->conn_upgrade = true;
        } else if (http1_eq(h->name, h->name_len, "upgrade")) {
            f->have_upgrade = true;
        } else if (!response && http1_eq(h->name, h->name_len, "expect")) {
            if (http1_eq(h->value, h->value_len, "100-continue"))
                f->expect_continue = true;
        }
        pos += n + 2;
    }
    return 0;
}

/* reg-name / IPv4 / [IPv6] characters and an optional :port (RFC 3986 host, no userinfo) */
static bool
http1_host_ok(const char *h, size_t n)
{
    if (n == 0)
        return false;
    size_t i = 0;
    if (h[0] == '[') {
        while (i < n && h[i] != ']') {
            char c = h[i];
            if (i > 0 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                           (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
                return false;
            i++;
        }
        if (i == n)
            return false;
        i++;
    } else {
        while (i < n && h[i] != ':') {
            char c = h[i];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  strchr("-._~!$&'()*+,;=%", c)))
                return false;
            i++;
        }
    }
    if (i == n)
        return true;
    if (h[i] != ':')
        return false;
    for (i++; i < n; i++)
        if (h[i] < '0' || h[i] > '9')
            return false;
    return true;
}

/* Classifies the request target and sets authority / path; checks Host against it. */
static int
http1_check_target(struct km_http1_request *req, const struct http1_facts *f, int *status,
                   char *err, size_t errlen)
{
    const char *t = req->target;
    size_t n = req->target_len;
    bool connect = http1_eq(req->method, req->method_len, "CONNECT");
    if (f->have_host && !http1_host_ok(f->host, f->host_len))
        return http1_fail(status, 400, err, errlen, "headers.host: invalid value");
    req->authority = f->have_host ? f->host : NULL;
    req->authority_len = f->have_host ? f->host_len : 0;
    if (connect) {
        /* authority-form: host:port */
        if (!http1_host_ok(t, n) || !memchr(t, ':', n) || t[n - 1] == ':')
            return http1_fail(status, 400, err, errlen,
                              "request line: CONNECT needs a host:port target");
        req->authority = t;
        req->authority_len = n;
        req->path = t + n;
        req->path_len = 0;
        return 0;
    }
    if (t[0] == '/') {
        req->path = t;
        req->path_len = n;
        return 0;
    }
    if (n == 1 && t[0] == '*') {
        if (!http1_eq(req->method, req->method_len, "OPTIONS"))
            return http1_fail(status, 400, err, errlen,
                              "request line: '*' target is only for OPTIONS");
        req->path = t;
        req->path_len = 1;
        return 0;
    }
    size_t sl = 0;
    if (n > 7 && strncasecmp(t, "http://", 7) == 0)
        sl = 7;
    else if (n > 8 && strncasecmp(t, "https://", 8) == 0)
        sl = 8;
    if (sl == 0)
        return http1_fail(status, 400, err, errlen, "request line: malformed request target");
    size_t a = sl;
    while (a < n && t[a] != '/' && t[a] != '?' && t[a] != '#')
        a++;
    if (!http1_host_ok(t + sl, a - sl))
        return http1_fail(status, 400, err, errlen,
                          "request line: invalid authority in the request target");
    /* RFC 9112 3.2.2 lets the target override Host; two different hosts are refused instead,
     * since a peer that reads the other one would route the request elsewhere */
    if (f->have_host && !(f->host_len == a - sl && strncasecmp(f->host, t + sl, a - sl) == 0))
        return http1_fail(status, 400, err, errlen,
                          "headers.host: does not match the request target's authority");
    req->authority = t + sl;
    req->authority_len = a - sl;
    if (a == n) {
        req->path = "/";
        req->path_len = 1;
    } else if (t[a] == '/') {
        req->path = t + a;
        req->path_len = n - a;
    } else {
        return http1_fail(status, 400, err, errlen,
                          "request line: absolute-form target without a path");
    }
    return 0;
}

/* Parses a request head; <proxy> allows a chunked body. */
static int
http1_request_head(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                   struct km_http1_request *req, bool proxy, int *status, char *err,
                   size_t errlen)
{
    size_t max_head = lim && lim->max_head ? lim->max_head : HTTP1_DEFAULT_MAX_HEAD;
    size_t max_headers = lim && lim->max_headers && lim->max_headers < KM_HTTP1_MAX_HEADERS
                             ? lim->max_headers
                             : KM_HTTP1_MAX_HEADERS;
    size_t max_body = lim && lim->max_body ? lim->max_body : HTTP1_DEFAULT_MAX_BODY;
    const char *s = (const char *)buf;
    memset(req, 0, sizeof(*req));
    *status = 0;
    if (err && errlen)
        err[0] = '\0';

    /* RFC 9112 2.2: ignore a few empty lines before the request line */
    size_t start = 0;
    for (int k = 0; k < HTTP1_MAX_LEADING_CRLF && start + 1 < len && s[start] == '\r' &&
                    s[start + 1] == '\n';
         k++)
        start += 2;

    size_t end;
    int r = http1_find_head(buf, len, start, max_head, &end, "request head", 400, status, err,
                            errlen);
    if (r < 0)
        return r;
    if (r == 0) {
        if (len >= max_head)
            return http1_fail(status, 431, err, errlen, "request head larger than %zu bytes",
                              max_head);
        req->need = len + 1;
        return KM_HTTP1_INCOMPLETE;
    }
    req->head_len = end;

    const char *nl = memchr(s + start, '\r', end - start);
    size_t n0 = (size_t)(nl - (s + start));
    if (n0 == 0)
        return http1_fail(status, 400, err, errlen, "request line: missing");
    if (http1_parse_line0(s + start, n0, req, status, err, errlen) < 0)
        return KM_HTTP1_ERROR;
    struct http1_facts f;
    memset(&f, 0, sizeof(f));
    if (http1_parse_fields(s, start + n0 + 2, end, req->headers, &req->nheaders, max_headers,
                           false, &f, status, err, errlen) < 0)
        return KM_HTTP1_ERROR;

    if (f.have_te && f.have_cl)
        return http1_fail(status, 400, err, errlen,
                          "headers: both content-length and transfer-encoding");
    if (f.have_te) {
        if (req->minor_version == 0)
            return http1_fail(status, 400, err, errlen,
                              "headers.transfer-encoding: not allowed in HTTP/1.0");
        if (!proxy)
            return http1_fail(status, 501, err, errlen,
                              "headers.transfer-encoding: not supported, send content-length");
        if (f.te_codings == 0)
            return http1_fail(status, 400, err, errlen, "headers.transfer-encoding: empty");
        if (f.te_chunked > 1)
            return http1_fail(status, 400, err, errlen,
                              "headers.transfer-encoding: chunked more than once");
        if (f.te_chunked == 1 && !f.te_last_chunked)
            return http1_fail(status, 400, err, errlen,
                              "headers.transfer-encoding: chunked is not the final coding");
        if (f.te_other)
            return http1_fail(status, 501, err, errlen,
                              "headers.transfer-encoding: only chunked is supported");
        req->framing = KM_HTTP1_BODY_CHUNKED;
    }
    if (req->minor_version == 1 && !f.have_host)
        return http1_fail(status, 400, err, errlen, "headers.host: missing");
    if (http1_check_target(req, &f, status, err, errlen) < 0)
        return KM_HTTP1_ERROR;
    if (f.have_cl) {
        if (f.cl > max_body)
            return http1_fail(status, 413, err, errlen,
                              "body: content-length %zu is over the limit of %zu bytes", f.cl,
                              max_body);
        req->content_length = f.cl;
        req->framing = f.cl ? KM_HTTP1_BODY_LENGTH : KM_HTTP1_BODY_NONE;
    }
    req->keep_alive = req->minor_version == 1 ? !f.conn_close : (f.conn_keep && !f.conn_close);
    req->upgrade = f.have_upgrade && f.conn_upgrade;
    req->expect_continue = f.expect_continue;
    return KM_HTTP1_DONE;
}

int
km_http1_parse_request(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                       struct km_http1_request *req, int *status, char *err, size_t errlen)
{
    int r = http1_request_head(buf, len, lim, req, false, status, err, errlen);
    if (r != KM_HTTP1_DONE)
        return r;
    size_t end = req->head_len;
    if (len - end < req->content_length) {
        req->need = end + req->content_length;
        return KM_HTTP1_INCOMPLETE;
    }
    req->body_len = req->content_length;
    req->consumed = end + req->content_length;
    req->body = buf + end;
    return KM_HTTP1_DONE;
}

int
km_http1_parse_request_head(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                            struct km_http1_request *req, int *status, char *err, size_t errlen)
{
    int r = http1_request_head(buf, len, lim, req, true, status, err, errlen);
    if (r == KM_HTTP1_DONE)
        req->consumed = req->head_len;
    return r;
}

/* --- responses ---------------------------------------------------------------------------- */

static int
http1_parse_status_line(const char *p, size_t n, struct km_http1_response *resp, int *status,
                        char *err, size_t errlen)
{
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return http1_fail(status, 502, err, errlen, "status line: malformed HTTP version");
    resp->minor_version = p[7] - '0';
    int code = 0;
    for (int k = 9; k < 12; k++) {
        if (p[k] < '0' || p[k] > '9')
            return http1_fail(status, 502, err, errlen, "status line: malformed status code");
        code = code * 10 + (p[k] - '0');
    }
    if (code < 100)
        return http1_fail(status, 502, err, errlen, "status line: malformed status code");
    resp->status = code;
    if (n == 12) {
        resp->reason = p + n;
        return 0;
    }
    if (p[12] != ' ')
        return http1_fail(status, 502, err, errlen, "status line: malformed status code");
    for (size_t k = 13; k < n; k++)
        if (!http1_is_value_char((uint8_t)p[k]))
            return http1_fail(status, 502, err, errlen, "status line: invalid character");
    resp->reason = p + 13;
    resp->reason_len = n - 13;
    return 0;
}

int
km_http1_parse_response(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                        unsigned req_flags, struct km_http1_response *resp, int *status,
                        char *err, size_t errlen)
{
    size_t max_head = lim && lim->max_head ? lim->max_head : HTTP1_DEFAULT_MAX_HEAD;
    size_t max_headers = lim && lim->max_headers && lim->max_headers < KM_HTTP1_MAX_HEADERS
                             ? lim->max_headers
                             : KM_HTTP1_MAX_HEADERS;
    const char *s = (const char *)buf;
    memset(resp, 0, sizeof(*resp));
    *status = 0;
    if (err && errlen)
        err[0] = '\0';
    size_t end;
    int r = http1_find_head(buf, len, 0, max_head, &end, "response head", 502, status, err,
                            errlen);
    if (r < 0)
        return r;
    if (r == 0) {
        if (len >= max_head)
            return http1_fail(status, 502, err, errlen, "response head larger than %zu bytes",
                              max_head);
        resp->need = len + 1;
        return KM_HTTP1_INCOMPLETE;
    }
    resp->head_len = end;
    const char *nl = memchr(s, '\r', end);
    size_t n0 = (size_t)(nl - s);
    if (http1_parse_status_line(s, n0, resp, status, err, errlen) < 0)
        return KM_HTTP1_ERROR;
    struct http1_facts f;
    memset(&f, 0, sizeof(f));
    if (http1_parse_fields(s, n0 + 2, end, resp->headers, &resp->nheaders, max_headers, true, &f,
                           status, err, errlen) < 0)
        return KM_HTTP1_ERROR;
    int code = resp->status;
    resp->keep_alive =
        resp->minor_version == 1 ? !f.conn_close : (f.conn_keep && !f.conn_close);
    /* RFC 9112 6.3, in order */
    if (code == 101) {
        resp->framing = KM_HTTP1_BODY_TUNNEL;
        resp->keep_alive = false;
        return KM_HTTP1_DONE;
    }
    if ((req_flags & KM_HTTP1_REQ_HEAD) || code < 200 || code == 204 || code == 304) {
        resp->framing = KM_HTTP1_BODY_NONE;
        return KM_HTTP1_DONE;
    }
    if ((req_flags & KM_HTTP1_REQ_CONNECT) && code < 300) {
        resp->framing = KM_HTTP1_BODY_TUNNEL;
        resp->keep_alive = false;
        return KM_HTTP1_DONE;
    }
    if (f.have_te) {
        if (f.have_cl)
            return http1_fail(status, 502, err, errlen,
                              "headers: both content-length and transfer-encoding");
        if (resp->minor_version == 0)
            return http1_fail(status, 502, err, errlen,
                              "headers.transfer-encoding: not allowed in HTTP/1.0");
        if (f.te_codings != 1 || f.te_chunked != 1)
            return http1_fail(status, 502, err, errlen,
                              "headers.transfer-encoding: only chunked is supported");
        resp->framing = KM_HTTP1_BODY_CHUNKED;
        return KM_HTTP1_DONE;
    }
    if (f.have_cl) {
        resp->content_length = f.cl;
        resp->framing = f.cl ? KM_HTTP1_BODY_LENGTH : KM_HTTP1_BODY_NONE;
        return KM_HTTP1_DONE;
    }
    resp->framing = KM_HTTP1_BODY_CLOSE;
    resp->keep_alive = false;
    return KM_HTTP1_DONE;
}

/* --- chunked bodies ----------------------------------------------------------------------- */

enum {
    CK_SIZE = 0,    /* hex digits of a chunk size */
    CK_SIZE_WS,     /* whitespace after the size: only before ';' */
    CK_EXT,         /* chunk extensions, ignored, up to CR */
    CK_SIZE_LF,     /* LF after the size line */
    CK_DATA,        /* chunk data */
    CK_DATA_CR,     /* CR after the data */
    CK_DATA_LF,     /* LF after the data */
    CK_TRAILER,     /* start of a trailer line (or the final CRLF) */
    CK_TRAILER_NAME,
    CK_TRAILER_VALUE,
    CK_TRAILER_LF,
    CK_END_LF,      /* LF of the final empty line */
    CK_DONE,
};

#define HTTP1_CHUNK_LINE_MAX   4096
#define HTTP1_TRAILER_DEFAULT  (8u * 1024u)
#define HTTP1_TRAILERS_MAX     64

void
km_http1_chunked_init(struct km_http1_chunked *ck, uint64_t max_body, size_t max_trailer)
{
    memset(ck, 0, sizeof(*ck));
    ck->state = CK_SIZE;
    ck->max_body = max_body;
    ck->max_trailer = max_trailer ? max_trailer : HTTP1_TRAILER_DEFAULT;
}

static int
http1_hex(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
km_http1_chunked_parse(struct km_http1_chunked *ck, const uint8_t *buf, size_t len,
                       size_t *consumed, const uint8_t **data, size_t *data_len, int *status,
                       char *err, size_t errlen)
{
    size_t i = 0;
    /* never NULL, so that memcpy(dst, *data, 0) is well defined for callers */
    *data = buf ? buf : (const uint8_t *)"";
    *data_len = 0;
    *status = 0;
    if (err && errlen)
        err[0] = '\0';
    int r = KM_HTTP1_INCOMPLETE;
    while (i < len && ck->state != CK_DONE) {
        uint8_t c = buf[i];
        switch (ck->state) {
        case CK_SIZE: {
            int h = http1_hex(c);
            if (h >= 0) {
                if (++ck->digits > 16)
                    goto too_big;
                ck->remaining = (ck->remaining << 4) | (uint64_t)h;
                i++;
                break;
            }
            if (c == '\n')
                goto bare_lf;
            if (ck->digits == 0)
                goto bad_size;
            if (c == ' ' || c == '\t')
                ck->state = CK_SIZE_WS;
            else if (c == ';')
                ck->state = CK_EXT;
            else if (c == '\r')
                ck->state = CK_SIZE_LF;
            else
                goto bad_size;
            ck->line_len = ck->digits + 1;
            i++;
            break;
        }
        case CK_SIZE_WS:
            if (c == '\n')
                goto bare_lf;
            if (c == ';')
                ck->state = CK_EXT;
            else if (c != ' ' && c != '\t')
                goto bad_size; /* BWS is only allowed before an extension */
            if (++ck->line_len > HTTP1_CHUNK_LINE_MAX)
                goto long_line;
            i++;
            break;
        case CK_EXT:
            if (c == '\n')
                goto bare_lf;
            if (c == '\r')
                ck->state = CK_SIZE_LF;
            else if (!http1_is_value_char(c))
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: invalid character in a chunk extension");
            if (++ck->line_len > HTTP1_CHUNK_LINE_MAX)
                goto long_line;
            i++;
            break;
        case CK_SIZE_LF:
            if (c != '\n')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: chunk size line not ended by CRLF");
            i++;
            if (ck->max_body && ck->remaining > ck->max_body - ck->total)
                return http1_fail(status, 413, err, errlen,
                                  "chunked body: larger than %llu bytes",
                                  (unsigned long long)ck->max_body);
            ck->total += ck->remaining;
            ck->state = ck->remaining ? CK_DATA : CK_TRAILER;
            ck->line_len = 0;
            ck->digits = 0;
            break;
        case CK_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > ck->remaining)
                n = (size_t)ck->remaining;
            *data = buf + i;
            *data_len = n;
            i += n;
            ck->remaining -= n;
            if (ck->remaining == 0)
                ck->state = CK_DATA_CR;
            /* one run of data per call */
            *consumed = i;
            return KM_HTTP1_INCOMPLETE;
        }
        case CK_DATA_CR:
            if (c != '\r')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: chunk data not followed by CRLF");
            ck->state = CK_DATA_LF;
            i++;
            break;
        case CK_DATA_LF:
            if (c != '\n')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: chunk data not followed by CRLF");
            ck->state = CK_SIZE;
            i++;
            break;
        case CK_TRAILER:
            if (c == '\r') {
                ck->state = CK_END_LF;
            } else if (c == '\n') {
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: trailer section not ended by CRLF");
            } else if (c == ' ' || c == '\t') {
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: obsolete line folding in trailers");
            } else if (http1_is_tchar(c)) {
                if (++ck->ntrailers > HTTP1_TRAILERS_MAX)
                    return http1_fail(status, 400, err, errlen,
                                      "chunked body: more than %d trailer fields",
                                      HTTP1_TRAILERS_MAX);
                ck->state = CK_TRAILER_NAME;
            } else {
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: malformed trailer field name");
            }
            goto trailer_byte;
        case CK_TRAILER_NAME:
            if (c == ':')
                ck->state = CK_TRAILER_VALUE;
            else if (!http1_is_tchar(c))
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: malformed trailer field name");
            goto trailer_byte;
        case CK_TRAILER_VALUE:
            if (c == '\n')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: trailer field not ended by CRLF");
            if (c == '\r')
                ck->state = CK_TRAILER_LF;
            else if (!http1_is_value_char(c))
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: invalid character in a trailer field");
            goto trailer_byte;
        case CK_TRAILER_LF:
            if (c != '\n')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: trailer field not ended by CRLF");
            ck->state = CK_TRAILER;
            goto trailer_byte;
        case CK_END_LF:
            if (c != '\n')
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: last chunk not ended by CRLF");
            ck->state = CK_DONE;
            i++;
            break;
        default:
            return http1_fail(status, 400, err, errlen, "chunked body: bad decoder state");
        trailer_byte:
            if (++ck->trailer_len > ck->max_trailer)
                return http1_fail(status, 400, err, errlen,
                                  "chunked body: trailers larger than %zu bytes",
                                  ck->max_trailer);
            i++;
            break;
        }
    }
    if (ck->state == CK_DONE)
        r = KM_HTTP1_DONE;
    *consumed = i;
    return r;
bare_lf:
    return http1_fail(status, 400, err, errlen, "chunked body: chunk size line not ended by CRLF");
bad_size:
    return http1_fail(status, 400, err, errlen, "chunked body: invalid chunk size");
too_big:
    return http1_fail(status, 400, err, errlen, "chunked body: chunk size too large");
long_line:
    return http1_fail(status, 400, err, errlen, "chunked body: chunk extension too long");
}

size_t
km_http1_chunk_head(char out[19], uint64_t len)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = hex[len & 0xf];
        len >>= 4;
    } while (len);
    for (size_t k = 0; k < n; k++)
        out[k] = tmp[n - 1 - k];
    out[n] = '\r';
    out[n + 1] = '\n';
    out[n + 2] = '\0';
    return n + 2;
}

/* --- forwarding --------------------------------------------------------------------------- */

static bool
http1_is_hop_by_hop(const char *name, size_t len, unsigned flags)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", "transfer-encoding"};
    for (size_t k = 0; k < KM_ARRAY_LEN(hop); k++)
        if (http1_eq(name, len, hop[k]))
            return true;
    return !(flags & KM_HTTP1_FWD_KEEP_UPGRADE) && http1_eq(name, len, "upgrade");
}

/* Is <name> one of the tokens listed in the Connection fields of h[0..n)? */
static bool
http1_nominated(const struct km_http1_header *h, size_t n, const char *name, size_t len)
{
    char tok[64];
    if (len >= sizeof(tok))
        return false;
    memcpy(tok, name, len);
    tok[len] = '\0';
    for (size_t i = 0; i < n; i++)
        if (http1_eq(h[i].name, h[i].name_len, "connection") &&
            http1_list_has(h[i].value, h[i].value_len, tok))
            return true;
    return false;
}

long
km_http1_serialize_headers(const struct km_http1_header *h, size_t n, unsigned flags,
                           const char *const *drop, char *out, size_t cap)
{
    size_t o = 0;
    bool upgrade = false;
    if (cap == 0)
        return KM_ELIMIT;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *name = h[i].name;
        size_t nl = h[i].name_len;
        if (http1_is_hop_by_hop(name, nl, flags))
            continue;
        bool skip = false;
        for (size_t k = 0; drop && drop[k] && !skip; k++)
            skip = http1_eq(name, nl, drop[k]);
        /* fields nominated by Connection are hop-by-hop too, except the ones framing and
         * routing depend on, so that a client cannot strip them */
        if (!skip && !http1_eq(name, nl, "host") && !http1_eq(name, nl, "content-length") &&
            !((flags & KM_HTTP1_FWD_KEEP_UPGRADE) && http1_eq(name, nl, "upgrade")) &&
            http1_nominated(h, n, name, nl))
            skip = true;
        if (skip)
            continue;
        if (http1_eq(name, nl, "upgrade"))
            upgrade = true;
        size_t need = nl + 2 + h[i].value_len + 2;
        if (o + need + 1 > cap)
            return KM_ELIMIT;
        memcpy(out + o, name, nl);
        o += nl;
        out[o++] = ':';
        out[o++] = ' ';
        memcpy(out + o, h[i].value, h[i].value_len);
        o += h[i].value_len;
        out[o++] = '\r';
        out[o++] = '\n';
    }
    if (upgrade) {
        static const char conn[] = "Connection: upgrade\r\n";
        if (o + sizeof(conn) > cap)
            return KM_ELIMIT;
        memcpy(out + o, conn, sizeof(conn) - 1);
        o += sizeof(conn) - 1;
    }
    out[o] = '\0';
    return (long)o;
}

const char *
km_http1_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
