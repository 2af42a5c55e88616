/* Policy matching engine: legacy "most specific wins" ranking and targetRef ordering / merge,
 * table-driven from the cases of Kuma's docs ("how Kuma chooses the right policy to apply",
 * "policies introduction": merge order). */
#include <jansson.h>
#include <stdlib.h>

#include <km/common/yamljson.h>
#include <km/cp/policy_match.h>

#include "test.h"

static struct km_resource *
res_at(const char *yaml, int64_t created)
{
    char err[256];
    json_t *doc = km_yaml_load(yaml, strlen(yaml), err, sizeof(err));
    struct km_errs errs;
    struct km_resource *r;

    if (!doc)
        KM_FAIL_AT("yaml: %s", err);
    km_errs_init(&errs);
    r = km_resource_decode(doc, NULL, &errs);
    if (!r)
        KM_FAIL_AT("decode: %s", errs.n ? errs.v[0].reason : "?");
    km_errs_deinit(&errs);
    json_decref(doc);
    r->creation_us = created;
    return r;
}

static json_t *
tags(const char *yaml)
{
    char err[256];
    json_t *t = km_yaml_load(yaml, strlen(yaml), err, sizeof(err));
    if (!t)
        KM_FAIL_AT("yaml: %s", err);
    return t;
}

/* A legacy connection policy "type: T, name: N" with one source and one destination. */
static struct km_resource *
legacy(const char *type, const char *name, const char *src, const char *dst, int64_t created)
{
    char y[1024];
    snprintf(y, sizeof(y),
             "type: %s\nmesh: default\nname: %s\nsources:\n- match: %s\n"
             "destinations:\n- match: %s\n",
             type, name, src, dst);
    return res_at(y, created);
}

static void
free_all(struct km_resource **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        km_resource_free(v[i]);
}

