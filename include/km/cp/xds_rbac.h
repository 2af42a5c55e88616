/* Traffic permissions compiled to Envoy's network RBAC filter (envoy.filters.network.rbac,
 * typed_config envoy.extensions.filters.network.rbac.v3.RBAC), as proto3 JSON ready for
 * km_pbjson_encode. The caller's identity comes from its peer certificate:
 *   - kuma.io/service <s>  -> authenticated.principal_name exact "spiffe://<mesh>/<s>"
 *   - any other tag k=v    -> authenticated.principal_name exact "kuma://<k>/<v>"
 *   - several tags         -> and_ids of the above; '*' values add nothing
 *   - Mesh / no tags       -> any: true
 * The filter goes first in the inbound's filter chain, and only when mTLS is enabled on the
 * mesh (without mTLS there is no identity, Kuma adds no RBAC).
 *
 * Default as Kuma 2.x: when nothing allows a caller, the ALLOW rules have no policy for it and
 * the connection is refused (an ALLOW RBAC without policies denies everything).
 *
 * Pure functions; results are new JSON objects owned by the caller. */
#ifndef KM_CP_XDS_RBAC_H
#define KM_CP_XDS_RBAC_H

#include <jansson.h>
#include <stddef.h>

#include <km/cp/policy_match.h>
#include <km/cp/resource.h>

#define KM_RBAC_FILTER_NAME "envoy.filters.network.rbac"
#define KM_RBAC_TYPE_URL "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"

/* Principal matching a caller whose certificate carries the tags of <selector> (a JSON object
 * of tag -> value or '*'), Kuma's principalFromSelector. */
json_t *km_rbac_principal_from_tags(const char *mesh, const json_t *selector);

/* Principal of a from[].targetRef (Mesh, MeshService, MeshSubset, MeshServiceSubset); NULL for
 * kinds that cannot be matched on a certificate. */
json_t *km_rbac_principal_from_ref(const char *mesh, const json_t *ref);

/* Filter for one inbound from the legacy TrafficPermission that wins for it
 * (km_legacy_select_inbound): one ALLOW policy named after the permission whose principals
 * are its sources (any of them). <tp> NULL: no permission selects the inbound, deny all.
 * <stat_prefix> is used as given (Kuma: "<sanitized inbound name>."). */
json_t *km_rbac_filter_legacy(const char *mesh, const char *stat_prefix,
                              const struct km_resource *tp);

/* Filter for one inbound from its MeshTrafficPermission from[] entries in ascending priority
 * (km_pm_inbound.from). For every caller the action of the last entry that applies to it and
 * sets default.action wins (Kuma's merge): Allow and AllowWithShadowDeny callers are allowed
 * by a single ALLOW policy "MeshTrafficPermission" whose principals are each allowing entry's
 * principal and-ed with not_id of the later entries that override it; AllowWithShadowDeny
 * callers are also listed in shadow_rules (action DENY), which only log. Deny and callers no
 * entry applies to are refused. */
json_t *km_rbac_filter_mtp(const char *mesh, const char *stat_prefix,
                           const struct km_pm_item *from, size_t nfrom);

/* Which permission governs an inbound. */
enum km_rbac_source {
    KM_RBAC_NONE = 0,          /* no permission selects it: deny all */
    KM_RBAC_TRAFFIC_PERMISSION,  /* legacy TrafficPermission */
    KM_RBAC_MESH_TRAFFIC_PERMISSION
};

/* The filter for networking.inbound[<inbound>] of <dataplane>, from the policies of its mesh
 * (any types, in any order): MeshTrafficPermissions that select the inbound and have from[]
 * entries take over (as in Kuma); otherwise the winning TrafficPermission; otherwise deny
 * all. <source> (may be NULL) says which one; <winner> (may be NULL) receives the winning
 * TrafficPermission for the legacy case. */
json_t *km_rbac_inbound_filter(const char *mesh, const struct km_resource *dataplane,
                               size_t inbound, const char *stat_prefix,
                               const struct km_resource *const *policies, size_t npolicies,
                               enum km_rbac_source *source, const struct km_resource **winner);

#endif
