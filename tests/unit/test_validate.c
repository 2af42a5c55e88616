/* Validation table: for each document, the exact (field, reason) list expected from
 * km_resource_validate (plus meta/labels/request checks in their own tests). */
#include <km/common/errs.h>
#include <km/cp/resource.h>

#include "test.h"

struct vcase {
    const char *doc;
    const char *errs[6][2]; /* {field, reason}; ends at the first NULL field */
};

static void
run_case(const struct vcase *c, size_t idx)
{
    json_error_t jerr;
    json_t *doc = json_loads(c->doc, 0, &jerr);
    struct km_errs e;
    struct km_resource *r;
    size_t want = 0;

    if (!doc)
        KM_FAIL_AT("case %zu: bad JSON: %s", idx, jerr.text);
    km_errs_init(&e);
    r = km_resource_decode(doc, NULL, &e);
    if (!r)
        KM_FAIL_AT("case %zu: decode failed: %s", idx, e.n ? e.v[0].reason : "?");
    km_resource_validate(r, &e);
    while (want < 6 && c->errs[want][0])
        want++;
    if (e.n != want) {
        char *j = km_errs_join(&e);
        KM_FAIL_AT("case %zu: %zu errors, want %zu: %s", idx, e.n, want, j);
    }
    for (size_t i = 0; i < want; i++) {
        if (strcmp(e.v[i].field, c->errs[i][0]) != 0 || strcmp(e.v[i].reason, c->errs[i][1]) != 0)
            KM_FAIL_AT("case %zu error %zu: got {%s: %s} want {%s: %s}", idx, i, e.v[i].field,
                       e.v[i].reason, c->errs[i][0], c->errs[i][1]);
    }
    km_resource_free(r);
    json_decref(doc);
    km_errs_deinit(&e);
}

#define DP(net) "{\"type\":\"Dataplane\",\"mesh\":\"default\",\"name\":\"dp\",\"networking\":" net "}"

static const struct vcase dataplane_cases[] = {
    {DP("{\"address\":\"10.1.2.1\",\"inbound\":[{\"port\":1234,\"tags\":{\"kuma.io/service\":"
        "\"my-svc\"}}]}"),
     {{NULL, NULL}}},
    /* InboundTagsDisabled style: no tags at all is fine */
    {DP("{\"address\":\"10.1.2.1\",\"inbound\":[{\"port\":1234}]}"), {{NULL, NULL}}},
    {DP("{\"address\":\"10.1.2.1\",\"inbound\":[{\"port\":1234,\"tags\":{\"version\":\"v1\"}}]}"),
     {{"networking.inbound[0].tags[\"kuma.io/service\"]", "tag has to exist"}}},
    {DP("{\"address\":\"\",\"inbound\":[{\"port\":0,\"tags\":{\"kuma.io/service\":\"a\"}}]}"),
     {{"networking.address", "address can't be empty"},
      {"networking.inbound[0].port", "port must be in the range [1, 65535]"}}},
    {DP("{\"address\":\"10.0.0.1\",\"inbound\":[{\"port\":80,\"servicePort\":70000,\"tags\":"
        "{\"kuma.io/service\":\"a\",\"kuma.io/protocol\":\"smtp\"}}]}"),
     {{"networking.inbound[0].servicePort", "port must be in the range [1, 65535]"},
      {"networking.inbound[0].tags[\"kuma.io/protocol\"]",
       "tag \"kuma.io/protocol\" has an invalid value \"smtp\". Allowed values: http, http2, "
       "grpc, kafka, tcp, tls"}}},
    {DP("{\"address\":\"10.0.0.1\",\"outbound\":[{\"port\":33033}]}"),
     {{"networking.outbound[0].tags", "mandatory tag \"kuma.io/service\" is missing"}}},
    {DP("{\"address\":\"0.0.0.0\",\"inbound\":[{\"port\":1,\"tags\":{\"kuma.io/service\":"
        "\"a b\"}}]}"),
     {{"networking.address", "must not be 0.0.0.0 or ::"},
      {"networking.inbound[0].tags[\"kuma.io/service\"]",
       "tag value must consist of alphanumeric characters, dots, dashes and underscores"}}},
    {"{\"type\":\"Dataplane\",\"mesh\":\"default\",\"name\":\"dp\"}",
     {{"networking", "must be defined"}}},
};

