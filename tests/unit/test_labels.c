/* Computed labels, label checks of REST writes, KRI parsing and KDS hashed names. */
#include <jansson.h>

#include <km/common/util.h>
#include <km/cp/labels.h>

#include "test.h"

static const struct km_labels_ctx zone_ctx = {false, false, "default"};
static const struct km_labels_ctx global_ctx = {true, false, NULL};

static const char *
lbl(const json_t *labels, const char *k)
{
    return json_string_value(json_object_get(labels, k));
}

KM_TEST(labels_compute_new_type_on_zone)
{
    const struct km_rtype *t = km_registry_find("MeshService");
    json_t *l = km_labels_compute(t, NULL, NULL, "m1", &zone_ctx);
    ASSERT_INT_EQ(json_object_size(l), 4);
    ASSERT_STR_EQ(lbl(l, "kuma.io/mesh"), "m1");
    ASSERT_STR_EQ(lbl(l, "kuma.io/origin"), "zone");
    ASSERT_STR_EQ(lbl(l, "kuma.io/zone"), "default");
    ASSERT_STR_EQ(lbl(l, "kuma.io/env"), "universal");
    json_decref(l);
}

KM_TEST(labels_compute_legacy_policy_only_mesh)
{
    /* Legacy policies come from the global CP: a zone only adds kuma.io/mesh. */
    const char *types[] = {"CircuitBreaker", "TrafficRoute", "MeshMultiZoneService",
                           "ExternalService"};
    for (size_t i = 0; i < KM_ARRAY_LEN(types); i++) {
        json_t *l = km_labels_compute(km_registry_find(types[i]), NULL, NULL, "", &zone_ctx);
        ASSERT_INT_EQ(json_object_size(l), 1);
        ASSERT_STR_EQ(lbl(l, "kuma.io/mesh"), "default"); /* empty mesh -> default */
        json_decref(l);
    }
}

KM_TEST(labels_compute_global_scoped_and_mesh)
{
    json_t *l = km_labels_compute(km_registry_find("GlobalSecret"), NULL, NULL, "", &zone_ctx);
    ASSERT(json_object_get(l, "kuma.io/mesh") == NULL);
    ASSERT_STR_EQ(lbl(l, "kuma.io/origin"), "zone");
    json_decref(l);
    l = km_labels_compute(km_registry_mesh(), NULL, NULL, "", &zone_ctx);
    ASSERT_INT_EQ(json_object_size(l), 0);
    json_decref(l);
}

KM_TEST(labels_compute_keeps_user_labels_and_global_origin)
{
    json_t *in = json_pack("{s:s, s:s}", "team", "a", "kuma.io/origin", "global");
    json_t *l = km_labels_compute(km_registry_find("MeshTimeout"), NULL, in, "m", &zone_ctx);
    ASSERT_STR_EQ(lbl(l, "team"), "a");
    ASSERT_STR_EQ(lbl(l, "kuma.io/origin"), "global");
    ASSERT(json_object_get(l, "kuma.io/zone") == NULL);
    ASSERT(json_object_get(l, "kuma.io/env") == NULL);
    ASSERT_STR_EQ(lbl(in, "team"), "a"); /* input untouched */
    ASSERT(json_object_get(in, "kuma.io/mesh") == NULL);
    json_decref(l);
    json_decref(in);
}

KM_TEST(labels_compute_global_mode)
{
    json_t *l = km_labels_compute(km_registry_find("MeshService"), NULL, NULL, "m", &global_ctx);
    ASSERT_INT_EQ(json_object_size(l), 1);
    ASSERT_STR_EQ(lbl(l, "kuma.io/mesh"), "m");
    json_decref(l);
}

