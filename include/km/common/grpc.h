/* gRPC over HTTP/2 (nghttp2), server side, with plain HTTP/1.1 and HTTP/2 requests served on
 * the same port (kuma-cp's DP server: POST /bootstrap next to the ADS gRPC service).
 *
 * A server owns listening sockets (TLS with ALPN h2/http1.1, or plaintext with HTTP/2 prior
 * knowledge or HTTP/1.1 detected from the first bytes) and runs on a km_loop. All callbacks run
 * on that loop's thread. Limits: maximum gRPC message size (RESOURCE_EXHAUSTED beyond),
 * maximum concurrent streams per connection, bounded write queues per stream (a peer that does
 * not read is disconnected), idle keepalive pings, GOAWAY on shutdown. */
#ifndef KM_COMMON_GRPC_H
#define KM_COMMON_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/loop.h>

/* gRPC status codes. */
enum km_grpc_status {
    KM_GRPC_OK = 0,
    KM_GRPC_CANCELLED = 1,
    KM_GRPC_UNKNOWN = 2,
    KM_GRPC_INVALID_ARGUMENT = 3,
    KM_GRPC_DEADLINE_EXCEEDED = 4,
    KM_GRPC_NOT_FOUND = 5,
    KM_GRPC_PERMISSION_DENIED = 7,
    KM_GRPC_RESOURCE_EXHAUSTED = 8,
    KM_GRPC_FAILED_PRECONDITION = 9,
    KM_GRPC_UNIMPLEMENTED = 12,
    KM_GRPC_INTERNAL = 13,
    KM_GRPC_UNAVAILABLE = 14,
    KM_GRPC_UNAUTHENTICATED = 16,
};

struct km_grpc_server;
struct km_grpc_stream;

/* A gRPC method served by the server (unary or streaming: the handler decides). */
struct km_grpc_method {
    const char *path; /* "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources" */
    /* A new call; return 0 to accept, or a gRPC status to refuse it (the server then closes
     * the stream with that status and on_close is not called for it). */
    int (*on_open)(struct km_grpc_stream *s, void *ud);
    /* One complete request message (payload without the 5-byte prefix, already bounded by
     * the server's max message size). The buffer is valid during the call only. */
    void (*on_message)(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud);
    /* The client half-closed (END_STREAM); the server may still send and finish. May be NULL. */
    void (*on_half_close)(struct km_grpc_stream *s, void *ud);
    /* The stream is gone (finished, reset, connection lost, server stopping). The stream
     * pointer is invalid after this returns. Always called exactly once per opened stream. */
    void (*on_close)(struct km_grpc_stream *s, void *ud);
    void *ud;
};

/* A plain HTTP request (HTTP/1.1 or HTTP/2, not gRPC). Request body bounded by
 * max_http_body. The handler fills the response synchronously. */
struct km_http_request {
    const char *method;
    const char *path;       /* including the query string */
    const char *content_type; /* may be NULL */
    const char *authorization; /* may be NULL */
    const uint8_t *body;
    size_t body_len;
};
struct km_http_response {
    int status;            /* e.g. 200 */
    char *content_type;    /* owned (freed by the server), may be NULL */
    char *body;            /* owned (freed by the server), may be NULL */
    size_t body_len;
};
typedef void (*km_http_handler_fn)(const struct km_http_request *req,
                                   struct km_http_response *resp, void *ud);

struct km_grpc_server_opts {
    const struct km_grpc_method *methods; /* borrowed, <nmethods> entries */
    size_t nmethods;
    km_http_handler_fn http_handler;      /* may be NULL: 404 for plain HTTP */
    void *http_ud;
    size_t max_message_bytes;    /* 0 = 4 MiB */
    size_t max_http_body;        /* 0 = 1 MiB */
    uint32_t max_concurrent_streams; /* 0 = 100 */
    size_t max_pending_write_bytes;  /* per connection; 0 = 16 MiB */
    uint32_t keepalive_ms;       /* idle PING interval, 0 = 30 s */
};

