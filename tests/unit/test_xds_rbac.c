/* Traffic permissions compiled to Envoy network RBAC: principals for both policy kinds, and the
 * output packs into our protobuf schema (envoy.config.listener.v3.Filter with the RBAC Any) and
 * decodes back unchanged. */
#include <jansson.h>
#include <stdlib.h>

#include <km/common/pbjson.h>
#include <km/common/yamljson.h>
#include <km/cp/xds_rbac.h>
#include <km/cp/xds_types.h>

#include "test.h"

static json_t *
yj(const char *yaml)
{
    char err[256];
    json_t *t = km_yaml_load(yaml, strlen(yaml), err, sizeof(err));
    if (!t)
        KM_FAIL_AT("yaml: %s", err);
    return t;
}

static struct km_resource *
res_at(const char *yaml, int64_t created)
{
    json_t *doc = yj(yaml);
    struct km_errs errs;
    struct km_resource *r;

    km_errs_init(&errs);
    r = km_resource_decode(doc, NULL, &errs);
    if (!r)
        KM_FAIL_AT("decode: %s", errs.n ? errs.v[0].reason : "?");
    km_errs_deinit(&errs);
    json_decref(doc);
    r->creation_us = created;
    return r;
}

static char *
dumps(const json_t *j)
{
    return j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : km_xstrdup("null");
}

/* Packs the filter as envoy.config.listener.v3.Filter and checks it decodes to the same JSON. */
static void
check_packs(const json_t *filter)
{
    const ProtobufCMessageDescriptor *d;
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[512] = "";
    json_t *back;
    char *a, *b;

    km_xds_register_types();
    d = km_pbjson_lookup("envoy.config.listener.v3.Filter");
    ASSERT(d != NULL);
    if (km_pbjson_encode(d, filter, &buf, &len, err, sizeof(err)) != 0)
        KM_FAIL_AT("does not fit our schema: %s", err);
    back = km_pbjson_decode(d, buf, len, err, sizeof(err));
    if (back == NULL)
        KM_FAIL_AT("decode: %s", err);
    a = dumps(filter);
    b = dumps(back);
    /* ALLOW is the enum's zero value: proto3 drops it on the wire */
    if (strcmp(a, b) != 0) {
        json_t *fixed = json_deep_copy(filter);
        json_t *tc = json_object_get(fixed, "typed_config");
        json_t *rules = json_object_get(tc, "rules");
        if (strcmp(json_string_value(json_object_get(rules, "action")), "ALLOW") == 0)
            json_object_del(rules, "action");
        if (json_object_size(json_object_get(rules, "policies")) == 0)
            json_object_del(rules, "policies");
        free(a);
        a = dumps(fixed);
        json_decref(fixed);
    }
    if (strcmp(a, b) != 0)
        KM_FAIL_AT("round trip:\n  %s\n  %s", a, b);
    /* the rules message is on the wire even when it has no policy (deny all) */
    ASSERT(json_object_get(json_object_get(back, "typed_config"), "rules") != NULL);
    free(a);
    free(b);
    free(buf);
    json_decref(back);
}

static const json_t *
tc_of(const json_t *filter)
{
    return json_object_get(filter, "typed_config");
}

/* rules.policies as compact JSON */
static char *
policies_of(const json_t *filter, const char *which)
{
    return dumps(json_object_get(json_object_get(tc_of(filter), which), "policies"));
}

#define ASSERT_POLICIES(filter, which, want)                                                       \
    do {                                                                                           \
        char *p_ = policies_of((filter), (which));                                                 \
        if (strcmp(p_, (want)) != 0)                                                               \
            KM_FAIL_AT("%s:\n  got  %s\n  want %s", (which), p_, (want));                          \
        free(p_);                                                                                  \
    } while (0)

#define ANY_PERM "\"permissions\":[{\"any\":true}]"
#define SPIFFE(s) "{\"authenticated\":{\"principal_name\":{\"exact\":\"spiffe://default/" s "\"}}}"
#define KUMA(t, v) "{\"authenticated\":{\"principal_name\":{\"exact\":\"kuma://" t "/" v "\"}}}"

