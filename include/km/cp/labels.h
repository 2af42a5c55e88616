/* Labels the control plane computes and checks on resources written through the REST API
 * (Kuma's computed labels: kuma.io/mesh, kuma.io/origin, kuma.io/zone, kuma.io/env,
 * kuma.io/proxy-type, ...), and resource lookup by KRI.
 *
 * Resources loaded straight into the store (seeds, migrations) never pass through here. */
#ifndef KM_CP_LABELS_H
#define KM_CP_LABELS_H

#include <jansson.h>
#include <stdbool.h>

#include <km/common/errs.h>
#include <km/cp/resource.h>

/* Zone name of a zone control plane when none is configured (Kuma's default). */
#define KM_DEFAULT_ZONE_NAME "default"

/* What the labels depend on: the control plane's mode, environment and zone. */
struct km_labels_ctx {
    bool global;      /* mode "global" */
    bool kubernetes;  /* environment "kubernetes" (kuma.io/env value) */
    const char *zone; /* local zone name (zone mode); borrowed */
};

/* Whether zone control planes may create the type (Kuma's ProvidedByZone KDS flag): such
 * resources get kuma.io/origin, kuma.io/zone and kuma.io/env on a zone CP. */
bool km_type_provided_by_zone(const struct km_rtype *t);

/* Whether the type is a proxy (Dataplane, ZoneIngress, ZoneEgress): kuma.io/proxy-type. */
bool km_type_is_proxy(const struct km_rtype *t);

/* Kuma's labels computation: the labels of a resource of type <t> with <spec>, starting from
 * <existing> (may be NULL; kept, computed labels are only added when absent, except
 * kuma.io/proxy-type and the listener labels which are always recomputed). <mesh> is the
 * resource's mesh ("" for global types). Returns a new object; caller owns it. */
json_t *km_labels_compute(const struct km_rtype *t, const json_t *spec, const json_t *existing,
                          const char *mesh, const struct km_labels_ctx *ctx);

/* The label checks of a REST PUT, in Kuma's order: kuma.io/origin value, kuma.io/zone equal to
 * the local zone and kuma.io/mesh equal to <res_mesh> (zone mode, unless the origin is
 * global), then key and value syntax. Errors go under labels["key"]. */
void km_labels_validate_request(const json_t *labels, const char *res_mesh,
                                const struct km_labels_ctx *ctx, struct km_errs *errs);

/* A global control plane only writes (and deletes) resources of origin global: an error
 * under <base>["kuma.io/origin"] when the label says otherwise. */
void km_labels_check_origin_for_write(const json_t *labels, const struct km_labels_ctx *ctx,
                                      const char *base, struct km_errs *errs);

/* kuma.io/origin, kuma.io/zone and kuma.io/display-name cannot change or disappear on update:
 * compares the computed labels before (<cur>) and after (<next>); errors under
 * labels["key"]. */
void km_labels_check_immutable(const json_t *cur, const json_t *next, struct km_errs *errs);

/* kuma.io/workload on a Universal zone Dataplane must be a DNS-1035 label (not allowed at all
 * on a global CP). Returns NULL when fine, else Kuma's error detail (caller frees). */
char *km_labels_check_workload(const json_t *labels, const struct km_labels_ctx *ctx);

/* A parsed KRI: kri_<short>_<mesh>_<zone>_<namespace>_<name>_<section...>. */
struct km_kri {
    const struct km_rtype *type; /* borrowed */
    char *mesh;
    char *zone;
    char *ns;
    char *name;
    char *section;
};

/* Parses <s>; on error returns -1 and writes Kuma's message ("unknown short name of resource
 * type: \"x\"") into <err>. Free with km_kri_deinit on success. */
int km_kri_parse(const char *s, struct km_kri *out, char *err, size_t errlen);
void km_kri_deinit(struct km_kri *k);

/* Store name of the resource a KRI designates: its name when it originates in this control
 * plane (zone equal to the local zone; on a global CP: no zone), else the name KDS gives a
 * synced copy: <name>-<hash of mesh, name, zone, namespace>. Caller frees. */
char *km_kri_store_name(const struct km_kri *k, const struct km_labels_ctx *ctx);

/* KDS's hashed name of a synced resource: <name>-<fnv-1a 64 of mesh, name and the non-empty
 * <extra> values, hex, with k8s' safe alphabet>. Caller frees. */
char *km_hashed_name(const char *mesh, const char *name, const char *const *extra, size_t n);

#endif
