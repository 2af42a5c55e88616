/* `kuma-dp run` configuration: flags and KUMA_* variables with Kuma's names
 * (pkg/config/app/kuma-dp), flags winning over the environment. */
#ifndef KM_DP_DP_CONFIG_H
#define KM_DP_DP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct km_dp_config {
    /* controlPlane */
    char *cp_address;      /* --cp-address / KUMA_CONTROL_PLANE_URL, https://localhost:5678 */
    char *ca_cert_file;    /* --ca-cert-file / KUMA_CONTROL_PLANE_CA_CERT_FILE */
    char *ca_cert;         /* KUMA_CONTROL_PLANE_CA_CERT (PEM), wins over the file */
    int64_t retry_backoff_ms;  /* KUMA_CONTROL_PLANE_RETRY_BACKOFF, 3s */
    int64_t retry_max_ms;      /* KUMA_CONTROL_PLANE_RETRY_MAX_DURATION, 5m (first bootstrap) */
    /* the parsed address */
    bool cp_tls;
    char *cp_host;         /* without brackets */
    int cp_port;
    /* dataplane */
    char *name;            /* --name / KUMA_DATAPLANE_NAME */
    char *mesh;            /* --mesh / KUMA_DATAPLANE_MESH */
    char *proxy_type;      /* --proxy-type / KUMA_DATAPLANE_PROXY_TYPE, dataplane */
    int64_t drain_ms;      /* --drain-time / KUMA_DATAPLANE_DRAIN_TIME, 30s */
    int admin_port;        /* --admin-port / KUMA_DATAPLANE_ADMIN_PORT, 9901 (0 = no admin) */
    /* dataplaneRuntime */
    unsigned concurrency;  /* --concurrency / KUMA_DATAPLANE_RUNTIME_CONCURRENCY, 0 = CPUs */
    char *token;           /* --dataplane-token / KUMA_DATAPLANE_RUNTIME_TOKEN, or file content */
    char *token_file;      /* --dataplane-token-file / KUMA_DATAPLANE_RUNTIME_TOKEN_PATH */
    char *resource_file;   /* -d/--dataplane-file / KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH */
    char *resource;        /* --dataplane / KUMA_DATAPLANE_RUNTIME_RESOURCE (template) */
    char **var_keys;       /* --dataplane-var k=v (repeatable) */
    char **var_vals;
    size_t nvars;
    /* kuma-c additions */
    bool xds_sotw;         /* --xds-sotw / KUMA_DATAPLANE_XDS_SOTW=true: state of the world */
    char *log_level;       /* --log-level */
    /* derived by km_dp_config_finish */
    char *dataplane_json;  /* the rendered Dataplane as JSON text, NULL when none */
};

/* Defaults, then KUMA_* from the environment, then the flags of `kuma-dp run` (<argv> after
 * "run"). Errors name the flag or variable ("--drain-time: ...") and go to <err>; returns 0
 * or -1. Call km_dp_config_finish next. */
int km_dp_config_load(struct km_dp_config *c, int argc, char **argv, char *err, size_t errlen);

/* Reads the token and Dataplane files, renders the template with the variables, parses it
 * and fills name and mesh from it when not given, and checks everything. 0 or -1 + <err>. */
int km_dp_config_finish(struct km_dp_config *c, char *err, size_t errlen);

void km_dp_config_deinit(struct km_dp_config *c);

/* The usage text of `kuma-dp run --help`. */
extern const char km_dp_run_usage[];

#endif
