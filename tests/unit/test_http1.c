/* Strict HTTP/1.1 request parser: complete and partial requests, limits, and the ambiguous
 * or malformed shapes it must refuse. */
#include <km/common/http1.h>

#include "test.h"

static int
parse(const char *s, struct km_http1_request *req, int *status, char *err, size_t errlen)
{
    struct km_http1_limits lim = {.max_head = 512, .max_headers = 8, .max_body = 64};
    return km_http1_parse_request((const uint8_t *)s, strlen(s), &lim, req, status, err, errlen);
}

KM_TEST(http1_parses_post_with_body)
{
    struct km_http1_request req;
    int st;
    char err[128];
    const char *s = "\r\nPOST /bootstrap?x=1 HTTP/1.1\r\nHost: cp:5678\r\nContent-Type:  "
                    "application/json \r\nContent-Length: 7\r\n\r\n{\"a\":1}NEXT";
    ASSERT_INT_EQ(parse(s, &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT_INT_EQ(req.method_len, 4);
    ASSERT(memcmp(req.method, "POST", 4) == 0);
    ASSERT_INT_EQ(req.target_len, 14);
    ASSERT(memcmp(req.target, "/bootstrap?x=1", 14) == 0);
    ASSERT_INT_EQ(req.minor_version, 1);
    ASSERT(req.keep_alive);
    size_t vl;
    const char *v = km_http1_header_get(&req, "CONTENT-TYPE", &vl);
    ASSERT(v && vl == 16 && memcmp(v, "application/json", 16) == 0);
    ASSERT_INT_EQ(req.body_len, 7);
    ASSERT(memcmp(req.body, "{\"a\":1}", 7) == 0);
    ASSERT_INT_EQ(req.consumed, strlen(s) - 4);
}

KM_TEST(http1_incomplete_until_the_last_byte)
{
    const char *s = "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    size_t n = strlen(s);
    struct km_http1_request req;
    int st;
    char err[128];
    for (size_t i = 0; i < n; i++) {
        int r = km_http1_parse_request((const uint8_t *)s, i, NULL, &req, &st, err, sizeof(err));
        ASSERT_INT_EQ(r, KM_HTTP1_INCOMPLETE);
        ASSERT(req.need > i);
    }
    ASSERT_INT_EQ(km_http1_parse_request((const uint8_t *)s, n, NULL, &req, &st, err,
                                         sizeof(err)), KM_HTTP1_DONE);
}

KM_TEST(http1_connection_semantics)
{
    struct km_http1_request req;
    int st;
    char err[128];
    ASSERT_INT_EQ(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
                        &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT(!req.keep_alive);
    ASSERT_INT_EQ(parse("GET / HTTP/1.0\r\n\r\n", &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT(!req.keep_alive);
    ASSERT_INT_EQ(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &req, &st, err,
                        sizeof(err)), KM_HTTP1_DONE);
    ASSERT(req.keep_alive);
}

static void
bad(const char *s, int want_status, const char *want_err)
{
    struct km_http1_request req;
    int st = 0;
    char err[128];
    int r = parse(s, &req, &st, err, sizeof(err));
    if (r != KM_HTTP1_ERROR)
        KM_FAIL_AT("accepted (%d): %s", r, s);
    ASSERT_INT_EQ(st, want_status);
    ASSERT_STR_CONTAINS(err, want_err);
}

KM_TEST(http1_rejects_malformed_and_ambiguous)
{
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400,
        "content-length: repeated");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400, "both content-length and transfer-encoding");
    bad("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
        "transfer-encoding");
    bad("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400, "invalid value");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", 400, "invalid value");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400, "invalid value");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400,
        "invalid value");
    bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n", 413, "over the limit");
    bad("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "malformed header name");
    bad("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400, "line folding");
    bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "host: repeated");
    bad("GET / HTTP/1.1\r\n\r\n", 400, "host: missing");
    bad("GET / HTTP/1.1\nHost: h\n\n", 400, "bare LF");
    bad("GET / HTTP/1.1\rHost: h\r\n\r\n", 400, "bare CR");
    bad("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request target");
    bad("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "version");
    bad("GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400, "version");
    bad("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method");
    bad("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request target");
    bad("GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n", 400, "invalid character");
    bad(" / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method");
    bad("GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\n"
        "Host: h\r\n\r\n", 431, "headers");
}

KM_TEST(http1_rejects_nul)
{
    static const char s[] = "GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n";
    struct km_http1_request req;
    int st;
    char err[128];
    ASSERT_INT_EQ(km_http1_parse_request((const uint8_t *)s, sizeof(s) - 1, NULL, &req, &st, err,
                                         sizeof(err)), KM_HTTP1_ERROR);
    ASSERT_INT_EQ(st, 400);
    ASSERT_STR_CONTAINS(err, "NUL");
}

KM_TEST(http1_head_size_limit)
{
    char big[700];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "GET /", 5);
    bad(big, 431, "larger than");
}
