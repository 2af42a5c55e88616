/* Unit tests for src/cp/xds_gen.c: golden files (tests/golden/xds/<case>.input.json ->
 * <case>.golden.json; UPDATE_GOLDEN=1 rewrites them), determinism, the field requirements of
 * the real gRPC xDS clients, and packing of every generated resource with our .proto schema. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/errs.h>
#include <km/common/pbjson.h>
#include <km/common/util.h>
#include <km/cp/resource.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>

#include "test.h"
#include "xds_golden.h"

#define URL_HCM "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager." \
                "v3.HttpConnectionManager"
#define URL_ROUTER "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

static const char *const golden_cases[] = {
    "sidecar_tcp",    "sidecar_http",     "grpc_two_zones",     "proxyless_echo",
    "no_endpoints",   "address_override", "outbound_missing",   "endpoint_filtering",
};

/* ---- a test case: input document turned into a mesh view and a proxy id ---- */

struct xcase {
    json_t *input;                  /* owned */
    struct km_resource **dps;       /* owned */
    size_t ndps;
    const char **requested;         /* owned array, strings borrowed from input */
    size_t nreq;
    struct km_mesh_view view;
    struct km_xds_proxy_id proxy;
};


static bool
offline_cb(const char *name, void *ud)
{
    const json_t *list = ud;
    size_t i;
    const json_t *v;

    json_array_foreach(list, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0)
            return true;
    return false;
}

static struct km_resource *
decode_dp(const json_t *doc)
{
    struct km_errs e;
    struct km_resource *r;

    km_errs_init(&e);
    r = km_resource_decode(doc, km_registry_find("Dataplane"), &e);
    if (r == NULL) {
        char *msg = km_errs_join(&e);
        KM_FAIL_AT("cannot decode Dataplane: %s", msg);
    }
    km_errs_deinit(&e);
    return r;
}

/* Builds the case from an input document (see the .input.json files in tests/golden/xds).
 * With <reverse>, the Dataplanes are handed to the generator in reverse order. */
static void
case_from_json(struct xcase *c, json_t *input, bool reverse)
{
    const json_t *dps = json_object_get(input, "dataplanes");
    const json_t *proxy = json_object_get(input, "proxy");
    const json_t *req = json_object_get(proxy, "requested_listeners");
    const json_t *offline = json_object_get(proxy, "offline");
    const char *own = json_string_value(json_object_get(proxy, "dataplane"));

    memset(c, 0, sizeof(*c));
    c->input = input;
    c->ndps = json_array_size(dps);
    c->dps = km_xcalloc(c->ndps + 1, sizeof(*c->dps));
    for (size_t i = 0; i < c->ndps; i++)
        c->dps[reverse ? c->ndps - 1 - i : i] = decode_dp(json_array_get(dps, i));
    c->nreq = json_array_size(req);
    c->requested = km_xcalloc(c->nreq + 1, sizeof(*c->requested));
    for (size_t i = 0; i < c->nreq; i++)
        c->requested[i] = json_string_value(json_array_get(req, i));

    c->view.mesh = "default";
    c->view.dataplanes = (const struct km_resource *const *)c->dps;
    c->view.ndataplanes = c->ndps;
    if (json_is_array(offline)) {
        c->view.is_offline = offline_cb;
        c->view.offline_ud = (void *)offline;
    }
    c->proxy.mesh = "default";
    c->proxy.name = json_string_value(json_object_get(proxy, "name"));
    c->proxy.requested_listeners = c->requested;
    c->proxy.nrequested_listeners = c->nreq;
    for (size_t i = 0; own && i < c->ndps; i++)
        if (strcmp(c->dps[i]->name, own) == 0)
            c->proxy.dataplane = c->dps[i];
    if (own && c->proxy.dataplane == NULL)
        KM_FAIL_AT("proxy.dataplane %s is not among the dataplanes", own);
}

static void
case_load(struct xcase *c, const char *name, bool reverse)
{
    char *path = xg_golden_path(name, ".input.json");
    json_error_t jerr;
    json_t *input = json_load_file(path, 0, &jerr);

    if (input == NULL)
        KM_FAIL_AT("%s: %s (line %d)", path, jerr.text, jerr.line);
    free(path);
    case_from_json(c, input, reverse);
}

