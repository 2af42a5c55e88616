/* Test helper: a gRPC echo server on our own server code, for interoperability tests with
 * independent clients (tests/e2e/test_grpc_interop.py runs it against Python's grpcio).
 *
 * Usage: grpc_echo_server [--tls CERT_OUT_FILE] [--keepalive-ms N]
 * Listens on an ephemeral 127.0.0.1 port and prints "PORT <n>" on stdout. With --tls it
 * serves TLS with a fresh self-signed certificate written to CERT_OUT_FILE (the client's
 * trust root). Methods:
 *   /test.Echo/Echo   every request message is sent back; OK when the client half-closes
 *   /test.Echo/Fail   request "N:text" ends the call with status N and message text
 * Plain HTTP requests are answered "METHOD PATH BODY". Stops on SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/loop.h>
#include <km/common/tlsgen.h>
#include <km/common/util.h>

static struct km_loop *loop;

static void
echo_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    km_grpc_stream_send(s, msg, len);
}

static void
echo_half_close(struct km_grpc_stream *s, void *ud)
{
    km_grpc_stream_finish(s, KM_GRPC_OK, NULL);
}

static void
fail_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)msg);
    char *colon = strchr(buf, ':');
    km_grpc_stream_finish(s, colon ? atoi(buf) : KM_GRPC_INVALID_ARGUMENT,
                          colon ? colon + 1 : "expected N:text");
}

static void
http_handler(const struct km_http_request *req, struct km_http_response *resp, void *ud)
{
    resp->status = 200;
    resp->content_type = km_xstrdup("text/plain");
    resp->body = km_xasprintf("%s %s %.*s", req->method, req->path, (int)req->body_len,
                              (const char *)req->body);
    resp->body_len = strlen(resp->body);
}

static void
on_signal(int sig)
{
    km_loop_stop(loop);
}

int
main(int argc, char **argv)
{
    const char *cert_out = NULL;
    unsigned long keepalive = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tls") == 0 && i + 1 < argc) {
            cert_out = argv[++i];
        } else if (strcmp(argv[i], "--keepalive-ms") == 0 && i + 1 < argc) {
            keepalive = strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--tls CERT_OUT_FILE] [--keepalive-ms N]\n", argv[0]);
            return 2;
        }
    }
    static const struct km_grpc_method methods[] = {
        {"/test.Echo/Echo", NULL, echo_message, echo_half_close, NULL, NULL},
        {"/test.Echo/Fail", NULL, fail_message, NULL, NULL, NULL},
    };
    loop = km_loop_new();
    struct km_grpc_server_opts o = {
        .methods = methods,
        .nmethods = KM_ARRAY_LEN(methods),
        .http_handler = http_handler,
        .keepalive_ms = (uint32_t)keepalive,
    };
    struct km_grpc_server *srv = km_grpc_server_new(loop, &o);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &sl) != 0) {
        perror("listen");
        return 1;
    }
    char err[256];
    char *cert = NULL, *key = NULL;
    if (cert_out) {
        const char *dns[] = {"localhost"};
        if (km_tls_selfsigned(dns, 1, 1, &cert, &key, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        FILE *f = fopen(cert_out, "w");
        if (!f || fputs(cert, f) < 0 || fclose(f) != 0) {
            perror(cert_out);
            return 1;
        }
    }
    if (km_grpc_server_listen(srv, fd, cert, key, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    free(cert);
    free(key);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    km_loop_run(loop);
    km_grpc_server_free(srv);
    km_loop_free(loop);
    return 0;
}
