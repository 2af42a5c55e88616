/* HTTP/1.1 for the proxy engine: request heads with body framing, the request smuggling
 * vectors (each must be refused with the status the engine answers), response heads and their
 * framing, the incremental chunked decoder, and the hop-by-hop filtering header serializer. */
#include <km/common/http1.h>
#include <km/common/util.h>

#include "test.h"

static const struct km_http1_limits lim = {.max_head = 1024, .max_headers = 16,
                                           .max_body = 1000};

static int
head(const char *s, struct km_http1_request *req, int *st, char *err, size_t errlen)
{
    return km_http1_parse_request_head((const uint8_t *)s, strlen(s), &lim, req, st, err,
                                       errlen);
}

static void
ok_req(const char *s, enum km_http1_body framing, size_t cl)
{
    struct km_http1_request req;
    int st = 0;
    char err[160] = "";
    int r = head(s, &req, &st, err, sizeof(err));
    if (r != KM_HTTP1_DONE)
        KM_FAIL_AT("refused (%d, %d %s): %s", r, st, err, s);
    ASSERT_INT_EQ(req.framing, framing);
    ASSERT_INT_EQ(req.content_length, cl);
    ASSERT_INT_EQ(req.consumed, req.head_len);
}

static void
bad_req(const char *s, int want_status, const char *want_err)
{
    struct km_http1_request req;
    int st = 0;
    char err[160] = "";
    int r = head(s, &req, &st, err, sizeof(err));
    if (r != KM_HTTP1_ERROR)
        KM_FAIL_AT("accepted (%d): %s", r, s);
    if (st != want_status)
        KM_FAIL_AT("status %d (%s), want %d: %s", st, err, want_status, s);
    ASSERT_STR_CONTAINS(err, want_err);
}

