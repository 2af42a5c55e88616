/* Registry lookups: names, REST paths (with alternatives), kumactl arguments, scopes, KRI
 * short names. */
#include <km/cp/resource.h>

#include "test.h"

KM_TEST(registry_mesh_first)
{
    ASSERT(km_registry_count() > 40);
    ASSERT_STR_EQ(km_registry_at(0)->name, "Mesh");
    ASSERT(km_registry_mesh() == km_registry_at(0));
    ASSERT(km_registry_at(km_registry_count()) == NULL);
    ASSERT_INT_EQ(km_registry_mesh()->scope, KM_SCOPE_GLOBAL);
}

KM_TEST(registry_find_by_name)
{
    const struct km_rtype *t = km_registry_find("MeshTrafficPermission");
    ASSERT(t != NULL);
    ASSERT_STR_EQ(t->plural, "meshtrafficpermissions");
    ASSERT_STR_EQ(t->short_name, "mtp");
    ASSERT(t->has_spec && t->is_policy && t->is_targetref_policy);
    ASSERT_INT_EQ(t->scope, KM_SCOPE_MESH);
    ASSERT(km_registry_find("NoSuchType") == NULL);
    ASSERT(km_registry_find(NULL) == NULL);
    ASSERT(km_registry_find("dataplane") == NULL); /* case sensitive */
}

KM_TEST(registry_paths)
{
    ASSERT_STR_EQ(km_registry_by_path("global-secrets")->name, "GlobalSecret");
    ASSERT_STR_EQ(km_registry_by_path("globalsecrets")->name, "GlobalSecret");
    ASSERT_STR_EQ(km_registry_by_path("zone-ingresses")->name, "ZoneIngress");
    ASSERT_STR_EQ(km_registry_by_path("zoneingresses")->name, "ZoneIngress");
    ASSERT_STR_EQ(km_registry_by_path("zoneegresses")->name, "ZoneEgress");
    ASSERT_STR_EQ(km_registry_by_path("traffic-permissions")->name, "TrafficPermission");
    ASSERT_STR_EQ(km_registry_by_path("health-checks")->name, "HealthCheck");
    ASSERT_STR_EQ(km_registry_by_path("retries")->name, "Retry");
    ASSERT_STR_EQ(km_registry_by_path("meshes")->name, "Mesh");
    ASSERT_STR_EQ(km_registry_by_path("meshtlses")->name, "MeshTLS");
    ASSERT_STR_EQ(km_registry_by_path("meshloadbalancingstrategies")->name,
                  "MeshLoadBalancingStrategy");
    ASSERT_STR_EQ(km_registry_by_path("hostnamegenerators")->name, "HostnameGenerator");
    ASSERT_STR_EQ(km_registry_by_path("dataplane-insights")->name, "DataplaneInsight");
    ASSERT(km_registry_by_path("healthchecks") == NULL);
    ASSERT(km_registry_by_path("") == NULL);
}

KM_TEST(registry_cli)
{
    ASSERT_STR_EQ(km_registry_by_cli("healthcheck")->name, "HealthCheck");
    ASSERT_STR_EQ(km_registry_by_cli("healthchecks")->name, "HealthCheck");
    ASSERT_STR_EQ(km_registry_by_cli("traffic-permission")->name, "TrafficPermission");
    ASSERT_STR_EQ(km_registry_by_cli("global-secret")->name, "GlobalSecret");
    ASSERT_STR_EQ(km_registry_by_cli("global-secrets")->name, "GlobalSecret");
    ASSERT_STR_EQ(km_registry_by_cli("zone-ingress")->name, "ZoneIngress");
    ASSERT_STR_EQ(km_registry_by_cli("meshtrafficpermission")->name, "MeshTrafficPermission");
    ASSERT(km_registry_by_cli("dataplane-insights") == NULL); /* not a kumactl type */
    ASSERT(km_registry_by_cli("nope") == NULL);
}

KM_TEST(registry_flags_and_scopes)
{
    static const char *const global[] = {"Mesh", "GlobalSecret", "Zone", "ZoneIngress",
                                         "ZoneEgress", "HostnameGenerator", "ZoneInsight"};
    for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++)
        ASSERT_INT_EQ(km_registry_find(global[i])->scope, KM_SCOPE_GLOBAL);
    ASSERT_INT_EQ(km_registry_find("Secret")->scope, KM_SCOPE_MESH);
    ASSERT(km_registry_find("DataplaneInsight")->read_only);
    ASSERT(!km_registry_find("Dataplane")->read_only);
    ASSERT(km_registry_find("TrafficRoute")->is_policy);
    ASSERT(!km_registry_find("TrafficRoute")->has_spec);
    ASSERT(km_registry_find("TrafficRoute")->short_name == NULL);
    ASSERT(!km_registry_find("MeshService")->is_policy);
    ASSERT(km_registry_find("MeshService")->has_spec);
    ASSERT_STR_EQ(km_registry_find("Dataplane")->short_name, "dp");
    ASSERT_STR_EQ(km_registry_find("Mesh")->short_name, "m");
    ASSERT_STR_EQ(km_registry_find("MeshExternalService")->short_name, "extsvc");
    ASSERT_STR_EQ(km_registry_find("Workload")->short_name, "wl");
    /* every type has unique name and path */
    for (size_t i = 0; i < km_registry_count(); i++)
        for (size_t j = i + 1; j < km_registry_count(); j++) {
            ASSERT(strcmp(km_registry_at(i)->name, km_registry_at(j)->name) != 0);
            ASSERT(strcmp(km_registry_at(i)->plural, km_registry_at(j)->plural) != 0);
        }
}
