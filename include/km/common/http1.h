/* A small strict HTTP/1.1 request parser for hostile input (kuma-cp's DP server: POST
 * /bootstrap). It parses a complete request from a buffer without copying: the caller keeps
 * the bytes and calls again with more when the answer is KM_HTTP1_INCOMPLETE.
 *
 * Strict: CRLF line endings only, no obs-fold, no whitespace before ':', token method and
 * header names, visible-ASCII request target, HTTP/1.0 or HTTP/1.1 only, one Host for 1.1,
 * bounded head size and header count, one Content-Length of digits only, Content-Length with
 * Transfer-Encoding refused, no transfer codings (chunked answers 501: send Content-Length). */
#ifndef KM_COMMON_HTTP1_H
#define KM_COMMON_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KM_HTTP1_MAX_HEADERS 64

enum {
    KM_HTTP1_ERROR = -1,     /* malformed: answer <status> with <err> and close */
    KM_HTTP1_INCOMPLETE = 0, /* more bytes needed (at least <need> in total) */
    KM_HTTP1_DONE = 1,       /* a complete request occupies the first <consumed> bytes */
};

struct km_http1_header {
    const char *name; /* borrowed (from the input), not NUL terminated */
    size_t name_len;
    const char *value; /* borrowed (from the input), trimmed, not NUL terminated */
    size_t value_len;
};

struct km_http1_request {
    const char *method; /* borrowed (from the input) */
    size_t method_len;
    const char *target; /* borrowed (from the input) */
    size_t target_len;
    int minor_version; /* HTTP/1.<minor_version> */
    struct km_http1_header headers[KM_HTTP1_MAX_HEADERS];
    size_t nheaders;
    bool keep_alive;      /* the connection may serve another request after this one */
    size_t head_len;      /* request line + headers + empty line */
    size_t content_length;
    const uint8_t *body;  /* borrowed (from the input) */
    size_t body_len;
    size_t consumed;      /* head_len + body_len when DONE */
    size_t need;          /* INCOMPLETE: total input length worth calling again with */
};

struct km_http1_limits {
    size_t max_head;    /* 0 = 16 KiB */
    size_t max_headers; /* 0 (or above KM_HTTP1_MAX_HEADERS) = KM_HTTP1_MAX_HEADERS */
    size_t max_body;    /* 0 = 1 MiB */
};

/* Parses the request at the start of buf[0..len). Returns KM_HTTP1_DONE, KM_HTTP1_INCOMPLETE,
 * or KM_HTTP1_ERROR with *status (400, 413, 431, 501, 505) and a short message in <err>.
 * <lim> may be NULL for the defaults. */
int km_http1_parse_request(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                           struct km_http1_request *req, int *status, char *err, size_t errlen);

/* The value of the first header named <name> (case-insensitive), or NULL; sets *len. */
const char *km_http1_header_get(const struct km_http1_request *req, const char *name,
                                size_t *len);

/* Standard reason phrase for a status code ("OK", "Bad Request", ...; "Unknown" otherwise). */
const char *km_http1_reason(int status);

#endif
