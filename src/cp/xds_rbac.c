/* Traffic permissions -> Envoy network RBAC filter (see include/km/cp/xds_rbac.h). */
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/xds_rbac.h>

#define MTP_POLICY_NAME "MeshTrafficPermission"

static json_t *
must(json_t *j)
{
    if (j == NULL) {
        km_log(KM_LOG_ERROR, "rbac", "out of memory building JSON");
        abort();
    }
    return j;
}

static json_t *
principal_exact(const char *name)
{
    return must(json_pack("{s:{s:{s:s}}}", "authenticated", "principal_name", "exact", name));
}

static json_t *
principal_any(void)
{
    return must(json_pack("{s:b}", "any", 1));
}

static bool
principal_is_any(const json_t *p)
{
    return json_is_true(json_object_get(p, "any"));
}

/* and_ids / or_ids of <ids> (stolen); a single id is returned as is. */
static json_t *
principal_set(const char *op, json_t *ids)
{
    json_t *one;

    if (json_array_size(ids) == 1) {
        one = json_incref(json_array_get(ids, 0));
        json_decref(ids);
        return one;
    }
    return must(json_pack("{s:{s:o}}", op, "ids", ids));
}

static json_t *
principal_tag(const char *mesh, const char *tag, const char *value)
{
    char *s = strcmp(tag, KM_TAG_SERVICE) == 0 ? km_xasprintf("spiffe://%s/%s", mesh, value)
                                               : km_xasprintf("kuma://%s/%s", tag, value);
    json_t *p = principal_exact(s);
    free(s);
    return p;
}

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Principals for the tags of <tags> in key order, service last (Kuma: kuma:// ones, then the
 * SPIFFE one); '*' values skipped when <wildcards>. */
static json_t *
principal_tags(const char *mesh, const json_t *tags, bool wildcards)
{
    size_t n = json_object_size(tags), k = 0;
    const char **keys = km_xcalloc(n + 1, sizeof(*keys));
    const char *key, *svc = NULL;
    json_t *v, *ids = must(json_array());

    json_object_foreach((json_t *)tags, key, v) {
        const char *val = json_string_value(v);
        if (val == NULL || (wildcards && strcmp(val, "*") == 0))
            continue;
        if (strcmp(key, KM_TAG_SERVICE) == 0)
            svc = val;
        else
            keys[k++] = key;
    }
    qsort(keys, k, sizeof(*keys), cmp_cstr);
    for (size_t i = 0; i < k; i++)
        json_array_append_new(ids, principal_tag(mesh, keys[i],
                                                 json_string_value(json_object_get(tags,
                                                                                   keys[i]))));
    if (svc)
        json_array_append_new(ids, principal_tag(mesh, KM_TAG_SERVICE, svc));
    free(keys);
    if (json_array_size(ids) == 0) {
        json_decref(ids);
        return principal_any();
    }
    return principal_set("and_ids", ids);
}

json_t *
km_rbac_principal_from_tags(const char *mesh, const json_t *selector)
{
    return principal_tags(mesh ? mesh : "", selector, true);
}

json_t *
km_rbac_principal_from_ref(const char *mesh, const json_t *ref)
{
    const char *kind = json_string_value(json_object_get(ref, "kind"));
    const char *name = json_string_value(json_object_get(ref, "name"));
    json_t *tags, *p;

    if (kind == NULL)
        return NULL;
    if (strcmp(kind, "Mesh") == 0)
        return principal_any();
    if (strcmp(kind, "MeshSubset") == 0)
        return principal_tags(mesh ? mesh : "", json_object_get(ref, "tags"), false);
    if ((strcmp(kind, "MeshService") != 0 && strcmp(kind, "MeshServiceSubset") != 0) ||
        name == NULL || *name == '\0')
        return NULL;
    tags = must(json_object());
    if (strcmp(kind, "MeshServiceSubset") == 0) {
        const json_t *t = json_object_get(ref, "tags");
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)t, k, v)
            if (json_is_string(v))
                json_object_set(tags, k, v);
    }
    json_object_set_new(tags, KM_TAG_SERVICE, must(json_string(name)));
    p = principal_tags(mesh ? mesh : "", tags, false);
    json_decref(tags);
    return p;
}

static json_t *
policy_json(json_t *principals)
{
    return must(json_pack("{s:[{s:b}], s:o}", "permissions", "any", 1, "principals", principals));
}

static json_t *
filter_json(const char *stat_prefix, json_t *rules, json_t *shadow)
{
    json_t *tc = must(json_pack("{s:s, s:s, s:o}", "@type", KM_RBAC_TYPE_URL, "stat_prefix",
                                stat_prefix ? stat_prefix : "", "rules", rules));
    if (shadow)
        json_object_set_new(tc, "shadow_rules", shadow);
    return must(json_pack("{s:s, s:o}", "name", KM_RBAC_FILTER_NAME, "typed_config", tc));
}

json_t *
km_rbac_filter_legacy(const char *mesh, const char *stat_prefix, const struct km_resource *tp)
{
    json_t *policies = must(json_object());
    const json_t *srcs = tp ? json_object_get(tp->spec, "sources") : NULL;

    if (json_array_size(srcs) > 0) {
        json_t *principals = must(json_array());
        for (size_t i = 0; i < json_array_size(srcs); i++)
            json_array_append_new(principals,
                                  km_rbac_principal_from_tags(
                                      mesh, json_object_get(json_array_get(srcs, i), "match")));
        json_object_set_new(policies, tp->name ? tp->name : "", policy_json(principals));
    }
    return filter_json(stat_prefix, must(json_pack("{s:s, s:o}", "action", "ALLOW", "policies",
                                                   policies)),
                       NULL);
}

