/* The resource-type registry: one static descriptor per type kuma-cp knows, with the REST path
 * segments, kumactl arguments, KRI short names and scopes of Kuma 2.14. Mesh comes first. */
#include <string.h>

#include <km/cp/resource.h>
#include <km/cp/validate.h>

#define G KM_SCOPE_GLOBAL
#define M KM_SCOPE_MESH

/* Flags, in the order of the descriptor's booleans. */
#define F_SPEC   1u
#define F_POLICY 2u
#define F_TREF   4u
#define F_RO     8u
#define F_INSIGHT 16u

#define T(nm, path, alt, sing, lst, shrt, disp, scope, fl, fn)                                     \
    {nm,                                                                                           \
     path,                                                                                         \
     alt,                                                                                          \
     sing,                                                                                         \
     lst,                                                                                          \
     shrt,                                                                                         \
     disp,                                                                                         \
     scope,                                                                                        \
     ((fl) & F_SPEC) != 0,                                                                         \
     ((fl) & F_POLICY) != 0,                                                                       \
     ((fl) & F_TREF) != 0,                                                                         \
     ((fl) & F_RO) != 0,                                                                           \
     ((fl) & F_INSIGHT) != 0,                                                                      \
     fn}

#define TREF(nm, path, sing, shrt, disp)                                                           \
    T(nm, path, NULL, sing, path, shrt, disp, M, F_SPEC | F_POLICY | F_TREF,                       \
      km_validate_targetref_policy)
#define LEGACY(nm, path, sing, lst, disp)                                                          \
    T(nm, path, NULL, sing, lst, NULL, disp, M, F_POLICY, km_validate_legacy)
#define NEWRES(nm, path, sing, shrt, disp, scope)                                                  \
    T(nm, path, NULL, sing, path, shrt, disp, scope, F_SPEC, km_validate_new_resource)

static const struct km_rtype types[] = {
    T("Mesh", "meshes", NULL, "mesh", "meshes", "m", "Meshes", G, F_INSIGHT,
      km_validate_mesh_res),
    T("Dataplane", "dataplanes", NULL, "dataplane", "dataplanes", "dp", "Dataplanes", M,
      F_INSIGHT, km_validate_dataplane),
    T("DataplaneInsight", "dataplane-insights", NULL, NULL, NULL, NULL, "Dataplane Insights", M,
      F_RO, NULL),
    T("Secret", "secrets", NULL, "secret", "secrets", NULL, "Secrets", M, 0, km_validate_secret),
    T("GlobalSecret", "globalsecrets", "global-secrets", "globalsecret", "globalsecrets", NULL,
      "Global Secrets", G, 0, km_validate_secret),
    T("Zone", "zones", NULL, "zone", "zones", "z", "Zones", G, F_INSIGHT, NULL),
    T("ZoneInsight", "zone-insights", NULL, NULL, NULL, NULL, "Zone Insights", G, F_RO, NULL),
    T("ZoneIngress", "zoneingresses", "zone-ingresses", "zoneingress", "zoneingresses", "zi",
      "Zone Ingresses", G, F_INSIGHT, km_validate_zone_proxy),
    T("ZoneIngressInsight", "zone-ingress-insights", NULL, NULL, NULL, NULL,
      "Zone Ingress Insights", G, F_RO, NULL),
    T("ZoneEgress", "zoneegresses", NULL, "zoneegress", "zoneegresses", "ze", "Zone Egresses", G,
      F_INSIGHT, km_validate_zone_proxy),
    T("ZoneEgressInsight", "zoneegressinsights", NULL, NULL, NULL, NULL, "Zone Egress Insights",
      G, F_RO, NULL),
    T("MeshInsight", "mesh-insights", NULL, NULL, NULL, NULL, "Mesh Insights", G, F_RO, NULL),
    T("ServiceInsight", "service-insights", NULL, NULL, NULL, NULL, "Service Insights", M, F_RO,
      NULL),
    T("ExternalService", "external-services", NULL, "external-service", "external-services",
      NULL, "External Services", M, 0, km_validate_legacy),
    LEGACY("TrafficPermission", "traffic-permissions", "traffic-permission",
           "traffic-permissions", "Traffic Permissions"),
    LEGACY("TrafficRoute", "traffic-routes", "traffic-route", "traffic-routes", "Traffic Routes"),
    LEGACY("TrafficLog", "traffic-logs", "traffic-log", "traffic-logs", "Traffic Logs"),
    LEGACY("TrafficTrace", "traffic-traces", "traffic-trace", "traffic-traces", "Traffic Traces"),
    LEGACY("HealthCheck", "health-checks", "healthcheck", "healthchecks", "Health Checks"),
    LEGACY("CircuitBreaker", "circuit-breakers", "circuit-breaker", "circuit-breakers",
           "Circuit Breakers"),
    LEGACY("FaultInjection", "fault-injections", "fault-injection", "fault-injections",
           "Fault Injections"),
    LEGACY("Retry", "retries", "retry", "retries", "Retries"),
    LEGACY("Timeout", "timeouts", "timeout", "timeouts", "Timeouts"),
    LEGACY("RateLimit", "rate-limits", "rate-limit", "rate-limits", "Rate Limits"),
    LEGACY("ProxyTemplate", "proxytemplates", "proxytemplate", "proxytemplates",
           "Proxy Templates"),
    LEGACY("VirtualOutbound", "virtual-outbounds", "virtual-outbound", "virtual-outbounds",
           "Virtual Outbounds"),
    T("MeshGateway", "meshgateways", NULL, "meshgateway", "meshgateways", "mgw", "Mesh Gateways",
      M, 0, km_validate_legacy),
    LEGACY("MeshGatewayRoute", "meshgatewayroutes", "meshgatewayroute", "meshgatewayroutes",
           "Mesh Gateway Routes"),
    TREF("MeshTrafficPermission", "meshtrafficpermissions", "meshtrafficpermission", "mtp",
         "Mesh Traffic Permissions"),
    TREF("MeshHTTPRoute", "meshhttproutes", "meshhttproute", "mhttpr", "Mesh HTTP Routes"),
    TREF("MeshTCPRoute", "meshtcproutes", "meshtcproute", "mtcpr", "Mesh TCP Routes"),
    TREF("MeshTimeout", "meshtimeouts", "meshtimeout", "mt", "Mesh Timeouts"),
    TREF("MeshRetry", "meshretries", "meshretry", "mr", "Mesh Retries"),
    TREF("MeshCircuitBreaker", "meshcircuitbreakers", "meshcircuitbreaker", "mcb",
         "Mesh Circuit Breakers"),
    TREF("MeshHealthCheck", "meshhealthchecks", "meshhealthcheck", "mhc", "Mesh Health Checks"),
    TREF("MeshFaultInjection", "meshfaultinjections", "meshfaultinjection", "mfi",
         "Mesh Fault Injections"),
    TREF("MeshRateLimit", "meshratelimits", "meshratelimit", "mrl", "Mesh Rate Limits"),
    TREF("MeshAccessLog", "meshaccesslogs", "meshaccesslog", "mal", "Mesh Access Logs"),
    TREF("MeshTrace", "meshtraces", "meshtrace", "mtr", "Mesh Traces"),
    TREF("MeshLoadBalancingStrategy", "meshloadbalancingstrategies", "meshloadbalancingstrategy",
         "mlbs", "Mesh Load Balancing Strategies"),
    TREF("MeshProxyPatch", "meshproxypatches", "meshproxypatch", "mpp", "Mesh Proxy Patches"),
    TREF("MeshMetric", "meshmetrics", "meshmetric", "mm", "Mesh Metrics"),
    TREF("MeshTLS", "meshtlses", "meshtls", "mtls", "Mesh TLSes"),
    TREF("MeshPassthrough", "meshpassthroughs", "meshpassthrough", "mp", "Mesh Passthroughs"),
    NEWRES("MeshService", "meshservices", "meshservice", "msvc", "Mesh Services", M),
    NEWRES("MeshExternalService", "meshexternalservices", "meshexternalservice", "extsvc",
           "Mesh External Services", M),
    NEWRES("MeshMultiZoneService", "meshmultizoneservices", "meshmultizoneservice", "mzsvc",
           "Mesh Multi Zone Services", M),
    NEWRES("MeshIdentity", "meshidentities", "meshidentity", "mid", "Mesh Identities", M),
    NEWRES("MeshTrust", "meshtrusts", "meshtrust", "mtrust", "Mesh Trusts", M),
    NEWRES("Workload", "workloads", "workload", "wl", "Workloads", M),
    NEWRES("HostnameGenerator", "hostnamegenerators", "hostnamegenerator", "hg",
           "Hostname Generators", G),
    NEWRES("MeshZoneAddress", "meshzoneaddresses", "meshzoneaddress", "mza",
           "Mesh Zone Addresses", M),
    NEWRES("MeshOpenTelemetryBackend", "meshopentelemetrybackends", "meshopentelemetrybackend",
           "motb", "Mesh OpenTelemetry Backends", M),
};

