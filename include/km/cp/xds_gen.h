/* xDS configuration generation (Kuma's model, Universal): from the resources of one mesh to
 * the Envoy resources of one proxy, as proto3 JSON objects (snake_case field names, Any as
 * {"@type": ...}); src/common/pbjson.c packs them into wire bytes.
 *
 * Pure functions: no store, no I/O, no globals, so they are unit tested with golden files. */
#ifndef KM_CP_XDS_GEN_H
#define KM_CP_XDS_GEN_H

#include <jansson.h>
#include <stdbool.h>

#include <km/cp/resource.h>

/* Envoy type URLs, indexed by enum km_xds_type. */
enum km_xds_type {
    KM_XDS_LISTENER = 0,
    KM_XDS_ROUTE,
    KM_XDS_CLUSTER,
    KM_XDS_ENDPOINT,
    KM_XDS_SECRET,
    KM_XDS_TYPE_COUNT
};
extern const char *const km_xds_type_urls[KM_XDS_TYPE_COUNT];
/* Short names used in insights and logs: "lds", "rds", "cds", "eds", "sds". */
extern const char *const km_xds_type_short[KM_XDS_TYPE_COUNT];
/* Index of a type URL, or -1. */
int km_xds_type_index(const char *type_url);

/* Everything the generator may look at for one mesh (a consistent copy taken from the
 * store). Borrowed pointers: the caller keeps them alive during the call. */
struct km_mesh_view {
    const char *mesh;
    /* The Mesh, may be NULL. Its spec.mtls (an enabled backend and its mode, STRICT or
     * PERMISSIVE) turns on mTLS between sidecars: TLS transport sockets on inbound listeners
     * and outbound clusters, and the SDS secrets of km_xds_proxy_id. */
    const struct km_resource *mesh_res;
    const struct km_resource *const *dataplanes; /* every Dataplane of the mesh */
    size_t ndataplanes;
    /* Dataplanes that must not receive traffic although their inbounds say ready (their
     * proxy was connected and went away): names, may be NULL. */
    bool (*is_offline)(const char *name, void *ud);
    void *offline_ud;
    /* Policies of the mesh that the generator applies (MeshLoadBalancingStrategy so far), any
     * order; may be NULL. */
    const struct km_resource *const *policies;
    size_t npolicies;
};

/* Who is asking. */
struct km_xds_proxy_id {
    const char *mesh;
    const char *name;                 /* from node id "<mesh>.<name>" */
    const struct km_resource *dataplane; /* the proxy's Dataplane, NULL for a proxyless client */
    /* Listener names requested explicitly (proxyless gRPC asks for "<service>" by name). */
    const char *const *requested_listeners;
    size_t nrequested_listeners;
    /* mTLS of the mesh enabled: the proxy's identity certificate (chain) and key, and the
     * PEM of the CAs it trusts, all borrowed. A sidecar (with a Dataplane) gets them as the
     * Secrets "identity_cert:secret:<mesh>" and "mesh_ca:secret:<mesh>"; when NULL (no
     * certificate could be issued) they are left out while the TLS contexts still refer to
     * them, so traffic fails closed. Ignored without mTLS and for proxyless clients. */
    const char *cert_pem;
    const char *key_pem;
    const char *ca_pem;
};

/* Generated resources of one proxy: for each type, a JSON object mapping resource name to
 * the resource (proto3 JSON). */
struct km_xds_resources {
    json_t *by_type[KM_XDS_TYPE_COUNT]; /* owned objects */
};

/* Generates the resources of <proxy> from <view>. Never fails: input problems (a Dataplane
 * that the validator let through but that cannot be served) are skipped and logged.
 * Caller frees with km_xds_resources_deinit. */
void km_xds_generate(const struct km_mesh_view *view, const struct km_xds_proxy_id *proxy,
                     struct km_xds_resources *out);
void km_xds_resources_deinit(struct km_xds_resources *r);

/* A mesh index: the services of a mesh (kuma.io/service of every inbound that is not Ignored)
 * with their common protocol and their ready endpoints (health ready, state not NotReady, the
 * Dataplane not offline, an IP literal address; duplicates of address:port dropped), in a
 * fixed order. Build it once per mesh snapshot and generate every proxy of the mesh from it:
 * km_xds_generate does both steps for one proxy. It borrows strings and tags from the view's
 * resources, which must outlive it. Read-only after creation (safe to share between threads). */
struct km_xds_mesh_index;
struct km_xds_mesh_index *km_xds_mesh_index_new(const struct km_mesh_view *view);
void km_xds_mesh_index_free(struct km_xds_mesh_index *ix);
/* Whether <service> is the kuma.io/service of some inbound of the mesh (what a proxyless
 * client may name as a listener). */
bool km_xds_mesh_index_has_service(const struct km_xds_mesh_index *ix, const char *service);
/* km_xds_generate from a prebuilt index (<ix> may be NULL: a mesh without Dataplanes). */
void km_xds_generate_indexed(const struct km_xds_mesh_index *ix,
                             const struct km_xds_proxy_id *proxy, struct km_xds_resources *out);

#endif
