/* libFuzzer target: the strict HTTP/1.1 request parser on arbitrary bytes. Checks that it
 * never crashes or reads out of bounds, that a DONE answer is self-consistent, and that
 * feeding any prefix of a complete request never yields a different complete request. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/http1.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
