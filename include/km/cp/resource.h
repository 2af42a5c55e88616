/* Resource model of the control plane: the type registry and one resource instance.
 *
 * A resource is kept as JSON (jansson) for its spec: the store persists it as text and the
 * REST API returns it as is, so field names and value formats stay exactly what the user
 * wrote (Kuma's JSON). Typed access happens in validators and, later, in generators. */
#ifndef KM_CP_RESOURCE_H
#define KM_CP_RESOURCE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include <km/common/errs.h>

enum km_scope { KM_SCOPE_GLOBAL = 0, KM_SCOPE_MESH };

struct km_resource;
struct km_rtype;

typedef void (*km_validate_fn)(const struct km_rtype *t, const struct km_resource *r,
                               struct km_errs *errs);

/* One descriptor per resource type (Kuma's ResourceTypeDescriptor). Static, never freed. */
struct km_rtype {
    const char *name;          /* "MeshTrafficPermission" */
    const char *plural;        /* REST path segment: "meshtrafficpermissions" */
    const char *alt_plural;    /* another accepted path segment ("global-secrets") or NULL */
    const char *singular;      /* kumactl singular: "meshtrafficpermission" */
    const char *kumactl_plural;/* kumactl list argument ("traffic-permissions") */
    const char *short_name;    /* KRI short name ("mtp"); NULL for types without KRI */
    const char *display_plural;/* "Mesh Traffic Permissions" */
    enum km_scope scope;
    bool has_spec;             /* new-style: REST JSON nests the body under "spec"/"status" */
    bool is_policy;            /* a policy type (legacy or targetRef) */
    bool is_targetref_policy;  /* a targetRef policy (Mesh*) */
    bool read_only;            /* created by the CP itself, not writable through the API */
    bool has_insights;         /* an Insight companion exists */
    km_validate_fn validate;   /* may be NULL: no checks beyond the common ones */
};

/* The registry: every type kuma-cp knows, in a stable order (Mesh first). */
size_t km_registry_count(void);
const struct km_rtype *km_registry_at(size_t i);
/* By type name ("Dataplane"); NULL when unknown. */
const struct km_rtype *km_registry_find(const char *name);
/* By REST path segment (plural or alternative plural); NULL when unknown. */
const struct km_rtype *km_registry_by_path(const char *segment);
/* By kumactl argument: singular, plural, kumactl plural or alternative plural. */
const struct km_rtype *km_registry_by_cli(const char *arg);
/* Mesh type, often needed. */
const struct km_rtype *km_registry_mesh(void);

/* One resource. Strings and JSON are owned by the resource. */
struct km_resource {
    const struct km_rtype *type; /* borrowed (registry) */
    char *mesh;                  /* owned; "" for global-scoped types */
    char *name;                  /* owned */
    int64_t version;             /* store version, 1 after create; 0 when not stored yet */
    int64_t creation_us;         /* microseconds since epoch */
    int64_t modification_us;
    json_t *labels;              /* owned object, may be NULL */
    json_t *spec;                /* owned object: legacy types hold every non-meta field;
                                    new-style types hold the "spec" object */
    json_t *status;              /* owned object, new-style only, may be NULL */
};

struct km_resource *km_resource_new(const struct km_rtype *t, const char *mesh, const char *name);
void km_resource_free(struct km_resource *r);
struct km_resource *km_resource_dup(const struct km_resource *r);

/* Decodes a Universal document (JSON object, from YAML or REST). Meta keys are "type", "mesh",
 * "name", "labels", "creationTime", "modificationTime", "kri"; new-style types take "spec" and
 * "status", legacy types keep every other key in <spec>. <expect> (may be NULL) is the type the
 * caller requires (a REST path names it); a mismatch is an error on field "type".
 * Appends problems to <errs> and returns NULL when the document cannot be decoded. */
struct km_resource *km_resource_decode(const json_t *doc, const struct km_rtype *expect,
                                       struct km_errs *errs);

/* Encodes as Kuma's REST JSON: type, mesh (mesh-scoped only), name, creationTime,
 * modificationTime, labels (when any), kri (types with a short name), then the spec fields
 * (legacy) or "spec"/"status" (new-style). Caller owns the result. */
json_t *km_resource_encode(const struct km_resource *r);

/* KRI of a resource: kri_<short>_<mesh>_<zone>_<namespace>_<name>_<section>. Caller frees;
 * NULL for types without a short name. */
char *km_resource_kri(const struct km_resource *r);

/* Name rules common to all types (empty, length, RFC 1123 characters); appends to <errs> under
 * "name". */
void km_validate_name(const char *name, struct km_errs *errs);

/* Name and (mesh-scoped types) mesh characters, as Kuma's ValidateMeta: errors on "name" and
 * "mesh". Part of km_validate_request; call it alone for resources that do not come through
 * the REST API (files applied by kumactl, seeds). */
void km_validate_meta(const struct km_resource *r, struct km_errs *errs);

/* The type's own checks, as Kuma runs them while decoding a body: schema-like type checks of
 * new-style specs (which stop further checks when they fail) and then the type's validator.
 * It does not check name or mesh: see km_validate_meta / km_validate_request. */
void km_resource_validate(const struct km_resource *r, struct km_errs *errs);

/* Shape errors from km_resource_decode (a meta field of the wrong JSON type, a body that is not
 * an object) start with this prefix and have an empty field: Kuma answers them with 400
 * "Bad Request" and the reason as detail, not with "invalid_parameters". */
#define KM_DECODE_BAD_REQUEST_PREFIX "invalid "

/* Kuma's deprecation warnings for a resource about to be stored (PUT answers
 * {"warnings": [...]}): non RFC 1035 names of Mesh/MeshService/MeshExternalService/
 * MeshMultiZoneService, their SNI problems, MeshTrust spec.origin. Call it after the labels
 * are computed (SNIs use kuma.io/zone). Returns a JSON array (maybe empty); caller owns it. */
json_t *km_resource_warnings(const struct km_resource *r);

/* Labels rules (Kubernetes qualified names and label values), appended under
 * labels["key"]. */
void km_validate_labels(const json_t *labels, struct km_errs *errs);
/* The key and value syntax part of km_validate_labels alone (no kuma.io/origin check). */
void km_validate_label_entries(const json_t *labels, struct km_errs *errs);

/* Checks of a REST PUT before the resource is stored, in Kuma's order: name and type and mesh
 * against the URL, labels, then name and mesh characters (Kuma's validateResourceRequest).
 * <body_type> is the "type" string of the body as sent (NULL when absent); for new-style
 * types km_resource_decode already rejected a wrong type. */
void km_validate_request(const struct km_resource *r, const char *body_type,
                         const char *url_mesh, const char *url_name, struct km_errs *errs);

#endif
