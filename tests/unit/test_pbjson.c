/* proto3 JSON <-> protobuf by reflection: well-known types, oneofs, maps, errors with paths. */
#include <jansson.h>
#include <stdlib.h>

#include <km/common/pbjson.h>
#include <km/common/util.h>
#include <km/cp/xds_types.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "test.h"

static json_t *
roundtrip(const ProtobufCMessageDescriptor *d, const char *text)
{
    km_xds_register_types();
    json_error_t je;
    json_t *in = json_loads(text, 0, &je);
    ASSERT(in != NULL);
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    if (km_pbjson_encode(d, in, &buf, &len, err, sizeof(err)) != 0)
        KM_FAIL_AT("encode: %s", err);
    json_t *out = km_pbjson_decode(d, buf, len, err, sizeof(err));
    ASSERT(out != NULL);
    free(buf);
    json_decref(in);
    return out;
}

KM_TEST(pbjson_cluster_wkt_and_enums)
{
    json_t *out = roundtrip(&envoy__config__cluster__v3__cluster__descriptor,
                            "{\"name\":\"svc\",\"type\":\"EDS\",\"connect_timeout\":\"1.5s\","
                            "\"lb_policy\":\"MAGLEV\",\"eds_cluster_config\":{\"eds_config\":"
                            "{\"ads\":{},\"resource_api_version\":\"V3\"}}}");
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "connect_timeout")), "1.5s");
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "type")), "EDS");
    ASSERT_STR_EQ(json_string_value(json_object_get(out, "lb_policy")), "MAGLEV");
    /* an empty message that is present stays present (gRPC clients need "ads": {}) */
    json_t *ads = json_object_get(
        json_object_get(json_object_get(out, "eds_cluster_config"), "eds_config"), "ads");
    ASSERT(json_is_object(ads));
    json_decref(out);
}

KM_TEST(pbjson_any_and_camel_case_names)
{
    json_t *out = roundtrip(
        &envoy__config__listener__v3__listener__descriptor,
        "{\"name\":\"l\",\"filterChains\":[{\"filters\":[{\"name\":\"tcp\",\"typedConfig\":"
        "{\"@type\":\"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\","
        "\"stat_prefix\":\"s\",\"cluster\":\"backend\"}}]}]}");
    json_t *tc = json_object_get(
        json_array_get(json_object_get(json_array_get(json_object_get(out, "filter_chains"), 0),
                                       "filters"),
                       0),
        "typed_config");
    ASSERT_STR_EQ(json_string_value(json_object_get(tc, "@type")),
                  "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy");
    ASSERT_STR_EQ(json_string_value(json_object_get(tc, "cluster")), "backend");
    json_decref(out);
}

KM_TEST(pbjson_errors_name_the_field)
{
    km_xds_register_types();
    const struct {
        const char *json, *err;
    } cases[] = {
        {"{\"name\":\"x\",\"no_such\":1}", "no_such: unknown field"},
        {"{\"connect_timeout\":\"5 minutes\"}", "connect_timeout: invalid duration"},
        {"{\"type\":\"NOPE\"}", "type: unknown"},
        {"{\"name\":3}", "name: expected a string"},
        {"{\"load_assignment\":{\"endpoints\":[{\"load_balancing_weight\":-1}]}}",
         "load_assignment.endpoints[0].load_balancing_weight: integer out of range"},
        {"{\"transport_socket\":{\"typed_config\":{\"@type\":\"type.googleapis.com/x.Y\"}}}",
         "unknown type"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        json_t *in = json_loads(cases[i].json, 0, NULL);
        uint8_t *buf = NULL;
        size_t len = 0;
        char err[256] = "";
        ASSERT_INT_EQ(km_pbjson_encode(&envoy__config__cluster__v3__cluster__descriptor, in, &buf,
                                       &len, err, sizeof(err)),
                      -1);
        ASSERT_STR_CONTAINS(err, cases[i].err);
        json_decref(in);
    }
}