static void
case_free(struct xcase *c)
{
    for (size_t i = 0; i < c->ndps; i++)
        km_resource_free(c->dps[i]);
    free(c->dps);
    free(c->requested);
    json_decref(c->input);
}

/* The generated resources as one document {"lds": {...}, "rds": ..., ...}. */
static json_t *
case_generate(const struct xcase *c)
{
    return xg_generate(&c->view, &c->proxy);
}


static char *
generate_text(const char *name, bool reverse)
{
    struct xcase c;
    json_t *doc;
    char *text;

    case_load(&c, name, reverse);
    doc = case_generate(&c);
    text = xg_dump(doc);
    json_decref(doc);
    case_free(&c);
    return text;
}


static void
run_golden(const char *name)
{
    char *got = generate_text(name, false);
    xg_check_golden(name, got);
    free(got);
}

KM_TEST(xds_golden_sidecar_tcp) { run_golden("sidecar_tcp"); }
KM_TEST(xds_golden_sidecar_http) { run_golden("sidecar_http"); }
KM_TEST(xds_golden_grpc_two_zones) { run_golden("grpc_two_zones"); }
KM_TEST(xds_golden_proxyless_echo) { run_golden("proxyless_echo"); }
KM_TEST(xds_golden_no_endpoints) { run_golden("no_endpoints"); }
KM_TEST(xds_golden_address_override) { run_golden("address_override"); }
KM_TEST(xds_golden_outbound_missing) { run_golden("outbound_missing"); }
KM_TEST(xds_golden_endpoint_filtering) { run_golden("endpoint_filtering"); }

/* Same input in another order -> byte-identical output; two runs -> identical output. */
KM_TEST(xds_deterministic)
{
    for (size_t i = 0; i < KM_ARRAY_LEN(golden_cases); i++) {
        char *a = generate_text(golden_cases[i], false);
        char *b = generate_text(golden_cases[i], true);
        char *c = generate_text(golden_cases[i], false);
        if (strcmp(a, b) != 0 || strcmp(a, c) != 0)
            KM_FAIL_AT("case %s: output depends on the order of the dataplanes", golden_cases[i]);
        free(a);
        free(b);
        free(c);
    }
}

/* ---- the gRPC clients' requirements, checked on every generated resource ---- */

static void check_node(const char *where, const json_t *j);

static void
check_config_source(const char *where, const json_t *cs)
{
    const json_t *ads = json_object_get(cs, "ads");
    if (!json_is_object(ads) || json_object_size(ads) != 0)
        KM_FAIL_AT("%s: config source without an empty \"ads\" message", where);
    if (!json_is_string(json_object_get(cs, "resource_api_version")) ||
        strcmp(json_string_value(json_object_get(cs, "resource_api_version")), "V3") != 0)
        KM_FAIL_AT("%s: config source without resource_api_version V3", where);
}

static void
check_hcm(const char *where, const json_t *hcm)
{
    const json_t *filters = json_object_get(hcm, "http_filters");
    const json_t *last, *rds = json_object_get(hcm, "rds");
    size_t n = json_array_size(filters);

    if (n == 0)
        KM_FAIL_AT("%s: HCM without http_filters (C-core NACKs an empty list)", where);
    last = json_array_get(filters, n - 1);
    if (strcmp(json_string_value(json_object_get(json_object_get(last, "typed_config"), "@type")),
               URL_ROUTER) != 0)
        KM_FAIL_AT("%s: the last HTTP filter is not the router", where);
    for (size_t i = 0; i < n; i++)
        for (size_t k = i + 1; k < n; k++)
            if (json_equal(json_object_get(json_array_get(filters, i), "name"),
                           json_object_get(json_array_get(filters, k), "name")))
                KM_FAIL_AT("%s: duplicate HTTP filter names", where);
    if (rds) {
        check_config_source(where, json_object_get(rds, "config_source"));
        ASSERT(json_is_string(json_object_get(rds, "route_config_name")));
    } else if (!json_is_object(json_object_get(hcm, "route_config"))) {
        KM_FAIL_AT("%s: HCM with neither rds nor route_config", where);
    }
}

