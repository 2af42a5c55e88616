/* Dataplane validation (Kuma's DataplaneResource.Validate): networking address, inbounds,
 * outbounds, gateway, transparent proxying, admin port, probes. */
#include <stdlib.h>
#include <string.h>

#include <km/cp/validate.h>

static const char *const protocols[] = {"http", "http2", "grpc", "kafka", "tcp", "tls"};

static bool
known_protocol(const char *p)
{
    for (size_t i = 0; i < KM_ARRAY_LEN(protocols); i++)
        if (strcmp(p, protocols[i]) == 0)
            return true;
    return false;
}

static const char protocols_hint[] = "Allowed values: http, http2, grpc, kafka, tcp, tls";

static bool
is_dns_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return s[0] != '.' && s[0] != '-' && strstr(s, "..") == NULL;
}

static void
validate_address(struct km_errs *e, const char *base, const json_t *v)
{
    const char *a = json_is_string(v) ? json_string_value(v) : "";

    if (!a[0]) {
        km_verr_at(e, base, "address", "address can't be empty");
        return;
    }
    if (strcmp(a, "0.0.0.0") == 0 || strcmp(a, "::") == 0)
        km_verr_at(e, base, "address", "must not be 0.0.0.0 or ::");
    if (!km_is_ip(a) && !is_dns_name(a))
        km_verr_at(e, base, "address", "address has to be valid IP address or domain name");
}

static void
validate_inbound(struct km_errs *e, const char *p, const json_t *in, const char *dp_addr)
{
    const char *saddr = km_jstr(in, "serviceAddress"), *addr = km_jstr(in, "address");
    const char *proto = km_jstr(in, "protocol");
    long long port = 0, sport = 0;
    const json_t *tags = json_object_get(in, "tags");
    struct km_tags_opts o = {0};
    char *f;

    f = km_vp_field(p, "port");
    km_validate_port(e, f, json_object_get(in, "port"));
    free(f);
    km_jint(in, "port", &port);
    if (km_jint(in, "servicePort", &sport) && sport != 0) {
        f = km_vp_field(p, "servicePort");
        km_validate_port(e, f, json_object_get(in, "servicePort"));
        free(f);
    }
    if (saddr && saddr[0]) {
        if (!km_is_ip(saddr))
            km_verr_at(e, p, "serviceAddress", "serviceAddress has to be valid IP address");
        if (dp_addr && strcmp(saddr, dp_addr) == 0 && (sport == 0 || sport == port))
            km_verr_at(e, p, "serviceAddress",
                       "serviceAddress and servicePort has to differ from address and port");
    }
    if (addr && addr[0]) {
        if (!km_is_ip(addr))
            km_verr_at(e, p, "address", "address has to be valid IP address");
        if (saddr && strcmp(addr, saddr) == 0 && (sport == 0 || sport == port))
            km_verr_at(e, p, "serviceAddress",
                       "serviceAddress and servicePort has to differ from address and port");
    }
    f = km_vp_field(p, "tags");
    {
        const char *pv = km_jstr(tags, "kuma.io/protocol");
        if (pv && !known_protocol(pv)) {
            char *kp = km_vp_key(f, "kuma.io/protocol");
            km_errs_add(e, kp, "tag \"kuma.io/protocol\" has an invalid value \"%s\". %s", pv,
                        protocols_hint);
            free(kp);
        }
    }
    km_validate_tags(e, f, tags, &o);
    free(f);
    if (proto && proto[0] && !known_protocol(proto))
        km_verr_at(e, p, "protocol", "has an invalid value \"%s\". %s", proto, protocols_hint);
    if (json_is_object(json_object_get(in, "serviceProbe"))) {
        const json_t *sp = json_object_get(in, "serviceProbe");
        char *spp = km_vp_field(p, "serviceProbe");
        static const char *const durs[] = {"interval", "timeout"};
        static const char *const thr[] = {"unhealthyThreshold", "healthyThreshold"};
        for (size_t i = 0; i < 2; i++) {
            const json_t *v = json_object_get(sp, durs[i]);
            if (v) {
                char *dp = km_vp_field(spp, durs[i]);
                km_validate_duration(e, dp, v, true);
                free(dp);
            }
        }
        for (size_t i = 0; i < 2; i++) {
            const json_t *v = json_object_get(sp, thr[i]);
            if (v && (!json_is_integer(v) || json_integer_value(v) <= 0))
                km_verr_at(e, spp, thr[i], "must have a positive value");
        }
        free(spp);
    }
}

