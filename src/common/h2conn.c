/* Plumbing shared by the gRPC server and client: byte queue, socket/TLS transport, gRPC
 * message framing and reassembly, grpc-message percent-encoding, server TLS context. */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/h2conn.h>
#include <km/common/loop.h>
#include <km/common/util.h>

#define BQ_KEEP_CAP 4096 /* an empty queue keeps at most this much memory */

/* ---- byte queue ---- */

void
km_bq_push(struct km_bq *q, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (q->off + q->len + n > q->cap) {
        if (q->off > 0) {
            memmove(q->buf, q->buf + q->off, q->len);
            q->off = 0;
        }
        if (q->len + n > q->cap) {
            size_t cap = q->cap ? q->cap : 256;
            while (cap < q->len + n)
                cap *= 2;
            q->buf = km_xrealloc(q->buf, cap);
            q->cap = cap;
        }
    }
    memcpy(q->buf + q->off + q->len, p, n);
    q->len += n;
}

size_t
km_bq_pop(struct km_bq *q, void *dst, size_t n)
{
    if (n > q->len)
        n = q->len;
    if (dst && n)
        memcpy(dst, q->buf + q->off, n);
    q->off += n;
    q->len -= n;
    if (q->len == 0) {
        q->off = 0;
        if (q->cap > BQ_KEEP_CAP) {
            KM_FREE(q->buf);
            q->cap = 0;
        }
    }
    return n;
}

void
km_bq_deinit(struct km_bq *q)
{
    free(q->buf);
    memset(q, 0, sizeof(*q));
}

/* ---- transport ---- */

void
km_xport_init(struct km_xport *x, int fd, SSL *ssl)
{
    memset(x, 0, sizeof(*x));
    x->fd = fd;
    x->ssl = ssl;
    x->tls_done = ssl == NULL;
}

static void
tls_errstr(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    else if (errno)
        snprintf(buf, sizeof(buf), "%s", strerror(errno));
    else
        snprintf(buf, sizeof(buf), "connection closed");
    snprintf(err, errlen, "%s: %s", what, buf);
    ERR_clear_error();
}

int
km_xport_handshake(struct km_xport *x, char *err, size_t errlen)
{
    if (x->tls_done)
        return 1;
    errno = 0;
    int r = SSL_do_handshake(x->ssl);
    x->tls_want_write = false;
    if (r == 1) {
        x->tls_done = true;
        return 1;
    }
    int e = SSL_get_error(x->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        x->tls_want_write = true;
        return 0;
    }
    tls_errstr(err, errlen, "TLS handshake");
    return -1;
}