static void
check_route_config(const char *where, const json_t *rc)
{
    const json_t *vhs = json_object_get(rc, "virtual_hosts"), *vh, *r, *d;
    size_t i, k;
    bool star;

    ASSERT(json_array_size(vhs) > 0);
    json_array_foreach(vhs, i, vh) {
        star = false;
        json_array_foreach(json_object_get(vh, "domains"), k, d)
            star = star || strcmp(json_string_value(d), "*") == 0;
        if (!star)
            KM_FAIL_AT("%s: virtual host without domain \"*\"", where);
        ASSERT(json_array_size(json_object_get(vh, "routes")) > 0);
        json_array_foreach(json_object_get(vh, "routes"), k, r) {
            ASSERT(json_is_string(json_object_get(json_object_get(r, "match"), "prefix")));
            ASSERT(json_is_string(json_object_get(json_object_get(r, "route"), "cluster")));
        }
    }
}

/* Walks every nested object: HCMs and config sources wherever they are. */
static void
check_node(const char *where, const json_t *j)
{
    const char *key;
    const json_t *v;
    size_t i;

    if (json_is_object(j)) {
        const char *type = json_string_value(json_object_get(j, "@type"));
        if (type && strcmp(type, URL_HCM) == 0)
            check_hcm(where, j);
        json_object_foreach((json_t *)j, key, v) {
            if (strcmp(key, "eds_config") == 0 || strcmp(key, "config_source") == 0)
                check_config_source(where, v);
            if (strcmp(key, "route_config") == 0)
                check_route_config(where, v);
            check_node(where, v);
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            check_node(where, v);
    }
}

static void
check_cla(const char *where, const json_t *cla)
{
    const json_t *eps = json_object_get(cla, "endpoints"), *loc, *lb;
    json_t *seen = json_object();
    size_t i, k;

    if (!json_is_array(eps))
        KM_FAIL_AT("%s: endpoints is not an array", where);
    json_array_foreach(eps, i, loc) {
        const json_t *w = json_object_get(loc, "load_balancing_weight");
        if (!json_is_object(json_object_get(loc, "locality")))
            KM_FAIL_AT("%s: endpoints[%zu] without locality (gRPC clients NACK)", where, i);
        if (!json_is_integer(w) || json_integer_value(w) < 1)
            KM_FAIL_AT("%s: endpoints[%zu] without load_balancing_weight (gRPC clients drop the "
                       "locality)", where, i);
        ASSERT(json_array_size(json_object_get(loc, "lb_endpoints")) > 0);
        ASSERT(json_integer_value(json_object_get(loc, "priority")) == 0);
        json_array_foreach(json_object_get(loc, "lb_endpoints"), k, lb) {
            const json_t *sa = json_object_get(
                json_object_get(json_object_get(lb, "endpoint"), "address"), "socket_address");
            const char *addr = json_string_value(json_object_get(sa, "address"));
            char *key;
            ASSERT(addr != NULL);
            ASSERT(json_is_integer(json_object_get(sa, "port_value")));
            key = km_xasprintf("%s:%lld", addr,
                               (long long)json_integer_value(json_object_get(sa, "port_value")));
            if (json_object_get(seen, key))
                KM_FAIL_AT("%s: duplicate endpoint address %s", where, key);
            json_object_set_new(seen, key, json_true());
            free(key);
        }
    }
    json_decref(seen);
}

static void
check_resources(const char *name, const json_t *doc)
{
    const char *rname;
    const json_t *r;

    json_object_foreach(json_object_get(doc, "lds"), rname, r) {
        const json_t *api = json_object_get(r, "api_listener");
        ASSERT_STR_EQ(json_string_value(json_object_get(r, "name")), rname);
        if (api) {
            ASSERT(json_object_get(r, "listener_filters") == NULL);
            ASSERT(!json_is_true(json_object_get(r, "use_original_dst")));
            ASSERT_STR_EQ(json_string_value(json_object_get(json_object_get(api, "api_listener"),
                                                            "@type")),
                          URL_HCM);
        } else {
            ASSERT(json_array_size(json_object_get(r, "filter_chains")) == 1);
        }
        check_node(name, r);
    }
    json_object_foreach(json_object_get(doc, "rds"), rname, r) {
        ASSERT_STR_EQ(json_string_value(json_object_get(r, "name")), rname);
        check_route_config(name, r);
    }
    json_object_foreach(json_object_get(doc, "cds"), rname, r) {
        const char *lb = json_string_value(json_object_get(r, "lb_policy"));
        ASSERT_STR_EQ(json_string_value(json_object_get(r, "name")), rname);
        ASSERT(lb == NULL || strcmp(lb, "ROUND_ROBIN") == 0);
        if (strcmp(json_string_value(json_object_get(r, "type")), "EDS") == 0)
            /* every EDS cluster has its ClusterLoadAssignment in the same snapshot */
            ASSERT(json_object_get(json_object_get(doc, "eds"), rname) != NULL);
        check_node(name, r);
        /* a static cluster (Envoy only, the local application) has its endpoint inline */
        if (json_object_get(r, "load_assignment"))
            ASSERT(json_array_size(json_object_get(json_array_get(json_object_get(
                                                       json_object_get(r, "load_assignment"),
                                                       "endpoints"),
                                                   0),
                                   "lb_endpoints")) == 1);
    }
    json_object_foreach(json_object_get(doc, "eds"), rname, r) {
        ASSERT_STR_EQ(json_string_value(json_object_get(r, "cluster_name")), rname);
        check_cla(name, r);
    }
}

KM_TEST(xds_grpc_client_requirements)
{
    for (size_t i = 0; i < KM_ARRAY_LEN(golden_cases); i++) {
        struct xcase c;
        json_t *doc;

        case_load(&c, golden_cases[i], false);
        doc = case_generate(&c);
        check_resources(golden_cases[i], doc);
        json_decref(doc);
        case_free(&c);
    }
}

/* The proxyless case in detail: what grpc-js-xds and C-core need, field by field. */
KM_TEST(xds_proxyless_echo_fields)
{
    struct xcase c;
    json_t *doc, *lds, *l, *hcm, *filters, *cla, *loc, *cl, *ads;

    case_load(&c, "proxyless_echo", false);
    doc = case_generate(&c);
    lds = json_object_get(doc, "lds");
    ASSERT_INT_EQ(json_object_size(lds), 1); /* "not-a-service" gives nothing */
    l = json_object_get(lds, "echo");
    ASSERT(l != NULL);
    hcm = json_object_get(json_object_get(l, "api_listener"), "api_listener");
    ASSERT_STR_EQ(json_string_value(json_object_get(hcm, "@type")), URL_HCM);
    ASSERT_STR_EQ(json_string_value(json_object_get(json_object_get(hcm, "rds"),
                                                    "route_config_name")),
                  "echo");
    ads = json_object_get(json_object_get(json_object_get(hcm, "rds"), "config_source"), "ads");
    ASSERT(json_is_object(ads) && json_object_size(ads) == 0);
    filters = json_object_get(hcm, "http_filters");
    ASSERT_INT_EQ(json_array_size(filters), 1);
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(filters, 0), "typed_config"), "@type")),
                  URL_ROUTER);
    ASSERT(json_object_get(json_object_get(doc, "rds"), "echo") != NULL);
    cl = json_object_get(json_object_get(doc, "cds"), "echo");
    ASSERT_STR_EQ(json_string_value(json_object_get(cl, "type")), "EDS");
    ASSERT(json_is_object(json_object_get(
        json_object_get(json_object_get(cl, "eds_cluster_config"), "eds_config"), "ads")));
    /* proxyless clusters carry no Envoy-only upstream options */
    ASSERT(json_object_get(cl, "typed_extension_protocol_options") == NULL);

    cla = json_object_get(json_object_get(doc, "eds"), "echo");
    ASSERT_INT_EQ(json_array_size(json_object_get(cla, "endpoints")), 1);
    loc = json_array_get(json_object_get(cla, "endpoints"), 0);
    ASSERT(json_is_object(json_object_get(loc, "locality")));
    ASSERT_INT_EQ(json_integer_value(json_object_get(loc, "load_balancing_weight")), 1);
    /* only the ready instance (port 50051); echo-b has health.ready false */
    ASSERT_INT_EQ(json_array_size(json_object_get(loc, "lb_endpoints")), 1);
    ASSERT_INT_EQ(json_integer_value(json_object_get(
                      json_object_get(json_object_get(json_object_get(json_array_get(
                                                                          json_object_get(
                                                                              loc, "lb_endpoints"),
                                                                          0),
                                                                      "endpoint"),
                                                      "address"),
                                      "socket_address"),
                      "port_value")),
                  50051);
    json_decref(doc);
    case_free(&c);
}