static void
validate_outbound(struct km_errs *e, const char *p, const json_t *out)
{
    const char *addr = km_jstr(out, "address");
    const json_t *tags = json_object_get(out, "tags");
    const json_t *ref = json_object_get(out, "backendRef");
    const char *svc = km_jstr(out, "service");
    char *f;

    f = km_vp_field(p, "port");
    km_validate_port(e, f, json_object_get(out, "port"));
    free(f);
    if (addr && addr[0] && !km_is_ip(addr))
        km_verr_at(e, p, "address", "address has to be valid IP address");
    if (ref && !json_is_null(ref)) {
        const char *kind = km_jstr(ref, "kind"), *name = km_jstr(ref, "name");
        const json_t *labels = json_object_get(ref, "labels");
        if (!kind || (strcmp(kind, "MeshService") != 0 && strcmp(kind, "MeshExternalService") &&
                      strcmp(kind, "MeshMultiZoneService") != 0))
            km_verr_at(e, p, "backendRef.kind",
                       "invalid value. Available values are: "
                       "MeshExternalService,MeshMultiZoneService,MeshService");
        if ((!name || !name[0]) && json_object_size(labels) == 0)
            km_verr_at(e, p, "backendRef", "either 'name' or 'labels' should be specified");
        if (!kind || strcmp(kind, "MeshExternalService") != 0) {
            f = km_vp_field(p, "backendRef.port");
            km_validate_port(e, f, json_object_get(ref, "port"));
            free(f);
        }
        if (json_object_size(tags) != 0 || (svc && svc[0]))
            km_verr_at(e, p, "backendRef", "both backendRef and tags/service cannot be defined");
    } else if (json_object_size(tags) == 0) {
        if (!svc || !svc[0])
            km_verr_at(e, p, "tags", "mandatory tag \"kuma.io/service\" is missing");
    } else {
        struct km_tags_opts o = {.require_service = true};
        f = km_vp_field(p, "tags");
        km_validate_tags(e, f, tags, &o);
        free(f);
    }
}

static void
validate_tp(struct km_errs *e, const json_t *tp)
{
    const json_t *refs = json_object_get(json_object_get(tp, "reachableBackends"), "refs");
    const json_t *ref;
    size_t i;

    json_array_foreach (refs, i, ref) {
        char *ip = km_vp_index("networking.transparentProxing.reachableBackends.refs", i);
        const char *kind = km_jstr(ref, "kind"), *name = km_jstr(ref, "name");
        const char *ns = km_jstr(ref, "namespace");
        size_t nl = json_object_size(json_object_get(ref, "labels"));
        if (!kind || (strcmp(kind, "MeshService") != 0 && strcmp(kind, "MeshExternalService") &&
                      strcmp(kind, "MeshMultiZoneService") != 0))
            km_verr_at(e, ip, "kind",
                       "invalid value. Available values are: "
                       "MeshExternalService,MeshMultiZoneService,MeshService");
        if (name && name[0] && (strlen(name) > 253 || !km_is_dns1123_subdomain(name)))
            km_verr_at(e, ip, "name",
                       strlen(name) > 253 ? "value length must less or equal 253"
                                          : "invalid characters. A lowercase RFC 1123 subdomain "
                                            "must consist of lower case alphanumeric characters, "
                                            "'-' or '.', and must start and end with an "
                                            "alphanumeric character");
        if ((!name || !name[0]) && (!ns || !ns[0]) && nl == 0)
            km_verr_at(e, ip, "name", "name or labels are required");
        if ((!name || !name[0]) && ns && ns[0])
            km_verr_at(e, ip, "name", "name is required, when namespace is defined");
        if (((name && name[0]) || (ns && ns[0])) && nl > 0)
            km_verr_at(e, ip, "labels", "labels cannot be defined when name is specified");
        free(ip);
    }
}

static void
validate_gateway_tags(struct km_errs *e, const json_t *gw)
{
    const json_t *tags = json_object_get(gw, "tags");
    struct km_tags_opts o = {.require_service = json_object_size(tags) > 0};
    const char *pv = km_jstr(tags, "kuma.io/protocol");

    if (pv && strcmp(pv, "tcp") != 0)
        km_errs_add(e, "networking.gateway.tags[\"kuma.io/protocol\"]",
                    "other values than tcp are not allowed, provided value \"%s\"", pv);
    km_validate_tags(e, "networking.gateway.tags", tags, &o);
}