enum mtp_action { MTP_NONE = 0, MTP_ALLOW, MTP_DENY, MTP_SHADOW };

static enum mtp_action
mtp_action(const json_t *conf)
{
    const char *a = json_string_value(json_object_get(conf, "action"));
    if (a == NULL)
        return MTP_NONE;
    if (strcmp(a, "Allow") == 0)
        return MTP_ALLOW;
    if (strcmp(a, "Deny") == 0)
        return MTP_DENY;
    if (strcmp(a, "AllowWithShadowDeny") == 0)
        return MTP_SHADOW;
    return MTP_NONE;
}

struct mtp_entry {
    enum mtp_action action;
    json_t *principal; /* owned */
};

/* Principal of the callers that entry <i> applies to and that no later entry with an action
 * in <override> (a bit set of 1 << action) takes away; NULL when none is left. */
static json_t *
mtp_effective(const struct mtp_entry *e, size_t n, size_t i, unsigned override)
{
    json_t *later = must(json_array());

    for (size_t j = i + 1; j < n; j++) {
        if (!(override & (1u << e[j].action)))
            continue;
        if (principal_is_any(e[j].principal)) {
            json_decref(later);
            return NULL;
        }
        json_array_append(later, e[j].principal);
    }
    if (json_array_size(later) == 0) {
        json_decref(later);
        return json_incref(e[i].principal);
    }
    json_t *neg = must(json_pack("{s:o}", "not_id", principal_set("or_ids", later)));
    if (principal_is_any(e[i].principal))
        return neg;
    return principal_set("and_ids", must(json_pack("[O, o]", e[i].principal, neg)));
}

json_t *
km_rbac_filter_mtp(const char *mesh, const char *stat_prefix, const struct km_pm_item *from,
                   size_t nfrom)
{
    struct mtp_entry *e = km_xcalloc(nfrom + 1, sizeof(*e));
    json_t *allow = must(json_array()), *shadow = must(json_array());
    json_t *policies = must(json_object()), *shadow_rules = NULL;
    size_t n = 0;

    for (size_t i = 0; i < nfrom; i++) {
        enum mtp_action a = mtp_action(from[i].conf);
        json_t *p;
        if (a == MTP_NONE)
            continue;
        p = km_rbac_principal_from_ref(mesh, from[i].target_ref);
        if (p == NULL)
            continue;
        e[n].action = a;
        e[n++].principal = p;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *p;
        if (e[i].action == MTP_DENY)
            continue;
        p = mtp_effective(e, n, i, 1u << MTP_DENY);
        if (p)
            json_array_append_new(allow, p);
        if (e[i].action == MTP_SHADOW) {
            p = mtp_effective(e, n, i, (1u << MTP_DENY) | (1u << MTP_ALLOW));
            if (p)
                json_array_append_new(shadow, p);
        }
    }
    if (json_array_size(allow) > 0)
        json_object_set_new(policies, MTP_POLICY_NAME, policy_json(json_incref(allow)));
    if (json_array_size(shadow) > 0)
        shadow_rules = must(json_pack("{s:s, s:{s:o}}", "action", "DENY", "policies",
                                      MTP_POLICY_NAME, policy_json(json_incref(shadow))));
    json_decref(allow);
    json_decref(shadow);
    for (size_t i = 0; i < n; i++)
        json_decref(e[i].principal);
    free(e);
    return filter_json(stat_prefix,
                       must(json_pack("{s:s, s:o}", "action", "ALLOW", "policies", policies)),
                       shadow_rules);
}

json_t *
km_rbac_inbound_filter(const char *mesh, const struct km_resource *dataplane, size_t inbound,
                       const char *stat_prefix, const struct km_resource *const *policies,
                       size_t npolicies, enum km_rbac_source *source,
                       const struct km_resource **winner)
{
    struct km_pm_result r;
    json_t *out = NULL;
    const struct km_resource *tp = NULL;
    const json_t *in;

    if (source)
        *source = KM_RBAC_NONE;
    if (winner)
        *winner = NULL;
    km_pm_match("MeshTrafficPermission", dataplane, policies, npolicies, &r);
    if (inbound < r.ninbounds && r.inbounds[inbound].nfrom > 0) {
        out = km_rbac_filter_mtp(mesh, stat_prefix, r.inbounds[inbound].from,
                                 r.inbounds[inbound].nfrom);
        if (source)
            *source = KM_RBAC_MESH_TRAFFIC_PERMISSION;
    }
    km_pm_result_deinit(&r);
    if (out)
        return out;
    in = json_array_get(
        json_object_get(json_object_get(dataplane ? dataplane->spec : NULL, "networking"),
                        "inbound"),
        inbound);
    if (json_is_object(in))
        tp = km_legacy_select_inbound("TrafficPermission", json_object_get(in, "tags"),
                                      policies, npolicies, NULL);
    if (tp && source)
        *source = KM_RBAC_TRAFFIC_PERMISSION;
    if (winner)
        *winner = tp;
    return km_rbac_filter_legacy(mesh, stat_prefix, tp);
}