static struct km_resource *
tp(const char *name, const char *sources, const char *dest, int64_t created)
{
    char y[1024];
    snprintf(y, sizeof(y),
             "type: TrafficPermission\nmesh: default\nname: %s\nsources:\n%s"
             "destinations:\n- match: %s\n",
             name, sources, dest);
    return res_at(y, created);
}

KM_TEST(xds_rbac_legacy_principals)
{
    static const struct {
        const char *sources, *want;
    } cases[] = {
        /* allow all */
        {"- match: {kuma.io/service: '*'}\n",
         "{\"allow\":{" ANY_PERM ",\"principals\":[{\"any\":true}]}}"},
        /* service to service */
        {"- match: {kuma.io/service: web}\n",
         "{\"allow\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "]}}"},
        /* tags: all must match; wildcard values add nothing */
        {"- match: {kuma.io/service: web, version: v1, env: '*', zone: eu}\n",
         "{\"allow\":{" ANY_PERM ",\"principals\":[{\"and_ids\":{\"ids\":[" KUMA("version", "v1")
         "," KUMA("zone", "eu") "," SPIFFE("web") "]}}]}}"},
        /* several sources: any of them */
        {"- match: {kuma.io/service: web}\n- match: {team: ops}\n",
         "{\"allow\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "," KUMA("team", "ops") "]}}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct km_resource *p = tp("allow", cases[i].sources, "{kuma.io/service: backend}", 1);
        json_t *f = km_rbac_filter_legacy("default", "inbound:10.0.0.1:8080.", p);
        ASSERT_STR_EQ(json_string_value(json_object_get(f, "name")),
                      "envoy.filters.network.rbac");
        ASSERT_STR_EQ(json_string_value(json_object_get(tc_of(f), "@type")),
                      "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC");
        ASSERT_STR_EQ(json_string_value(json_object_get(tc_of(f), "stat_prefix")),
                      "inbound:10.0.0.1:8080.");
        ASSERT_STR_EQ(json_string_value(
                          json_object_get(json_object_get(tc_of(f), "rules"), "action")),
                      "ALLOW");
        ASSERT_POLICIES(f, "rules", cases[i].want);
        check_packs(f);
        json_decref(f);
        km_resource_free(p);
    }
}

static struct km_resource *
dp_res(void)
{
    return res_at("type: Dataplane\nmesh: default\nname: backend-1\n"
                  "networking:\n  address: 10.0.0.2\n  inbound:\n"
                  "  - port: 8080\n    tags: {kuma.io/service: backend, version: v1}\n"
                  "  - port: 9090\n    tags: {kuma.io/service: metrics}\n",
                  1);
}

KM_TEST(xds_rbac_legacy_winner_and_default_deny)
{
    /* the most specific permission for the inbound wins alone (Kuma 2.x does not merge
     * TrafficPermissions: the broader allow-all does not add its sources) */
    struct km_resource *p[] = {
        tp("allow-all", "- match: {kuma.io/service: '*'}\n", "{kuma.io/service: '*'}", 9),
        tp("web-to-backend", "- match: {kuma.io/service: web}\n", "{kuma.io/service: backend}",
           1),
        tp("other-mesh-svc", "- match: {kuma.io/service: web}\n", "{kuma.io/service: db}", 1),
    };
    const struct km_resource *list[] = {p[0], p[1], p[2]};
    struct km_resource *dp = dp_res();
    enum km_rbac_source src;
    const struct km_resource *w;
    json_t *f;

    f = km_rbac_inbound_filter("default", dp, 0, "in.", list, 3, &src, &w);
    ASSERT_INT_EQ(src, KM_RBAC_TRAFFIC_PERMISSION);
    ASSERT(w == p[1]);
    ASSERT_POLICIES(f, "rules",
                    "{\"web-to-backend\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "]}}");
    check_packs(f);
    json_decref(f);
    /* metrics inbound: only the allow-all one */
    f = km_rbac_inbound_filter("default", dp, 1, "in.", list, 3, &src, &w);
    ASSERT(w == p[0]);
    ASSERT_POLICIES(f, "rules", "{\"allow-all\":{" ANY_PERM ",\"principals\":[{\"any\":true}]}}");
    json_decref(f);

    /* no permission: an ALLOW filter without policies denies everything */
    list[0] = NULL;
    f = km_rbac_inbound_filter("default", dp, 1, "in.", list, 3, &src, &w);
    ASSERT_INT_EQ(src, KM_RBAC_NONE);
    ASSERT(w == NULL);
    ASSERT_POLICIES(f, "rules", "{}");
    ASSERT(json_object_get(tc_of(f), "shadow_rules") == NULL);
    check_packs(f);
    json_decref(f);
    /* an inbound index out of range: deny all, no crash */
    f = km_rbac_inbound_filter("default", dp, 7, "in.", list, 3, &src, NULL);
    ASSERT_POLICIES(f, "rules", "{}");
    json_decref(f);
    for (size_t i = 0; i < 3; i++)
        km_resource_free(p[i]);
    km_resource_free(dp);
}