KM_TEST(labels_compute_proxy_type)
{
    const struct km_rtype *dp = km_registry_find("Dataplane");
    json_t *spec = json_pack("{s:{s:s, s:{s:s}}}", "networking", "address", "1.1.1.1", "gateway",
                             "type", "BUILTIN");
    json_t *stale = json_pack("{s:s, s:s}", "kuma.io/proxy-type", "sidecar",
                              "kuma.io/listener-zoneingress", "enabled");
    json_t *l = km_labels_compute(dp, spec, stale, "m", &zone_ctx);
    ASSERT_STR_EQ(lbl(l, "kuma.io/proxy-type"), "gateway");
    ASSERT(json_object_get(l, "kuma.io/listener-zoneingress") == NULL);
    json_decref(l);
    json_decref(spec);

    spec = json_pack("{s:{s:[{s:s}]}}", "networking", "listeners", "type", "ZoneEgress");
    l = km_labels_compute(dp, spec, NULL, "m", &zone_ctx);
    ASSERT_STR_EQ(lbl(l, "kuma.io/proxy-type"), "sidecar");
    ASSERT_STR_EQ(lbl(l, "kuma.io/listener-zoneegress"), "enabled");
    json_decref(l);
    json_decref(spec);
    json_decref(stale);

    l = km_labels_compute(km_registry_find("ZoneIngress"), NULL, NULL, "", &zone_ctx);
    ASSERT_STR_EQ(lbl(l, "kuma.io/proxy-type"), "zoneingress");
    json_decref(l);
}

KM_TEST(labels_validate_request_order)
{
    json_t *l = json_pack("{s:s, s:s, s:s, s:s}", "kuma.io/origin", "elsewhere", "kuma.io/zone",
                          "zone-2", "kuma.io/mesh", "other", "bad key!", "v");
    struct km_errs e;
    km_errs_init(&e);
    km_labels_validate_request(l, "m", &zone_ctx, &e);
    ASSERT(e.n >= 4);
    ASSERT_STR_EQ(e.v[0].field, "labels[\"kuma.io/origin\"]");
    ASSERT_STR_EQ(e.v[0].reason, "unknown resource origin \"elsewhere\"");
    ASSERT_STR_EQ(e.v[1].field, "labels[\"kuma.io/zone\"]");
    ASSERT_STR_EQ(e.v[1].reason, "kuma.io/zone label should have default value");
    ASSERT_STR_EQ(e.v[2].field, "labels[\"kuma.io/mesh\"]");
    ASSERT_STR_EQ(e.v[2].reason, "kuma.io/mesh label must not differ from mesh set on resource");
    ASSERT_STR_EQ(e.v[3].field, "labels[\"bad key!\"]");
    km_errs_deinit(&e);

    /* global origin: zone and mesh labels are not checked; global CP neither */
    km_errs_init(&e);
    json_object_set_new(l, "kuma.io/origin", json_string("global"));
    json_object_del(l, "bad key!");
    km_labels_validate_request(l, "m", &zone_ctx, &e);
    km_labels_validate_request(l, "m", &global_ctx, &e);
    ASSERT_INT_EQ(e.n, 0);
    km_errs_deinit(&e);
    json_decref(l);
}

KM_TEST(labels_immutable)
{
    json_t *cur = json_pack("{s:s, s:s, s:s}", "kuma.io/origin", "zone", "kuma.io/zone",
                            "default", "kuma.io/display-name", "a");
    json_t *next = json_pack("{s:s, s:s}", "kuma.io/origin", "global", "kuma.io/display-name",
                             "a");
    struct km_errs e;
    km_errs_init(&e);
    km_labels_check_immutable(cur, next, &e);
    ASSERT_INT_EQ(e.n, 2);
    ASSERT_STR_EQ(e.v[0].field, "labels[\"kuma.io/origin\"]");
    ASSERT_STR_EQ(e.v[0].reason, "is immutable, cannot be changed from \"zone\" to \"global\"");
    ASSERT_STR_EQ(e.v[1].field, "labels[\"kuma.io/zone\"]");
    ASSERT_STR_EQ(e.v[1].reason, "is immutable, cannot be removed (was \"default\")");
    km_errs_deinit(&e);

    /* adding a label that did not exist is fine */
    km_errs_init(&e);
    km_labels_check_immutable(next, cur, &e);
    ASSERT_INT_EQ(e.n, 1); /* origin global -> zone is a change */
    km_errs_deinit(&e);
    json_decref(cur);
    json_decref(next);
}