size_t
km_registry_count(void)
{
    return KM_ARRAY_LEN(types);
}

const struct km_rtype *
km_registry_at(size_t i)
{
    return i < KM_ARRAY_LEN(types) ? &types[i] : NULL;
}

const struct km_rtype *
km_registry_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < KM_ARRAY_LEN(types); i++)
        if (strcmp(types[i].name, name) == 0)
            return &types[i];
    return NULL;
}

const struct km_rtype *
km_registry_by_path(const char *segment)
{
    if (!segment || !segment[0])
        return NULL;
    for (size_t i = 0; i < KM_ARRAY_LEN(types); i++) {
        if (strcmp(types[i].plural, segment) == 0)
            return &types[i];
        if (types[i].alt_plural && strcmp(types[i].alt_plural, segment) == 0)
            return &types[i];
    }
    return NULL;
}

static bool
eq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* "global-secret" for "global-secrets": kumactl accepts the singular of the alias too. */
static bool
is_alias_singular(const char *alt, const char *arg)
{
    size_t n;

    if (!alt)
        return false;
    n = strlen(alt);
    if (n > 3 && strcmp(alt + n - 3, "ses") == 0 && strlen(arg) == n - 2 &&
        strncmp(alt, arg, n - 2) == 0)
        return true; /* zone-ingresses -> zone-ingress */
    return n > 1 && alt[n - 1] == 's' && strlen(arg) == n - 1 && strncmp(alt, arg, n - 1) == 0;
}

const struct km_rtype *
km_registry_by_cli(const char *arg)
{
    if (!arg || !arg[0])
        return NULL;
    for (size_t i = 0; i < KM_ARRAY_LEN(types); i++) {
        const struct km_rtype *t = &types[i];
        if (!t->singular)
            continue; /* not exposed to kumactl */
        if (eq(t->singular, arg) || eq(t->kumactl_plural, arg) || eq(t->plural, arg) ||
            eq(t->alt_plural, arg) || is_alias_singular(t->alt_plural, arg))
            return t;
    }
    return NULL;
}

const struct km_rtype *
km_registry_mesh(void)
{
    return &types[0];
}