/* Two zones -> two localities, each with its weight; zone order is fixed. */
KM_TEST(xds_localities_by_zone)
{
    struct xcase c;
    json_t *doc, *eps;

    case_load(&c, "grpc_two_zones", false);
    doc = case_generate(&c);
    eps = json_object_get(json_object_get(json_object_get(doc, "eds"), "echo"), "endpoints");
    ASSERT_INT_EQ(json_array_size(eps), 2);
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(eps, 0), "locality"), "zone")),
                  "zone-a");
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(eps, 1), "locality"), "zone")),
                  "zone-b");
    for (size_t i = 0; i < 2; i++)
        ASSERT_INT_EQ(json_integer_value(
                          json_object_get(json_array_get(eps, i), "load_balancing_weight")),
                      1);
    /* grpc upstream: the EDS cluster and the local cluster speak HTTP/2 */
    ASSERT(json_object_get(json_object_get(json_object_get(doc, "cds"), "echo"),
                           "typed_extension_protocol_options") != NULL);
    ASSERT(json_object_get(json_object_get(json_object_get(doc, "cds"), "localhost:50052"),
                           "typed_extension_protocol_options") != NULL);
    json_decref(doc);
    case_free(&c);
}

/* ---- inline cases ---- */

static json_t *
generate_inline(const char *input_text)
{
    json_error_t jerr;
    json_t *input = json_loads(input_text, 0, &jerr);
    struct xcase c;
    json_t *doc;

    if (input == NULL)
        KM_FAIL_AT("bad inline input: %s", jerr.text);
    case_from_json(&c, input, false);
    doc = case_generate(&c);
    case_free(&c);
    return doc;
}