#define MTP(spec) "{\"type\":\"MeshTrafficPermission\",\"mesh\":\"default\",\"name\":\"p\",\"spec\":" spec "}"

static const struct vcase targetref_cases[] = {
    {MTP("{\"targetRef\":{\"kind\":\"Mesh\"},\"from\":[{\"targetRef\":{\"kind\":\"Mesh\"},"
         "\"default\":{\"action\":\"Allow\"}}]}"),
     {{NULL, NULL}}},
    {MTP("{\"targetRef\":{\"kind\":\"MeshService\",\"name\":2},\"from\":[{\"targetRef\":{"
         "\"kind\":\"Mesh\"}}]}"),
     {{"spec.targetRef.name", "in body must be of type string: \"number\""}}},
    {MTP("{\"targetRef\":{\"kind\":\"Bogus\"},\"from\":[{\"targetRef\":{\"kind\":\"Mesh\"},"
         "\"default\":{\"action\":\"Maybe\"}}]}"),
     {{"spec.targetRef.kind",
       "in body should be one of [Mesh MeshSubset MeshGateway MeshService MeshExternalService "
       "MeshMultiZoneService MeshServiceSubset MeshHTTPRoute Dataplane]"},
      {"spec.from[0].default.action", "in body should be one of [Allow Deny AllowWithShadowDeny]"}}},
    {MTP("{\"targetRef\":{\"kind\":\"Mesh\"}}"),
     {{"spec", "at least one of 'from' or 'rules' has to be defined"}}},
    {MTP("{\"targetRef\":{\"kind\":\"Mesh\",\"name\":\"x\"},\"from\":[{\"targetRef\":{\"kind\":"
         "\"MeshService\"},\"default\":{}}]}"),
     {{"spec.targetRef.name", "using name with kind Mesh is not yet supported"},
      {"spec.from[0].targetRef", "name or labels must be set when kind is MeshService"},
      {"spec.from[0].default.action", "must be defined"}}},
    {"{\"type\":\"MeshTimeout\",\"mesh\":\"default\",\"name\":\"t\",\"spec\":{\"targetRef\":{"
     "\"kind\":\"Mesh\"},\"to\":[{\"targetRef\":{\"kind\":\"Mesh\"},\"default\":{"
     "\"idleTimeout\":\"abc\"}}]}}",
     {{"spec.to[0].default.idleTimeout", "must have a valid value"}}},
    {"{\"type\":\"MeshTimeout\",\"mesh\":\"default\",\"name\":\"t\",\"spec\":{\"targetRef\":{"
     "\"kind\":\"Mesh\"}}}",
     {{"spec", "at least one of 'from', 'to' or 'rules' has to be defined"}}},
    {"{\"type\":\"MeshRetry\",\"mesh\":\"default\",\"name\":\"t\",\"spec\":{\"targetRef\":{"
     "\"kind\":\"Mesh\"},\"to\":[{\"targetRef\":{\"kind\":\"Mesh\"},\"default\":{}}]}}",
     {{"spec.to[0].default", "at least one of the 'tcp', 'http', 'grpc' must be specified"}}},
};

#define LEG(type, rest) "{\"type\":\"" type "\",\"mesh\":\"default\",\"name\":\"x\"," rest "}"

