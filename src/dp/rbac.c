/* kuma-dp's network and HTTP RBAC filters: compile (from the xDS bytes) and check (see
 * rbac.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <km/common/pb.h>
#include <km/common/util.h>
#include <km/dp/rbac.h>

#include "envoy/config/rbac/v3/rbac.pb-c.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb-c.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb-c.h"

#define RBAC_MAX_DEPTH 32
#define RBAC_PATHLEN   512

typedef Envoy__Config__Rbac__V3__Principal pb_principal;
typedef Envoy__Config__Rbac__V3__RBAC pb_rules;
typedef Envoy__Type__Matcher__V3__StringMatcher pb_sm;

/* A field path into a RBAC_PATHLEN buffer (truncation is fine for messages). */
static void KM_PRINTF(2, 3)
    pathf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, RBAC_PATHLEN, fmt, ap);
    va_end(ap);
}

static void
principal_deinit(struct km_dp_principal *p)
{
    free(p->value);
    for (size_t i = 0; i < p->nids; i++)
        principal_deinit(&p->ids[i]);
    free(p->ids);
}

static void
rules_deinit(struct km_dp_rbac_rules *r)
{
    for (size_t i = 0; i < r->npolicies; i++) {
        struct km_dp_rbac_policy *pol = &r->policies[i];
        free(pol->name);
        for (size_t j = 0; j < pol->nprincipals; j++)
            principal_deinit(&pol->principals[j]);
        free(pol->principals);
    }
    free(r->policies);
}

void
km_dp_rbac_free(struct km_dp_rbac *r)
{
    if (!r)
        return;
    free(r->stat_prefix);
    rules_deinit(&r->rules);
    rules_deinit(&r->shadow);
    free(r);
}

static bool
compile_principal(const pb_principal *pp, const char *path, int depth, struct km_errs *errs,
                  struct km_dp_principal *out)
{
    char p[RBAC_PATHLEN];
    const Envoy__Config__Rbac__V3__Principal__Set *set = NULL;

    if (depth > RBAC_MAX_DEPTH) {
        km_errs_add(errs, path, "principals nest deeper than %d levels", RBAC_MAX_DEPTH);
        return false;
    }
    switch (pp->identifier_case) {
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_ANY:
        if (!pp->any) {
            pathf(p, "%s.any", path);
            km_errs_add(errs, p, "must be true");
            return false;
        }
        out->kind = KM_DP_PR_ANY;
        return true;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_AUTHENTICATED: {
        const pb_sm *m = pp->authenticated ? pp->authenticated->principal_name : NULL;
        out->kind = KM_DP_PR_AUTH;
        if (!m)
            return true;
        pathf(p, "%s.authenticated.principal_name", path);
        out->ignore_case = m->ignore_case;
        switch (m->match_pattern_case) {
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
            out->how = KM_DP_SM_EXACT;
            out->value = km_xstrdup(m->exact);
            return true;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
            out->how = KM_DP_SM_PREFIX;
            out->value = km_xstrdup(m->prefix);
            return true;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
            out->how = KM_DP_SM_SUFFIX;
            out->value = km_xstrdup(m->suffix);
            return true;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
            out->how = KM_DP_SM_CONTAINS;
            out->value = km_xstrdup(m->contains);
            return true;
        default:
            km_errs_add(errs, p, "only exact, prefix, suffix and contains are supported");
            return false;
        }
    }
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_AND_IDS:
        set = pp->and_ids;
        out->kind = KM_DP_PR_AND;
        pathf(p, "%s.and_ids", path);
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_OR_IDS:
        set = pp->or_ids;
        out->kind = KM_DP_PR_OR;
        pathf(p, "%s.or_ids", path);
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_NOT_ID:
        out->kind = KM_DP_PR_NOT;
        out->ids = km_xcalloc(1, sizeof(*out->ids));
        out->nids = 1;
        pathf(p, "%s.not_id", path);
        if (!pp->not_id) {
            km_errs_add(errs, p, "is required");
            return false;
        }
        return compile_principal(pp->not_id, p, depth + 1, errs, &out->ids[0]);
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER__NOT_SET:
        km_errs_add(errs, path, "an identifier is required");
        return false;
    default: {
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
            &envoy__config__rbac__v3__principal__descriptor, (unsigned)pp->identifier_case);
        pathf(p, "%s.%s", path, f ? f->name : "identifier");
        km_errs_add(errs, p, "is not supported (any, authenticated, and_ids, or_ids, not_id)");
        return false;
    }
    }
    size_t n = set ? set->n_ids : 0;
    if (n == 0) {
        km_errs_add(errs, p, "ids must not be empty");
        return false;
    }
    out->ids = km_xcalloc(n, sizeof(*out->ids));
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        char q[RBAC_PATHLEN];
        pathf(q, "%s.ids[%zu]", p, i);
        out->nids++;
        if (!compile_principal(set->ids[i], q, depth + 1, errs, &out->ids[i]))
            ok = false;
    }
    return ok;
}