static const char *
outbound_filter(const json_t *doc, const char *listener)
{
    const json_t *l = json_object_get(json_object_get(doc, "lds"), listener);
    const json_t *fc = json_array_get(json_object_get(l, "filter_chains"), 0);
    return json_string_value(json_object_get(json_array_get(json_object_get(fc, "filters"), 0),
                                             "name"));
}

/* Kuma's common protocol: grpc+http2 -> http2 (HTTP), http+http2 -> tcp, anything+unknown ->
 * tcp on the outbound listener. */
KM_TEST(xds_outbound_protocol_inference)
{
    json_t *doc = generate_inline(
        "{\"proxy\": {\"name\": \"c\", \"dataplane\": \"c\"}, \"dataplanes\": ["
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"c\", \"networking\": {"
        "  \"address\": \"10.0.0.1\", \"inbound\": [{\"port\": 1, \"tags\": {\"kuma.io/service\": "
        "\"c\"}}], \"outbound\": ["
        "   {\"port\": 1001, \"tags\": {\"kuma.io/service\": \"a\"}},"
        "   {\"port\": 1002, \"tags\": {\"kuma.io/service\": \"b\"}},"
        "   {\"port\": 1003, \"tags\": {\"kuma.io/service\": \"d\"}},"
        "   {\"port\": 1004, \"backendRef\": {\"kind\": \"MeshService\", \"name\": \"a\"}}]}},"
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"a1\", \"networking\": {"
        "  \"address\": \"10.0.1.1\", \"inbound\": ["
        "   {\"port\": 1, \"tags\": {\"kuma.io/service\": \"a\", \"kuma.io/protocol\": \"grpc\"}},"
        "   {\"port\": 2, \"tags\": {\"kuma.io/service\": \"b\", \"kuma.io/protocol\": \"http\"}},"
        "   {\"port\": 3, \"tags\": {\"kuma.io/service\": \"d\", \"kuma.io/protocol\": \"http\"}}"
        "  ]}},"
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"a2\", \"networking\": {"
        "  \"address\": \"10.0.1.2\", \"inbound\": ["
        "   {\"port\": 1, \"tags\": {\"kuma.io/service\": \"a\", \"kuma.io/protocol\": \"http2\"}},"
        "   {\"port\": 2, \"tags\": {\"kuma.io/service\": \"b\", \"kuma.io/protocol\": \"http2\"}},"
        "   {\"port\": 3, \"tags\": {\"kuma.io/service\": \"d\"}}"
        "  ]}}]}");

    ASSERT_STR_EQ(outbound_filter(doc, "outbound:127.0.0.1:1001"),
                  "envoy.filters.network.http_connection_manager");
    ASSERT_STR_EQ(outbound_filter(doc, "outbound:127.0.0.1:1002"),
                  "envoy.filters.network.tcp_proxy");
    ASSERT_STR_EQ(outbound_filter(doc, "outbound:127.0.0.1:1003"),
                  "envoy.filters.network.tcp_proxy");
    /* backendRef names the service when there is no kuma.io/service tag */
    ASSERT_STR_EQ(outbound_filter(doc, "outbound:127.0.0.1:1004"),
                  "envoy.filters.network.http_connection_manager");
    /* http2 is common to grpc and http2: the cluster speaks HTTP/2 */
    ASSERT(json_object_get(json_object_get(json_object_get(doc, "cds"), "a"),
                           "typed_extension_protocol_options") != NULL);
    ASSERT(json_object_get(json_object_get(json_object_get(doc, "cds"), "b"),
                           "typed_extension_protocol_options") == NULL);
    json_decref(doc);
}