static const struct vcase legacy_cases[] = {
    {LEG("TrafficPermission", "\"sources\":[{\"match\":{\"kuma.io/service\":\"*\"}}],"
                              "\"destinations\":[{\"match\":{\"kuma.io/service\":\"*\"}}]"),
     {{NULL, NULL}}},
    {LEG("TrafficPermission", "\"sources\":[],\"destinations\":[{\"match\":{}}]"),
     {{"sources", "must have at least one element"},
      {"destinations[0].match", "must have at least one tag"}}},
    {LEG("HealthCheck", "\"sources\":[{\"match\":{\"kuma.io/service\":\"web\"}}],"
                        "\"destinations\":[{\"match\":{\"kuma.io/service\":\"backend\","
                        "\"version\":\"1\"}}],\"conf\":{\"interval\":\"10s\",\"timeout\":"
                        "\"x\",\"unhealthyThreshold\":3,\"healthyThreshold\":1}"),
     {{"destinations[0].match", "must consist of exactly one tag \"kuma.io/service\""},
      {"destinations[0].match[\"version\"]", "tag \"version\" is not allowed"},
      {"conf.timeout", "must have a valid value"}}},
    {LEG("TrafficRoute", "\"sources\":[{\"match\":{\"region\":\"eu\"}}],\"destinations\":[{"
                         "\"match\":{\"kuma.io/service\":\"b\"}}],\"conf\":{}"),
     {{"sources[0].match", "mandatory tag \"kuma.io/service\" is missing"},
      {"conf", "requires either \"destination\" or \"split\""}}},
    {LEG("TrafficTrace", "\"selectors\":[{\"match\":{\"service\":\"backend\",\"region\":"
                         "\"eu\"}}],\"conf\":{\"backend\":\"zipkin-eu\"}"),
     {{NULL, NULL}}},
    {LEG("FaultInjection", "\"sources\":[{\"match\":{\"service\":\"web\",\"kuma.io/protocol\":"
                           "\"http\"}}],\"destinations\":[{\"match\":{\"service\":\"backend\","
                           "\"kuma.io/protocol\":\"http\"}}],\"conf\":{\"abort\":{\"httpStatus\":"
                           "500,\"percentage\":40},\"delay\":{\"percentage\":50,\"value\":"
                           "\"0.010s\"},\"responseBandwidth\":{\"limit\":\"50kbps\","
                           "\"percentage\":400}}"),
     {{"conf.responseBandwidth.percentage", "has to be in [0.0 - 100.0] range"}}},
};

static const struct vcase other_cases[] = {
    {"{\"type\":\"Mesh\",\"name\":\"m\",\"mtls\":{\"enabledBackend\":\"ca-1\",\"backends\":[{"
     "\"name\":\"ca-1\",\"type\":\"builtin\"}]}}",
     {{NULL, NULL}}},
    {"{\"type\":\"Mesh\",\"name\":\"m\",\"mtls\":{\"enabledBackend\":\"ca-2\",\"backends\":[{"
     "\"name\":\"ca-1\",\"type\":\"builtin\",\"dpCert\":{\"rotation\":{\"expiration\":\"1x\"}}}]"
     "}}",
     {{"mtls.dpcert.rotation.expiration", "has to be a valid format"},
      {"mtls.enabledBackend", "has to be set to one of the backends in the mesh"}}},
    {"{\"type\":\"Mesh\",\"name\":\"m\",\"logging\":{\"defaultBackend\":\"x\",\"backends\":[{"
     "\"name\":\"a\",\"type\":\"tcp\",\"conf\":{\"address\":\"nope\"}}]}}",
     {{"logging.backends[0].config.address", "has to be in format of HOST:PORT"},
      {"logging.defaultBackend", "has to be set to one of the logging backend in mesh"}}},
    {"{\"type\":\"Mesh\",\"name\":\"m\",\"routing\":{\"zoneEgress\":true}}",
     {{"mtls", "has to be set when zoneEgress enabled"}}},
    {"{\"type\":\"Secret\",\"mesh\":\"default\",\"name\":\"s\",\"data\":\"dGVzdAo=\"}",
     {{NULL, NULL}}},
    {"{\"type\":\"Secret\",\"mesh\":\"default\",\"name\":\"s\"}", {{"data", "cannot be empty"}}},
    {"{\"type\":\"GlobalSecret\",\"name\":\"s\",\"data\":\"not base64!\"}",
     {{"data", "must be a base64 encoded string"}}},
    {"{\"type\":\"MeshService\",\"mesh\":\"default\",\"name\":\"s\",\"spec\":{\"ports\":[{"
     "\"port\":0}]}}",
     {{"spec.ports[0].port", "port must be in the range [1, 65535]"}}},
};

static void
run_table(const struct vcase *cs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        run_case(&cs[i], i);
}

KM_TEST(validate_dataplane_table)
{
    run_table(dataplane_cases, sizeof(dataplane_cases) / sizeof(dataplane_cases[0]));
}