KM_TEST(policy_match_tags_match_and_rank)
{
    static const struct {
        const char *sel, *tags;
        bool match;
        unsigned exact, wildcard;
    } cases[] = {
        {"{}", "{kuma.io/service: web}", true, 0, 0},
        {"{kuma.io/service: '*'}", "{kuma.io/service: web}", true, 0, 1},
        {"{kuma.io/service: web}", "{kuma.io/service: web}", true, 1, 0},
        {"{kuma.io/service: web}", "{kuma.io/service: backend}", false, 1, 0},
        /* a wildcard still needs the tag */
        {"{version: '*'}", "{kuma.io/service: web}", false, 0, 1},
        {"{kuma.io/service: web, version: '*'}", "{kuma.io/service: web, version: v2}", true, 1,
         1},
        {"{kuma.io/service: web, version: v1}", "{kuma.io/service: web, version: v2}", false, 2,
         0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *s = tags(cases[i].sel), *t = tags(cases[i].tags);
        struct km_tag_rank r = km_tags_rank(s);
        if (km_tags_match(s, t) != cases[i].match)
            KM_FAIL_AT("case %zu: match %s against %s", i, cases[i].sel, cases[i].tags);
        ASSERT_INT_EQ(r.exact, cases[i].exact);
        ASSERT_INT_EQ(r.wildcard, cases[i].wildcard);
        json_decref(s);
        json_decref(t);
    }
    /* total first, then exact */
    struct km_tag_rank a = {1, 1}, b = {2, 0}, c = {0, 2}, d = {1, 0};
    ASSERT(km_tag_rank_cmp(b, a) > 0);
    ASSERT(km_tag_rank_cmp(a, c) > 0);
    ASSERT(km_tag_rank_cmp(c, d) > 0); /* two wildcards beat one exact */
    ASSERT_INT_EQ(km_tag_rank_cmp(a, a), 0);
}

KM_TEST(policy_match_legacy_inbound_most_specific_wins)
{
    /* inbound {service: backend, version: v1}; removing the winner each round shows the next
     * most specific one */
    struct km_resource *p[] = {
        legacy("TrafficPermission", "all", "{kuma.io/service: '*'}", "{kuma.io/service: '*'}", 5),
        legacy("TrafficPermission", "backend", "{kuma.io/service: '*'}",
               "{kuma.io/service: backend}", 1),
        legacy("TrafficPermission", "backend-any-version", "{kuma.io/service: '*'}",
               "{kuma.io/service: backend, version: '*'}", 2),
        legacy("TrafficPermission", "backend-v1", "{kuma.io/service: web}",
               "{kuma.io/service: backend, version: v1}", 3),
        legacy("TrafficPermission", "web", "{kuma.io/service: '*'}", "{kuma.io/service: web}", 9),
        legacy("FaultInjection", "fi", "{kuma.io/service: '*'}",
               "{kuma.io/service: backend, version: v1, zone: a}", 9),
    };
    static const char *const expect[] = {"backend-v1", "backend-any-version", "backend", "all"};
    json_t *in = tags("{kuma.io/service: backend, version: v1}");
    size_t n = sizeof(p) / sizeof(p[0]);
    const struct km_resource *list[6];

    for (size_t i = 0; i < n; i++)
        list[i] = p[i];
    for (size_t round = 0; round < 4; round++) {
        struct km_tag_rank r;
        const struct km_resource *w =
            km_legacy_select_inbound("TrafficPermission", in, list, n, &r);
        ASSERT(w != NULL);
        ASSERT_STR_EQ(w->name, expect[round]);
        for (size_t i = 0; i < n; i++)
            if (list[i] == w)
                list[i] = NULL;
    }
    ASSERT(km_legacy_select_inbound("TrafficPermission", in, list, n, NULL) == NULL);

    /* all that match, best first */
    for (size_t i = 0; i < n; i++)
        list[i] = p[i];
    const struct km_resource **all = NULL;
    size_t na = km_legacy_match_inbound("TrafficPermission", in, list, n, &all);
    ASSERT_INT_EQ(na, 4);
    for (size_t i = 0; i < na; i++)
        ASSERT_STR_EQ(all[i]->name, expect[i]);
    free(all);
    json_decref(in);
    free_all(p, n);
}

KM_TEST(policy_match_legacy_ties)
{
    static const struct {
        int64_t created_a, created_b;
        const char *winner;
    } cases[] = {
        {1, 2, "b"}, /* same rank: created later wins */
        {2, 1, "a"},
        {1, 1, "a"}, /* same rank and time: name order (Kuma sorts by name, keeps the first) */
    };
    json_t *in = tags("{kuma.io/service: backend}");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct km_resource *p[] = {
            legacy("TrafficPermission", "b", "{kuma.io/service: '*'}",
                   "{kuma.io/service: backend}", cases[i].created_b),
            legacy("TrafficPermission", "a", "{kuma.io/service: web}",
                   "{kuma.io/service: backend}", cases[i].created_a),
        };
        const struct km_resource *list[] = {p[0], p[1]};
        const struct km_resource *w = km_legacy_select_inbound("TrafficPermission", in, list, 2,
                                                               NULL);
        ASSERT(w != NULL);
        if (strcmp(w->name, cases[i].winner) != 0)
            KM_FAIL_AT("case %zu: winner %s, want %s", i, w->name, cases[i].winner);
        free_all(p, 2);
    }
    json_decref(in);
}

