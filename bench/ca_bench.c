/* ca-bench: workload certificates issued per second by the mesh CA on one thread.
 *
 *   ca-bench [-n N] [-r N_RSA] [--root ecdsa|rsa]
 *
 * Generates a mesh root (ECDSA P-256 by default, or RSA-2048), then issues N certificates
 * with ECDSA P-256 leaf keys and N_RSA with RSA-2048 leaf keys (key generation included, as in
 * real issuance), each for an identity with three tags, from a loaded CA handle (km_ca_load once,
 * km_ca_issue_with per certificate) and, for comparison, N/10 through km_ca_issue (the CA PEM
 * parsed every time). Prints certificates per second of wall time and of this thread's CPU
 * time (= per core). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/cp/ca.h>

static double
clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die_errs(const char *what, struct km_errs *e)
{
    char *j = km_errs_join(e);
    fprintf(stderr, "ca-bench: %s: %s\n", what, j);
    free(j);
    exit(1);
}

/* Issues <n> certificates; reuses one loaded CA when <ca> is set, else parses the PEMs each
 * time. Prints one result line. */
static void
run(const char *label, struct km_ca *ca, const char *cert_pem, const char *key_pem,
    enum km_ca_key_type kt, int n)
{
    static const struct km_tag tags[] = {
        {"kuma.io/service", "backend"}, {"kuma.io/protocol", "http"}, {"version", "v1"}};
    struct km_identity id = {.mesh = "default", .tags = tags, .ntags = 3, .key_type = kt};
    struct km_errs e;
    double w0, c0, w, c;
    size_t bytes = 0;

    km_errs_init(&e);
    w0 = clock_s(CLOCK_MONOTONIC);
    c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < n; i++) {
        char *cert, *key;
        int rc = ca ? km_ca_issue_with(ca, &id, 0, &cert, &key, &e)
                    : km_ca_issue(cert_pem, key_pem, &id, 0, &cert, &key, &e);
        if (rc != 0)
            die_errs("issue", &e);
        bytes += strlen(cert) + strlen(key);
        free(cert);
        free(key);
    }
    w = clock_s(CLOCK_MONOTONIC) - w0;
    c = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    printf("%-34s n=%-6d %9.0f certs/s (wall)  %9.0f certs/s/core (cpu)  %7.1f us/cert  "
           "%zu B/cert\n",
           label, n, n / w, n / c, c / n * 1e6, n ? bytes / (size_t)n : 0);
    km_errs_deinit(&e);
}

int
main(int argc, char **argv)
{
    struct km_ca_params p = {.mesh = "default"};
    int n = 20000, n_rsa = 200;
    char *cert, *key;
    struct km_errs e;
    struct km_ca *ca;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            n = atoi(argv[++i]);
        } else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            n_rsa = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "rsa") == 0) {
                p.key_type = KM_CA_KEY_RSA;
                p.rsa_bits = 2048;
            } else if (strcmp(argv[i], "ecdsa") != 0) {
                fprintf(stderr, "ca-bench: --root ecdsa|rsa\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: ca-bench [-n N] [-r N_RSA] [--root ecdsa|rsa]\n");
            return 2;
        }
    }
    if (n < 1 || n_rsa < 0) {
        fprintf(stderr, "ca-bench: -n must be >= 1, -r >= 0\n");
        return 2;
    }
    km_errs_init(&e);
    if (km_ca_generate(&p, &cert, &key, &e) != 0)
        die_errs("generate", &e);
    ca = km_ca_load(cert, key, &e);
    if (ca == NULL)
        die_errs("load", &e);
    printf("root: %s; one thread\n", p.key_type == KM_CA_KEY_RSA ? "RSA-2048" : "ECDSA P-256");
    run("ECDSA P-256 leaf, loaded CA", ca, NULL, NULL, KM_CA_KEY_ECDSA_P256, n);
    run("ECDSA P-256 leaf, PEM parsed each", NULL, cert, key, KM_CA_KEY_ECDSA_P256,
        n / 10 ? n / 10 : 1);
    if (n_rsa > 0)
        run("RSA-2048 leaf, loaded CA", ca, NULL, NULL, KM_CA_KEY_RSA, n_rsa);
    km_ca_free(ca);
    free(cert);
    free(key);
    km_errs_deinit(&e);
    return 0;
}