KM_TEST(validate_targetref_table)
{
    run_table(targetref_cases, sizeof(targetref_cases) / sizeof(targetref_cases[0]));
}

KM_TEST(validate_legacy_table)
{
    run_table(legacy_cases, sizeof(legacy_cases) / sizeof(legacy_cases[0]));
}

KM_TEST(validate_other_table)
{
    run_table(other_cases, sizeof(other_cases) / sizeof(other_cases[0]));
}

KM_TEST(validate_names)
{
    struct km_errs e;
    char longname[300];

    km_errs_init(&e);
    km_validate_name("dp-1.a", &e);
    ASSERT_INT_EQ(e.n, 0);
    km_validate_name("", &e);
    km_validate_name("dp-4$", &e);
    memset(longname, 'a', 254);
    longname[254] = '\0';
    km_validate_name(longname, &e);
    km_validate_name("-a", &e);
    ASSERT_INT_EQ(e.n, 4);
    ASSERT_STR_EQ(e.v[0].reason, "cannot be empty");
    ASSERT_STR_EQ(e.v[1].field, "name");
    ASSERT_STR_EQ(e.v[1].reason,
                  "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case "
                  "alphanumeric characters, '-' or '.', and must start and end with an "
                  "alphanumeric character");
    ASSERT_STR_EQ(e.v[2].reason, "value length must less or equal 253");
    ASSERT_STR_CONTAINS(e.v[3].reason, "RFC 1123 subdomain");
    km_errs_deinit(&e);
}

KM_TEST(validate_request_order)
{
    struct km_errs e;
    struct km_resource *r = km_resource_new(km_registry_find("Dataplane"), "def$ault", "dp-4$");

    km_errs_init(&e);
    km_validate_request(r, "Dataplane", "default", "dp-5", &e);
    ASSERT_INT_EQ(e.n, 4);
    ASSERT_STR_EQ(e.v[0].field, "name");
    ASSERT_STR_EQ(e.v[0].reason, "name from the URL has to be the same as in body");
    ASSERT_STR_EQ(e.v[1].field, "mesh");
    ASSERT_STR_EQ(e.v[1].reason, "mesh from the URL has to be the same as in body");
    ASSERT_STR_EQ(e.v[2].field, "name");
    ASSERT_STR_CONTAINS(e.v[2].reason, "RFC 1123 subdomain");
    ASSERT_STR_EQ(e.v[3].field, "mesh");
    ASSERT_STR_EQ(e.v[3].reason, "invalid characters. Valid characters are numbers, lowercase "
                                 "latin letters and '-', '_', '.' symbols.");
    km_errs_deinit(&e);
    km_resource_free(r);
}

KM_TEST(validate_labels_k8s_rules)
{
    json_error_t je;
    json_t *labels = json_loads("{\"foo/bar/baz\":\"bar\",\"\":\"bar\",\"foo\":\"^*bar\","
                                "\"kuma.io/zone\":\"east\"}",
                                0, &je);
    struct km_errs e;

    km_errs_init(&e);
    km_validate_labels(labels, &e);
    ASSERT_INT_EQ(e.n, 4);
    ASSERT_STR_EQ(e.v[0].field, "labels[\"\"]");
    ASSERT_STR_EQ(e.v[0].reason, "name part must be non-empty");
    ASSERT_STR_EQ(e.v[1].field, "labels[\"\"]");
    ASSERT_STR_EQ(e.v[1].reason,
                  "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                  "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
                  "or '123-abc', regex used for validation is "
                  "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')");
    ASSERT_STR_EQ(e.v[2].field, "labels[\"foo\"]");
    ASSERT_STR_CONTAINS(e.v[2].reason, "a valid label must be an empty string");
    ASSERT_STR_EQ(e.v[3].field, "labels[\"foo/bar/baz\"]");
    ASSERT_STR_CONTAINS(e.v[3].reason, "a valid label key must consist of alphanumeric");
    ASSERT_STR_CONTAINS(e.v[3].reason, "with an optional DNS subdomain prefix and '/' (e.g. "
                                       "'example.com/MyName')");
    km_errs_deinit(&e);
    json_decref(labels);
}
