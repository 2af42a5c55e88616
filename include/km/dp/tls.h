/* kuma-dp's TLS (OpenSSL 3): SDS secrets, the Downstream/UpstreamTlsContext of a transport
 * socket, and the engine side (inbound inspection and handshake, upstream TLS connect).
 *
 * Configuration. A TLS context refers to its certificate and trusted CA by SDS name (over
 * ADS, as Kuma sends them: "identity_cert:secret:<mesh>", "mesh_ca:secret:<mesh>"). The
 * snapshot builder parses the contexts (km_dp_tls_ctx_parse, every unsupported option is an
 * error naming the field), parses the Secret resources (km_dp_tls_secrets_parse: the PEMs
 * must load and the key must match the certificate) and binds each context to its secrets
 * (km_dp_tls_ctx_bind), building one SSL_CTX per context. A context whose secrets are not
 * there (yet) has no SSL_CTX: its chain refuses connections and its cluster fails connects,
 * both counted as ssl.connection_error; this is not a NACK. A new snapshot (new secrets)
 * builds new SSL_CTXs: new connections use the new certificate, established ones keep theirs.
 *
 * Defaults: TLS 1.2 minimum, 1.3 maximum (tls_params may narrow it, never below 1.2). Server:
 * require and verify the client certificate against the CA when require_client_certificate,
 * the client's URI SAN checked against match_typed_subject_alt_names. Client: SNI, ALPN
 * (alpn_protocols), the server chain verified against the CA and its URI SAN against the
 * matchers; sessions resumed with tickets (one cached session per cluster context).
 *
 * Engine. Inbound, tls.c inspects and does the handshake, peer verification and network RBAC;
 * then the TCP proxy and the HTTP/1 connection manager take the socket and its SSL and read
 * and write through it themselves ("direct"); upstream, they connect with
 * km__dp_tls_connect_direct and drive km__dp_tls_handshake_up under the connect timeout. The
 * rest (HTTP/2: ALPN h2, an h2 codec or a preface found later; http2_proxy.c) goes through
 * a relay (a "pipe") between the TLS socket and one end of a socketpair whose other end is
 * handed to the filter as if it were a plaintext socket. Each direction of a pipe holds at
 * most KM_DP_TLS_BUF bytes; a side is not read while the other has not taken them. EOF is
 * propagated (close_notify + shutdown(SHUT_WR) one way, shutdown(SHUT_WR) the other). */
#ifndef KM_DP_TLS_H
#define KM_DP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <km/common/errs.h>
#include <km/dp/snapshot.h>

#define KM_DP_TLS_BUF          (16u * 1024u)
#define KM_DP_TLS_INSPECT_MS   15000u /* wait for a ClientHello (PERMISSIVE), then raw_buffer */
#define KM_DP_TLS_HANDSHAKE_MS 10000u /* inbound handshake bound */
#define KM_DP_TLS_MAX_HELLO    16384u /* bytes peeked for the ClientHello */

struct km_dp_secret {
    char *name;
    char *cert_pem; /* tls_certificate: the chain, leaf first; NULL for a validation context */
    char *key_pem;
    char *ca_pem;   /* validation_context.trusted_ca; NULL for a certificate */
};

struct km_dp_san_match {
    int how;        /* enum km_dp_str_match (rbac.h): exact, prefix, suffix, contains */
    char *value;
};

struct km_dp_tls_session_cache;

struct km_dp_tls_ctx {
    bool upstream;
    char *cert_secret;            /* SDS name of the tls_certificate */
    char *ca_secret;              /* SDS name of the validation context, or NULL (no verify) */
    struct km_dp_san_match *sans; /* URI SAN matchers (any one must match), may be empty */
    size_t nsans;
    char **alpn;
    size_t nalpn;
    char *sni;                    /* upstream, NULL = none */
    bool require_client_cert;     /* downstream */
    int min_version, max_version; /* TLS1_2_VERSION / TLS1_3_VERSION */
    void *ssl_ctx;                /* SSL_CTX *, NULL while a secret is missing */
    struct km_dp_tls_session_cache *cache; /* upstream: the last session (mutex inside) */
};

/* Parses a transport_socket (name and typed_config) into a context. Errors are added under
 * <base> ("cluster \"x\".transport_socket"). Returns NULL on error. */
struct km_dp_tls_ctx *km_dp_tls_ctx_parse(const char *name, const char *type_url,
                                          const uint8_t *bytes, size_t len, bool upstream,
                                          const char *base, struct km_errs *errs);
/* Builds the SSL_CTX from <secrets> (sorted by name) when both are there. */
void km_dp_tls_ctx_bind(struct km_dp_tls_ctx *t, const struct km_dp_secret *secrets,
                        size_t nsecrets);
