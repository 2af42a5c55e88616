/* targetRef ("new") policies: the OpenAPI-schema checks Kuma runs first (types and enums of
 * targetRef and the to/from/rules lists), then the common semantic rules (Kuma's
 * ValidateTargetRef) and the main per-policy rules. */
#include <stdlib.h>
#include <string.h>

#include <km/cp/validate.h>

static const char *const ref_kinds[] = {"Mesh",          "MeshSubset",        "MeshGateway",
                                        "MeshService",   "MeshExternalService",
                                        "MeshMultiZoneService", "MeshServiceSubset",
                                        "MeshHTTPRoute", "Dataplane"};
static const char *const proxy_types[] = {"Sidecar", "Gateway"};

static void
schema_string_map(struct km_errs *e, const char *base, const char *field, const json_t *m)
{
    char *p = km_vp_field(base, field);
    const char *k;
    json_t *v;

    if (km_schema_type(e, p, m, "object") && json_is_object(m)) {
        json_object_foreach ((json_t *)m, k, v) {
            char *kp = km_xasprintf("%s.%s", p, k);
            km_schema_type(e, kp, v, "string");
            free(kp);
        }
    }
    free(p);
}

static void
schema_targetref(struct km_errs *e, const char *p, const json_t *ref)
{
    static const char *const strs[] = {"name", "namespace", "sectionName", "mesh"};
    const json_t *pt, *it;
    size_t i;

    if (!ref || !km_schema_type(e, p, ref, "object"))
        return;
    {
        char *kp = km_vp_field(p, "kind");
        km_schema_enum(e, kp, json_object_get(ref, "kind"), ref_kinds, KM_ARRAY_LEN(ref_kinds));
        free(kp);
    }
    for (size_t s = 0; s < KM_ARRAY_LEN(strs); s++) {
        char *fp = km_vp_field(p, strs[s]);
        km_schema_type(e, fp, json_object_get(ref, strs[s]), "string");
        free(fp);
    }
    schema_string_map(e, p, "labels", json_object_get(ref, "labels"));
    schema_string_map(e, p, "tags", json_object_get(ref, "tags"));
    pt = json_object_get(ref, "proxyTypes");
    {
        char *pp = km_vp_field(p, "proxyTypes");
        if (km_schema_type(e, pp, pt, "array")) {
            json_array_foreach (pt, i, it) {
                char *ip = km_vp_index(pp, i);
                km_schema_enum(e, ip, it, proxy_types, 2);
                free(ip);
            }
        }
        free(pp);
    }
}

/* Returns the number of schema errors found. */
static size_t
schema_stage(struct km_errs *e, const json_t *spec, const char *tname)
{
    static const char *const lists[] = {"to", "from", "rules"};
    size_t before = e->n;

    schema_targetref(e, "spec.targetRef", json_object_get(spec, "targetRef"));
    for (size_t l = 0; l < 3; l++) {
        const json_t *arr = json_object_get(spec, lists[l]), *it;
        char *lp = km_xasprintf("spec.%s", lists[l]);
        size_t i;
        if (km_schema_type(e, lp, arr, "array")) {
            json_array_foreach (arr, i, it) {
                char *ip = km_vp_index(lp, i);
                if (km_schema_type(e, ip, it, "object")) {
                    char *tp = km_vp_field(ip, "targetRef");
                    char *dp = km_vp_field(ip, "default");
                    schema_targetref(e, tp, json_object_get(it, "targetRef"));
                    km_schema_type(e, dp, json_object_get(it, "default"), "object");
                    if (strcmp(tname, "MeshTrafficPermission") == 0 && l == 1) {
                        static const char *const actions[] = {"Allow", "Deny",
                                                              "AllowWithShadowDeny"};
                        char *ap = km_vp_field(dp, "action");
                        km_schema_enum(e, ap, json_object_get(json_object_get(it, "default"),
                                                              "action"),
                                       actions, 3);
                        free(ap);
                    }
                    free(dp);
                    free(tp);
                }
                free(ip);
            }
        }
        free(lp);
    }
    if (json_object_get(spec, "default")) {
        km_schema_type(e, "spec.default", json_object_get(spec, "default"), "object");
    }
    return e->n - before;
}

static bool
in_list(const char *k, const char *const *kinds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(kinds[i], k) == 0)
            return true;
    return false;
}

static bool
set_str(const json_t *ref, const char *k)
{
    const char *s = km_jstr(ref, k);
    return s && s[0];
}