static struct km_resource *
mtp(const char *name, const char *top, const char *from)
{
    char y[2048];
    snprintf(y, sizeof(y),
             "type: MeshTrafficPermission\nmesh: default\nname: %s\nspec:\n  targetRef: %s\n"
             "  from:\n%s",
             name, top, from);
    return res_at(y, 1);
}

static json_t *
mtp_filter(struct km_resource **p, size_t n, size_t inbound, enum km_rbac_source *src)
{
    const struct km_resource **list = km_xcalloc(n + 1, sizeof(*list));
    struct km_resource *dp = dp_res();
    json_t *f;

    for (size_t i = 0; i < n; i++)
        list[i] = p[i];
    f = km_rbac_inbound_filter("default", dp, inbound, "in.", list, n, src, NULL);
    check_packs(f);
    free(list);
    km_resource_free(dp);
    return f;
}

KM_TEST(xds_rbac_mtp_cases)
{
    static const struct {
        const char *name;
        const char *top1, *from1, *top2, *from2; /* second policy optional */
        const char *rules, *shadow;
    } cases[] = {
        {"allow all", "{kind: Mesh}", "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
         NULL, NULL, "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"any\":true}]}}",
         "null"},
        {"deny all", "{kind: Mesh}", "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n",
         NULL, NULL, "{}", "null"},
        {"service to service", "{kind: MeshService, name: backend}",
         "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n", NULL,
         NULL, "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "]}}",
         "null"},
        {"subset tags", "{kind: Mesh}",
         "  - targetRef: {kind: MeshSubset, tags: {kuma.io/service: web, version: v2}}\n"
         "    default: {action: Allow}\n",
         NULL, NULL,
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"and_ids\":{\"ids\":["
         KUMA("version", "v2") "," SPIFFE("web") "]}}]}}",
         "null"},
        /* a later deny takes the denied callers out of the earlier allow */
        {"deny beats earlier allow", "{kind: Mesh}",
         "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n"
         "  - targetRef: {kind: MeshService, name: evil}\n    default: {action: Deny}\n",
         NULL, NULL,
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"not_id\":" SPIFFE("evil")
         "}]}}",
         "null"},
        /* a more specific top-level policy is applied later: its allow re-admits web over the
         * mesh-wide deny */
        {"specific allow over mesh deny", "{kind: Mesh}",
         "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n",
         "{kind: MeshService, name: backend}",
         "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "]}}", "null"},
        /* ... and a more specific deny beats a mesh-wide allow */
        {"specific deny over mesh allow", "{kind: MeshService, name: backend}",
         "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n",
         "{kind: Mesh}", "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"not_id\":" SPIFFE("web")
         "}]}}",
         "null"},
        /* several overriding denies: not_id of or_ids */
        {"two denies", "{kind: Mesh}",
         "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n"
         "  - targetRef: {kind: MeshSubset, tags: {env: dev}}\n    default: {action: Deny}\n"
         "  - targetRef: {kind: MeshSubset, tags: {version: v0}}\n    default: {action: Deny}\n",
         NULL, NULL,
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"and_ids\":{\"ids\":["
         SPIFFE("web") ",{\"not_id\":{\"or_ids\":{\"ids\":[" KUMA("env", "dev") ","
         KUMA("version", "v0") "]}}}]}}]}}",
         "null"},
        /* a mesh-wide deny after everything leaves nothing */
        {"deny all last", "{kind: Mesh}",
         "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n"
         "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n",
         NULL, NULL, "{}", "null"},
        /* shadow deny: allowed, and logged by the shadow DENY rules */
        {"allow with shadow deny", "{kind: Mesh}",
         "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n"
         "  - targetRef: {kind: MeshService, name: web}\n"
         "    default: {action: AllowWithShadowDeny}\n",
         NULL, NULL,
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[{\"any\":true}," SPIFFE("web")
         "]}}",
         "{\"MeshTrafficPermission\":{" ANY_PERM ",\"principals\":[" SPIFFE("web") "]}}"},
        /* entries without an action and kinds without a certificate identity are skipped */
        {"no action", "{kind: Mesh}",
         "  - targetRef: {kind: Mesh}\n    default: {}\n"
         "  - targetRef: {kind: MeshExternalService, name: x}\n    default: {action: Allow}\n",
         NULL, NULL, "{}", "null"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct km_resource *p[2] = {mtp("a-first", cases[i].top1, cases[i].from1), NULL};
        size_t n = 1;
        enum km_rbac_source src;
        json_t *f;
        char *r, *s;

        if (cases[i].top2)
            p[n++] = mtp("b-second", cases[i].top2, cases[i].from2);
        f = mtp_filter(p, n, 0, &src);
        ASSERT_INT_EQ(src, KM_RBAC_MESH_TRAFFIC_PERMISSION);
        r = policies_of(f, "rules");
        s = policies_of(f, "shadow_rules");
        if (strcmp(r, cases[i].rules) != 0 || strcmp(s, cases[i].shadow) != 0)
            KM_FAIL_AT("case \"%s\":\n  rules  %s\n  want   %s\n  shadow %s\n  want   %s",
                       cases[i].name, r, cases[i].rules, s, cases[i].shadow);
        if (strcmp(cases[i].shadow, "null") != 0)
            ASSERT_STR_EQ(json_string_value(json_object_get(
                              json_object_get(tc_of(f), "shadow_rules"), "action")),
                          "DENY");
        free(r);
        free(s);
        json_decref(f);
        for (size_t k = 0; k < n; k++)
            km_resource_free(p[k]);
    }
}

KM_TEST(xds_rbac_mtp_takes_over_legacy)
{
    /* an MTP selecting the inbound replaces the TrafficPermission; on an inbound it does not
     * select, the TrafficPermission applies */
    struct km_resource *p[] = {
        mtp("only-backend", "{kind: MeshService, name: backend}",
            "  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n"),
        tp("allow-all", "- match: {kuma.io/service: '*'}\n", "{kuma.io/service: '*'}", 1),
    };
    enum km_rbac_source src;
    json_t *f = mtp_filter(p, 2, 0, &src);
    ASSERT_INT_EQ(src, KM_RBAC_MESH_TRAFFIC_PERMISSION);
    ASSERT_POLICIES(f, "rules", "{}");
    json_decref(f);
    f = mtp_filter(p, 2, 1, &src);
    ASSERT_INT_EQ(src, KM_RBAC_TRAFFIC_PERMISSION);
    ASSERT_POLICIES(f, "rules", "{\"allow-all\":{" ANY_PERM ",\"principals\":[{\"any\":true}]}}");
    json_decref(f);
    km_resource_free(p[0]);
    km_resource_free(p[1]);
}

KM_TEST(xds_rbac_principal_helpers)
{
    json_t *ref = yj("{kind: MeshServiceSubset, name: web, tags: {version: v1}}");
    json_t *p = km_rbac_principal_from_ref("m1", ref);
    char *s = dumps(p);
    ASSERT_STR_EQ(s, "{\"and_ids\":{\"ids\":[{\"authenticated\":{\"principal_name\":{\"exact\":"
                     "\"kuma://version/v1\"}}},{\"authenticated\":{\"principal_name\":{\"exact\":"
                     "\"spiffe://m1/web\"}}}]}}");
    free(s);
    json_decref(p);
    json_decref(ref);
    ref = yj("{kind: MeshService}");
    ASSERT(km_rbac_principal_from_ref("m1", ref) == NULL);
    json_decref(ref);
    ASSERT(km_rbac_principal_from_ref("m1", NULL) == NULL);
    p = km_rbac_principal_from_tags("m1", NULL);
    s = dumps(p);
    ASSERT_STR_EQ(s, "{\"any\":true}");
    free(s);
    json_decref(p);
}