/* Specs the validator would reject (or that come from a broken store) never crash and give
 * nothing for the broken parts. */
KM_TEST(xds_hostile_specs)
{
    json_t *doc = generate_inline(
        "{\"proxy\": {\"name\": \"x\", \"dataplane\": \"x\", \"requested_listeners\": [\"s\"]},"
        " \"dataplanes\": ["
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"x\", \"networking\": {"
        "  \"address\": \"10.0.0.1\", \"inbound\": ["
        "   {\"port\": \"80\", \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": 70000, \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": 0, \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": 81, \"tags\": \"s\"},"
        "   {\"port\": 82, \"tags\": {\"kuma.io/service\": 7}},"
        "   {\"port\": 83, \"tags\": {\"kuma.io/service\": \"s\"}, \"serviceAddress\": \"x y\"},"
        "   {\"port\": 84, \"address\": \"host.name\", \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": 85, \"health\": \"yes\", \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   42, null, [], \"inbound\"],"
        "  \"outbound\": [{\"port\": 5}, {\"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": 6, \"address\": \"nowhere\", \"tags\": {\"kuma.io/service\": \"s\"}},"
        "   {\"port\": -1, \"tags\": {\"kuma.io/service\": \"s\"}}, 1, null]}},"
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"y\", \"networking\": 5},"
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"z\", \"networking\": {"
        "  \"inbound\": {\"port\": 1}, \"outbound\": \"no\"}},"
        " {\"type\": \"Dataplane\", \"mesh\": \"default\", \"name\": \"w\", \"networking\": {"
        "  \"inbound\": [{\"port\": 9, \"tags\": {\"kuma.io/service\": \"s\"}}]}}"
        "]}");
    const json_t *lds = json_object_get(doc, "lds"), *eds = json_object_get(doc, "eds");

    /* port 85 (health not an object: ready) is the only usable inbound of x; 83 and 84 have no
     * usable address for a listener; the API listener "s" exists */
    ASSERT(json_object_get(lds, "inbound:10.0.0.1:85") != NULL);
    ASSERT(json_object_get(lds, "s") != NULL);
    ASSERT_INT_EQ(json_object_size(lds), 2);
    /* endpoints of s: 10.0.0.1 ports 83 and 85 (84's address is a host name; w has no
     * address) */
    ASSERT_INT_EQ(json_array_size(json_object_get(
                      json_array_get(json_object_get(json_object_get(eds, "s"), "endpoints"), 0),
                      "lb_endpoints")),
                  2);
    json_decref(doc);

    /* no view, no proxy, NULL names */
    {
        struct km_xds_resources res;
        const char *names[] = {NULL, "s"};
        struct km_xds_proxy_id p = {.mesh = "m", .name = "n", .requested_listeners = names,
                                    .nrequested_listeners = 2};
        struct km_mesh_view empty = {.mesh = "m"};

        km_xds_generate(NULL, NULL, &res);
        for (int t = 0; t < KM_XDS_TYPE_COUNT; t++)
            ASSERT_INT_EQ(json_object_size(res.by_type[t]), 0);
        km_xds_resources_deinit(&res);
        km_xds_generate(&empty, &p, &res);
        for (int t = 0; t < KM_XDS_TYPE_COUNT; t++)
            ASSERT_INT_EQ(json_object_size(res.by_type[t]), 0);
        km_xds_resources_deinit(&res);
        km_xds_resources_deinit(&res); /* idempotent */
    }
}