KM_TEST(policy_match_legacy_connection_rank_is_source_plus_destination)
{
    static const struct {
        const char *caller;
        const char *winner; /* NULL: none */
    } cases[] = {
        /* web/prod: B has 2 exact source tags + 1 exact dest = 3 exact, A has a wildcard
         * source (0,1) + 2 exact dest = total 3 but 2 exact: B wins */
        {"{kuma.io/service: web, env: prod}", "B"},
        /* web/dev: only A (wildcard source) and C */
        {"{kuma.io/service: web, env: dev}", "A"},
        /* no env tag: A's wildcard source matches */
        {"{kuma.io/service: other}", "A"},
    };
    struct km_resource *p[] = {
        legacy("Timeout", "A", "{kuma.io/service: '*'}", "{kuma.io/service: backend, version: v1}",
               1),
        legacy("Timeout", "B", "{kuma.io/service: web, env: prod}", "{kuma.io/service: backend}",
               1),
        legacy("Timeout", "C", "{kuma.io/service: '*'}", "{kuma.io/service: '*'}", 9),
    };
    const struct km_resource *list[] = {p[0], p[1], p[2]};
    json_t *dest = tags("{kuma.io/service: backend, version: v1}");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *caller = tags(cases[i].caller);
        const json_t *sets[] = {tags("{kuma.io/service: sidecar-admin}"), caller};
        const struct km_resource *w =
            km_legacy_select_connection("Timeout", sets, 2, dest, list, 3, NULL);
        ASSERT(w != NULL);
        if (strcmp(w->name, cases[i].winner) != 0)
            KM_FAIL_AT("case %zu: winner %s, want %s", i, w->name, cases[i].winner);
        json_decref((json_t *)sets[0]);
        json_decref(caller);
    }
    /* another destination: only C */
    json_t *other = tags("{kuma.io/service: db}"), *caller = tags("{kuma.io/service: web}");
    const json_t *sets[] = {caller};
    const struct km_resource *w = km_legacy_select_connection("Timeout", sets, 1, other, list, 3,
                                                              NULL);
    ASSERT(w != NULL);
    ASSERT_STR_EQ(w->name, "C");
    json_decref(other);
    json_decref(caller);
    json_decref(dest);
    free_all(p, 3);
}

KM_TEST(policy_match_legacy_dataplane_selectors)
{
    struct km_resource *p[] = {
        res_at("type: TrafficTrace\nmesh: default\nname: everyone\nselectors:\n- match: {}\n", 9),
        res_at("type: TrafficTrace\nmesh: default\nname: web\nselectors:\n"
               "- match: {kuma.io/service: web}\n",
               1),
        res_at("type: TrafficTrace\nmesh: default\nname: nosel\n", 20),
    };
    const struct km_resource *list[] = {p[0], p[1], p[2]};
    json_t *web = tags("{kuma.io/service: web}"), *db = tags("{kuma.io/service: db}");
    const json_t *a[] = {web}, *b[] = {db};
    const struct km_resource *w = km_legacy_select_dataplane("TrafficTrace", a, 1, list, 3);
    ASSERT(w != NULL);
    ASSERT_STR_EQ(w->name, "web");
    /* rank 0 candidates: the later one wins */
    w = km_legacy_select_dataplane("TrafficTrace", b, 1, list, 3);
    ASSERT(w != NULL);
    ASSERT_STR_EQ(w->name, "nosel");
    json_decref(web);
    json_decref(db);
    free_all(p, 3);
}

/* ---- targetRef ---- */

static struct km_resource *
dp_res(void)
{
    return res_at("type: Dataplane\nmesh: default\nname: web-1\nlabels: {team: a}\n"
                  "networking:\n  address: 10.0.0.1\n  inbound:\n"
                  "  - port: 8080\n    name: http\n    tags: {kuma.io/service: web, version: v1}\n"
                  "  - port: 9090\n    tags: {kuma.io/service: admin}\n"
                  "  outbound:\n"
                  "  - port: 10001\n    tags: {kuma.io/service: backend}\n"
                  "  - port: 10002\n    tags: {kuma.io/service: db}\n"
                  "  - port: 10003\n    tags: {kuma.io/service: backend}\n",
                  1);
}

static struct km_resource *
mtp(const char *name, const char *top, const char *labels, const char *from)
{
    char y[2048];
    snprintf(y, sizeof(y),
             "type: MeshTrafficPermission\nmesh: default\nname: %s\n%s%s%sspec:\n%s%s\n"
             "  from:\n%s",
             name, labels ? "labels: " : "", labels ? labels : "", labels ? "\n" : "",
             top ? "  targetRef: " : "", top ? top : "", from);
    return res_at(y, 1);
}

