/* POST /bootstrap of the DP server: request parsing and the Envoy bootstrap answer. */
#ifndef KM_CP_BOOTSTRAP_H
#define KM_CP_BOOTSTRAP_H

#include <jansson.h>
#include <stdbool.h>

#include <km/cp/resource.h>

/* A parsed request. Strings are borrowed from the request JSON. */
struct km_bootstrap_request {
    const char *mesh;       /* "default" when absent */
    const char *name;
    const char *proxy_type; /* dataplane | ingress | egress */
    const char *token;      /* dataplaneToken, may be NULL */
    const char *host;       /* the CP host name the proxy used, may be NULL */
    struct km_resource *dataplane; /* owned; the inline Dataplane, validated, or NULL */
};

/* Parses and validates; problems go to <errs> with field paths. 0 when valid. */
int km_bootstrap_parse(const json_t *req, struct km_bootstrap_request *out, struct km_errs *errs);
void km_bootstrap_request_deinit(struct km_bootstrap_request *r);

struct km_bootstrap_params {
    const char *default_host; /* used when the request names no host */
    int port;                 /* DP server port the ADS cluster dials */
    const char *ca_pem;       /* CA (or self-signed cert) that signs the DP server cert; NULL =
                                 plaintext */
    int admin_port;           /* proxy admin port, 9901 */
    bool delta;               /* DELTA_GRPC instead of GRPC */
};

/* {"bootstrap": <Envoy v3 bootstrap as proto3 JSON>, "kumaSidecarConfiguration": {...}}.
 * Caller owns the result. */
json_t *km_bootstrap_build(const struct km_bootstrap_request *req,
                           const struct km_bootstrap_params *p);

#endif
