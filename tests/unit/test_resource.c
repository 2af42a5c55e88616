/* Resource codec: decode/encode round trips, meta handling, KRI, SNIs, output defaults and
 * deprecation warnings. */
#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/cp/resource.h>

#include "test.h"

static json_t *
J(const char *s)
{
    json_error_t err;
    json_t *v = json_loads(s, 0, &err);
    if (!v)
        KM_FAIL_AT("bad test JSON: %s", err.text);
    return v;
}

/* Drops the timestamps the encoder always writes. */
static void
strip_times(json_t *o)
{
    json_object_del(o, "creationTime");
    json_object_del(o, "modificationTime");
}

static void
assert_json_eq(json_t *got, const char *want_s)
{
    json_t *want = J(want_s);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS);
        char *w = json_dumps(want, JSON_SORT_KEYS);
        KM_FAIL_AT("JSON differs:\n got  %s\n want %s", g, w);
    }
    json_decref(want);
}

KM_TEST(resource_roundtrip_legacy)
{
    const char *in = "{\"type\":\"Dataplane\",\"mesh\":\"default\",\"name\":\"dp-1\","
                     "\"networking\":{\"address\":\"10.1.2.1\",\"inbound\":[{\"port\":1234,"
                     "\"tags\":{\"kuma.io/service\":\"my-svc\"}}]}}";
    json_t *doc = J(in);
    struct km_errs e;
    km_errs_init(&e);
    struct km_resource *r = km_resource_decode(doc, NULL, &e);
    ASSERT(r != NULL);
    ASSERT_INT_EQ(e.n, 0);
    ASSERT_STR_EQ(r->type->name, "Dataplane");
    ASSERT_STR_EQ(r->mesh, "default");
    ASSERT_STR_EQ(r->name, "dp-1");
    ASSERT(json_object_get(r->spec, "networking") != NULL);
    ASSERT(json_object_get(r->spec, "type") == NULL);
    json_t *out = km_resource_encode(r);
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "kri")), "kri_dp_default___dp-1_");
    json_object_del(out, "kri");
    strip_times(out);
    assert_json_eq(out, in);
    /* meta order: type, mesh, name, creationTime, ... */
    json_t *full = km_resource_encode(r);
    const char *keys[8];
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach (full, k, v)
        if (n < 8)
            keys[n++] = k;
    ASSERT_STR_EQ(keys[0], "type");
    ASSERT_STR_EQ(keys[1], "mesh");
    ASSERT_STR_EQ(keys[2], "name");
    ASSERT_STR_EQ(keys[3], "creationTime");
    ASSERT_STR_EQ(keys[4], "modificationTime");
    ASSERT_STR_EQ(keys[5], "kri");
    json_decref(full);
    json_decref(out);
    json_decref(doc);
    km_resource_free(r);
    km_errs_deinit(&e);
}

KM_TEST(resource_roundtrip_new_style_and_dup)
{
    const char *in = "{\"type\":\"MeshTrafficPermission\",\"mesh\":\"default\",\"name\":\"mtp-1\","
                     "\"labels\":{\"team\":\"a\"},\"spec\":{\"targetRef\":{\"kind\":\"Mesh\"},"
                     "\"from\":[{\"targetRef\":{\"kind\":\"Mesh\"},\"default\":{\"action\":"
                     "\"Allow\"}}]}}";
    json_t *doc = J(in);
    struct km_errs e;
    km_errs_init(&e);
    struct km_resource *r = km_resource_decode(doc, km_registry_find("MeshTrafficPermission"), &e);
    ASSERT(r != NULL);
    ASSERT(r->status == NULL);
    struct km_resource *d = km_resource_dup(r);
    km_resource_free(r);
    json_t *out = km_resource_encode(d);
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "kri")), "kri_mtp_default___mtp-1_");
    ASSERT(json_object_get(out, "status") == NULL);
    json_object_del(out, "kri");
    strip_times(out);
    assert_json_eq(out, in);
    json_decref(out);
    json_decref(doc);
    km_resource_free(d);
    km_errs_deinit(&e);
}

KM_TEST(resource_times_preserved)
{
    json_t *doc = J("{\"type\":\"Secret\",\"mesh\":\"m\",\"name\":\"s\",\"data\":\"dGVzdAo=\","
                    "\"creationTime\":\"2018-07-17T16:05:36.995Z\"}");
    struct km_errs e;
    km_errs_init(&e);
    struct km_resource *r = km_resource_decode(doc, NULL, &e);
    ASSERT(r != NULL);
    ASSERT_INT_EQ(r->creation_us, 1531843536995000LL);
    json_t *out = km_resource_encode(r);
    ASSERT_STR_CONTAINS(json_string_value(json_object_get(out, "creationTime")),
                        "2018-07-17T16:05:36.995");
    ASSERT(json_object_get(out, "kri") == NULL); /* Secret has no short name */
    ASSERT(json_object_get(out, "labels") == NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "data")), "dGVzdAo=");
    json_decref(out);
    json_decref(doc);
    km_resource_free(r);
    km_errs_deinit(&e);
}