KM_TEST(dp_http1_request_head_framing)
{
    struct km_http1_request req;
    int st;
    char err[160];
    /* the head only: the body is not waited for */
    const char *s = "POST /p?q=1 HTTP/1.1\r\nHost: svc:80\r\nContent-Length: 500\r\n"
                    "Expect: 100-continue\r\n\r\nab";
    ASSERT_INT_EQ(head(s, &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT_INT_EQ(req.framing, KM_HTTP1_BODY_LENGTH);
    ASSERT_INT_EQ(req.content_length, 500);
    ASSERT_INT_EQ(req.consumed, strlen(s) - 2);
    ASSERT(req.expect_continue);
    ASSERT(req.authority_len == 6 && memcmp(req.authority, "svc:80", 6) == 0);
    ASSERT(req.path_len == 6 && memcmp(req.path, "/p?q=1", 6) == 0);
    ok_req("GET / HTTP/1.1\r\nHost: h\r\n\r\n", KM_HTTP1_BODY_NONE, 0);
    ok_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", KM_HTTP1_BODY_NONE, 0);
    ok_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
           KM_HTTP1_BODY_CHUNKED, 0);
    /* transfer-coding names are case-insensitive and OWS is trimmed: these are plain chunked,
     * and the serializer re-frames them, so no peer can read them differently */
    ok_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n",
           KM_HTTP1_BODY_CHUNKED, 0);
    ok_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked \r\n\r\n",
           KM_HTTP1_BODY_CHUNKED, 0);
    ok_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  7 \r\n\r\n", KM_HTTP1_BODY_LENGTH, 7);
    /* the target forms */
    ASSERT_INT_EQ(head("GET http://Svc:8080/a/b?c HTTP/1.1\r\nHost: svc:8080\r\n\r\n", &req, &st,
                       err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT(req.authority_len == 8 && memcmp(req.authority, "Svc:8080", 8) == 0);
    ASSERT(req.path_len == 6 && memcmp(req.path, "/a/b?c", 6) == 0);
    ASSERT_INT_EQ(head("GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n", &req, &st, err,
                       sizeof(err)), KM_HTTP1_DONE);
    ASSERT(req.path_len == 1 && req.path[0] == '/');
    ASSERT_INT_EQ(head("CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n", &req, &st, err,
                       sizeof(err)), KM_HTTP1_DONE);
    ASSERT(req.authority_len == 7 && req.path_len == 0);
    ASSERT_INT_EQ(head("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &req, &st, err, sizeof(err)),
                  KM_HTTP1_DONE);
    ASSERT_INT_EQ(head("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                       "Upgrade: websocket\r\n\r\n", &req, &st, err, sizeof(err)),
                  KM_HTTP1_DONE);
    ASSERT(req.upgrade);
    ASSERT_INT_EQ(head("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", &req, &st,
                       err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT(!req.upgrade);
    ASSERT_INT_EQ(head("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", &req, &st, err, sizeof(err)),
                  KM_HTTP1_DONE);
    /* incomplete until the empty line */
    s = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    for (size_t i = 0; i < strlen(s); i++) {
        ASSERT_INT_EQ(km_http1_parse_request_head((const uint8_t *)s, i, &lim, &req, &st, err,
                                                  sizeof(err)), KM_HTTP1_INCOMPLETE);
        ASSERT(req.need > i);
    }
}

KM_TEST(dp_http1_smuggling_vectors)
{
    /* CL and TE together (CL.TE / TE.CL desync) */
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
            "\r\n", 400, "both content-length and transfer-encoding");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
            "\r\n", 400, "both content-length and transfer-encoding");
    /* TE obfuscation and other codings */
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 501,
            "only chunked");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400,
            "not the final coding");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
            "only chunked");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 501,
            "only chunked");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: chunked\r\n\r\n", 400, "chunked more than once");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 501,
            "only chunked");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", 400, "empty");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0b" "chunked\r\n\r\n", 400,
            "invalid character");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n", 400,
            "malformed header name");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n", 400,
            "malformed header name");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n", 400,
            "line folding");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n chunked\r\n\r\n", 400,
            "line folding");
    bad_req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0");
    /* Content-Length: duplicates, signs, spaces, hex, lists, overflow */
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", 400,
            "content-length: repeated");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", 400,
            "content-length: repeated");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +4\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1.0\r\n\r\n", 400, "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551617\r\n\r\n", 400,
            "invalid value");
    bad_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", 413, "over the limit");
    /* line endings and bytes */
    bad_req("GET / HTTP/1.1\nHost: h\n\n", 400, "bare LF");
    bad_req("GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n", 400, "bare LF");
    bad_req("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400, "bare CR");
    bad_req("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n", 400, "invalid character");
    /* request line */
    bad_req("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method");
    bad_req("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method");
    bad_req("GETGETGETGETGETGETGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method too long");
    bad_req("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400, "version");
    bad_req("GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "version");
    bad_req("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "version");
    bad_req("GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request target");
    bad_req("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, "only for OPTIONS");
    bad_req("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "host:port");
    bad_req("GET http://a@b/ HTTP/1.1\r\nHost: b\r\n\r\n", 400, "authority");
    /* Host: absolute-form with another Host, repeated, missing, malformed */
    bad_req("GET http://evil/ HTTP/1.1\r\nHost: good\r\n\r\n", 400, "does not match");
    bad_req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "host: repeated");
    bad_req("GET / HTTP/1.1\r\n\r\n", 400, "host: missing");
    bad_req("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "host: invalid");
    bad_req("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "host: invalid");
    bad_req("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400, "host: invalid");
    /* sizes */
    char big[2000];
    snprintf(big, sizeof(big), "GET /%01500d HTTP/1.1\r\nHost: h\r\n\r\n", 0);
    bad_req(big, 431, "larger than");
    bad_req("GET / HTTP/1.1\r\nHost: h\r\n1: a\r\n2: a\r\n3: a\r\n4: a\r\n5: a\r\n6: a\r\n7: a\r\n"
            "8: a\r\n9: a\r\n10: a\r\n11: a\r\n12: a\r\n13: a\r\n14: a\r\n15: a\r\n16: a\r\n\r\n",
            431, "more than 16 headers");
}

KM_TEST(dp_http1_request_nul_byte)
{
    static const char s[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
    struct km_http1_request req;
    int st;
    char err[160];
    ASSERT_INT_EQ(km_http1_parse_request_head((const uint8_t *)s, sizeof(s) - 1, &lim, &req, &st,
                                              err, sizeof(err)), KM_HTTP1_ERROR);
    ASSERT_INT_EQ(st, 400);
    ASSERT_STR_CONTAINS(err, "NUL");
}

/* --- responses ------------------------------------------------------------------------------ */

static int
resp(const char *s, unsigned flags, struct km_http1_response *r, int *st, char *err,
     size_t errlen)
{
    return km_http1_parse_response((const uint8_t *)s, strlen(s), &lim, flags, r, st, err,
                                   errlen);
}

static void
ok_resp(const char *s, unsigned flags, enum km_http1_body framing, bool keep_alive)
{
    struct km_http1_response r;
    int st;
    char err[160] = "";
    if (resp(s, flags, &r, &st, err, sizeof(err)) != KM_HTTP1_DONE)
        KM_FAIL_AT("refused (%d %s): %s", st, err, s);
    if (r.framing != framing || r.keep_alive != keep_alive)
        KM_FAIL_AT("framing %d keep-alive %d, want %d %d: %s", r.framing, r.keep_alive, framing,
                   keep_alive, s);
}

static void
bad_resp(const char *s, const char *want_err)
{
    struct km_http1_response r;
    int st = 0;
    char err[160] = "";
    if (resp(s, 0, &r, &st, err, sizeof(err)) != KM_HTTP1_ERROR)
        KM_FAIL_AT("accepted: %s", s);
    ASSERT_INT_EQ(st, 502);
    ASSERT_STR_CONTAINS(err, want_err);
}

KM_TEST(dp_http1_response_parsing_and_framing)
{
    struct km_http1_response r;
    int st;
    char err[160];
    const char *s = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
    ASSERT_INT_EQ(resp(s, 0, &r, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT_INT_EQ(r.status, 404);
    ASSERT(r.reason_len == 9 && memcmp(r.reason, "Not Found", 9) == 0);
    ASSERT_INT_EQ(r.framing, KM_HTTP1_BODY_LENGTH);
    ASSERT_INT_EQ(r.content_length, 3);
    ASSERT_INT_EQ(r.head_len, strlen(s) - 3);
    ASSERT(r.keep_alive);
    size_t vl;
    const char *v = km_http1_headers_get(r.headers, r.nheaders, "x-a", &vl);
    ASSERT(v && vl == 1 && v[0] == 'b');
    for (size_t i = 0; i < strlen(s) - 3; i++)
        ASSERT_INT_EQ(km_http1_parse_response((const uint8_t *)s, i, &lim, 0, &r, &st, err,
                                              sizeof(err)), KM_HTTP1_INCOMPLETE);

    ok_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, KM_HTTP1_BODY_CHUNKED,
            true);
    ok_resp("HTTP/1.1 200 OK\r\n\r\n", 0, KM_HTTP1_BODY_CLOSE, false);
    ok_resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0, KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 200 \r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 0,
            KM_HTTP1_BODY_LENGTH, true);
    ok_resp("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 0, KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
            KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 100 Continue\r\n\r\n", 0, KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", KM_HTTP1_REQ_HEAD,
            KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 0,
            KM_HTTP1_BODY_TUNNEL, false);
    ok_resp("HTTP/1.1 200 Connection established\r\n\r\n", KM_HTTP1_REQ_CONNECT,
            KM_HTTP1_BODY_TUNNEL, false);
    ok_resp("HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n", KM_HTTP1_REQ_CONNECT,
            KM_HTTP1_BODY_NONE, true);
    ok_resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", 0,
            KM_HTTP1_BODY_LENGTH, false);
    ok_resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", 0, KM_HTTP1_BODY_LENGTH, false);
    ok_resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", 0,
            KM_HTTP1_BODY_LENGTH, true);
    /* bodies are not limited by max_body (they stream) */
    ok_resp("HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", 0, KM_HTTP1_BODY_LENGTH,
            true);

    bad_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "repeated");
    bad_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
             "both");
    bad_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "only chunked");
    bad_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "only chunked");
    bad_resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0");
    bad_resp("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid value");
    bad_resp("HTTP/2.0 200 OK\r\n\r\n", "version");
    bad_resp("HTTP/1.1 20 OK\r\n\r\n", "status code");
    bad_resp("HTTP/1.1 099 OK\r\n\r\n", "status code");
    bad_resp("HTTP/1.1 2000 OK\r\n\r\n", "status code");
    bad_resp("HTTP/1.1 200 OK\nContent-Length: 1\n\n", "bare LF");
    bad_resp("HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", "folding");
    bad_resp("HTTP/1.1 200 O\x01K\r\n\r\n", "invalid character");
    bad_resp("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "header name");
    char big[1200];
    snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nX: %01100d\r\n\r\n", 0);
    bad_resp(big, "larger than");
}

/* --- chunked ---------------------------------------------------------------------------- */

/* Decodes <in> fed in pieces of <step> bytes (0 = all at once); returns the result and
 * appends the body to <body>. */
static int
dechunk(const char *in, size_t len, size_t step, uint64_t max_body, char *body, size_t *blen,
        size_t *used, int *st, char *err, size_t errlen)
{
    struct km_http1_chunked ck;
    km_http1_chunked_init(&ck, max_body, 64);
    size_t have = step ? 0 : len, pos = 0;
    *blen = 0;
    for (;;) {
        if (step && have < len && (have - pos) < step)
            have = have + step < len ? have + step : len;
        size_t c;
        const uint8_t *d;
        size_t dl;
        int r = km_http1_chunked_parse(&ck, (const uint8_t *)in + pos, have - pos, &c, &d, &dl,
                                       st, err, errlen);
        if (r == KM_HTTP1_ERROR)
            return r;
        if (dl)
            memcpy(body + *blen, d, dl);
        *blen += dl;
        pos += c;
        if (r == KM_HTTP1_DONE) {
            *used = pos;
            return r;
        }
        if (c == 0 && dl == 0 && have == len) {
            *used = pos;
            return KM_HTTP1_INCOMPLETE;
        }
    }
}

/* <extra>: bytes after the chunked body (the next message) */
static void
ok_chunked(const char *in, const char *want_body, size_t extra)
{
    size_t len = strlen(in), want_used = len - extra;
    for (size_t step = 0; step <= 3; step++) {
        char body[256];
        size_t blen, used;
        int st;
        char err[160] = "";
        int r = dechunk(in, len, step, 0, body, &blen, &used, &st, err, sizeof(err));
        if (r != KM_HTTP1_DONE)
            KM_FAIL_AT("step %zu: %d %s: %s", step, r, err, in);
        body[blen] = '\0';
        ASSERT_STR_EQ(body, want_body);
        ASSERT_INT_EQ(used, want_used);
    }
}

static void
bad_chunked_n(const char *in, size_t len, int want_status, const char *want_err)
{
    for (size_t step = 0; step <= 2; step++) {
        char body[4096];
        size_t blen, used;
        int st = 0;
        char err[160] = "";
        int r = dechunk(in, len, step, 100, body, &blen, &used, &st, err, sizeof(err));
        if (r != KM_HTTP1_ERROR)
            KM_FAIL_AT("step %zu: accepted (%d): %s", step, r, in);
        if (st != want_status || !strstr(err, want_err))
            KM_FAIL_AT("%d \"%s\", want %d \"%s\": %s", st, err, want_status, want_err, in);
    }
}

static void
bad_chunked(const char *in, int want_status, const char *want_err)
{
    bad_chunked_n(in, strlen(in), want_status, want_err);
}

KM_TEST(dp_http1_chunked_decoding)
{
    ok_chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", "hello world", 4);
    ok_chunked("A\r\n0123456789\r\n0\r\n\r\n", "0123456789", 0);
    ok_chunked("a;ext=1;q=\"x y\"\r\n0123456789\r\n000\r\n\r\nGET", "0123456789", 3);
    ok_chunked("3 ;e\r\nabc\r\n0\r\n\r\n", "abc", 0);
    ok_chunked("0\r\nX-Trailer: v\r\nChecksum: 1\r\n\r\n\r\n", "", 2);
    ok_chunked("0000000000000003\r\nabc\r\n0\r\n\r\n", "abc", 0);
    /* incomplete: nothing is lost across calls */
    struct km_http1_chunked ck;
    km_http1_chunked_init(&ck, 0, 0);
    size_t c, dl;
    const uint8_t *d;
    int st;
    char err[160];
    ASSERT_INT_EQ(km_http1_chunked_parse(&ck, (const uint8_t *)"5\r\nhe", 5, &c, &d, &dl, &st,
                                         err, sizeof(err)), KM_HTTP1_INCOMPLETE);
    ASSERT(c == 5 && dl == 2 && memcmp(d, "he", 2) == 0);
    ASSERT_INT_EQ(km_http1_chunked_parse(&ck, (const uint8_t *)"llo\r", 4, &c, &d, &dl, &st, err,
                                         sizeof(err)), KM_HTTP1_INCOMPLETE);
    ASSERT(c == 3 && dl == 3);
    ASSERT_INT_EQ(km_http1_chunked_parse(&ck, (const uint8_t *)"\r\n0\r\n\r", 6, &c, &d, &dl,
                                         &st, err, sizeof(err)), KM_HTTP1_INCOMPLETE);
    ASSERT(c == 6 && dl == 0);
    ASSERT_INT_EQ(km_http1_chunked_parse(&ck, (const uint8_t *)"\nX", 2, &c, &d, &dl, &st, err,
                                         sizeof(err)), KM_HTTP1_DONE);
    ASSERT_INT_EQ(c, 1);
    ASSERT_INT_EQ(ck.total, 5);
}

KM_TEST(dp_http1_chunked_smuggling_vectors)
{
    bad_chunked("0x5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked(" 5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("\t5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("5 \r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("-5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("+5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("5g\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size");
    bad_chunked("10000000000000000\r\n", 400, "too large");
    bad_chunked("ffffffffffffffff\r\n", 413, "larger than 100");
    bad_chunked("65\r\n", 413, "larger than 100");
    bad_chunked("50\r\n" "01234567890123456789012345678901234567890123456789012345678901234567"
                "890123456789\r\n50\r\n", 413, "larger than 100");
    bad_chunked("5\nhello\r\n0\r\n\r\n", 400, "CRLF");
    bad_chunked("5\r\rhello\r\n0\r\n\r\n", 400, "CRLF");
    bad_chunked("5\r\nhello\n0\r\n\r\n", 400, "CRLF");
    bad_chunked("5\r\nhelloX\r\n0\r\n\r\n", 400, "not followed by CRLF");
    bad_chunked("5\r\nhello\r\n0\n\n", 400, "CRLF");
    bad_chunked("5\r\nhello\r\n0\r\n\n", 400, "CRLF");
    bad_chunked("5;a\x01\r\nhello\r\n0\r\n\r\n", 400, "chunk extension");
    static const char nul_ext[] = "5;a\0b\r\nhello\r\n0\r\n\r\n";
    bad_chunked_n(nul_ext, sizeof(nul_ext) - 1, 400, "chunk extension");
    static const char nul_size[] = "5\0\r\nhello\r\n0\r\n\r\n";
    bad_chunked_n(nul_size, sizeof(nul_size) - 1, 400, "invalid chunk size");
    static const char nul_trailer[] = "0\r\nX: a\0\r\n\r\n";
    bad_chunked_n(nul_trailer, sizeof(nul_trailer) - 1, 400, "invalid character");
    bad_chunked("0\r\nBad Name: x\r\n\r\n", 400, "trailer field name");
    bad_chunked("0\r\n folded\r\n\r\n", 400, "folding");
    bad_chunked("0\r\nX: a\nY: b\r\n\r\n", 400, "CRLF");
    bad_chunked("0\r\nX: " "0123456789012345678901234567890123456789012345678901234567890123456789"
                "\r\n\r\n", 400, "trailers larger than 64");
    /* an extension longer than 4 KiB */
    char ext[5000];
    memset(ext, 'e', sizeof(ext));
    memcpy(ext, "1;", 2);
    ext[sizeof(ext) - 1] = '\0';
    bad_chunked(ext, 400, "extension too long");
}

KM_TEST(dp_http1_chunk_head)
{
    char b[19];
    ASSERT_INT_EQ(km_http1_chunk_head(b, 0), 3);
    ASSERT_STR_EQ(b, "0\r\n");
    km_http1_chunk_head(b, 0x1a2b);
    ASSERT_STR_EQ(b, "1a2b\r\n");
    ASSERT_INT_EQ(km_http1_chunk_head(b, UINT64_MAX), 18);
    ASSERT_STR_EQ(b, "ffffffffffffffff\r\n");
}

/* --- forwarding ------------------------------------------------------------------------- */

KM_TEST(dp_http1_serialize_drops_hop_by_hop)
{
    struct km_http1_request req;
    int st;
    char err[160];
    const char *s = "POST / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret, host, "
                    "Content-Length\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n"
                    "TE: trailers\r\nTrailer: X-Sum\r\nX-Secret: 1\r\nX-Keep: 2\r\n"
                    "Upgrade: h2c\r\nContent-Length: 3\r\nX-Forwarded-For: spoofed\r\n\r\n";
    ASSERT_INT_EQ(head(s, &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    char out[512];
    const char *const drop[] = {"x-forwarded-for", NULL};
    long n = km_http1_serialize_headers(req.headers, req.nheaders, 0, drop, out, sizeof(out));
    ASSERT_STR_EQ(out, "Host: svc\r\nX-Keep: 2\r\nContent-Length: 3\r\n");
    ASSERT_INT_EQ(n, strlen(out));
    /* too small: an error, never a truncated head */
    ASSERT_INT_EQ(km_http1_serialize_headers(req.headers, req.nheaders, 0, drop, out, 20),
                  KM_ELIMIT);

    s = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    ASSERT_INT_EQ(head(s, &req, &st, err, sizeof(err)), KM_HTTP1_DONE);
    ASSERT(req.upgrade);
    n = km_http1_serialize_headers(req.headers, req.nheaders, KM_HTTP1_FWD_KEEP_UPGRADE, NULL,
                                   out, sizeof(out));
    ASSERT_STR_EQ(out, "Host: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n");
    n = km_http1_serialize_headers(req.headers, req.nheaders, 0, NULL, out, sizeof(out));
    ASSERT_STR_EQ(out, "Host: h\r\n");
    ASSERT(n > 0);
}
