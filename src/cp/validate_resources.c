/* Secrets, zone proxies and the new-style resources (MeshService, MeshExternalService,
 * MeshMultiZoneService, MeshIdentity, MeshTrust, Workload, HostnameGenerator,
 * MeshZoneAddress, MeshOpenTelemetryBackend): the checks Kuma makes on their main fields. */
#include <stdlib.h>
#include <string.h>

#include <km/cp/validate.h>

static bool
is_base64(const char *s)
{
    size_t n = strlen(s), pad = 0;

    if (n % 4 != 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '=') {
            pad++;
            if (i < n - 2)
                return false;
            continue;
        }
        if (pad)
            return false;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return false;
    }
    return pad <= 2;
}

void
km_validate_secret(const struct km_rtype *t, const struct km_resource *r, struct km_errs *e)
{
    const json_t *data = json_object_get(r->spec, "data");

    (void)t;
    if (!data || json_is_null(data) || (json_is_string(data) && json_string_length(data) == 0))
        km_errs_add(e, "data", "cannot be empty");
    else if (!json_is_string(data) || !is_base64(json_string_value(data)))
        km_errs_add(e, "data", "must be a base64 encoded string");
}

void
km_validate_zone_proxy(const struct km_rtype *t, const struct km_resource *r, struct km_errs *e)
{
    const json_t *net = json_object_get(r->spec, "networking");
    const char *addr = km_jstr(net, "address");

    (void)t;
    if (!json_is_object(net)) {
        km_errs_add(e, "networking", "must be defined");
        return;
    }
    if (!addr || !addr[0])
        km_errs_add(e, "networking.address", "address can't be empty");
    else if (!km_is_ip(addr))
        km_errs_add(e, "networking.address", "address has to be valid IP address");
    km_validate_port(e, "networking.port", json_object_get(net, "port"));
    if (json_object_get(net, "advertisedPort"))
        km_validate_port(e, "networking.advertisedPort", json_object_get(net, "advertisedPort"));
}

static void
ports_list(struct km_errs *e, const json_t *spec, bool required, bool target)
{
    const json_t *ports = json_object_get(spec, "ports"), *p;
    size_t i;

    if (!km_schema_type(e, "spec.ports", ports, "array"))
        return;
    if (required && json_array_size(ports) == 0)
        km_errs_add(e, "spec.ports", "must not be empty");
    json_array_foreach (ports, i, p) {
        char *ip = km_xasprintf("spec.ports[%zu]", i);
        char *pp = km_vp_field(ip, "port");
        if (km_schema_type(e, pp, json_object_get(p, "port"), "integer"))
            km_validate_port(e, pp, json_object_get(p, "port"));
        if (target && json_is_integer(json_object_get(p, "targetPort"))) {
            char *tp = km_vp_field(ip, "targetPort");
            km_validate_port(e, tp, json_object_get(p, "targetPort"));
            free(tp);
        }
        free(pp);
        free(ip);
    }
}

static void
mes(struct km_errs *e, const json_t *spec)
{
    const json_t *match = json_object_get(spec, "match"), *eps, *ep;
    static const char *const protos[] = {"tcp", "grpc", "http", "http2"};
    size_t i;

    if (!json_is_object(match)) {
        km_errs_add(e, "spec.match", "must be defined");
    } else {
        const char *type = km_jstr(match, "type");
        if (type && strcmp(type, "HostnameGenerator") != 0)
            km_errs_add(e, "spec.match.type", "in body should be one of [HostnameGenerator]");
        km_validate_port(e, "spec.match.port", json_object_get(match, "port"));
        km_schema_enum(e, "spec.match.protocol", json_object_get(match, "protocol"), protos, 4);
    }
    eps = json_object_get(spec, "endpoints");
    json_array_foreach (eps, i, ep) {
        char *ip = km_xasprintf("spec.endpoints[%zu]", i);
        const char *a = km_jstr(ep, "address");
        if (!a || !a[0])
            km_verr_at(e, ip, "address", "must be defined");
        if (json_object_get(ep, "port")) {
            char *pp = km_vp_field(ip, "port");
            km_validate_port(e, pp, json_object_get(ep, "port"));
            free(pp);
        }
        free(ip);
    }
}

void
km_validate_new_resource(const struct km_rtype *t, const struct km_resource *r,
                         struct km_errs *e)
{
    const json_t *spec = r->spec;
    const char *n = t->name;

    if (strcmp(n, "MeshService") == 0) {
        static const char *const states[] = {"Available", "Unavailable"};
        km_schema_enum(e, "spec.state", json_object_get(spec, "state"), states, 2);
        km_schema_type(e, "spec.selector", json_object_get(spec, "selector"), "object");
        ports_list(e, spec, false, true);
    } else if (strcmp(n, "MeshMultiZoneService") == 0) {
        const json_t *sel = json_object_get(spec, "selector");
        if (!json_is_object(json_object_get(sel, "meshService")))
            km_errs_add(e, "spec.selector.meshService", "must be defined");
        ports_list(e, spec, true, false);
    } else if (strcmp(n, "MeshExternalService") == 0) {
        mes(e, spec);
    } else if (strcmp(n, "MeshTrust") == 0) {
        const json_t *cab = json_object_get(spec, "caBundles"), *b;
        size_t i;
        const char *td = km_jstr(spec, "trustDomain");
        if (!td || !td[0])
            km_errs_add(e, "spec.trustDomain", "must not be empty");
        if (json_array_size(cab) == 0)
            km_errs_add(e, "spec.caBundles", "must not be empty");
        json_array_foreach (cab, i, b) {
            char *bp = km_xasprintf("spec.caBundles[%zu]", i);
            const char *pem = km_jstr(json_object_get(b, "pem"), "value");
            if (!pem || !pem[0])
                km_verr_at(e, bp, "pem.value", "must not be empty");
            free(bp);
        }
    } else if (strcmp(n, "HostnameGenerator") == 0) {
        const char *tmpl = km_jstr(spec, "template");
        if (!tmpl || !tmpl[0])
            km_errs_add(e, "spec.template", "must be defined");
    } else if (strcmp(n, "MeshZoneAddress") == 0) {
        const char *a = km_jstr(spec, "address");
        if (!a || !a[0])
            km_errs_add(e, "spec.address", "must be defined");
        km_validate_port(e, "spec.port", json_object_get(spec, "port"));
    } else if (strcmp(n, "MeshOpenTelemetryBackend") == 0) {
        static const char *const protos[] = {"grpc", "http"};
        km_schema_enum(e, "spec.protocol", json_object_get(spec, "protocol"), protos, 2);
        if (json_object_get(json_object_get(spec, "endpoint"), "port"))
            km_validate_port(e, "spec.endpoint.port",
                             json_object_get(json_object_get(spec, "endpoint"), "port"));
    } else if (strcmp(n, "MeshIdentity") == 0) {
        const json_t *prov = json_object_get(spec, "provider");
        static const char *const types[] = {"Bundled", "Spire"};
        if (!json_is_object(prov))
            km_errs_add(e, "spec.provider", "must be defined");
        else
            km_schema_enum(e, "spec.provider.type", json_object_get(prov, "type"), types, 2);
    }
}