static bool
set_map(const json_t *ref, const char *k)
{
    const json_t *v = json_object_get(ref, k);
    return json_is_object(v) && json_object_size(v) > 0;
}

static void
disallow(struct km_errs *e, const char *p, const json_t *ref, const char *field, const char *kind)
{
    const json_t *v = json_object_get(ref, field);
    bool set = (json_is_string(v) && json_string_length(v) > 0) ||
               (json_is_object(v) && json_object_size(v) > 0) ||
               (json_is_array(v) && json_array_size(v) > 0);
    if (set)
        km_verr_at(e, p, field, "must not be set with kind %s", kind);
}

static void
check_name_chars(struct km_errs *e, const char *p, const json_t *ref)
{
    const char *n = km_jstr(ref, "name");
    if (!n)
        return;
    for (const char *c = n; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.' ||
              *c == '_')) {
            km_verr_at(e, p, "name",
                       "invalid characters: must consist of lower case alphanumeric characters, "
                       "'-', '.' and '_'.");
            return;
        }
    }
}

/* Kuma's ValidateTargetRef. */
static void
validate_ref(struct km_errs *e, const char *p, const json_t *ref, const char *const *kinds,
             size_t nk, bool inbound)
{
    const char *kind = km_jstr(ref, "kind");
    bool has_labels = set_map(ref, "labels");
    bool has_name = set_str(ref, "name"), has_ns = set_str(ref, "namespace");

    if (!kind || !kind[0]) {
        km_verr_at(e, p, "kind", "must be defined");
        return;
    }
    if (!in_list(kind, kinds, nk)) {
        km_verr_at(e, p, "kind", "value '%s' is not supported", kind);
        return;
    }
    if (strcmp(kind, "Mesh") == 0) {
        if (has_name)
            km_verr_at(e, p, "name", "using name with kind Mesh is not yet supported");
        disallow(e, p, ref, "mesh", kind);
        disallow(e, p, ref, "tags", kind);
        disallow(e, p, ref, "labels", kind);
        disallow(e, p, ref, "namespace", kind);
        disallow(e, p, ref, "sectionName", kind);
        if (json_is_array(json_object_get(ref, "proxyTypes")) &&
            json_array_size(json_object_get(ref, "proxyTypes")) == 0)
            km_verr_at(e, p, "proxyTypes", "must be undefined or have at least one element");
    } else if (strcmp(kind, "Dataplane") == 0) {
        disallow(e, p, ref, "tags", kind);
        disallow(e, p, ref, "mesh", kind);
        disallow(e, p, ref, "proxyTypes", kind);
        if (has_labels && (has_name || has_ns))
            km_verr_at(e, p, "labels", "either labels or name and namespace must be specified");
        if (!inbound && set_str(ref, "sectionName"))
            km_verr_at(e, p, "sectionName", "can only be used with inbound policies");
    } else if (strcmp(kind, "MeshSubset") == 0) {
        struct km_tags_opts o = {0};
        char *tp = km_vp_field(p, "tags");
        disallow(e, p, ref, "name", kind);
        disallow(e, p, ref, "mesh", kind);
        km_validate_tags(e, tp, json_object_get(ref, "tags"), &o);
        disallow(e, p, ref, "labels", kind);
        disallow(e, p, ref, "namespace", kind);
        disallow(e, p, ref, "sectionName", kind);
        free(tp);
    } else if (strcmp(kind, "MeshService") == 0 || strcmp(kind, "MeshHTTPRoute") == 0 ||
               strcmp(kind, "MeshExternalService") == 0 ||
               strcmp(kind, "MeshMultiZoneService") == 0) {
        check_name_chars(e, p, ref);
        disallow(e, p, ref, "mesh", kind);
        disallow(e, p, ref, "tags", kind);
        disallow(e, p, ref, "proxyTypes", kind);
        if (!has_labels && !has_name)
            km_verr_at(e, p, NULL, "name or labels must be set when kind is %s", kind);
        if (has_labels && (has_name || has_ns))
            km_verr_at(e, p, "labels",
                       strcmp(kind, "MeshExternalService") == 0
                           ? "either labels or name must be specified"
                           : "either labels or name and namespace must be specified");
        if (strcmp(kind, "MeshHTTPRoute") == 0 || strcmp(kind, "MeshExternalService") == 0)
            disallow(e, p, ref, "sectionName", kind);
    } else { /* MeshServiceSubset, MeshGateway */
        struct km_tags_opts o = {.selector = true};
        char *tp = km_vp_field(p, "tags");
        if (!has_name)
            km_verr_at(e, p, "name", "must be set when kind is %s", kind);
        check_name_chars(e, p, ref);
        disallow(e, p, ref, "mesh", kind);
        disallow(e, p, ref, "proxyTypes", kind);
        km_validate_tags(e, tp, json_object_get(ref, "tags"), &o);
        disallow(e, p, ref, "labels", kind);
        disallow(e, p, ref, "namespace", kind);
        disallow(e, p, ref, "sectionName", kind);
        free(tp);
    }
}

