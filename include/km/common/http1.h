/* A small strict HTTP/1.1 parser for hostile input: kuma-cp's DP server (POST /bootstrap,
 * complete requests with km_http1_parse_request) and kuma-dp's proxy engine (request and
 * response heads, body framing per RFC 9112 section 6, an incremental chunked decoder and a
 * header serializer that drops hop-by-hop fields). Parsers never allocate and return slices of
 * their input: the caller keeps the bytes and calls again with more when the answer is
 * KM_HTTP1_INCOMPLETE.
 *
 * Strict: CRLF line endings only, no obs-fold, no whitespace before ':', token method and
 * header names, visible-ASCII request target, HTTP/1.0 or HTTP/1.1 only, one Host for 1.1,
 * bounded head size and header count, one Content-Length of digits only, Content-Length with
 * Transfer-Encoding refused, no transfer codings in km_http1_parse_request (chunked answers
 * 501: send Content-Length); km_http1_parse_request_head accepts exactly "chunked" (any case)
 * as the only coding. Both check the request-target form (origin, absolute, authority for
 * CONNECT, "*" for OPTIONS), the Host syntax, and that an absolute-form target's authority is
 * the Host. */
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

/* How the message body is delimited (RFC 9112 section 6). */
enum km_http1_body {
    KM_HTTP1_BODY_NONE = 0, /* no body */
    KM_HTTP1_BODY_LENGTH,   /* content_length bytes (> 0) */
    KM_HTTP1_BODY_CHUNKED,  /* chunked: feed it to km_http1_chunked_parse */
    KM_HTTP1_BODY_CLOSE,    /* response: until the server closes the connection */
    KM_HTTP1_BODY_TUNNEL,   /* response: 101, or 2xx to CONNECT: bytes both ways from here */
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
    /* also filled by both request parsers: */
    enum km_http1_body framing; /* NONE, LENGTH or CHUNKED */
    const char *authority;    /* borrowed: absolute-form authority, else Host (may be NULL) */
    size_t authority_len;
    const char *path;         /* borrowed: origin-form target; for absolute-form its path
                                 ("/" when empty, then pointing at a static "/"); "*"; for
                                 CONNECT (authority-form) empty */
    size_t path_len;
    bool upgrade;             /* an Upgrade header and "upgrade" in Connection */
    bool expect_continue;     /* Expect: 100-continue */
};

