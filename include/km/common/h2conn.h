/* Internal plumbing shared by the gRPC server and client (grpc_server.c, grpc_client.c): a
 * byte queue, a non-blocking socket transport with optional TLS, gRPC message framing and
 * reassembly, and grpc-message percent-encoding. Not a public API. */
#ifndef KM_COMMON_H2CONN_H
#define KM_COMMON_H2CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

/* FIFO of bytes. */
struct km_bq {
    uint8_t *buf; /* owned */
    size_t off;   /* first unread byte */
    size_t len;   /* bytes queued from off */
    size_t cap;
};
void km_bq_push(struct km_bq *q, const void *p, size_t n);
/* Copies up to n bytes out (dst may be NULL to drop them); returns the count. */
size_t km_bq_pop(struct km_bq *q, void *dst, size_t n);
static inline const uint8_t *
km_bq_data(const struct km_bq *q)
{
    return q->buf ? q->buf + q->off : NULL;
}
void km_bq_deinit(struct km_bq *q);

/* A connected non-blocking socket, plaintext or TLS. */
struct km_xport {
    int fd;        /* owned (closed by km_xport_deinit) */
    SSL *ssl;      /* owned, NULL = plaintext */
    bool tls_done; /* TLS handshake finished (always true for plaintext) */
    bool tls_want_write; /* the last TLS operation needs the socket writable */
    struct km_bq out;    /* bytes waiting for the socket */
};
void km_xport_init(struct km_xport *x, int fd, SSL *ssl);
/* Advances the TLS handshake: 1 done, 0 in progress, -1 failed (message in err). */
int km_xport_handshake(struct km_xport *x, char *err, size_t errlen);
/* Reads up to cap bytes: > 0 bytes read, 0 end of stream, -1 would block, -2 error. */
ssize_t km_xport_read(struct km_xport *x, uint8_t *buf, size_t cap);
/* Writes queued bytes as far as the socket takes them: 0 (maybe partial), -1 error. */
int km_xport_flush(struct km_xport *x);
/* The loop events this transport needs next (KM_IO_READ|KM_IO_WRITE). */
unsigned km_xport_events(const struct km_xport *x, bool want_read);
/* The negotiated ALPN protocol or "" (TLS), "" for plaintext. */
void km_xport_alpn(const struct km_xport *x, char *buf, size_t len);
void km_xport_deinit(struct km_xport *x);

/* gRPC length-prefixed message reassembly across DATA frames. */
struct km_grpc_rx {
    uint8_t hdr[5];
    size_t hdr_len;
    size_t msg_len;
    uint8_t *buf; /* owned, partial message */
    size_t have;
    size_t cap;
};
/* Called once per complete message; return non-zero to stop feeding. */
typedef int (*km_grpc_rx_fn)(void *arg, const uint8_t *msg, size_t len);
/* Feeds bytes; returns 0, 1 when <fn> asked to stop, or -1 with *status set
 * (RESOURCE_EXHAUSTED over <max>, UNIMPLEMENTED for compressed messages) and a message in
 * err. */
int km_grpc_rx_feed(struct km_grpc_rx *rx, const uint8_t *data, size_t len, size_t max,
                    km_grpc_rx_fn fn, void *arg, int *status, char *err, size_t errlen);
/* True while a message is partly received. */
bool km_grpc_rx_partial(const struct km_grpc_rx *rx);
void km_grpc_rx_deinit(struct km_grpc_rx *rx);

/* Appends the 5-byte prefix and the message to q. */
void km_grpc_frame_push(struct km_bq *q, const uint8_t *msg, size_t len);

/* grpc-message percent-encoding (gRPC HTTP/2 protocol spec); caller frees. */
char *km_grpc_pct_encode(const char *s);
char *km_grpc_pct_decode(const char *s, size_t len);

/* Builds a server SSL_CTX from PEM strings with ALPN h2/http1.1 preference; NULL with err. */
SSL_CTX *km_tls_server_ctx(const char *cert_pem, const char *key_pem, char *err, size_t errlen);

#endif