KM_TEST(policy_match_total_order)
{
    static const struct {
        const char *name, *top, *labels;
    } in_order[] = {
        /* ascending priority */
        {"global-one", "{kind: Mesh}", "{kuma.io/origin: global}"}, /* global < no origin */
        {"zzz", "{kind: Mesh}", NULL},
        {"aaa", "{kind: Mesh}", NULL}, /* names compare in reverse: aaa wins over zzz */
        {"zone-one", "{kind: Mesh}", "{kuma.io/origin: zone}"},
        {"zone-producer", "{kind: Mesh}", "{kuma.io/origin: zone, kuma.io/policy-role: producer}"},
        {"zone-consumer", "{kind: Mesh}", "{kuma.io/origin: zone, kuma.io/policy-role: consumer}"},
        {"dp-labels", "{kind: Dataplane, labels: {team: a}}", NULL},
        {"dp-name", "{kind: Dataplane, name: web-1}", NULL},
        {"dp-name-section", "{kind: Dataplane, name: web-1, sectionName: http}", NULL},
        {"subset", "{kind: MeshSubset, tags: {version: v1}}", NULL},
        {"svc", "{kind: MeshService, name: web}", NULL},
    };
    struct km_resource *shadow = mtp("shadowed", "{kind: MeshService, name: web}",
                                     "{kuma.io/effect: shadow}",
                                     "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n");
    size_t n = sizeof(in_order) / sizeof(in_order[0]);
    struct km_resource **p = km_xcalloc(n, sizeof(*p));
    const struct km_resource **list = km_xcalloc(n, sizeof(*list));
    struct km_resource *dp = dp_res();
    struct km_pm_result r;

    /* given in reverse: the engine sorts */
    for (size_t i = 0; i < n; i++) {
        p[i] = mtp(in_order[i].name, in_order[i].top, in_order[i].labels,
                   "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n");
        list[n - 1 - i] = p[i];
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (km_pm_policy_cmp(p[i], p[i + 1]) >= 0)
            KM_FAIL_AT("%s should sort before %s", p[i]->name, p[i + 1]->name);
    list[0] = shadow; /* replaces "svc": a shadow policy is not applied */
    km_pm_match("MeshTrafficPermission", dp, list, n, &r);
    ASSERT_INT_EQ(r.npolicies, n - 1);
    km_pm_result_deinit(&r);
    list[0] = p[n - 1];
    km_pm_match("MeshTrafficPermission", dp, list, n, &r);
    ASSERT_INT_EQ(r.npolicies, n);
    for (size_t i = 0; i < n; i++)
        ASSERT_STR_EQ(r.policies[i]->name, in_order[i].name);
    /* inbound 0 (web, http) is selected by all; inbound 1 (admin, 9090) not by the section,
     * subset and service ones */
    ASSERT_INT_EQ(r.ninbounds, 2);
    ASSERT_INT_EQ(r.inbounds[0].npolicies, n);
    ASSERT_INT_EQ(r.inbounds[0].nfrom, n);
    ASSERT_INT_EQ(r.inbounds[1].npolicies, n - 3);
    ASSERT_STR_EQ(r.inbounds[0].from[n - 1].policy->name, "svc");
    km_pm_result_deinit(&r);
    for (size_t i = 0; i < n; i++)
        km_resource_free(p[i]);
    free(p);
    free(list);
    km_resource_free(shadow);
    km_resource_free(dp);
}

KM_TEST(policy_match_top_level_selection)
{
    static const struct {
        const char *top;
        bool in0, in1; /* selects inbound web:8080 "http" / admin:9090 */
    } cases[] = {
        {NULL, true, true},
        {"{kind: Mesh}", true, true},
        {"{kind: Mesh, proxyTypes: [Gateway]}", false, false},
        {"{kind: Mesh, proxyTypes: [Sidecar]}", true, true},
        {"{kind: Dataplane}", true, true},
        {"{kind: Dataplane, name: web-1}", true, true},
        {"{kind: Dataplane, name: web-2}", false, false},
        {"{kind: Dataplane, labels: {team: a}}", true, true},
        {"{kind: Dataplane, labels: {team: b}}", false, false},
        {"{kind: Dataplane, name: web-1, sectionName: http}", true, false},
        {"{kind: Dataplane, name: web-1, sectionName: '9090'}", false, true},
        {"{kind: MeshSubset, tags: {version: v1}}", true, false},
        {"{kind: MeshSubset, tags: {kuma.io/service: admin}}", false, true},
        {"{kind: MeshService, name: admin}", false, true},
        {"{kind: MeshService, name: nope}", false, false},
        {"{kind: MeshServiceSubset, name: web, tags: {version: v1}}", true, false},
        {"{kind: MeshServiceSubset, name: web, tags: {version: v2}}", false, false},
        {"{kind: MeshGateway, name: gw}", false, false},
    };
    struct km_resource *dp = dp_res();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct km_resource *p =
            mtp("p", cases[i].top, NULL, "  - targetRef: {kind: Mesh}\n    default: {}\n");
        if (km_pm_selects_inbound(p, dp, 0) != cases[i].in0 ||
            km_pm_selects_inbound(p, dp, 1) != cases[i].in1)
            KM_FAIL_AT("case %zu (%s)", i, cases[i].top ? cases[i].top : "none");
        km_resource_free(p);
    }
    ASSERT(!km_pm_selects_inbound(NULL, dp, 0));
    km_resource_free(dp);
}

