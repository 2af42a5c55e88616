/* Strict HTTP/1.1 request parser (see http1.h for the rules). One linear pass over the head
 * locates its end and rejects stray CR, LF and NUL bytes before any field is looked at. */
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
km_http1_header_get(const struct km_http1_request *req, const char *name, size_t *len)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (http1_eq(req->headers[i].name, req->headers[i].name_len, name)) {
            if (len)
                *len = req->headers[i].value_len;
            return req->headers[i].value;
        }
    }
    return NULL;
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
http1_parse_header(const char *p, size_t n, struct km_http1_header *h, int *status, char *err,
                   size_t errlen)
{
    if (n > 0 && (p[0] == ' ' || p[0] == '\t'))
        return http1_fail(status, 400, err, errlen, "headers: obsolete line folding");
    size_t i = 0;
    while (i < n && http1_is_tchar((uint8_t)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ':')
        return http1_fail(status, 400, err, errlen, "headers: malformed header name");
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
            return http1_fail(status, 400, err, errlen, "headers.%.*s: invalid character",
                              (int)(h->name_len > 64 ? 64 : h->name_len), h->name);
    }
    h->value = p + i;
    h->value_len = e - i;
    return 0;
}

int
km_http1_parse_request(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                       struct km_http1_request *req, int *status, char *err, size_t errlen)
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

    /* find the end of the head, refusing bare CR, bare LF and NUL on the way */
    size_t end = 0, scan = len < max_head ? len : max_head;
    for (size_t i = start; i < scan; i++) {
        uint8_t c = buf[i];
        if (c == '\0')
            return http1_fail(status, 400, err, errlen, "request head: NUL byte");
        if (c == '\n')
            return http1_fail(status, 400, err, errlen, "request head: bare LF");
        if (c != '\r')
            continue;
        if (i + 1 >= len)
            break; /* need the next byte */
        if (buf[i + 1] != '\n')
            return http1_fail(status, 400, err, errlen, "request head: bare CR");
        if (i + 3 < len && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            end = i + 4;
            break;
        }
        if (i + 2 < len && buf[i + 2] == '\r' && i + 3 >= len)
            break; /* need the byte after CR */
        i++; /* skip LF */
    }
    if (end == 0 || end > max_head) {
        if (len >= max_head)
            return http1_fail(status, 431, err, errlen, "request head larger than %zu bytes",
                              max_head);
        req->need = len + 1;
        return KM_HTTP1_INCOMPLETE;
    }
    req->head_len = end;

    /* lines */
    size_t pos = start;
    bool first = true;
    bool have_cl = false, have_te = false, have_host = false, conn_close = false,
         conn_keep = false;
    while (pos < end - 2) {
        const char *nl = memchr(s + pos, '\r', end - pos);
        size_t n = (size_t)(nl - (s + pos));
        if (first) {
            if (http1_parse_line0(s + pos, n, req, status, err, errlen) < 0)
                return KM_HTTP1_ERROR;
            first = false;
        } else {
            if (req->nheaders >= max_headers)
                return http1_fail(status, 431, err, errlen, "more than %zu headers", max_headers);
            struct km_http1_header *h = &req->headers[req->nheaders];
            if (http1_parse_header(s + pos, n, h, status, err, errlen) < 0)
                return KM_HTTP1_ERROR;
            req->nheaders++;
            if (http1_eq(h->name, h->name_len, "content-length")) {
                if (have_cl)
                    return http1_fail(status, 400, err, errlen,
                                      "headers.content-length: repeated");
                have_cl = true;
                if (h->value_len == 0 || h->value_len > 15)
                    return http1_fail(status, 400, err, errlen,
                                      "headers.content-length: invalid value");
                size_t v = 0;
                for (size_t k = 0; k < h->value_len; k++) {
                    if (h->value[k] < '0' || h->value[k] > '9')
                        return http1_fail(status, 400, err, errlen,
                                          "headers.content-length: invalid value");
                    v = v * 10 + (size_t)(h->value[k] - '0');
                }
                req->content_length = v;
            } else if (http1_eq(h->name, h->name_len, "transfer-encoding")) {
                have_te = true;
            } else if (http1_eq(h->name, h->name_len, "host")) {
                if (have_host)
                    return http1_fail(status, 400, err, errlen, "headers.host: repeated");
                have_host = true;
            } else if (http1_eq(h->name, h->name_len, "connection")) {
                if (http1_list_has(h->value, h->value_len, "close"))
                    conn_close = true;
                if (http1_list_has(h->value, h->value_len, "keep-alive"))
                    conn_keep = true;
            }
        }
        pos += n + 2;
    }
    if (first)
        return http1_fail(status, 400, err, errlen, "request line: missing");
    if (have_te && have_cl)
        return http1_fail(status, 400, err, errlen,
                          "headers: both content-length and transfer-encoding");
    if (have_te) {
        if (req->minor_version == 0)
            return http1_fail(status, 400, err, errlen,
                              "headers.transfer-encoding: not allowed in HTTP/1.0");
        return http1_fail(status, 501, err, errlen,
                          "headers.transfer-encoding: not supported, send content-length");
    }
    if (req->minor_version == 1 && !have_host)
        return http1_fail(status, 400, err, errlen, "headers.host: missing");
    if (req->content_length > max_body)
        return http1_fail(status, 413, err, errlen,
                          "body: content-length %zu is over the limit of %zu bytes",
                          req->content_length, max_body);
    req->keep_alive = req->minor_version == 1 ? !conn_close : (conn_keep && !conn_close);
    if (len - end < req->content_length) {
        req->need = end + req->content_length;
        return KM_HTTP1_INCOMPLETE;
    }
    req->body = buf + end;
    req->body_len = req->content_length;
    req->consumed = end + req->content_length;
    return KM_HTTP1_DONE;
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