KM_TEST(resource_decode_errors)
{
    struct km_errs e;
    const struct km_rtype *dp = km_registry_find("Dataplane");
    const struct km_rtype *mtp = km_registry_find("MeshTrafficPermission");
    json_t *doc;

    km_errs_init(&e);
    doc = J("{\"type\":\"Dataplane\",\"mesh\":\"default\",\"name\":4}");
    ASSERT(km_resource_decode(doc, dp, &e) == NULL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_EQ(e.v[0].field, "");
    ASSERT_STR_EQ(e.v[0].reason, "invalid Dataplane object: \"json: cannot unmarshal number into "
                                 "Go struct field ResourceMeta.name of type string\"");
    json_decref(doc);
    km_errs_deinit(&e);

    km_errs_init(&e);
    doc = J("{\"type\":\"TrafficPermission\",\"name\":\"sample\",\"spec\":{}}");
    ASSERT(km_resource_decode(doc, mtp, &e) == NULL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_EQ(e.v[0].field, "");
    ASSERT_STR_EQ(e.v[0].reason, "type in body should be one of [MeshTrafficPermission]");
    json_decref(doc);
    km_errs_deinit(&e);

    km_errs_init(&e);
    doc = J("{\"type\":\"Nope\",\"name\":\"x\"}");
    ASSERT(km_resource_decode(doc, NULL, &e) == NULL);
    ASSERT_STR_EQ(e.v[0].field, "type");
    json_decref(doc);
    km_errs_deinit(&e);

    km_errs_init(&e);
    doc = J("[1,2]");
    ASSERT(km_resource_decode(doc, dp, &e) == NULL);
    ASSERT_STR_CONTAINS(e.v[0].reason, KM_DECODE_BAD_REQUEST_PREFIX);
    json_decref(doc);
    km_errs_deinit(&e);

    /* legacy: a different body type is left to km_validate_request */
    km_errs_init(&e);
    doc = J("{\"type\":\"MeshTrafficPermission\",\"mesh\":\"default\",\"name\":\"dp-3\"}");
    struct km_resource *r = km_resource_decode(doc, dp, &e);
    ASSERT(r != NULL);
    ASSERT_STR_EQ(r->type->name, "Dataplane");
    km_validate_request(r, "MeshTrafficPermission", "default", "dp-4", &e);
    ASSERT_INT_EQ(e.n, 2);
    ASSERT_STR_EQ(e.v[0].field, "name");
    ASSERT_STR_EQ(e.v[0].reason, "name from the URL has to be the same as in body");
    ASSERT_STR_EQ(e.v[1].field, "type");
    ASSERT_STR_EQ(e.v[1].reason, "type from the URL has to be the same as in body");
    km_resource_free(r);
    json_decref(doc);
    km_errs_deinit(&e);
}

KM_TEST(resource_new_style_mesh_defaults)
{
    json_t *doc = J("{\"type\":\"MeshAccessLog\",\"name\":\"l\",\"spec\":{}}");
    struct km_errs e;
    km_errs_init(&e);
    struct km_resource *r = km_resource_decode(doc, km_registry_find("MeshAccessLog"), &e);
    ASSERT(r != NULL);
    ASSERT_STR_EQ(r->mesh, "default");
    km_resource_free(r);
    json_decref(doc);
    km_errs_deinit(&e);
}

KM_TEST(resource_kri_labels)
{
    struct km_resource *r = km_resource_new(km_registry_find("MeshService"), "default", "redis");
    char *k;

    r->labels = J("{\"kuma.io/zone\":\"east\",\"k8s.kuma.io/namespace\":\"kuma-demo\","
                  "\"kuma.io/display-name\":\"redis-d\"}");
    k = km_resource_kri(r);
    ASSERT_STR_EQ(k, "kri_msvc_default_east_kuma-demo_redis-d_");
    free(k);
    km_resource_free(r);

    r = km_resource_new(km_registry_mesh(), "ignored", "default");
    k = km_resource_kri(r);
    ASSERT_STR_EQ(k, "kri_m____default_");
    free(k);
    km_resource_free(r);

    r = km_resource_new(km_registry_find("TrafficRoute"), "default", "tr");
    ASSERT(km_resource_kri(r) == NULL);
    km_resource_free(r);
}

KM_TEST(resource_meshservice_output)
{
    json_t *doc = J("{\"type\":\"MeshService\",\"name\":\"redis\",\"mesh\":\"default\",\"spec\":"
                    "{\"selector\":{\"dataplaneTags\":{\"app\":\"redis\"}},\"ports\":[{\"port\":"
                    "6379,\"targetPort\":6379,\"protocol\":\"tcp\"}]}}");
    struct km_errs e;
    km_errs_init(&e);
    struct km_resource *r = km_resource_decode(doc, km_registry_find("MeshService"), &e);
    ASSERT(r != NULL);
    r->labels = J("{\"kuma.io/zone\":\"default\",\"kuma.io/origin\":\"zone\"}");
    json_t *out = km_resource_encode(r);
    strip_times(out);
    assert_json_eq(out,
                   "{\"type\":\"MeshService\",\"mesh\":\"default\",\"name\":\"redis\","
                   "\"labels\":{\"kuma.io/zone\":\"default\",\"kuma.io/origin\":\"zone\"},"
                   "\"kri\":\"kri_msvc_default_default__redis_\",\"snis\":[{\"port\":6379,"
                   "\"sni\":\"sni.msvc.default.default.redis.6379\"}],\"spec\":{\"state\":"
                   "\"Unavailable\",\"selector\":{\"dataplaneTags\":{\"app\":\"redis\"}},"
                   "\"ports\":[{\"port\":6379,\"targetPort\":6379,\"appProtocol\":\"tcp\"}]},"
                   "\"status\":{\"tls\":{},\"dataplaneProxies\":{}}}");
    json_decref(out);
    json_decref(doc);
    km_resource_free(r);
    km_errs_deinit(&e);
}

KM_TEST(resource_workload_status_defaults)
{
    struct km_resource *r = km_resource_new(km_registry_find("Workload"), "default", "w");
    json_t *out = km_resource_encode(r);
    json_t *dpp = json_object_get(json_object_get(out, "status"), "dataplaneProxies");
    ASSERT(dpp != NULL);
    ASSERT_INT_EQ(json_integer_value(json_object_get(dpp, "total")), 0);
    ASSERT_INT_EQ(json_integer_value(json_object_get(dpp, "connected")), 0);
    ASSERT(json_is_object(json_object_get(out, "spec")));
    json_decref(out);
    km_resource_free(r);
}

KM_TEST(resource_warnings)
{
    struct km_resource *r = km_resource_new(km_registry_mesh(), "", "aa.a");
    json_t *w = km_resource_warnings(r);
    ASSERT_INT_EQ(json_array_size(w), 1);
    ASSERT_STR_EQ(json_string_value(json_array_get(w, 0)),
                  "Invalid Mesh resource name: 'aa.a'. It does not conform to the DNS format (RFC "
                  "1035). This is deprecated. Errors: a DNS-1035 label must consist of lower case "
                  "alphanumeric characters or '-', start with an alphabetic character, and end "
                  "with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
                  "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')");
    json_decref(w);
    km_resource_free(r);

    r = km_resource_new(km_registry_mesh(), "", "default");
    w = km_resource_warnings(r);
    ASSERT_INT_EQ(json_array_size(w), 0);
    json_decref(w);
    km_resource_free(r);

    r = km_resource_new(km_registry_find("MeshMultiZoneService"), "default",
                        "this-is-a-very-long-meshmultizoneservice-name-exceeding-sixty-three");
    json_decref(r->spec);
    r->spec = J("{\"ports\":[{\"port\":8080,\"appProtocol\":\"http\"}]}");
    w = km_resource_warnings(r);
    ASSERT_INT_EQ(json_array_size(w), 2);
    ASSERT_STR_CONTAINS(json_string_value(json_array_get(w, 0)),
                        "Errors: must be no more than 63 characters");
    ASSERT_STR_EQ(json_string_value(json_array_get(w, 1)),
                  "Invalid MeshMultiZoneService SNI (port \"8080\"): name "
                  "\"this-is-a-very-long-meshmultizoneservice-name-exceeding-sixty-three\" does not "
                  "conform to RFC 1123: must be no more than 63 characters. This is deprecated.");
    json_decref(w);
    km_resource_free(r);

    r = km_resource_new(km_registry_find("MeshService"), "default", "aa.a");
    json_decref(r->spec);
    r->spec = J("{\"ports\":[{\"port\":8081}]}");
    w = km_resource_warnings(r);
    ASSERT_INT_EQ(json_array_size(w), 2);
    ASSERT_STR_EQ(json_string_value(json_array_get(w, 1)),
                  "Invalid MeshService SNI (port \"8081\"): name \"aa.a\" does not conform to RFC "
                  "1123: must not contain dots. This is deprecated.");
    json_decref(w);
    km_resource_free(r);
}
