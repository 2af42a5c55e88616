/* libFuzzer target: the strict HTTP/1.1 parsers on arbitrary bytes: the complete-request
 * parser, the proxy's request head parser (and re-parsing what the forwarding serializer
 * writes from it), the response head parser and the chunked decoder (fed all at once and
 * byte by byte, which must agree). Checks that nothing crashes or reads out of bounds, that
 * DONE answers are self-consistent, and that a prefix of a complete request is never
 * complete. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/http1.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
within(const uint8_t *buf, size_t size, const char *p, size_t n)
{
    return (const uint8_t *)p >= buf && (const uint8_t *)p + n <= buf + size;
}

static void
fuzz_request_head(const uint8_t *buf, size_t size, const struct km_http1_limits *lim)
{
    struct km_http1_request req;
    int status;
    char err[128];
    int r = km_http1_parse_request_head(buf, size, lim, &req, &status, err, sizeof(err));
    if (r == KM_HTTP1_ERROR) {
        if (status < 400 || status > 599 || err[0] == '\0')
            abort();
        return;
    }
    if (r == KM_HTTP1_INCOMPLETE) {
        if (req.need <= size)
            abort();
        return;
    }
    if (r != KM_HTTP1_DONE || req.consumed != req.head_len || req.head_len > size ||
        req.framing > KM_HTTP1_BODY_CHUNKED ||
        (req.framing == KM_HTTP1_BODY_LENGTH && req.content_length == 0) ||
        req.content_length > lim->max_body)
        abort();
    if (req.authority && !within(buf, size, req.authority, req.authority_len))
        abort();
    if (!req.path || (req.path_len > 1 && !within(buf, size, req.path, req.path_len)))
        abort();
    /* what we forward parses again, without hop-by-hop fields */
    size_t cap = size + 64;
    char *out = malloc(cap + 32);
    long n = km_http1_serialize_headers(req.headers, req.nheaders, 0, NULL, out + 16, cap);
    if (n < 0 || (size_t)n >= cap)
        abort();
    memcpy(out, req.minor_version ? "GET / HTTP/1.1\r\n" : "GET / HTTP/1.0\r\n", 16);
    memcpy(out + 16 + n, "\r\n", 2);
    struct km_http1_request again;
    if (km_http1_parse_request_head((const uint8_t *)out, 16 + (size_t)n + 2, lim, &again,
                                    &status, err, sizeof(err)) != KM_HTTP1_DONE)
        abort();
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", "transfer-encoding", "upgrade"};
    for (size_t k = 0; k < sizeof(hop) / sizeof(hop[0]); k++)
        if (km_http1_header_get(&again, hop[k], NULL))
            abort();
    free(out);
}

static void
fuzz_response(const uint8_t *buf, size_t size, const struct km_http1_limits *lim)
{
    struct km_http1_response resp;
    int status;
    char err[128];
    unsigned flags = size ? buf[size - 1] & 3u : 0;
    int r = km_http1_parse_response(buf, size, lim, flags, &resp, &status, err, sizeof(err));
    if (r == KM_HTTP1_ERROR) {
        if (status != 502 || err[0] == '\0')
            abort();
    } else if (r == KM_HTTP1_INCOMPLETE) {
        if (resp.need <= size)
            abort();
    } else if (r == KM_HTTP1_DONE) {
        if (resp.head_len > size || resp.status < 100 || resp.status > 999 ||
            resp.nheaders > lim->max_headers || resp.framing > KM_HTTP1_BODY_TUNNEL ||
            (resp.framing == KM_HTTP1_BODY_CLOSE && resp.keep_alive))
            abort();
    } else {
        abort();
    }
}

/* decodes buf[0..size) fed <step> bytes at a time (0 = all); the body goes to <body> */
static int
dechunk(const uint8_t *buf, size_t size, size_t step, uint8_t *body, size_t *blen, size_t *used)
{
    struct km_http1_chunked ck;
    km_http1_chunked_init(&ck, 1u << 20, 256);
    size_t have = step ? 0 : size, pos = 0;
    *blen = 0;
    for (;;) {
        if (step && have < size && have - pos < step)
            have = have + step < size ? have + step : size;
        size_t c, dl;
        const uint8_t *d;
        int status;
        char err[128];
        int r = km_http1_chunked_parse(&ck, buf + pos, have - pos, &c, &d, &dl, &status, err,
                                       sizeof(err));
        if (r == KM_HTTP1_ERROR) {
            if ((status != 400 && status != 413) || err[0] == '\0')
                abort();
            return r;
        }
        if (c > have - pos || (dl && (d < buf + pos || d + dl > buf + pos + c)))
            abort();
        if (dl)
            memcpy(body + *blen, d, dl);
        *blen += dl;
        pos += c;
        *used = pos;
        if (r == KM_HTTP1_DONE)
            return r;
        if (c == 0 && dl == 0 && have == size)
            return r;
    }
}

static void
fuzz_chunked(const uint8_t *buf, size_t size)
{
    uint8_t *b1 = malloc(size + 1), *b2 = malloc(size + 1);
    size_t l1, l2, u1 = 0, u2 = 0;
    int r1 = dechunk(buf, size, 0, b1, &l1, &u1);
    int r2 = dechunk(buf, size, 1, b2, &l2, &u2);
    /* the same verdict in one piece or byte by byte; the same body and end when complete */
    if (r1 != r2)
        abort();
    if (r1 != KM_HTTP1_ERROR && (l1 != l2 || memcmp(b1, b2, l1) != 0 || u1 != u2))
        abort();
    free(b1);
    free(b2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct km_http1_limits lim = {.max_head = 4096, .max_headers = 32, .max_body = 8192};
    struct km_http1_request req;
    int status;
    char err[128];
    /* a private copy so that any read past <size> hits ASan's redzone */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    int r = km_http1_parse_request(buf, size, &lim, &req, &status, err, sizeof(err));
    if (r == KM_HTTP1_DONE) {
        if (req.consumed > size || req.head_len + req.body_len != req.consumed ||
            req.body_len != req.content_length || req.body_len > lim.max_body ||
            req.head_len > lim.max_head + 4 || req.nheaders > lim.max_headers)
            abort();
        for (size_t i = 0; i < req.nheaders; i++)
            if (req.headers[i].name_len == 0)
                abort();
        /* the prefix one byte short of the request is never complete */
        struct km_http1_request r2;
        if (req.consumed > 0 &&
            km_http1_parse_request(buf, req.consumed - 1, &lim, &r2, &status, err,
                                   sizeof(err)) == KM_HTTP1_DONE)
            abort();
    } else if (r == KM_HTTP1_ERROR) {
        if (status < 400 || status > 599 || err[0] == '\0')
            abort();
    } else if (r == KM_HTTP1_INCOMPLETE) {
        if (req.need <= size)
            abort();
    } else {
        abort();
    }
    fuzz_request_head(buf, size, &lim);
    fuzz_response(buf, size, &lim);
    fuzz_chunked(buf, size);
    free(buf);
    return 0;
}

#ifdef KM_FUZZ_REPLAY
int
main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f)
            continue;
        static uint8_t buf[1 << 20];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
    }
    return 0;
}
#endif