KM_TEST(labels_workload)
{
    json_t *l = json_pack("{s:s}", "kuma.io/workload", "my-workload");
    ASSERT(km_labels_check_workload(l, &zone_ctx) == NULL);
    ASSERT(km_labels_check_workload(NULL, &zone_ctx) == NULL);
    char *d = km_labels_check_workload(l, &global_ctx);
    ASSERT_STR_CONTAINS(d, "not allowed on Global control plane");
    free(d);
    const char *bad[] = {"MyWorkload", "1workload", "w-"};
    for (size_t i = 0; i < KM_ARRAY_LEN(bad); i++) {
        json_object_set_new(l, "kuma.io/workload", json_string(bad[i]));
        d = km_labels_check_workload(l, &zone_ctx);
        ASSERT_STR_CONTAINS(d, "bad request: labels[\"kuma.io/workload\"]: must be a valid "
                               "DNS-1035 label");
        ASSERT_STR_CONTAINS(d, "a DNS-1035 label must consist of lower case");
        free(d);
    }
    json_object_set_new(l, "kuma.io/workload", json_string("")); /* empty: not checked */
    ASSERT(km_labels_check_workload(l, &zone_ctx) == NULL);
    char longname[80];
    memset(longname, 'a', 70);
    longname[70] = '\0';
    json_object_set_new(l, "kuma.io/workload", json_string(longname));
    d = km_labels_check_workload(l, &zone_ctx);
    ASSERT_STR_CONTAINS(d, "must be no more than 63 characters");
    free(d);
    json_decref(l);
}

KM_TEST(kri_parse_ok_and_errors)
{
    struct km_kri k;
    char err[256];
    ASSERT_INT_EQ(km_kri_parse("kri_mtp_default_zone-1_ns_mtp-1_sec_tion", &k, err, sizeof(err)),
                  0);
    ASSERT_STR_EQ(k.type->name, "MeshTrafficPermission");
    ASSERT_STR_EQ(k.mesh, "default");
    ASSERT_STR_EQ(k.zone, "zone-1");
    ASSERT_STR_EQ(k.ns, "ns");
    ASSERT_STR_EQ(k.name, "mtp-1");
    ASSERT_STR_EQ(k.section, "section");
    km_kri_deinit(&k);

    ASSERT_INT_EQ(km_kri_parse("kri___default_default__mtp-3_", &k, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "unknown short name of resource type: \"\"");
    ASSERT_INT_EQ(km_kri_parse("kri_mtp_x", &k, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "invalid identifier string: \"kri_mtp_x\"");
    ASSERT_INT_EQ(km_kri_parse("kra_mtp_____", &k, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "identifier must start with 'kri': \"kra_mtp_____\"");
    ASSERT_INT_EQ(km_kri_parse("kri_\"q\"_____", &k, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "unknown short name of resource type: \"\\\"q\\\"\"");
    ASSERT_INT_EQ(km_kri_parse("", &k, err, sizeof(err)), -1);
}

KM_TEST(kri_store_name_and_hash)
{
    /* Reference values of Kuma's KDS hash-suffix naming. */
    char *h = km_hashed_name("", "foo", NULL, 0);
    ASSERT_STR_EQ(h, "foo-zxw6c95d42zfz9cc");
    free(h);
    const char *extra[] = {"zone-1", "custom-ns"};
    h = km_hashed_name("", "foo", extra, 2);
    ASSERT_STR_EQ(h, "foo-696vzv497z4cv4f4");
    free(h);

    struct km_kri k;
    char err[128];
    ASSERT_INT_EQ(km_kri_parse("kri_dp_default_default__dp-1_", &k, err, sizeof(err)), 0);
    char *n = km_kri_store_name(&k, &zone_ctx);
    ASSERT_STR_EQ(n, "dp-1"); /* local zone */
    free(n);
    n = km_kri_store_name(&k, &global_ctx);
    ASSERT(strncmp(n, "dp-1-", 5) == 0 && strlen(n) == 5 + 16); /* synced from a zone */
    free(n);
    km_kri_deinit(&k);
}

KM_TEST(labels_type_flags)
{
    ASSERT(km_type_provided_by_zone(km_registry_find("MeshTrafficPermission")));
    ASSERT(km_type_provided_by_zone(km_registry_find("Dataplane")));
    ASSERT(!km_type_provided_by_zone(km_registry_mesh()));
    ASSERT(!km_type_provided_by_zone(NULL));
    ASSERT(km_type_is_proxy(km_registry_find("ZoneEgress")));
    ASSERT(!km_type_is_proxy(km_registry_find("Secret")));
}