static void
validate_networking(struct km_errs *e, const json_t *net)
{
    const char *addr = km_jstr(net, "address");
    const json_t *arr, *it;
    size_t i;

    validate_address(e, "networking", json_object_get(net, "address"));
    arr = json_object_get(net, "inbound");
    json_array_foreach (arr, i, it) {
        char *ip = km_vp_index("networking.inbound", i);
        const json_t *tags = json_object_get(it, "tags");
        validate_inbound(e, ip, it, addr);
        if (json_object_size(tags) > 0 && !json_object_get(tags, "kuma.io/service")) {
            char *tp = km_vp_field(ip, "tags");
            char *kp = km_vp_key(tp, "kuma.io/service");
            km_errs_add(e, kp, "tag has to exist");
            free(kp);
            free(tp);
        }
        free(ip);
    }
    arr = json_object_get(net, "outbound");
    json_array_foreach (arr, i, it) {
        char *op = km_vp_index("networking.outbound", i);
        validate_outbound(e, op, it);
        free(op);
    }
    validate_tp(e, json_object_get(net, "transparentProxying"));
}

static bool
uses_port(const json_t *arr, long long port)
{
    const json_t *it;
    size_t i;
    long long p;

    json_array_foreach (arr, i, it)
        if (km_jint(it, "port", &p) && p == port)
            return true;
    return false;
}

void
km_validate_dataplane(const struct km_rtype *t, const struct km_resource *r, struct km_errs *e)
{
    const json_t *net = json_object_get(r->spec, "networking");
    const json_t *gw, *inb, *outb;
    const char *gtype;
    long long admin;

    (void)t;
    if (!json_is_object(net)) {
        km_errs_add(e, "networking", "must be defined");
        return;
    }
    gw = json_object_get(net, "gateway");
    inb = json_object_get(net, "inbound");
    outb = json_object_get(net, "outbound");
    if (km_jint(json_object_get(net, "admin"), "port", &admin)) {
        if (uses_port(inb, admin))
            km_errs_add(e, "networking.admin.port", "must differ from inbound");
        if (uses_port(outb, admin))
            km_errs_add(e, "networking.admin.port", "must differ from outbound");
    }
    gtype = km_jstr(gw, "type");
    if (json_is_object(gw) && (!gtype || strcmp(gtype, "DELEGATED") == 0)) {
        if (json_array_size(inb) > 0)
            km_errs_add(e, "networking.inbound", "inbound cannot be defined for delegated gateways");
        if (json_array_size(json_object_get(net, "listeners")) > 0)
            km_errs_add(e, "networking.listeners",
                        "listeners cannot be defined for delegated gateways");
        validate_gateway_tags(e, gw);
        validate_networking(e, net);
    } else if (json_is_object(gw) && strcmp(gtype, "BUILTIN") == 0) {
        if (json_array_size(inb) > 0)
            km_errs_add(e, "networking.inbound", "inbound cannot be defined for builtin gateways");
        if (json_array_size(outb) > 0)
            km_errs_add(e, "networking.outbound",
                        "outbound cannot be defined for builtin gateways");
        if (json_array_size(json_object_get(net, "listeners")) > 0)
            km_errs_add(e, "networking.listeners",
                        "listeners cannot be defined for builtin gateways");
        if (json_object_get(r->spec, "probes"))
            km_errs_add(e, "networking.probes", "probes cannot be defined for builtin gateways");
        validate_gateway_tags(e, gw);
        validate_networking(e, net);
    } else {
        validate_networking(e, net);
    }
    {
        const json_t *probes = json_object_get(r->spec, "probes");
        if (json_is_object(probes)) {
            const json_t *ep;
            size_t i;
            km_validate_port(e, "probes.port", json_object_get(probes, "port"));
            json_array_foreach (json_object_get(probes, "endpoints"), i, ep) {
                char *ip = km_vp_index("probes.endpoints", i);
                char *pp = km_vp_field(ip, "inboundPort");
                const char *a = km_jstr(ep, "inboundPath"), *b = km_jstr(ep, "path");
                km_validate_port(e, pp, json_object_get(ep, "inboundPort"));
                if (!a || a[0] != '/')
                    km_verr_at(e, ip, "inboundPath", "should be a valid URL Path");
                if (!b || b[0] != '/')
                    km_verr_at(e, ip, "path", "should be a valid URL Path");
                free(pp);
                free(ip);
            }
        }
    }
}