void km_dp_tls_ctx_free(struct km_dp_tls_ctx *t);

/* Parses the SDS set into <*out> (sorted by name). Errors name the secret and field. */
bool km_dp_tls_secrets_parse(const struct km_dp_xds_set *set, struct km_dp_secret **out,
                             size_t *n, struct km_errs *errs);
void km_dp_tls_secrets_free(struct km_dp_secret *v, size_t n);
const struct km_dp_secret *km_dp_tls_secret_find(const struct km_dp_secret *v, size_t n,
                                                 const char *name);

/* What a ClientHello tells (tls_inspector). */
struct km_dp_client_hello {
    char sni[256];     /* "" when none */
    char alpn[8][64];  /* offered protocols (the first 8) */
    size_t nalpn;
};
/* Parses the start of a TLS stream. Returns 1 with <out> filled, 0 when more bytes are
 * needed, -1 when it is not a TLS ClientHello. */
int km_dp_tls_parse_client_hello(const uint8_t *buf, size_t len, struct km_dp_client_hello *out);

/* Envoy's filter chain match for a connection to <port>: destination port, then server name,
 * then transport protocol ("tls" / "raw_buffer"), then application protocols; at each step
 * the chains that name the connection's value win over those that leave it unset. <hello>
 * NULL: plaintext. Returns NULL when no chain matches. */
const struct km_dp_chain *km_dp_tls_chain_select(const struct km_dp_listener *l, uint16_t port,
                                                 const struct km_dp_client_hello *hello,
                                                 bool tls);
/* Whether a listener needs the first bytes to choose a chain (some chain matches on
 * transport_protocol, server_names or application_protocols). */
bool km_dp_tls_listener_inspects(const struct km_dp_listener *l);

/* ---- engine internals (src/dp/{listener,upstream,worker}.c) ---- */
struct km_dp_worker;
struct km_dp_pub;
struct km_dp_tls_pipe;

/* An accepted connection of listener <lidx> that needs TLS inspection or a handshake
 * (<chain> NULL: inspect first). Takes ownership of <fd>. */
void km__dp_tls_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                       const struct km_dp_chain *chain, int fd, uint16_t port);
/* Connects to endpoint <ei> of cluster <ci> (which has a TLS context): returns the plaintext
 * end (a connected socketpair end) or -errno. The TLS connect, handshake and verification go
 * on behind it; a failure closes it (counted as upstream_cx_connect_fail + ssl.*). */
int km__dp_tls_connect(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei);
/* Closes every pipe of the worker (worker quit). */
void km__dp_tls_worker_deinit(struct km_dp_worker *w);

/* ---- direct TLS: a filter reads and writes through the SSL on its own socket (no pipe) ----
 * <ssl> is an SSL *. recv/send return like recv(2)/send(2): bytes (> 0), 0 for EOF (recv:
 * close_notify or the peer's FIN), or -1 with errno: EAGAIN when OpenSSL waits for the socket,
 * *want then says for what (KM_IO_READ or KM_IO_WRITE: an SSL_read may need to write and the
 * other way round); another errno for a failed connection. A blocked send is retried with at
 * least the same bytes (the buffer may move). */
ssize_t km__dp_tls_recv(void *ssl, void *buf, size_t n, unsigned *want);
ssize_t km__dp_tls_send(void *ssl, const void *buf, size_t n, unsigned *want);
/* Decrypted bytes buffered in <ssl> that no socket event will announce. */
size_t km__dp_tls_pending(void *ssl);
/* Sends close_notify (best effort, never blocks); the socket stays open. */
void km__dp_tls_notify(void *ssl);
/* Frees <ssl> (NULL is fine); the socket stays the caller's. */
void km__dp_tls_free(void *ssl);
/* Upstream: starts a TCP connect to endpoint <ei> of cluster <ci> (which has a TLS context)
 * and returns the socket (connect in progress) with *ssl in client state (SNI, session), or
 * -errno. */
int km__dp_tls_connect_direct(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei,
                              void **ssl);
/* Upstream: drives the handshake once the TCP connect is done. 1: done, the server's identity
 * verified (ssl.handshake counted); 0: in progress, wait for *want; -1: failed (ssl.* counted,
 * the caller counts the connect failure). */
int km__dp_tls_handshake_up(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, void *ssl,
                            unsigned *want);
/* Fallback to a pipe for an established direct connection (e.g. HTTP/2 found after the fact):
 * takes <fd> and <ssl>, returns the plaintext end or -errno (both closed then). */
int km__dp_tls_relay(struct km_dp_worker *w, struct km_dp_pub *pub, int fd, void *ssl);

#endif