static int
policy_cmp(const void *a, const void *b)
{
    return strcmp(((const struct km_dp_rbac_policy *)a)->name,
                  ((const struct km_dp_rbac_policy *)b)->name);
}

static bool
compile_rules(const pb_rules *pr, const char *path, struct km_errs *errs,
              struct km_dp_rbac_rules *out)
{
    char p[RBAC_PATHLEN];
    bool ok = true;

    out->present = true;
    if (pr->action == ENVOY__CONFIG__RBAC__V3__RBAC__ACTION__DENY) {
        out->deny = true;
    } else if (pr->action != ENVOY__CONFIG__RBAC__V3__RBAC__ACTION__ALLOW) {
        pathf(p, "%s.action", path);
        km_errs_add(errs, p, "only ALLOW and DENY are supported");
        return false;
    }
    out->policies = km_xcalloc(pr->n_policies + 1, sizeof(*out->policies));
    for (size_t i = 0; i < pr->n_policies; i++) {
        const Envoy__Config__Rbac__V3__RBAC__PoliciesEntry *e = pr->policies[i];
        const Envoy__Config__Rbac__V3__Policy *pol = e->value;
        struct km_dp_rbac_policy *out_pol = &out->policies[out->npolicies++];
        out_pol->name = km_xstrdup(e->key ? e->key : "");
        pathf(p, "%s.policies[\"%.100s\"]", path, out_pol->name);
        if (!pol || pol->n_permissions == 0 || pol->n_principals == 0) {
            km_errs_add(errs, p, "permissions and principals must not be empty");
            ok = false;
            continue;
        }
        for (size_t j = 0; j < pol->n_permissions; j++) {
            const Envoy__Config__Rbac__V3__Permission *perm = pol->permissions[j];
            if (perm->rule_case != ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_ANY || !perm->any) {
                char q[RBAC_PATHLEN];
                pathf(q, "%s.permissions[%zu]", p, j);
                km_errs_add(errs, q, "only `any: true` is supported");
                ok = false;
            }
        }
        out_pol->principals = km_xcalloc(pol->n_principals, sizeof(*out_pol->principals));
        for (size_t j = 0; j < pol->n_principals; j++) {
            char q[RBAC_PATHLEN];
            pathf(q, "%s.principals[%zu]", p, j);
            out_pol->nprincipals++;
            if (!compile_principal(pol->principals[j], q, 0, errs, &out_pol->principals[j]))
                ok = false;
        }
    }
    if (out->npolicies > 1)
        qsort(out->policies, out->npolicies, sizeof(*out->policies), policy_cmp);
    return ok;
}

struct km_dp_rbac *
km_dp_rbac_compile(const void *bytes, size_t len, const char *base, struct km_errs *errs)
{
    char err[256], p[RBAC_PATHLEN];
    Envoy__Extensions__Filters__Network__Rbac__V3__RBAC *m =
        (Envoy__Extensions__Filters__Network__Rbac__V3__RBAC *)km_pb_unpack(
            &envoy__extensions__filters__network__rbac__v3__rbac__descriptor, bytes, len, err,
            sizeof(err));
    if (!m) {
        km_errs_add(errs, base, "cannot decode the RBAC filter: %s", err);
        return NULL;
    }
    struct km_dp_rbac *r = km_xcalloc(1, sizeof(*r));
    bool ok = true;
    r->stat_prefix = km_xstrdup(m->stat_prefix ? m->stat_prefix : "");
    if (m->enforcement_type !=
        ENVOY__EXTENSIONS__FILTERS__NETWORK__RBAC__V3__RBAC__ENFORCEMENT_TYPE__ONE_TIME_ON_FIRST_BYTE) {
        pathf(p, "%s.enforcement_type", base);
        km_errs_add(errs, p, "only ONE_TIME_ON_FIRST_BYTE is supported");
        ok = false;
    }
    if (m->rules) {
        pathf(p, "%s.rules", base);
        if (!compile_rules(m->rules, p, errs, &r->rules))
            ok = false;
    }
    if (m->shadow_rules) {
        pathf(p, "%s.shadow_rules", base);
        if (!compile_rules(m->shadow_rules, p, errs, &r->shadow))
            ok = false;
    }
    km_pb_free(&m->base);
    if (!ok) {
        km_dp_rbac_free(r);
        return NULL;
    }
    return r;
}

