/* Private helpers shared by the resource validators (src/cp/validate*.c). Field paths follow
 * Kuma's notation: "networking.inbound[0].tags[\"kuma.io/service\"]". */
#ifndef KM_CP_VALIDATE_H
#define KM_CP_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>

#include <km/common/errs.h>
#include <km/cp/resource.h>

/* Path builders: base + ".field", base + "[i]", base + "[\"key\"]". Caller frees. */
char *km_vp_field(const char *base, const char *field);
char *km_vp_index(const char *base, size_t i);
char *km_vp_key(const char *base, const char *key);

/* Adds an error at base.field (field may be NULL or "" for base itself). */
void km_verr_at(struct km_errs *e, const char *base, const char *field, const char *fmt, ...)
    KM_PRINTF(4, 5);

/* JSON type name as Go's json/openapi validators report it ("string", "number", "boolean",
 * "object", "array", "null"). */
const char *km_json_kind(const json_t *v);
/* Reports "<path> in body must be of type <want>: \"<got>\"" (Kuma's schema wording) when <v>
 * is present and not of type <want>; returns true when the type is right or <v> is NULL. */
bool km_schema_type(struct km_errs *e, const char *path, const json_t *v, const char *want);
/* Like km_schema_type for an enum string: "should be one of [A B C]". */
bool km_schema_enum(struct km_errs *e, const char *path, const json_t *v, const char *const *vals,
                    size_t n);

/* Small typed accessors on JSON objects (NULL/0/"" when absent or of another type). */
const char *km_jstr(const json_t *obj, const char *key);
bool km_jint(const json_t *obj, const char *key, long long *out);

/* Kuma's ValidatePort: "port must be in the range [1, 65535]"; a missing port counts as 0. */
void km_validate_port(struct km_errs *e, const char *path, const json_t *v);
/* Go-style duration; "must have a valid value" when malformed, "must have a positive value"
 * when zero or missing (when <required>). */
void km_validate_duration(struct km_errs *e, const char *path, const json_t *v, bool required);

/* Tag maps (Kuma's ValidateTags / ValidateSelector). */
struct km_tags_opts {
    bool require_at_least_one;
    bool require_service;
    bool selector; /* values may be "*" and contain '/' (selector rules) */
};
void km_validate_tags(struct km_errs *e, const char *path, const json_t *tags,
                      const struct km_tags_opts *o);
/* sources/destinations/selectors: array of {match: tags}. */
void km_validate_selectors(struct km_errs *e, const char *path, const json_t *arr,
                           bool require_one, const struct km_tags_opts *o);

/* RFC 1123 / RFC 1035 checks as Kubernetes words them. */
bool km_is_dns1123_label(const char *s);
bool km_is_dns1123_subdomain(const char *s);
bool km_is_dns1035_label(const char *s);
bool km_is_ip(const char *s);

/* Per-family validators (registered in the type table). */
void km_validate_mesh_res(const struct km_rtype *t, const struct km_resource *r,
                          struct km_errs *e);
void km_validate_dataplane(const struct km_rtype *t, const struct km_resource *r,
                           struct km_errs *e);
void km_validate_legacy(const struct km_rtype *t, const struct km_resource *r,
                        struct km_errs *e);
void km_validate_targetref_policy(const struct km_rtype *t, const struct km_resource *r,
                                  struct km_errs *e);
void km_validate_secret(const struct km_rtype *t, const struct km_resource *r,
                        struct km_errs *e);
void km_validate_zone_proxy(const struct km_rtype *t, const struct km_resource *r,
                            struct km_errs *e);
void km_validate_new_resource(const struct km_rtype *t, const struct km_resource *r,
                              struct km_errs *e);

#endif
