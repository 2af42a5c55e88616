/* kuma-dp network RBAC: the filters kuma-cp generates (km_rbac_filter_legacy / _mtp) compiled
 * by km_dp_rbac_compile and checked against SPIFFE / kuma:// URI SANs; shadow rules, DENY
 * action, nesting, and the NACKs of unsupported fields. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "test.h"

#include <km/common/pbjson.h>
#include <km/cp/xds_rbac.h>
#include <km/cp/xds_types.h>
#include <km/dp/rbac.h>

#include "envoy/extensions/filters/network/rbac/v3/rbac.pb-c.h"

/* Compiles the typed_config of a filter JSON (steals <filter>); NULL with <*err> set. */
static struct km_dp_rbac *
compile(json_t *filter, char **err)
{
    uint8_t *bytes;
    size_t len;
    char e[256];
    json_t *tc = json_deep_copy(json_object_get(filter, "typed_config"));
    json_decref(filter);
    json_object_del(tc, "@type");
    km_xds_register_types();
    if (km_pbjson_encode(&envoy__extensions__filters__network__rbac__v3__rbac__descriptor, tc,
                         &bytes, &len, e, sizeof(e)) != 0)
        KM_FAIL_AT("encode: %s", e);
    json_decref(tc);
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_dp_rbac *r = km_dp_rbac_compile(bytes, len, "rbac", &errs);
    free(bytes);
    if (err)
        *err = r ? NULL : km_errs_join(&errs);
    km_errs_deinit(&errs);
    return r;
}

static bool
allows(const struct km_dp_rbac *r, const char *san1, const char *san2)
{
    const char *sans[2] = {san1, san2};
    struct km_dp_rbac_result res;
    km_dp_rbac_check(r, true, sans, san2 ? 2 : (san1 ? 1 : 0), &res);
    return res.allowed;
}

static struct km_resource *
tp_new(const char *name, const char *sources_json)
{
    struct km_resource *tp = calloc(1, sizeof(*tp));
    tp->name = strdup(name);
    tp->spec = json_pack("{s:o}", "sources", json_loads(sources_json, 0, NULL));
    return tp;
}

static void
tp_free(struct km_resource *tp)
{
    free(tp->name);
    json_decref(tp->spec);
    free(tp);
}

KM_TEST(dp_rbac_legacy_traffic_permission)
{
    struct km_resource *tp = tp_new("allow-web", "[{\"match\":{\"kuma.io/service\":\"web\"}},"
                                                 "{\"match\":{\"kuma.io/service\":\"api\","
                                                 "\"version\":\"v2\"}}]");
    struct km_dp_rbac *r = compile(km_rbac_filter_legacy("default", "inbound_x.", tp), NULL);
    ASSERT(r);
    ASSERT_STR_EQ(r->stat_prefix, "inbound_x.");
    ASSERT(allows(r, "spiffe://default/web", NULL));
    ASSERT(!allows(r, "spiffe://default/webx", NULL));
    ASSERT(!allows(r, "spiffe://other/web", NULL));
    ASSERT(!allows(r, "spiffe://default/api", NULL));
    ASSERT(allows(r, "spiffe://default/api", "kuma://version/v2"));
    ASSERT(!allows(r, NULL, NULL));
    /* unauthenticated peers never match `authenticated` */
    const char *sans[1] = {"spiffe://default/web"};
    struct km_dp_rbac_result res;
    km_dp_rbac_check(r, false, sans, 1, &res);
    ASSERT(!res.allowed);
    km_dp_rbac_free(r);
    tp_free(tp);
    /* wildcard: anyone (with or without a certificate) */
    tp = tp_new("all", "[{\"match\":{\"kuma.io/service\":\"*\"}}]");
    r = compile(km_rbac_filter_legacy("default", "p.", tp), NULL);
    ASSERT(allows(r, "spiffe://default/anything", NULL));
    km_dp_rbac_free(r);
    tp_free(tp);
    /* no permission: deny everyone */
    r = compile(km_rbac_filter_legacy("default", "p.", NULL), NULL);
    ASSERT(!allows(r, "spiffe://default/web", NULL));
    km_dp_rbac_free(r);
}

