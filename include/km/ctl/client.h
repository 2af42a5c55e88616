/* HTTP client of kumactl for the kuma-cp REST API (libcurl): bounded response size, a timeout
 * for the whole call, headers / TLS options / token from the control plane's configuration. */
#ifndef KM_CTL_CLIENT_H
#define KM_CTL_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Largest response body kumactl accepts. */
#define KM_CTL_MAX_RESPONSE ((size_t)64 * 1024 * 1024)

struct km_ctl_client;

struct km_ctl_response {
    long status;
    char *body; /* owned, NUL terminated */
    size_t len;
};

/* Builds a client for a control plane entry of the configuration (borrowed, read at once).
 * <timeout_ms> 0 means no timeout. NULL with a message when the entry is unusable. */
struct km_ctl_client *km_ctl_client_new(const json_t *cp, long timeout_ms, char *err,
                                        size_t errlen);
void km_ctl_client_free(struct km_ctl_client *c);
/* Base URL of the API server (borrowed). */
const char *km_ctl_client_url(const struct km_ctl_client *c);

/* Sends <method> <path> (path starts with '/', already escaped) with an optional JSON <body>.
 * Returns false on a transport failure ("could not connect to the Control Plane API Server at
 * URL: ..."); any HTTP status is a success of the transport. */
bool km_ctl_client_do(struct km_ctl_client *c, const char *method, const char *path,
                      const char *body, struct km_ctl_response *resp, char *err, size_t errlen);
void km_ctl_response_deinit(struct km_ctl_response *r);

/* GET of an absolute URL (apply -f https://...), <timeout_ms> bounded, body at most <max>. */
char *km_ctl_fetch_url(const char *url, long timeout_ms, size_t max, size_t *len, char *err,
                       size_t errlen);

/* Escapes one path segment (caller frees). */
char *km_ctl_escape(const char *s);

/* Formats a Kuma REST error body as kumactl shows it: "Title (detail)" then one
 * "\n* field: reason" line per invalid parameter (or deprecated cause). A body that is not
 * Kuma's error shape gives "(status): body". Caller frees. */
char *km_ctl_format_api_error(long status, const char *body, size_t len);

#endif