ssize_t
km_xport_read(struct km_xport *x, uint8_t *buf, size_t cap)
{
    if (!x->ssl) {
        ssize_t n;
        do
            n = recv(x->fd, buf, cap, 0);
        while (n < 0 && errno == EINTR);
        if (n >= 0)
            return n;
        return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
    }
    int n = SSL_read(x->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
    if (n > 0) {
        x->tls_want_write = false;
        return n;
    }
    int e = SSL_get_error(x->ssl, n);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ)
        return -1;
    if (e == SSL_ERROR_WANT_WRITE) {
        x->tls_want_write = true;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    return -2;
}

int
km_xport_flush(struct km_xport *x)
{
    while (x->out.len > 0) {
        const uint8_t *p = km_bq_data(&x->out);
        size_t len = x->out.len;
        if (!x->ssl) {
            ssize_t n = send(x->fd, p, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0;
                return -1;
            }
            km_bq_pop(&x->out, NULL, (size_t)n);
            continue;
        }
        if (!x->tls_done)
            return 0;
        int n = SSL_write(x->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n > 0) {
            km_bq_pop(&x->out, NULL, (size_t)n);
            continue;
        }
        int e = SSL_get_error(x->ssl, n);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
            return 0; /* SSL_write is retried with the same bytes (the queue keeps them) */
        return -1;
    }
    return 0;
}

unsigned
km_xport_events(const struct km_xport *x, bool want_read)
{
    unsigned ev = want_read ? KM_IO_READ : 0;
    if (!x->tls_done)
        ev |= KM_IO_READ;
    if (x->out.len > 0 || x->tls_want_write)
        ev |= KM_IO_WRITE;
    return ev;
}

void
km_xport_alpn(const struct km_xport *x, char *buf, size_t len)
{
    buf[0] = '\0';
    if (!x->ssl)
        return;
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(x->ssl, &p, &n);
    if (p && n < len) {
        memcpy(buf, p, n);
        buf[n] = '\0';
    }
}

void
km_xport_deinit(struct km_xport *x)
{
    if (x->ssl)
        SSL_free(x->ssl);
    if (x->fd >= 0)
        close(x->fd);
    km_bq_deinit(&x->out);
    x->ssl = NULL;
    x->fd = -1;
}

/* ---- gRPC framing ---- */

void
km_grpc_frame_push(struct km_bq *q, const uint8_t *msg, size_t len)
{
    uint8_t h[5] = {0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                    (uint8_t)len};
    km_bq_push(q, h, sizeof(h));
    km_bq_push(q, msg, len);
}

int
km_grpc_rx_feed(struct km_grpc_rx *rx, const uint8_t *data, size_t len, size_t max,
                km_grpc_rx_fn fn, void *arg, int *status, char *err, size_t errlen)
{
    while (len > 0) {
        if (rx->hdr_len < 5) {
            size_t k = 5 - rx->hdr_len < len ? 5 - rx->hdr_len : len;
            memcpy(rx->hdr + rx->hdr_len, data, k);
            rx->hdr_len += k;
            data += k;
            len -= k;
            if (rx->hdr_len < 5)
                return 0;
            if (rx->hdr[0] & 1) {
                *status = KM_GRPC_UNIMPLEMENTED;
                snprintf(err, errlen, "compressed messages are not supported");
                return -1;
            }
            if (rx->hdr[0] != 0) {
                *status = KM_GRPC_INTERNAL;
                snprintf(err, errlen, "invalid message flags 0x%02x", rx->hdr[0]);
                return -1;
            }
            rx->msg_len = (size_t)rx->hdr[1] << 24 | (size_t)rx->hdr[2] << 16 |
                          (size_t)rx->hdr[3] << 8 | (size_t)rx->hdr[4];
            if (rx->msg_len > max) {
                *status = KM_GRPC_RESOURCE_EXHAUSTED;
                snprintf(err, errlen, "received message larger than max (%zu vs. %zu)",
                         rx->msg_len, max);
                return -1;
            }
            rx->have = 0;
            if (rx->msg_len <= len) {
                /* whole message in this chunk: no copy */
                const uint8_t *m = data;
                size_t ml = rx->msg_len;
                data += ml;
                len -= ml;
                rx->hdr_len = 0;
                if (fn(arg, m, ml))
                    return 1;
                continue;
            }
        }
        if (len == 0)
            return 0;
        size_t want = rx->msg_len - rx->have;
        size_t k = want < len ? want : len;
        if (rx->have + k > rx->cap) {
            size_t cap = rx->cap ? rx->cap : 1024;
            while (cap < rx->have + k)
                cap *= 2;
            if (cap > rx->msg_len)
                cap = rx->msg_len;
            rx->buf = km_xrealloc(rx->buf, cap);
            rx->cap = cap;
        }
        memcpy(rx->buf + rx->have, data, k);
        rx->have += k;
        data += k;
        len -= k;
        if (rx->have == rx->msg_len) {
            rx->hdr_len = 0;
            int stop = fn(arg, rx->buf, rx->have);
            rx->have = 0;
            if (rx->cap > 64 * 1024) {
                KM_FREE(rx->buf);
                rx->cap = 0;
            }
            if (stop)
                return 1;
        }
    }
    return 0;
}

bool
km_grpc_rx_partial(const struct km_grpc_rx *rx)
{
    return rx->hdr_len > 0;
}

void
km_grpc_rx_deinit(struct km_grpc_rx *rx)
{
    free(rx->buf);
    memset(rx, 0, sizeof(*rx));
}

/* ---- grpc-message encoding ---- */

char *
km_grpc_pct_encode(const char *s)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            km_sbuf_add(&b, (const char *)p, 1);
        } else {
            km_sbuf_printf(&b, "%%%02X", *p);
        }
    }
    if (!b.ptr)
        km_sbuf_add(&b, "", 0);
    return km_sbuf_take(&b);
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *
km_grpc_pct_decode(const char *s, size_t len)
{
    char *out = km_xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int h, l;
        if (s[i] == '%' && i + 2 < len && (h = hexval(s[i + 1])) >= 0 &&
            (l = hexval(s[i + 2])) >= 0) {
            out[o++] = (char)(h << 4 | l);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* ---- server TLS context ---- */

static int
alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
            unsigned int inlen, void *arg)
{
    static const unsigned char prefs[] = "\x02h2\x08http/1.1";
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, prefs, sizeof(prefs) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *
km_tls_server_ctx(const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    BIO *cb = NULL, *kb = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    if (!ctx) {
        tls_errstr(err, errlen, "tls");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                               SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    cb = BIO_new_mem_buf(cert_pem, -1);
    kb = BIO_new_mem_buf(key_pem, -1);
    if (!cb || !kb)
        goto fail;
    cert = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    if (!cert) {
        tls_errstr(err, errlen, "tls.cert: cannot parse PEM certificate");
        goto fail_msg;
    }
    if (SSL_CTX_use_certificate(ctx, cert) != 1) {
        tls_errstr(err, errlen, "tls.cert");
        goto fail_msg;
    }
    X509 *extra;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) {
            X509_free(extra);
            tls_errstr(err, errlen, "tls.cert: chain");
            goto fail_msg;
        }
    }
    ERR_clear_error();
    key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    if (!key) {
        tls_errstr(err, errlen, "tls.key: cannot parse PEM private key");
        goto fail_msg;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        tls_errstr(err, errlen, "tls.key: does not match the certificate");
        goto fail_msg;
    }
    X509_free(cert);
    EVP_PKEY_free(key);
    BIO_free(cb);
    BIO_free(kb);
    return ctx;
fail:
    tls_errstr(err, errlen, "tls");
fail_msg:
    X509_free(cert);
    EVP_PKEY_free(key);
    BIO_free(cb);
    BIO_free(kb);
    SSL_CTX_free(ctx);
    return NULL;
}
