/* `kuma-dp run` flags and KUMA_* variables (km_dp_config_load / km_dp_config_finish). Each
 * test runs in its own process, so setenv does not leak into others. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

#include <km/common/util.h>
#include <km/dp/dp_config.h>

static int
load(struct km_dp_config *c, char *err, size_t errlen, int argc, char **argv)
{
    if (km_dp_config_load(c, argc, argv, err, errlen) != 0)
        return -1;
    return km_dp_config_finish(c, err, errlen);
}

KM_TEST(dp_config_defaults_and_flags)
{
    char *argv[] = {"--name", "web-1", "--mesh=demo", "--cp-address", "https://[::1]:7777",
                    "--drain-time", "1m30s", "--admin-port", "0", "--concurrency", "4",
                    "--xds-sotw", "--dataplane-token", "tok"};
    struct km_dp_config c;
    char err[512] = "";
    ASSERT_INT_EQ(load(&c, err, sizeof(err), (int)KM_ARRAY_LEN(argv), argv), 0);
    ASSERT_STR_EQ(c.name, "web-1");
    ASSERT_STR_EQ(c.mesh, "demo");
    ASSERT(c.cp_tls);
    ASSERT_STR_EQ(c.cp_host, "::1");
    ASSERT_INT_EQ(c.cp_port, 7777);
    ASSERT_INT_EQ(c.drain_ms, 90000);
    ASSERT_INT_EQ(c.admin_port, 0);
    ASSERT_INT_EQ(c.concurrency, 4);
    ASSERT(c.xds_sotw);
    ASSERT_STR_EQ(c.token, "tok");
    ASSERT_INT_EQ(c.retry_backoff_ms, 3000);
    ASSERT(c.dataplane_json == NULL);
    km_dp_config_deinit(&c);
}

KM_TEST(dp_config_env_and_flag_precedence)
{
    setenv("KUMA_CONTROL_PLANE_URL", "http://cp.local:5679", 1);
    setenv("KUMA_DATAPLANE_NAME", "from-env", 1);
    setenv("KUMA_DATAPLANE_MESH", "m", 1);
    setenv("KUMA_DATAPLANE_DRAIN_TIME", "5s", 1);
    setenv("KUMA_CONTROL_PLANE_RETRY_BACKOFF", "250ms", 1);
    setenv("KUMA_DATAPLANE_ADMIN_PORT", "9911", 1);
    char *argv[] = {"--name", "from-flag"};
    struct km_dp_config c;
    char err[512] = "";
    ASSERT_INT_EQ(load(&c, err, sizeof(err), 2, argv), 0);
    ASSERT_STR_EQ(c.name, "from-flag");
    ASSERT_STR_EQ(c.mesh, "m");
    ASSERT(!c.cp_tls);
    ASSERT_STR_EQ(c.cp_host, "cp.local");
    ASSERT_INT_EQ(c.cp_port, 5679);
    ASSERT_INT_EQ(c.drain_ms, 5000);
    ASSERT_INT_EQ(c.retry_backoff_ms, 250);
    ASSERT_INT_EQ(c.admin_port, 9911);
    km_dp_config_deinit(&c);
}

KM_TEST(dp_config_template_and_files)
{
    char dir[] = "/tmp/km-dp-config-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char tpl[256], tok[256];
    snprintf(tpl, sizeof(tpl), "%s/dp.yaml", dir);
    snprintf(tok, sizeof(tok), "%s/token", dir);
    FILE *f = fopen(tpl, "w");
    fputs("type: Dataplane\nmesh: {{ mesh }}\nname: {{ name }}\nnetworking:\n"
          "  address: 127.0.0.1\n  inbound:\n  - port: {{ port }}\n    tags:\n"
          "      kuma.io/service: web\n",
          f);
    fclose(f);
    f = fopen(tok, "w");
    fputs("secret-token\n", f);
    fclose(f);
    char *argv[] = {"-d", tpl, "-v", "name=web-7", "--dataplane-var", "port=8080",
                    "--dataplane-var=mesh=prod", "--dataplane-token-file", tok};
    struct km_dp_config c;
    char err[512] = "";
    int rc = load(&c, err, sizeof(err), (int)KM_ARRAY_LEN(argv), argv);
    unlink(tpl);
    unlink(tok);
    rmdir(dir);
    ASSERT_STR_EQ(err, "");
    ASSERT_INT_EQ(rc, 0);
    ASSERT_STR_EQ(c.name, "web-7");
    ASSERT_STR_EQ(c.mesh, "prod");
    ASSERT_STR_EQ(c.token, "secret-token");
    ASSERT_STR_CONTAINS(c.dataplane_json, "\"name\":\"web-7\"");
    ASSERT_STR_CONTAINS(c.dataplane_json, "\"port\":8080");
    km_dp_config_deinit(&c);
}

static void
expect_err(const char *want, int argc, char **argv)
{
    struct km_dp_config c;
    char err[512] = "";
    int rc = load(&c, err, sizeof(err), argc, argv);
    km_dp_config_deinit(&c);
    if (rc == 0 || !strstr(err, want)) {
        fprintf(stderr, "expected error containing \"%s\", got rc %d \"%s\"\n", want, rc, err);
        abort();
    }
}

KM_TEST(dp_config_errors)
{
    char *a1[] = {"--name", "a", "--mesh", "m", "--drain-time", "soon"};
    expect_err("--drain-time: \"soon\" is not a duration", 6, a1);
    char *a2[] = {"--name", "a", "--admin-port", "65536"};
    expect_err("--admin-port: \"65536\" is not a port number", 4, a2);
    char *a3[] = {"--name", "a", "--concurrency", "-1"};
    expect_err("--concurrency", 4, a3);
    char *a4[] = {"--name", "a", "--cp-address", "grpc://x:1"};
    expect_err("--cp-address: \"grpc://x:1\" must start with https://", 4, a4);
    char *a5[] = {"--name", "a", "--cp-address", "https://x:99999"};
    expect_err("has an invalid port", 4, a5);
    char *a6[] = {"--name"};
    expect_err("--name: a value is required", 1, a6);
    char *a7[] = {"--frobnicate", "x"};
    expect_err("unknown flag --frobnicate", 2, a7);
    char *a8[] = {"stray"};
    expect_err("unexpected argument \"stray\"", 1, a8);
    char *a9[] = {"--mesh", "m"};
    expect_err("--name: must be set", 2, a9);
    char *a10[] = {"--dataplane", "type: Mesh\nname: x"};
    expect_err("--dataplane: type: must be Dataplane", 2, a10);
    char *a11[] = {"--dataplane", "type: Dataplane\nname: {{#open}}"};
    expect_err("--dataplane: template:", 2, a11);
    char *a12[] = {"--dataplane", "type: Dataplane\nname: x", "--name", "y"};
    expect_err("--name \"y\" differs from the name in --dataplane", 4, a12);
    char *a13[] = {"--name", "a", "-v", "novalue"};
    expect_err("--dataplane-var: \"novalue\" is not of the form KEY=VALUE", 4, a13);
    char *a14[] = {"--name", "a", "--dataplane-token", "t", "--dataplane-token-file", "/x"};
    expect_err("cannot be used together", 6, a14);
    char *a15[] = {"--name", "a", "--proxy-type", "ingress"};
    expect_err("--proxy-type: \"ingress\" is not supported", 4, a15);
    char *a16[] = {"--name", "a", "--ca-cert-file", "/nonexistent/ca.pem"};
    expect_err("--ca-cert-file: cannot read /nonexistent/ca.pem", 4, a16);
    setenv("KUMA_DATAPLANE_RUNTIME_CONCURRENCY", "many", 1);
    char *a17[] = {"--name", "a"};
    expect_err("KUMA_DATAPLANE_RUNTIME_CONCURRENCY: \"many\"", 2, a17);
}