static const char *const top_kinds[] = {"Mesh", "MeshSubset", "MeshService",
                                        "MeshServiceSubset", "MeshGateway", "Dataplane",
                                        "MeshHTTPRoute"};
static const char *const to_kinds[] = {"Mesh", "MeshService", "MeshExternalService",
                                       "MeshMultiZoneService", "MeshServiceSubset",
                                       "MeshHTTPRoute"};
static const char *const from_kinds[] = {"Mesh", "MeshSubset", "MeshService",
                                         "MeshServiceSubset"};

/* Policies with only a top-level targetRef and a "default". */
static bool
single_item(const char *n)
{
    return strcmp(n, "MeshTrace") == 0 || strcmp(n, "MeshProxyPatch") == 0 ||
           strcmp(n, "MeshMetric") == 0 || strcmp(n, "MeshPassthrough") == 0;
}

static bool
to_only(const char *n)
{
    return strcmp(n, "MeshRetry") == 0 || strcmp(n, "MeshHealthCheck") == 0 ||
           strcmp(n, "MeshHTTPRoute") == 0 || strcmp(n, "MeshTCPRoute") == 0 ||
           strcmp(n, "MeshLoadBalancingStrategy") == 0;
}

static void
validate_list(struct km_errs *e, const json_t *spec, const char *list, const char *const *kinds,
              size_t nk, bool need_default)
{
    const json_t *arr = json_object_get(spec, list), *it;
    size_t i;

    json_array_foreach (arr, i, it) {
        char *ip = km_xasprintf("spec.%s[%zu]", list, i);
        char *tp = km_vp_field(ip, "targetRef");
        const json_t *ref = json_object_get(it, "targetRef");
        if (strcmp(list, "rules") != 0) {
            if (!json_is_object(ref))
                km_verr_at(e, tp, "kind", "must be defined");
            else
                validate_ref(e, tp, ref, kinds, nk, strcmp(list, "from") == 0);
        }
        if (need_default && !json_is_object(json_object_get(it, "default")))
            km_verr_at(e, ip, "default", "must be defined");
        free(tp);
        free(ip);
    }
}

static void
validate_mtp(struct km_errs *e, const json_t *spec)
{
    size_t nfrom = json_array_size(json_object_get(spec, "from"));
    size_t nrules = json_array_size(json_object_get(spec, "rules"));
    const json_t *arr, *it;
    size_t i;

    if (nfrom > 0 && nrules > 0)
        km_errs_add(e, "spec", "field 'from' must be empty when 'rules' is defined");
    if (nfrom == 0 && nrules == 0)
        km_errs_add(e, "spec", "at least one of 'from' or 'rules' has to be defined");
    arr = json_object_get(spec, "rules");
    json_array_foreach (arr, i, it) {
        const json_t *d = json_object_get(it, "default");
        if (json_array_size(json_object_get(d, "allow")) == 0 &&
            json_array_size(json_object_get(d, "deny")) == 0 &&
            json_array_size(json_object_get(d, "allowWithShadowDeny")) == 0) {
            char *p = km_xasprintf("spec.rules[%zu]", i);
            km_errs_add(e, p,
                        "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined");
            free(p);
        }
    }
    validate_list(e, spec, "from", from_kinds, KM_ARRAY_LEN(from_kinds), false);
    arr = json_object_get(spec, "from");
    json_array_foreach (arr, i, it) {
        const char *a = km_jstr(json_object_get(it, "default"), "action");
        if (!a || !a[0]) {
            char *p = km_xasprintf("spec.from[%zu].default.action", i);
            km_errs_add(e, p, "must be defined");
            free(p);
        }
    }
}

static void
validate_durations(struct km_errs *e, const char *base, const json_t *obj,
                   const char *const *fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_object_get(obj, fields[i]);
        if (v) {
            char *p = km_vp_field(base, fields[i]);
            km_validate_duration(e, p, v, false);
            free(p);
        }
    }
}