struct km_dp_rbac *
km_dp_rbac_compile_http(const void *bytes, size_t len, const char *base, const char *stat_prefix,
                        struct km_errs *errs)
{
    char err[256], p[RBAC_PATHLEN];
    Envoy__Extensions__Filters__Http__Rbac__V3__RBAC *m =
        (Envoy__Extensions__Filters__Http__Rbac__V3__RBAC *)km_pb_unpack(
            &envoy__extensions__filters__http__rbac__v3__rbac__descriptor, bytes, len, err,
            sizeof(err));
    if (!m) {
        km_errs_add(errs, base, "cannot decode the HTTP RBAC filter: %s", err);
        return NULL;
    }
    struct km_dp_rbac *r = km_xcalloc(1, sizeof(*r));
    bool ok = true;
    r->stat_prefix = km_xstrdup(stat_prefix ? stat_prefix : "");
    /* matcher (4) and shadow_matcher (5) are not in our subset: refuse them rather than
     * allowing everything */
    for (unsigned i = 0; i < m->base.n_unknown_fields; i++) {
        uint32_t tag = m->base.unknown_fields[i].tag;
        if (tag == 4 || tag == 5) {
            pathf(p, "%s.%s", base, tag == 4 ? "matcher" : "shadow_matcher");
            km_errs_add(errs, p, "is not supported (rules, shadow_rules)");
            ok = false;
        }
    }
    if (m->rules) {
        pathf(p, "%s.rules", base);
        if (!compile_rules(m->rules, p, errs, &r->rules))
            ok = false;
    }
    if (m->shadow_rules) {
        pathf(p, "%s.shadow_rules", base);
        if (!compile_rules(m->shadow_rules, p, errs, &r->shadow))
            ok = false;
    }
    km_pb_free(&m->base);
    if (!ok) {
        km_dp_rbac_free(r);
        return NULL;
    }
    return r;
}

/* ---- checking ---- */

static bool
str_match(const struct km_dp_principal *p, const char *s)
{
    size_t ls = strlen(s), lv = strlen(p->value);
    switch (p->how) {
    case KM_DP_SM_EXACT:
        return p->ignore_case ? strcasecmp(s, p->value) == 0 : strcmp(s, p->value) == 0;
    case KM_DP_SM_PREFIX:
        return ls >= lv && (p->ignore_case ? strncasecmp(s, p->value, lv) == 0
                                           : strncmp(s, p->value, lv) == 0);
    case KM_DP_SM_SUFFIX:
        return ls >= lv && (p->ignore_case ? strcasecmp(s + ls - lv, p->value) == 0
                                           : strcmp(s + ls - lv, p->value) == 0);
    case KM_DP_SM_CONTAINS:
        return p->ignore_case ? strcasestr(s, p->value) != NULL : strstr(s, p->value) != NULL;
    }
    return false;
}

static bool
principal_match(const struct km_dp_principal *p, bool authenticated, const char *const *sans,
                size_t nsans)
{
    switch (p->kind) {
    case KM_DP_PR_ANY:
        return true;
    case KM_DP_PR_AUTH:
        if (!authenticated)
            return false;
        if (!p->value)
            return true;
        for (size_t i = 0; i < nsans; i++)
            if (sans[i] && str_match(p, sans[i]))
                return true;
        return false;
    case KM_DP_PR_AND:
        for (size_t i = 0; i < p->nids; i++)
            if (!principal_match(&p->ids[i], authenticated, sans, nsans))
                return false;
        return true;
    case KM_DP_PR_OR:
        for (size_t i = 0; i < p->nids; i++)
            if (principal_match(&p->ids[i], authenticated, sans, nsans))
                return true;
        return false;
    case KM_DP_PR_NOT:
        return !principal_match(&p->ids[0], authenticated, sans, nsans);
    }
    return false;
}

/* Whether <r> allows the peer; <policy> receives the matching policy's name. */
static bool
rules_allow(const struct km_dp_rbac_rules *r, bool authenticated, const char *const *sans,
            size_t nsans, const char **policy)
{
    bool matched = false;
    for (size_t i = 0; i < r->npolicies && !matched; i++) {
        const struct km_dp_rbac_policy *pol = &r->policies[i];
        for (size_t j = 0; j < pol->nprincipals && !matched; j++)
            if (principal_match(&pol->principals[j], authenticated, sans, nsans)) {
                matched = true;
                if (policy)
                    *policy = pol->name;
            }
    }
    return r->deny ? !matched : matched;
}

void
km_dp_rbac_check(const struct km_dp_rbac *r, bool authenticated, const char *const *uri_sans,
                 size_t nsans, struct km_dp_rbac_result *out)
{
    memset(out, 0, sizeof(*out));
    out->allowed = true;
    if (!r)
        return;
    if (r->rules.present)
        out->allowed = rules_allow(&r->rules, authenticated, uri_sans, nsans, &out->policy);
    if (r->shadow.present) {
        out->shadow_evaluated = true;
        out->shadow_allowed = rules_allow(&r->shadow, authenticated, uri_sans, nsans, NULL);
    }
}