KM_TEST(xds_type_urls)
{
    ASSERT_INT_EQ(km_xds_type_index("type.googleapis.com/envoy.config.listener.v3.Listener"),
                  KM_XDS_LISTENER);
    ASSERT_INT_EQ(km_xds_type_index(
                      "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"),
                  KM_XDS_ENDPOINT);
    ASSERT_INT_EQ(km_xds_type_index(
                      "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"),
                  KM_XDS_SECRET);
    ASSERT_INT_EQ(km_xds_type_index("type.googleapis.com/envoy.config.listener.v3.Listen"), -1);
    ASSERT_INT_EQ(km_xds_type_index(NULL), -1);
    ASSERT_STR_EQ(km_xds_type_short[KM_XDS_CLUSTER], "cds");
}

KM_TEST(xds_mesh_index)
{
    struct xcase c;
    struct km_xds_mesh_index *ix;

    case_load(&c, "endpoint_filtering", false);
    ix = km_xds_mesh_index_new(&c.view);
    ASSERT(km_xds_mesh_index_has_service(ix, "echo"));
    ASSERT(!km_xds_mesh_index_has_service(ix, "ech"));
    ASSERT(!km_xds_mesh_index_has_service(ix, NULL));
    km_xds_mesh_index_free(ix);
    ASSERT(!km_xds_mesh_index_has_service(NULL, "echo"));
    km_xds_mesh_index_free(NULL);
    case_free(&c);
}

/* ---- every generated resource packs with our .proto subset (no unknown or mistyped field) */

/* An empty repeated field is not on the wire: "endpoints": [] decodes as absent. */
static void
drop_empty_arrays(json_t *j)
{
    const char *k;
    json_t *v;
    void *tmp;
    size_t i;

    if (json_is_object(j)) {
        json_object_foreach_safe(j, tmp, k, v) {
            if (json_is_array(v) && json_array_size(v) == 0)
                json_object_del(j, k);
            else
                drop_empty_arrays(v);
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            drop_empty_arrays(v);
    }
}

KM_TEST(xds_pack_with_schema)
{
    size_t packed = 0;

    km_xds_register_types();
    for (size_t i = 0; i < KM_ARRAY_LEN(golden_cases); i++) {
        struct xcase c;
        struct km_xds_resources res;

        case_load(&c, golden_cases[i], false);
        km_xds_generate(&c.view, &c.proxy, &res);
        for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
            const ProtobufCMessageDescriptor *d = km_xds_type_descriptor(t);
            const char *rname;
            json_t *r;

            ASSERT_STR_EQ(km_xds_type_urls[t] + strlen("type.googleapis.com/"), d->name);
            json_object_foreach(res.by_type[t], rname, r) {
                uint8_t *buf = NULL, *abuf = NULL;
                size_t len = 0, alen = 0;
                char err[512] = "";
                json_t *back, *norm;

                if (km_pbjson_encode(d, r, &buf, &len, err, sizeof(err)) != 0)
                    KM_FAIL_AT("case %s: %s %s does not fit our schema: %s", golden_cases[i],
                               km_xds_type_short[t], rname, err);
                if (km_pbjson_encode_any(d, r, &abuf, &alen, err, sizeof(err)) != 0)
                    KM_FAIL_AT("case %s: %s %s as Any: %s", golden_cases[i],
                               km_xds_type_short[t], rname, err);
                ASSERT(alen > len);
                /* decodes back to exactly the same JSON: no field lost or retyped, and the
                 * presence-only empty messages (ads {}, locality {}, http2_protocol_options {})
                 * are on the wire */
                back = km_pbjson_decode(d, buf, len, err, sizeof(err));
                if (back == NULL)
                    KM_FAIL_AT("case %s: %s %s does not decode: %s", golden_cases[i],
                               km_xds_type_short[t], rname, err);
                norm = json_deep_copy(r);
                drop_empty_arrays(norm);
                if (!json_equal(back, norm)) {
                    char *a = json_dumps(r, JSON_COMPACT), *b = json_dumps(back, JSON_COMPACT);
                    KM_FAIL_AT("case %s: %s %s changes in a wire round trip:\n  generated: %s\n"
                               "  decoded:   %s", golden_cases[i], km_xds_type_short[t], rname,
                               a, b);
                }
                if (t == KM_XDS_ENDPOINT && json_object_get(back, "endpoints"))
                    check_cla(golden_cases[i], back);
                json_decref(back);
                json_decref(norm);
                free(buf);
                free(abuf);
                packed++;
            }
        }
        km_xds_resources_deinit(&res);
        case_free(&c);
    }
    ASSERT(packed > 30);
}