static char *
dumps(const json_t *j)
{
    return j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : km_xstrdup("null");
}

#define ASSERT_JSON_EQ(j, want)                                                                    \
    do {                                                                                           \
        char *s_ = dumps(j);                                                                       \
        if (strcmp(s_, (want)) != 0)                                                               \
            KM_FAIL_AT("%s: %s != %s", #j, s_, (want));                                            \
        free(s_);                                                                                  \
    } while (0)

KM_TEST(policy_match_merge_patch)
{
    static const struct {
        const char *a, *b, *want;
    } cases[] = {
        {"{x: 1}", "{y: 2}", "{\"x\":1,\"y\":2}"},
        {"{x: 1}", "{x: 2}", "{\"x\":2}"},
        {"{o: {a: 1, b: 2}}", "{o: {b: 3}}", "{\"o\":{\"a\":1,\"b\":3}}"},
        /* lists are replaced */
        {"{l: [1, 2]}", "{l: [3]}", "{\"l\":[3]}"},
        /* ... except append* lists */
        {"{appendModifications: [1]}", "{appendModifications: [2]}",
         "{\"appendModifications\":[1,2]}"},
        {"{s: {appendProfiles: [a]}}", "{s: {appendProfiles: [b]}}",
         "{\"s\":{\"appendProfiles\":[\"a\",\"b\"]}}"},
        /* nulls are ignored (Kuma's typed confs drop them) */
        {"{x: 1, o: {a: 1}}", "{x: null, o: {a: null, b: null}}", "{\"o\":{\"a\":1},\"x\":1}"},
        /* an object replaces a scalar */
        {"{x: 1}", "{x: {a: 1, n: null}}", "{\"x\":{\"a\":1}}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *a = tags(cases[i].a), *b = tags(cases[i].b);
        const json_t *v[] = {a, NULL, b};
        json_t *m = km_pm_merge(v, 3);
        char *s = dumps(m);
        if (strcmp(s, cases[i].want) != 0)
            KM_FAIL_AT("case %zu: %s != %s", i, s, cases[i].want);
        free(s);
        json_decref(m);
        json_decref(a);
        json_decref(b);
    }
    ASSERT(km_pm_merge(NULL, 0) == NULL);
}

KM_TEST(policy_match_from_rules_merge_order)
{
    /* mesh-wide: everyone allowed, web denied; a more specific top-level (MeshService web)
     * policy allows web again and denies everyone: the later one wins per field */
    struct km_resource *p[] = {
        mtp("mesh-wide", "{kind: Mesh}", NULL,
            "  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n"
            "  - targetRef: {kind: MeshService, name: client}\n    default: {action: Deny}\n"
            "  - targetRef: {kind: MeshSubset, tags: {env: dev}}\n"
            "    default: {action: AllowWithShadowDeny}\n"),
        mtp("svc-web", "{kind: MeshService, name: web}", NULL,
            "  - targetRef: {kind: MeshService, name: client}\n    default: {action: Allow}\n"),
        mtp("not-me", "{kind: MeshService, name: db}", NULL,
            "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n"),
    };
    const struct km_resource *list[] = {p[1], p[2], p[0]};
    struct km_resource *dp = dp_res();
    struct km_pm_result r;
    struct km_pm_keyed *k = NULL;
    size_t nk;
    static const struct {
        const char *caller, *want;
    } callers[] = {
        {"{kuma.io/service: client}", "{\"action\":\"Allow\"}"},
        {"{kuma.io/service: other}", "{\"action\":\"Allow\"}"},
        {"{kuma.io/service: other, env: dev}", "{\"action\":\"AllowWithShadowDeny\"}"},
        {"{kuma.io/service: client, env: dev}", "{\"action\":\"Allow\"}"},
    };

    km_pm_match("MeshTrafficPermission", dp, list, 3, &r);
    ASSERT_INT_EQ(r.npolicies, 2);
    ASSERT_STR_EQ(r.policies[0]->name, "mesh-wide");
    ASSERT_STR_EQ(r.policies[1]->name, "svc-web");
    ASSERT_INT_EQ(r.inbounds[0].nfrom, 4);
    ASSERT_INT_EQ(r.inbounds[1].nfrom, 3); /* admin: only the mesh-wide one */
    for (size_t i = 0; i < sizeof(callers) / sizeof(callers[0]); i++) {
        json_t *t = tags(callers[i].caller);
        json_t *c = km_pm_from_conf(&r.inbounds[0], t);
        char *s = dumps(c);
        if (strcmp(s, callers[i].want) != 0)
            KM_FAIL_AT("caller %s: %s != %s", callers[i].caller, s, callers[i].want);
        free(s);
        json_decref(c);
        json_decref(t);
    }
    /* on admin, client is denied (svc-web does not select it) */
    json_t *client = tags("{kuma.io/service: client}");
    json_t *c = km_pm_from_conf(&r.inbounds[1], client);
    ASSERT_JSON_EQ(c, "{\"action\":\"Deny\"}");
    json_decref(c);
    json_decref(client);

    /* keyed rules as inspect shows them */
    nk = km_pm_from_keyed(&r.inbounds[0], &k);
    ASSERT_INT_EQ(nk, 3);
    ASSERT_STR_EQ(k[0].key, "Mesh");
    ASSERT_JSON_EQ(k[0].conf, "{\"action\":\"Allow\"}");
    ASSERT_STR_EQ(k[1].key, "MeshService:client");
    ASSERT_JSON_EQ(k[1].conf, "{\"action\":\"Allow\"}");
    ASSERT_INT_EQ(k[1].norigins, 2);
    ASSERT_STR_EQ(k[1].origins[0]->name, "mesh-wide");
    ASSERT_STR_EQ(k[1].origins[1]->name, "svc-web");
    ASSERT_STR_EQ(k[2].key, "MeshSubset:env=dev");
    ASSERT_JSON_EQ(k[2].conf, "{\"action\":\"AllowWithShadowDeny\"}");
    km_pm_keyed_free(k, nk);
    nk = km_pm_from_keyed(&r.inbounds[1], &k);
    ASSERT_INT_EQ(nk, 3);
    ASSERT_JSON_EQ(k[1].conf, "{\"action\":\"Deny\"}");
    km_pm_keyed_free(k, nk);

    km_pm_result_deinit(&r);
    km_pm_result_deinit(&r); /* idempotent */
    free_all(p, 3);
    km_resource_free(dp);
}

KM_TEST(policy_match_ref_keys)
{
    static const struct {
        const char *ref, *key;
    } cases[] = {
        {"{kind: Mesh}", "Mesh"},
        {"{kind: MeshService, name: web}", "MeshService:web"},
        {"{kind: MeshSubset, tags: {b: '2', a: '1'}}", "MeshSubset:a=1,b=2"},
        {"{kind: MeshServiceSubset, name: web, tags: {v: '1'}}", "MeshServiceSubset:web,v=1"},
        {"{kind: MeshExternalService, name: ext}", "MeshExternalService:ext"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *r = tags(cases[i].ref);
        char *k = km_pm_ref_key(r);
        ASSERT_STR_EQ(k, cases[i].key);
        free(k);
        json_decref(r);
    }
}

static struct km_resource *
lbs(const char *name, const char *top, const char *to)
{
    char y[2048];
    snprintf(y, sizeof(y),
             "type: MeshLoadBalancingStrategy\nmesh: default\nname: %s\nspec:\n"
             "  targetRef: %s\n  to:\n%s",
             name, top, to);
    return res_at(y, 1);
}

KM_TEST(policy_match_to_rules)
{
    struct km_resource *p[] = {
        /* less specific top level, but its to[] names backend: it still wins over the more
         * specific policy's Mesh entry because to[] is sorted by inner kind */
        lbs("mesh", "{kind: Mesh}",
            "  - targetRef: {kind: MeshService, name: backend}\n"
            "    default: {loadBalancer: {type: LeastRequest}}\n"),
        lbs("dp", "{kind: Dataplane, name: web-1}",
            "  - targetRef: {kind: Mesh}\n"
            "    default: {loadBalancer: {type: Random}, localityAwareness: {disabled: true}}\n"),
        lbs("other-dp", "{kind: Dataplane, name: web-9}",
            "  - targetRef: {kind: Mesh}\n    default: {loadBalancer: {type: Maglev}}\n"),
    };
    const struct km_resource *list[] = {p[0], p[1], p[2]};
    struct km_resource *dp = dp_res();
    struct km_pm_result r;
    const struct km_resource **orig = NULL;
    size_t norig = 0;

    km_pm_match("MeshLoadBalancingStrategy", dp, list, 3, &r);
    ASSERT_INT_EQ(r.npolicies, 2);
    ASSERT_INT_EQ(r.nto, 2);
    ASSERT_INT_EQ(r.noutbounds, 2); /* backend (listed twice) and db */
    ASSERT_STR_EQ(r.outbounds[0].key, "backend");
    ASSERT_JSON_EQ(r.outbounds[0].conf, "{\"loadBalancer\":{\"type\":\"LeastRequest\"},"
                                        "\"localityAwareness\":{\"disabled\":true}}");
    ASSERT_INT_EQ(r.outbounds[0].norigins, 2);
    ASSERT_STR_EQ(r.outbounds[0].origins[0]->name, "dp");
    ASSERT_STR_EQ(r.outbounds[1].key, "db");
    ASSERT_JSON_EQ(r.outbounds[1].conf, "{\"loadBalancer\":{\"type\":\"Random\"},"
                                        "\"localityAwareness\":{\"disabled\":true}}");
    /* any service, not only the outbounds */
    json_t *c = km_pm_to_conf(&r, "elsewhere", &orig, &norig);
    ASSERT_JSON_EQ(c, "{\"loadBalancer\":{\"type\":\"Random\"},"
                      "\"localityAwareness\":{\"disabled\":true}}");
    ASSERT_INT_EQ(norig, 1);
    json_decref(c);
    free(orig);
    ASSERT(r.single == NULL);
    km_pm_result_deinit(&r);

    /* no policy of the type */
    km_pm_match("MeshTimeout", dp, list, 3, &r);
    ASSERT_INT_EQ(r.npolicies, 0);
    ASSERT_INT_EQ(r.noutbounds, 0);
    ASSERT(km_pm_to_conf(&r, "backend", NULL, NULL) == NULL);
    km_pm_result_deinit(&r);
    free_all(p, 3);
    km_resource_free(dp);
}

KM_TEST(policy_match_single_item_and_bad_input)
{
    struct km_resource *p[] = {
        res_at("type: MeshTrace\nmesh: default\nname: b\nspec:\n  targetRef: {kind: Mesh}\n"
               "  default: {sampling: {overall: 10}, tags: [{name: a}]}\n",
               1),
        res_at("type: MeshTrace\nmesh: default\nname: a\nspec:\n"
               "  default: {sampling: {client: 5}, tags: [{name: b}]}\n",
               1),
    };
    const struct km_resource *list[] = {p[0], NULL, p[1]};
    struct km_resource *dp = dp_res();
    struct km_pm_result r;

    km_pm_match("MeshTrace", dp, list, 3, &r);
    ASSERT_INT_EQ(r.npolicies, 2);
    ASSERT_JSON_EQ(r.single, "{\"sampling\":{\"client\":5,\"overall\":10},"
                             "\"tags\":[{\"name\":\"b\"}]}");
    km_pm_result_deinit(&r);
    /* no dataplane: empty result */
    km_pm_match("MeshTrace", NULL, list, 3, &r);
    ASSERT_INT_EQ(r.npolicies, 0);
    km_pm_result_deinit(&r);
    free_all(p, 2);
    km_resource_free(dp);
}

KM_TEST(policy_match_inspect_dataplane)
{
    struct km_resource *p[] = {
        legacy("TrafficPermission", "allow-all", "{kuma.io/service: '*'}",
               "{kuma.io/service: '*'}", 1),
        legacy("TrafficPermission", "web-only", "{kuma.io/service: client}",
               "{kuma.io/service: web}", 1),
        legacy("Timeout", "timeout-all", "{kuma.io/service: '*'}", "{kuma.io/service: '*'}", 1),
        legacy("Retry", "retry-db", "{kuma.io/service: web}", "{kuma.io/service: db}", 1),
        res_at("type: TrafficTrace\nmesh: default\nname: tt\nselectors:\n"
               "- match: {kuma.io/service: web}\n",
               1),
        mtp("mtp-admin", "{kind: MeshService, name: admin}", NULL,
            "  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n"),
    };
    const struct km_resource *list[6];
    struct km_resource *dp = dp_res();
    json_t *j;
    char *s;

    for (size_t i = 0; i < 6; i++)
        list[i] = p[i];
    j = km_pm_inspect_dataplane(dp, list, 6);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "kind")), "SidecarDataplane");
    ASSERT_INT_EQ(json_integer_value(json_object_get(j, "total")), 7);
    static const char *const want[][4] = {
        {"dataplane", "", "TrafficTrace", "tt"},
        {"inbound", "10.0.0.1:8080:8080", "TrafficPermission", "web-only"},
        {"inbound", "10.0.0.1:9090:9090", "MeshTrafficPermission", "mtp-admin"},
        {"outbound", "127.0.0.1:10001", "Timeout", "timeout-all"},
        {"outbound", "127.0.0.1:10002", "Timeout", "timeout-all"},
        {"outbound", "127.0.0.1:10003", "Timeout", "timeout-all"},
        {"service", "db", "Retry", "retry-db"},
    };
    for (size_t i = 0; i < 7; i++) {
        const json_t *it = json_array_get(json_object_get(j, "items"), i);
        const json_t *m = json_object_get(it, "matchedPolicies");
        ASSERT_STR_EQ(json_string_value(json_object_get(it, "type")), want[i][0]);
        ASSERT_STR_EQ(json_string_value(json_object_get(it, "name")), want[i][1]);
        ASSERT_STR_EQ(json_string_value(json_object_get(
                          json_array_get(json_object_get(m, want[i][2]), 0), "name")),
                      want[i][3]);
    }
    /* the admin inbound lists both: the TrafficPermission that would apply and the MTP */
    s = json_dumps(json_object_get(json_array_get(json_object_get(j, "items"), 2),
                                   "matchedPolicies"),
                   JSON_COMPACT | JSON_PRESERVE_ORDER);
    ASSERT_STR_CONTAINS(s, "{\"MeshTrafficPermission\":[{\"type\":\"MeshTrafficPermission\"");
    ASSERT_STR_CONTAINS(s, "\"TrafficPermission\":[{\"type\":\"TrafficPermission\",\"mesh\":"
                           "\"default\",\"name\":\"allow-all\"");
    free(s);
    json_decref(j);
    j = km_pm_inspect_dataplane(NULL, list, 6);
    ASSERT_INT_EQ(json_integer_value(json_object_get(j, "total")), 0);
    json_decref(j);
    free_all(p, 6);
    km_resource_free(dp);
}
