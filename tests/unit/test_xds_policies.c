/* Policies applied by the xDS generator: MeshLoadBalancingStrategy (mesh-wide subset), and
 * endpoint de-duplication by address value. */
#include <jansson.h>
#include <stdlib.h>

#include <km/common/yamljson.h>
#include <km/cp/xds_gen.h>

#include "test.h"

static struct km_resource *
res(const char *yaml)
{
    char err[256];
    json_t *doc = km_yaml_load(yaml, strlen(yaml), err, sizeof(err));
    if (!doc)
        KM_FAIL_AT("yaml: %s", err);
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_resource *r = km_resource_decode(doc, NULL, &errs);
    if (!r)
        KM_FAIL_AT("decode: %s", errs.n ? errs.v[0].reason : "?");
    km_errs_deinit(&errs);
    json_decref(doc);
    return r;
}

static struct km_resource *
dp(const char *name, const char *svc, const char *addr, int port, const char *outbound)
{
    char y[1024];
    snprintf(y, sizeof(y),
             "type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n"
             "  inbound:\n  - port: %d\n    tags: {kuma.io/service: %s}\n%s%s%s",
             name, addr, port, svc, outbound ? "  outbound:\n  - port: 30000\n" : "",
             outbound ? "    tags: {kuma.io/service: " : "", outbound ? outbound : "");
    if (outbound)
        strcat(y, "}\n");
    return res(y);
}

/* Generates for web-1 and returns the lb_policy of cluster <svc> ("" when absent). */
static char *
lb_of(struct km_resource **dps, size_t ndps, struct km_resource **pols, size_t npols,
      const char *svc)
{
    struct km_mesh_view view = {.mesh = "default",
                                .dataplanes = (const struct km_resource *const *)dps,
                                .ndataplanes = ndps,
                                .policies = (const struct km_resource *const *)pols,
                                .npolicies = npols};
    struct km_xds_proxy_id id = {.mesh = "default", .name = "web-1", .dataplane = dps[0]};
    struct km_xds_resources out;
    km_xds_generate(&view, &id, &out);
    json_t *c = json_object_get(out.by_type[KM_XDS_CLUSTER], svc);
    ASSERT(c != NULL);
    const char *lb = json_string_value(json_object_get(c, "lb_policy"));
    char *ret = km_xstrdup(lb ? lb : "");
    km_xds_resources_deinit(&out);
    return ret;
}

KM_TEST(mlbs_mesh_wide_and_per_service)
{
    struct km_resource *dps[] = {dp("web-1", "web", "10.0.0.1", 80, "backend"),
                                 dp("backend-1", "backend", "10.0.0.2", 80, NULL)};
    char *lb = lb_of(dps, 2, NULL, 0, "backend");
    ASSERT_STR_EQ(lb, ""); /* round robin: Envoy's default, not written */
    free(lb);

    struct km_resource *all = res("type: MeshLoadBalancingStrategy\nmesh: default\nname: zzz\n"
                                  "spec:\n  targetRef: {kind: Mesh}\n  to:\n"
                                  "  - targetRef: {kind: Mesh}\n"
                                  "    default: {loadBalancer: {type: LeastRequest}}\n");
    lb = lb_of(dps, 2, (struct km_resource *[]){all}, 1, "backend");
    ASSERT_STR_EQ(lb, "LEAST_REQUEST");
    free(lb);

    /* A MeshService entry beats a Mesh entry; between policies "aaa" is applied after "zzz". */
    struct km_resource *one = res("type: MeshLoadBalancingStrategy\nmesh: default\nname: aaa\n"
                                  "spec:\n  targetRef: {kind: Mesh}\n  to:\n"
                                  "  - targetRef: {kind: MeshService, name: backend}\n"
                                  "    default: {loadBalancer: {type: Maglev}}\n"
                                  "  - targetRef: {kind: Mesh}\n"
                                  "    default: {loadBalancer: {type: Random}}\n");
    lb = lb_of(dps, 2, (struct km_resource *[]){all, one}, 2, "backend");
    ASSERT_STR_EQ(lb, "MAGLEV");
    free(lb);
    struct km_resource *two = res("type: MeshLoadBalancingStrategy\nmesh: default\nname: aaa\n"
                                  "spec:\n  to:\n  - targetRef: {kind: Mesh}\n"
                                  "    default: {loadBalancer: {type: Random}}\n");
    lb = lb_of(dps, 2, (struct km_resource *[]){two, all}, 2, "backend");
    ASSERT_STR_EQ(lb, "RANDOM"); /* "aaa" is applied after "zzz", whatever the input order */
    free(lb);
    km_resource_free(two);

    /* A policy targeting something other than the whole mesh is not applied (yet). */
    struct km_resource *sub = res("type: MeshLoadBalancingStrategy\nmesh: default\nname: b\n"
                                  "spec:\n  targetRef: {kind: Dataplane, name: web-1}\n  to:\n"
                                  "  - targetRef: {kind: Mesh}\n"
                                  "    default: {loadBalancer: {type: RingHash}}\n");
    lb = lb_of(dps, 2, (struct km_resource *[]){sub}, 1, "backend");
    ASSERT_STR_EQ(lb, "");
    free(lb);
    km_resource_free(all);
    km_resource_free(one);
    km_resource_free(sub);
    km_resource_free(dps[0]);
    km_resource_free(dps[1]);
}

KM_TEST(endpoints_deduplicated_by_address_value)
{
    struct km_resource *dps[] = {dp("web-1", "web", "10.0.0.1", 80, "backend"),
                                 dp("backend-1", "backend", "::1", 8080, NULL),
                                 dp("backend-2", "backend", "0::1", 8080, NULL),
                                 dp("backend-3", "backend", "::2", 8080, NULL)};
    struct km_mesh_view view = {.mesh = "default",
                                .dataplanes = (const struct km_resource *const *)dps,
                                .ndataplanes = 4};
    struct km_xds_proxy_id id = {.mesh = "default", .name = "web-1", .dataplane = dps[0]};
    struct km_xds_resources out;
    km_xds_generate(&view, &id, &out);
    json_t *cla = json_object_get(out.by_type[KM_XDS_ENDPOINT], "backend");
    json_t *lbe = json_object_get(json_array_get(json_object_get(cla, "endpoints"), 0),
                                  "lb_endpoints");
    ASSERT_INT_EQ(json_array_size(lbe), 2); /* "::1" and "0::1" are one address */
    km_xds_resources_deinit(&out);
    for (size_t i = 0; i < 4; i++)
        km_resource_free(dps[i]);
}