static void
validate_defaults(struct km_errs *e, const char *tname, const json_t *spec)
{
    static const char *const lists[] = {"to", "from", "rules"};

    for (size_t l = 0; l < 3; l++) {
        const json_t *arr = json_object_get(spec, lists[l]), *it;
        size_t i;
        json_array_foreach (arr, i, it) {
            const json_t *d = json_object_get(it, "default");
            char *dp = km_xasprintf("spec.%s[%zu].default", lists[l], i);
            if (strcmp(tname, "MeshTimeout") == 0 && json_is_object(d)) {
                static const char *const top[] = {"connectionTimeout", "idleTimeout"};
                static const char *const http[] = {"requestTimeout", "streamIdleTimeout",
                                                   "maxStreamDuration", "maxConnectionDuration",
                                                   "requestHeadersTimeout"};
                char *hp = km_vp_field(dp, "http");
                if (json_object_size(d) == 0)
                    km_errs_add(e, dp, "at least one timeout should be configured");
                validate_durations(e, dp, d, top, 2);
                validate_durations(e, hp, json_object_get(d, "http"), http, 5);
                free(hp);
            } else if (strcmp(tname, "MeshRetry") == 0 && json_is_object(d)) {
                if (!json_object_get(d, "tcp") && !json_object_get(d, "http") &&
                    !json_object_get(d, "grpc"))
                    km_errs_add(e, dp,
                                "at least one of the 'tcp', 'http', 'grpc' must be specified");
            } else if (strcmp(tname, "MeshCircuitBreaker") == 0 && json_is_object(d)) {
                if (!json_object_get(d, "connectionLimits") &&
                    !json_object_get(d, "outlierDetection"))
                    km_errs_add(e, dp,
                                "at least one of: 'connectionLimits' or 'outlierDetection' should "
                                "be configured");
            } else if (strcmp(tname, "MeshAccessLog") == 0 && json_is_object(d)) {
                if (!json_object_get(d, "backends")) {
                    char *bp = km_vp_field(dp, "backends");
                    km_errs_add(e, bp, "must be defined");
                    free(bp);
                }
            } else if (strcmp(tname, "MeshHealthCheck") == 0 && json_is_object(d)) {
                static const char *const hc[] = {"interval", "timeout", "noTrafficInterval",
                                                 "initialJitter", "intervalJitter"};
                validate_durations(e, dp, d, hc, KM_ARRAY_LEN(hc));
            }
            free(dp);
        }
    }
}

void
km_validate_targetref_policy(const struct km_rtype *t, const struct km_resource *r,
                             struct km_errs *e)
{
    const json_t *spec = r->spec, *top = json_object_get(spec, "targetRef");
    const char *n = t->name;
    size_t nto = json_array_size(json_object_get(spec, "to"));
    size_t nfrom = json_array_size(json_object_get(spec, "from"));
    size_t nrules = json_array_size(json_object_get(spec, "rules"));

    if (schema_stage(e, spec, n) > 0)
        return;
    if (json_is_object(top))
        validate_ref(e, "spec.targetRef", top, top_kinds, KM_ARRAY_LEN(top_kinds),
                     nfrom > 0 || nrules > 0);
    if (strcmp(n, "MeshTrafficPermission") == 0) {
        validate_mtp(e, spec);
        return;
    }
    if (single_item(n)) {
        if (!json_is_object(json_object_get(spec, "default")))
            km_errs_add(e, "spec.default", "must be defined");
        return;
    }
    if (to_only(n)) {
        if (nto == 0)
            km_errs_add(e, "spec.to", "needs at least one item");
    } else if (strcmp(n, "MeshTLS") == 0) {
        if (nfrom == 0 && nrules == 0)
            km_errs_add(e, "spec", "at least one of 'from' or 'rules' has to be defined");
    } else {
        if (nrules > 0 && (nto > 0 || nfrom > 0))
            km_errs_add(e, "spec", "fields 'to' and 'from' must be empty when 'rules' is defined");
        if (nto == 0 && nfrom == 0 && nrules == 0)
            km_errs_add(e, "spec", "at least one of 'from', 'to' or 'rules' has to be defined");
    }
    validate_list(e, spec, "to", to_kinds, KM_ARRAY_LEN(to_kinds),
                  strcmp(n, "MeshHTTPRoute") != 0 && strcmp(n, "MeshTCPRoute") != 0);
    validate_list(e, spec, "from", from_kinds, KM_ARRAY_LEN(from_kinds), true);
    validate_defaults(e, n, spec);
}