struct km_http1_response {
    int status;               /* 100..999 */
    int minor_version;
    const char *reason;       /* borrowed, may be empty */
    size_t reason_len;
    struct km_http1_header headers[KM_HTTP1_MAX_HEADERS];
    size_t nheaders;
    bool keep_alive;          /* the connection may carry another request after this body */
    enum km_http1_body framing;
    size_t content_length;    /* framing == LENGTH */
    size_t head_len;          /* DONE: the head occupies the first head_len bytes */
    size_t need;              /* INCOMPLETE: total input length worth calling again with */
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

/* Parses only the head of the request at the start of buf[0..len) for a proxy: the body is
 * not waited for; req->framing tells its framing (a chunked body is allowed, "chunked" being the
 * only coding: other codings answer 501, chunked twice or not last 400, with Content-Length
 * or in HTTP/1.0 400) and req->consumed == req->head_len. Content-Length over lim->max_body
 * answers 413 (a chunked body's limit is the decoder's). Errors: *status 400, 413, 431, 501
 * or 505 with a message naming the part ("headers.content-length: repeated"). */
int km_http1_parse_request_head(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                                struct km_http1_request *req, int *status, char *err,
                                size_t errlen);

/* Request properties the response framing depends on (km_http1_parse_response). */
#define KM_HTTP1_REQ_HEAD    0x1u /* the request was HEAD: no body whatever the headers say */
#define KM_HTTP1_REQ_CONNECT 0x2u /* the request was CONNECT: a 2xx starts a tunnel */

/* Parses the head of a response (from an upstream) at the start of buf[0..len), with the
 * same strictness and head limits as requests (lim->max_body is not applied: response bodies
 * stream). Framing per RFC 9112 6.3: none for HEAD, 1xx (101: tunnel), 204 and 304; a tunnel
 * for 2xx to CONNECT; chunked; Content-Length; else until close (keep_alive false).
 * Transfer-Encoding with Content-Length, in HTTP/1.0, or with any coding but a lone chunked is
 * refused, as are differing repeated Content-Lengths (identical ones are accepted). A 1xx
 * other than 101 is followed by the real response: parse again after head_len. Errors set
 * *status 502 (the engine's answer downstream). */
int km_http1_parse_response(const uint8_t *buf, size_t len, const struct km_http1_limits *lim,
                            unsigned req_flags, struct km_http1_response *resp, int *status,
                            char *err, size_t errlen);

/* Incremental chunked body decoder (RFC 9112 7.1): strict hex sizes (at most 16 digits, no
 * sign, no "0x", no whitespace before the size), extensions checked for control bytes and
 * ignored (size line at most 4 KiB), CRLF only, trailer fields validated like headers,
 * bounded and dropped. The body's total size is bounded too. */
struct km_http1_chunked {
    int state;
    uint64_t remaining;  /* data bytes left in the current chunk */
    uint64_t total;      /* decoded body bytes so far */
    uint64_t max_body;   /* 0 = unlimited */
    size_t line_len;     /* bytes of the current size or trailer line */
    size_t digits;       /* hex digits of the current size */
    size_t trailer_len;  /* trailer bytes so far */
    size_t max_trailer;
    size_t ntrailers;
};
/* <max_body> bounds the decoded body (0 = unlimited), <max_trailer> the trailer section in
 * bytes (0 = 8 KiB). */
void km_http1_chunked_init(struct km_http1_chunked *ck, uint64_t max_body, size_t max_trailer);
/* Decodes from buf[0..len): consumes framing bytes and at most one run of body bytes, which it
 * returns in *data / *data_len (a slice of buf, possibly empty; *data is never NULL), and sets
 * *consumed. Returns
 * KM_HTTP1_DONE when the last chunk and the trailers are complete (bytes after *consumed
 * belong to the next message), KM_HTTP1_INCOMPLETE otherwise: call again with
 * buf + *consumed (more input is needed when *consumed == len), or KM_HTTP1_ERROR with
 * *status 400 (malformed) or 413 (over max_body) and a message; from a response the engine
 * answers 502. */
int km_http1_chunked_parse(struct km_http1_chunked *ck, const uint8_t *buf, size_t len,
                           size_t *consumed, const uint8_t **data, size_t *data_len,
                           int *status, char *err, size_t errlen);
/* Writes the head of a chunk of <len> bytes ("1a\r\n") into <out> (room for 19 bytes) and
 * returns its length; the chunk's data is followed by "\r\n"; the last chunk is "0\r\n\r\n". */
size_t km_http1_chunk_head(char out[19], uint64_t len);

/* Header serializer for forwarding: flags */
#define KM_HTTP1_FWD_KEEP_UPGRADE 0x1u /* keep Upgrade and send "Connection: upgrade" */

/* Writes "Name: value\r\n" for each of <h>[0..n) that may be forwarded, into <out> (room
 * <cap>), NUL terminated. Dropped: hop-by-hop fields (Connection and every field it lists,
 * Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade unless KM_HTTP1_FWD_KEEP_UPGRADE),
 * Transfer-Encoding (the engine re-frames bodies and writes its own), and the names in the
 * NULL-terminated list <drop> (may be NULL: fields the engine rewrites, such as host).
 * Connection can never remove Host or Content-Length. Returns the length written, or
 * KM_ELIMIT when <cap> is too small (nothing usable written). */
long km_http1_serialize_headers(const struct km_http1_header *h, size_t n, unsigned flags,
                                const char *const *drop, char *out, size_t cap);

/* The value of the first header named <name> (case-insensitive), or NULL; sets *len. */
const char *km_http1_header_get(const struct km_http1_request *req, const char *name,
                                size_t *len);
/* The same over a header array (responses, trailers). */
const char *km_http1_headers_get(const struct km_http1_header *h, size_t n, const char *name,
                                 size_t *len);

/* Standard reason phrase for a status code ("OK", "Bad Request", ...; "Unknown" otherwise). */
const char *km_http1_reason(int status);

#endif