/* Creates a server on <loop>. */
struct km_grpc_server *km_grpc_server_new(struct km_loop *loop,
                                          const struct km_grpc_server_opts *opts);
/* Adds a listener on an already bound and listening socket <fd> (taken). When cert_pem and
 * key_pem are given, the listener speaks TLS (ALPN "h2", "http/1.1"). Returns 0 or -1 with a
 * message in err. */
int km_grpc_server_listen(struct km_grpc_server *srv, int fd, const char *cert_pem,
                          const char *key_pem, char *err, size_t errlen);
/* Sends GOAWAY, closes listeners and connections (on_close runs for each stream), frees. Must
 * be called on the loop's thread. */
void km_grpc_server_free(struct km_grpc_server *srv);

/* Queues one response message (the 5-byte prefix is added here). Returns 0, or -1 when the
 * stream is finished or its connection's write queue is over the limit (the connection is then
 * closed). */
int km_grpc_stream_send(struct km_grpc_stream *s, const uint8_t *msg, size_t len);
/* Ends the call with trailers grpc-status / grpc-message (message may be NULL). */
void km_grpc_stream_finish(struct km_grpc_stream *s, int status, const char *message);
/* Parses a grpc-timeout header value ("100m", "5S", ...) into milliseconds (rounded up).
 * The server ends a call whose deadline passes with DEADLINE_EXCEEDED. */
bool km_grpc_timeout_parse(const char *value, uint64_t *ms);
/* Request metadata (lowercase header name), NULL when absent. */
const char *km_grpc_stream_header(struct km_grpc_stream *s, const char *name);
/* Peer address "ip:port". */
const char *km_grpc_stream_peer(struct km_grpc_stream *s);
void km_grpc_stream_set_data(struct km_grpc_stream *s, void *data);
void *km_grpc_stream_get_data(struct km_grpc_stream *s);

/* ---- client side (kuma-dp's ADS client, load generators) ---- */

struct km_grpc_client;
struct km_grpc_call;

struct km_grpc_call_cbs {
    void (*on_message)(struct km_grpc_call *c, const uint8_t *msg, size_t len, void *ud);
    /* Called once: status from trailers, or UNAVAILABLE when the connection failed. */
    void (*on_close)(struct km_grpc_call *c, int status, const char *message, void *ud);
    void *ud;
};

/* Connects to host:port (IP literal), plaintext h2c prior knowledge or TLS when <tls> (CA PEM
 * file <ca_file> to verify, NULL = no verification). Non-blocking: calls can be started at
 * once and are sent when connected. */
struct km_grpc_client *km_grpc_client_new(struct km_loop *loop, const char *host, int port,
                                          bool tls, const char *ca_file);
void km_grpc_client_free(struct km_grpc_client *c);
/* True once the connection failed or ended (then every call got on_close UNAVAILABLE and
 * new calls are refused); *why (may be NULL) gets the reason. */
bool km_grpc_client_failed(const struct km_grpc_client *c, const char **why);
/* Starts a streaming call on <path> with optional extra headers (NULL-terminated name/value
 * pairs). Returns NULL when the client already failed. The call pointer stays valid until
 * on_close returns or km_grpc_call_cancel is called. km_grpc_client_free may be called from
 * inside a call's callback. */
struct km_grpc_call *km_grpc_call_start(struct km_grpc_client *c, const char *path,
                                        const char *const *headers,
                                        const struct km_grpc_call_cbs *cbs);
int km_grpc_call_send(struct km_grpc_call *call, const uint8_t *msg, size_t len);
/* Half-closes the request side. */
void km_grpc_call_close_send(struct km_grpc_call *call);
/* Cancels (RST_STREAM); on_close is not called after this. */
void km_grpc_call_cancel(struct km_grpc_call *call);

#endif