KM_TEST(dp_rbac_mtp_merge_and_shadow)
{
    json_t *mesh = json_pack("{s:s}", "kind", "Mesh");
    json_t *web = json_pack("{s:s, s:s}", "kind", "MeshService", "name", "web");
    json_t *allow = json_pack("{s:s}", "action", "Allow");
    json_t *deny = json_pack("{s:s}", "action", "Deny");
    json_t *shadow = json_pack("{s:s}", "action", "AllowWithShadowDeny");
    /* Mesh: AllowWithShadowDeny, then web: Deny */
    struct km_pm_item from[2] = {{.target_ref = mesh, .conf = shadow},
                                 {.target_ref = web, .conf = deny}};
    struct km_dp_rbac *r = compile(km_rbac_filter_mtp("default", "p.", from, 2), NULL);
    ASSERT(r);
    ASSERT(!allows(r, "spiffe://default/web", NULL));
    ASSERT(allows(r, "spiffe://default/api", NULL));
    struct km_dp_rbac_result res;
    const char *sans[1] = {"spiffe://default/api"};
    km_dp_rbac_check(r, true, sans, 1, &res);
    ASSERT(res.allowed && res.shadow_evaluated && !res.shadow_allowed);
    km_dp_rbac_free(r);
    /* Mesh: Deny, then web: Allow */
    struct km_pm_item from2[2] = {{.target_ref = mesh, .conf = deny},
                                  {.target_ref = web, .conf = allow}};
    r = compile(km_rbac_filter_mtp("default", "p.", from2, 2), NULL);
    ASSERT(allows(r, "spiffe://default/web", NULL));
    ASSERT(!allows(r, "spiffe://default/api", NULL));
    km_dp_rbac_free(r);
    json_decref(mesh);
    json_decref(web);
    json_decref(allow);
    json_decref(deny);
    json_decref(shadow);
}

static json_t *
filter(const char *rules_json)
{
    return json_pack("{s:s, s:{s:s, s:o}}", "name", "rbac", "typed_config", "stat_prefix", "p.",
                     "rules", json_loads(rules_json, 0, NULL));
}

KM_TEST(dp_rbac_deny_action_and_nesting)
{
    struct km_dp_rbac *r = compile(
        filter("{\"action\":\"DENY\",\"policies\":{\"no-evil\":{\"permissions\":[{\"any\":true}],"
               "\"principals\":[{\"or_ids\":{\"ids\":[{\"authenticated\":{\"principal_name\":"
               "{\"prefix\":\"spiffe://evil/\"}}},{\"and_ids\":{\"ids\":[{\"authenticated\":{"
               "\"principal_name\":{\"suffix\":\"/db\"}}},{\"not_id\":{\"authenticated\":{"
               "\"principal_name\":{\"exact\":\"spiffe://default/db\"}}}}]}}]}}]}}}"),
        NULL);
    ASSERT(r);
    ASSERT(!allows(r, "spiffe://evil/x", NULL));
    ASSERT(!allows(r, "spiffe://other/db", NULL));
    ASSERT(allows(r, "spiffe://default/db", NULL));
    ASSERT(allows(r, "spiffe://default/web", NULL));
    km_dp_rbac_free(r);
    /* no rules at all: allow */
    json_t *f = json_pack("{s:s, s:{s:s}}", "name", "rbac", "typed_config", "stat_prefix", "p.");
    r = compile(f, NULL);
    ASSERT(allows(r, NULL, NULL));
    km_dp_rbac_free(r);
}

KM_TEST(dp_rbac_nacks)
{
    char *e = NULL;
    ASSERT(compile(filter("{\"policies\":{\"p\":{\"permissions\":[{\"destination_port\":80}],"
                          "\"principals\":[{\"any\":true}]}}}"),
                   &e) == NULL);
    ASSERT_STR_EQ(e, "rbac.rules.policies[\"p\"].permissions[0]: only `any: true` is supported");
    free(e);
    ASSERT(compile(filter("{\"policies\":{\"p\":{\"permissions\":[{\"any\":true}],"
                          "\"principals\":[{\"remote_ip\":{\"address_prefix\":\"10.0.0.0\","
                          "\"prefix_len\":8}}]}}}"),
                   &e) == NULL);
    ASSERT_STR_EQ(e, "rbac.rules.policies[\"p\"].principals[0].remote_ip: is not supported (any, "
                     "authenticated, and_ids, or_ids, not_id)");
    free(e);
    ASSERT(compile(filter("{\"action\":\"LOG\",\"policies\":{}}"), &e) == NULL);
    ASSERT_STR_EQ(e, "rbac.rules.action: only ALLOW and DENY are supported");
    free(e);
    ASSERT(compile(filter("{\"policies\":{\"p\":{\"permissions\":[{\"any\":true}],"
                          "\"principals\":[{\"and_ids\":{\"ids\":[]}}]}}}"),
                   &e) == NULL);
    ASSERT_STR_EQ(e, "rbac.rules.policies[\"p\"].principals[0].and_ids: ids must not be empty");
    free(e);
    /* deep nesting is bounded */
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_puts(&b, "{\"policies\":{\"p\":{\"permissions\":[{\"any\":true}],\"principals\":[");
    for (int i = 0; i < 40; i++)
        km_sbuf_puts(&b, "{\"not_id\":");
    km_sbuf_puts(&b, "{\"any\":true}");
    for (int i = 0; i < 40; i++)
        km_sbuf_puts(&b, "}");
    km_sbuf_puts(&b, "]}}}");
    char *js = km_sbuf_take(&b);
    ASSERT(compile(filter(js), &e) == NULL);
    ASSERT_STR_CONTAINS(e, "principals nest deeper than 32 levels");
    free(e);
    free(js);
}
