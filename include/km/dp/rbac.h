/* kuma-dp's network RBAC filter (envoy.filters.network.rbac): the policies of an inbound's
 * RBAC config compiled into a small tree, checked once per connection after the TLS handshake
 * against the peer certificate's URI SANs.
 *
 * Supported: rules and shadow_rules with action ALLOW or DENY; policies whose permissions are
 * all `any: true`; principals any, authenticated (principal_name exact / prefix / suffix /
 * contains, ignore_case; unset = any peer with a certificate), and_ids, or_ids, not_id.
 * Everything else is an error naming the field (the snapshot NACKs it). The principal name is
 * matched against each URI SAN of the peer certificate (any one matching is enough), as
 * Envoy does for certificates with URI SANs.
 *
 * ALLOW: a connection is allowed when some policy matches it; DENY: when none does. Rules
 * absent = everything allowed. Shadow rules are only counted (shadow_allowed /
 * shadow_denied).
 *
 * The HTTP RBAC filter (envoy.filters.http.rbac in an HCM's http_filters, before the router)
 * compiles to the same tree and is checked per request against the URI SANs of the
 * connection's peer (http_proxy.c, http2_proxy.c): a denied request gets 403 "RBAC: access
 * denied" (gRPC: PERMISSION_DENIED, trailers-only). */
#ifndef KM_DP_RBAC_H
#define KM_DP_RBAC_H

#include <stdbool.h>
#include <stddef.h>

#include <km/common/errs.h>

enum km_dp_principal_kind {
    KM_DP_PR_ANY = 0,
    KM_DP_PR_AUTH,  /* authenticated; match NULL = any authenticated peer */
    KM_DP_PR_AND,
    KM_DP_PR_OR,
    KM_DP_PR_NOT,   /* ids[0] */
};

enum km_dp_str_match { KM_DP_SM_EXACT = 0, KM_DP_SM_PREFIX, KM_DP_SM_SUFFIX, KM_DP_SM_CONTAINS };

struct km_dp_principal {
    enum km_dp_principal_kind kind;
    enum km_dp_str_match how;
    char *value;              /* KM_DP_PR_AUTH with a principal_name, else NULL */
    bool ignore_case;
    struct km_dp_principal *ids;
    size_t nids;
};

struct km_dp_rbac_policy {
    char *name;
    struct km_dp_principal *principals; /* any of them */
    size_t nprincipals;
};

struct km_dp_rbac_rules {
    bool present;
    bool deny;                          /* action DENY, else ALLOW */
    struct km_dp_rbac_policy *policies;
    size_t npolicies;
};

struct km_dp_rbac {
    char *stat_prefix;
    struct km_dp_rbac_rules rules, shadow;
};

/* Compiles an encoded envoy.extensions.filters.network.rbac.v3.RBAC. Errors are added to
 * <errs> with the field path "<base>.<field>". Returns NULL on any error. */
struct km_dp_rbac *km_dp_rbac_compile(const void *bytes, size_t len, const char *base,
                                      struct km_errs *errs);
/* Compiles an encoded envoy.extensions.filters.http.rbac.v3.RBAC (rules and shadow_rules;
 * matcher and shadow_matcher are errors). Its counters are
 * named "<stat_prefix>rbac.<counter>" (Envoy: "http.<HCM stat_prefix>.rbac.denied"). */
struct km_dp_rbac *km_dp_rbac_compile_http(const void *bytes, size_t len, const char *base,
                                           const char *stat_prefix, struct km_errs *errs);
void km_dp_rbac_free(struct km_dp_rbac *r);

/* Outcome of one check. */
struct km_dp_rbac_result {
    bool allowed;
    bool shadow_evaluated;
    bool shadow_allowed;
    const char *policy;   /* the matching policy's name (borrowed), or NULL */
};

/* Evaluates <r> for a peer with the given URI SANs (<authenticated>: the peer presented a
 * verified certificate). */
void km_dp_rbac_check(const struct km_dp_rbac *r, bool authenticated, const char *const *uri_sans,
                      size_t nsans, struct km_dp_rbac_result *out);

#endif
