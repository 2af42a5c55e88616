/* Envoy TLS resources of a mesh with mTLS (Kuma's model, 2.x Mesh.mtls), as proto3 JSON
 * (snake_case) for the generator: the SDS secrets, the Downstream/UpstreamTlsContext of
 * inbound listeners and outbound clusters, and the PERMISSIVE rewrite of an inbound listener.
 *
 * Pure functions: no I/O, no globals. Builders return a new JSON value (caller owns it) or
 * NULL when an argument is NULL. */
#ifndef KM_CP_XDS_TLS_H
#define KM_CP_XDS_TLS_H

#include <jansson.h>
#include <stdbool.h>

/* SDS secret names (Kuma's): the proxy's own certificate and the mesh's trusted CAs. */
#define KM_XDS_TLS_IDENTITY_FMT "identity_cert:secret:%s"
#define KM_XDS_TLS_MESH_CA_FMT  "mesh_ca:secret:%s"

#define KM_XDS_TLS_SOCKET_NAME  "envoy.transport_sockets.tls"
#define KM_XDS_TLS_URL_DOWNSTREAM \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define KM_XDS_TLS_URL_UPSTREAM \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
#define KM_XDS_TLS_INSPECTOR_NAME "envoy.filters.listener.tls_inspector"
#define KM_XDS_TLS_URL_INSPECTOR \
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"

/* ALPN lists (NULL-terminated). Kuma's clients offer "kuma", which lets a PERMISSIVE inbound
 * tell mesh mTLS from the application's own TLS. */
extern const char *const km_xds_tls_alpn_kuma[];
extern const char *const km_xds_tls_alpn_http[]; /* "h2", "http/1.1" */

/* Options shared by both directions. */
struct km_xds_tls_opts {
    const char *mesh;              /* required */
    const char *const *alpn;       /* alpn_protocols, NULL-terminated; NULL: none */
    const char *min_version;       /* TlsParameters enum name; NULL: "TLSv1_2" */
    const char *max_version;       /* NULL: "TLSv1_3" (Envoy's upstream default is 1.2) */
};

/* "identity_cert:secret:<mesh>" / "mesh_ca:secret:<mesh>". Caller frees. */
char *km_xds_tls_identity_name(const char *mesh);
char *km_xds_tls_mesh_ca_name(const char *mesh);

/* Secret resources (envoy.extensions.transport_sockets.tls.v3.Secret) for SDS:
 *   {"name": "identity_cert:secret:<mesh>", "tls_certificate": {"certificate_chain":
 *    {"inline_bytes": b64(cert)}, "private_key": {"inline_bytes": b64(key)}}}
 *   {"name": "mesh_ca:secret:<mesh>", "validation_context": {"trusted_ca":
 *    {"inline_bytes": b64(ca PEMs)}}} */
json_t *km_xds_tls_identity_secret(const char *mesh, const char *cert_pem, const char *key_pem);
json_t *km_xds_tls_mesh_ca_secret(const char *mesh, const char *ca_pem);

/* An SdsSecretConfig over ADS: {"name": n, "sds_config": {"ads": {}, "resource_api_version":
 * "V3"}}. */
json_t *km_xds_tls_sds_config(const char *secret_name);

/* DownstreamTlsContext of an inbound listener: require_client_certificate; own certificate
 * over SDS; combined validation context = the mesh CA over SDS + URI SAN prefix
 * "spiffe://<mesh>/"; tls_params; alpn_protocols when given. */
json_t *km_xds_tls_downstream(const struct km_xds_tls_opts *o);

/* UpstreamTlsContext of an outbound cluster to <service>: same certificates, the server's URI
 * SAN must equal "spiffe://<mesh>/<service>" (<service> "*": any service of the mesh, prefix
 * match); sni (may be NULL: none); alpn (NULL: km_xds_tls_alpn_kuma). */
json_t *km_xds_tls_upstream(const struct km_xds_tls_opts *o, const char *service,
                            const char *sni);

/* Kuma's SNI for a mesh service: "<service>{mesh=<mesh>}", with the other tags of
 * <extra_tags> (an object, may be NULL; kuma.io/service and non-string values ignored) added
 * as key=value in key order: "backend{mesh=default,version=v1}". Caller frees. */
char *km_xds_tls_sni(const char *service, const char *mesh, const json_t *extra_tags);

/* {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": <Downstream or
 * Upstream URL>, ...ctx}}. Steals <ctx>. */
json_t *km_xds_tls_transport_socket(json_t *ctx, bool upstream);

/* Rewrites an inbound listener (proto3 JSON, as the generator makes it) in place for mTLS.
 * STRICT: each filter chain gets the downstream transport socket. PERMISSIVE: a
 * tls_inspector listener filter is added and each filter chain becomes three, as Kuma does:
 * transport_protocol "raw_buffer" (plaintext), "tls" (the application's own TLS, passed
 * through), and "tls" + application_protocols ["kuma"] with the transport socket (mesh mTLS).
 * Returns 0, or -1 when <listener> has no filter_chains array (then unchanged). */
int km_xds_tls_inbound_listener(json_t *listener, const struct km_xds_tls_opts *o,
                                bool permissive);

/* Sets the transport_socket of an outbound cluster (km_xds_tls_upstream). Returns 0 or -1
 * when an argument is NULL or <cluster> is not an object. */
int km_xds_tls_outbound_cluster(json_t *cluster, const struct km_xds_tls_opts *o,
                                const char *service, const char *sni);

#endif
