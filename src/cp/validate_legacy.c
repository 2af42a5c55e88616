/* Legacy (source/destination) policies and other legacy-shaped resources: selectors by tag
 * and the main "conf" rules of each type (Kuma 2.14's *_validator.go). */
#include <stdlib.h>
#include <string.h>

#include <km/cp/validate.h>

enum sel_mode {
    SEL_NONE = 0, /* field not used */
    SEL_ANY,      /* at least one selector with at least one tag */
    SEL_SERVICE,  /* ... and the kuma.io/service tag */
    SEL_ONLY_SVC, /* exactly one tag, kuma.io/service */
    SEL_HTTP,     /* at least one tag, kuma.io/protocol an HTTP protocol */
};

struct legacy_rule {
    const char *type;
    enum sel_mode sources, destinations, selectors;
    void (*conf)(struct km_errs *e, const json_t *spec);
};

static void
selectors(struct km_errs *e, const char *field, const json_t *arr, enum sel_mode m)
{
    struct km_tags_opts o = {.require_at_least_one = true, .selector = true};
    const json_t *s;
    size_t i;

    if (m == SEL_NONE)
        return;
    if (m == SEL_SERVICE)
        o.require_service = true;
    if (m == SEL_ONLY_SVC) {
        if (arr && !json_is_array(arr)) {
            km_errs_add(e, field, "must be an array");
            return;
        }
        if (json_array_size(arr) == 0)
            km_errs_add(e, field, "must have at least one element");
        json_array_foreach (arr, i, s) {
            char *ip = km_vp_index(field, i);
            char *mp = km_vp_field(ip, "match");
            const json_t *match = json_object_get(s, "match");
            const char *k;
            json_t *v;
            struct km_tags_opts so = {.selector = true, .require_service = true};
            if (json_object_size(match) != 1 || !json_object_get(match, "kuma.io/service"))
                km_errs_add(e, mp, "must consist of exactly one tag \"kuma.io/service\"");
            if (json_is_object(match)) {
                json_object_foreach ((json_t *)match, k, v) {
                    if (strcmp(k, "kuma.io/service") != 0) {
                        char *kp = km_vp_key(mp, k);
                        km_errs_add(e, kp, "tag \"%s\" is not allowed", k);
                        free(kp);
                    }
                }
            }
            km_validate_tags(e, mp, match, &so);
            free(mp);
            free(ip);
        }
        return;
    }
    km_validate_selectors(e, field, arr, true, &o);
    if (m == SEL_HTTP) {
        json_array_foreach (arr, i, s) {
            const json_t *match = json_object_get(s, "match");
            const char *p = km_jstr(match, "kuma.io/protocol");
            char *mp = km_xasprintf("%s[%zu].match", field, i);
            if (!p) {
                km_errs_add(e, mp, "protocol must be specified");
            } else if (strcmp(p, "http") != 0 && strcmp(p, "http2") != 0 &&
                       strcmp(p, "grpc") != 0) {
                char *kp = km_vp_key(mp, "kuma.io/protocol");
                km_errs_add(e, kp, "must be one of the [http, http2, grpc]");
                free(kp);
            }
            free(mp);
        }
    }
}

static const json_t *
need_conf(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = json_object_get(spec, "conf");
    if (!json_is_object(conf)) {
        km_errs_add(e, "conf", "has to be defined");
        return NULL;
    }
    return conf;
}

static void
percentage(struct km_errs *e, const char *path, const json_t *v, bool required)
{
    if (!v) {
        if (required)
            km_errs_add(e, path, "cannot be empty");
        return;
    }
    if (!json_is_number(v) || json_number_value(v) < 0.0 || json_number_value(v) > 100.0)
        km_errs_add(e, path, "has to be in [0.0 - 100.0] range");
}

static void
conf_traffic_route(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = json_object_get(spec, "conf"), *split, *it;
    size_t i;

    if (!json_is_object(conf)) {
        km_errs_add(e, "conf", "cannot be empty");
        return;
    }
    split = json_object_get(conf, "split");
    if (!split && !json_object_get(conf, "destination")) {
        km_errs_add(e, "conf", "requires either \"destination\" or \"split\"");
        return;
    }
    if (split && json_object_get(conf, "destination"))
        km_errs_add(e, "conf", "\"split\" cannot be defined at the same time as \"destination\"");
    if (split && json_array_size(split) == 0)
        km_errs_add(e, "conf.split", "must have at least one element");
    json_array_foreach (split, i, it) {
        char *ip = km_vp_index("conf.split", i);
        struct km_tags_opts o = {.require_service = true, .selector = true};
        char *dp = km_vp_field(ip, "destination");
        if (!json_object_get(it, "weight"))
            km_verr_at(e, ip, "weight", "needs to be defined");
        km_validate_tags(e, dp, json_object_get(it, "destination"), &o);
        free(dp);
        free(ip);
    }
    if (json_object_get(conf, "destination")) {
        struct km_tags_opts o = {.require_service = true, .selector = true};
        km_validate_tags(e, "conf.destination", json_object_get(conf, "destination"), &o);
    }
}

static void
conf_health_check(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = need_conf(e, spec);
    static const char *const thr[] = {"unhealthyThreshold", "healthyThreshold"};

    if (!conf)
        return;
    km_validate_duration(e, "conf.interval", json_object_get(conf, "interval"), true);
    km_validate_duration(e, "conf.timeout", json_object_get(conf, "timeout"), true);
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(conf, thr[i]);
        char *p = km_xasprintf("conf.%s", thr[i]);
        if (!json_is_integer(v) || json_integer_value(v) <= 0)
            km_errs_add(e, p, "must have a positive value");
        free(p);
    }
    if (json_object_get(conf, "http") && json_object_get(conf, "tcp"))
        km_errs_add(e, "conf", "http and tcp cannot be defined at the same time");
    if (json_is_object(json_object_get(conf, "http"))) {
        const char *path = km_jstr(json_object_get(conf, "http"), "path");
        if (!path || !path[0])
            km_errs_add(e, "conf.http.path", "has to be defined and cannot be empty");
    }
    percentage(e, "conf.healthyPanicThreshold", json_object_get(conf, "healthyPanicThreshold"),
               false);
}

static void
conf_circuit_breaker(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = need_conf(e, spec);
    const json_t *det, *thr;

    if (!conf)
        return;
    det = json_object_get(conf, "detectors");
    thr = json_object_get(conf, "thresholds");
    if (!det && !thr)
        km_errs_add(e, "conf", "must have at least one of the detector or threshold configured");
    if (det && json_object_size(det) == 0)
        km_errs_add(e, "conf.detectors", "can't be empty");
    if (thr && json_object_size(thr) == 0)
        km_errs_add(e, "conf.thresholds", "can't be empty");
    if (json_object_get(conf, "interval"))
        km_validate_duration(e, "conf.interval", json_object_get(conf, "interval"), true);
    if (json_object_get(conf, "baseEjectionTime"))
        km_validate_duration(e, "conf.baseEjectionTime",
                             json_object_get(conf, "baseEjectionTime"), true);
    percentage(e, "conf.maxEjectionPercent", json_object_get(conf, "maxEjectionPercent"), false);
}

static void
conf_fault_injection(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = need_conf(e, spec), *d, *a, *b;

    if (!conf)
        return;
    d = json_object_get(conf, "delay");
    a = json_object_get(conf, "abort");
    b = json_object_get(conf, "responseBandwidth");
    if (!d && !a && !b)
        km_errs_add(e, "conf", "must have at least one of the faults configured");
    if (d) {
        percentage(e, "conf.delay.percentage", json_object_get(d, "percentage"), true);
        if (!json_object_get(d, "value"))
            km_errs_add(e, "conf.delay.value", "cannot be empty");
        else
            km_validate_duration(e, "conf.delay.value", json_object_get(d, "value"), true);
    }
    if (a) {
        const json_t *st = json_object_get(a, "httpStatus");
        percentage(e, "conf.abort.percentage", json_object_get(a, "percentage"), true);
        if (!st)
            km_errs_add(e, "conf.abort.httpStatus", "cannot be empty");
        else if (!json_is_integer(st) || json_integer_value(st) < 100 ||
                 json_integer_value(st) > 599)
            km_errs_add(e, "conf.abort.httpStatus", "http status code is incorrect");
    }
    if (b) {
        const char *l = km_jstr(b, "limit");
        percentage(e, "conf.responseBandwidth.percentage", json_object_get(b, "percentage"), true);
        if (!l || !l[0]) {
            km_errs_add(e, "conf.responseBandwidth.limit", "cannot be empty");
        } else {
            size_t n = strlen(l), i = 0;
            while (i < n && l[i] >= '0' && l[i] <= '9')
                i++;
            if (i == 0 || (strcmp(l + i, "kbps") != 0 && strcmp(l + i, "mbps") != 0 &&
                           strcmp(l + i, "gbps") != 0))
                km_errs_add(e, "conf.responseBandwidth.limit", "has to be in kbps/mbps/gbps units");
        }
    }
}

static void
conf_defined(struct km_errs *e, const json_t *spec)
{
    (void)need_conf(e, spec);
}

static void
conf_rate_limit(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = json_object_get(spec, "conf"), *http;

    if (!json_is_object(conf)) {
        km_errs_add(e, "conf", "must have conf");
        return;
    }
    http = json_object_get(conf, "http");
    if (json_is_object(http)) {
        if (!json_object_get(http, "requests"))
            km_errs_add(e, "conf.http.requests", "requests must be set");
        if (!json_object_get(http, "interval"))
            km_errs_add(e, "conf.http.interval", "interval must be set");
        else
            km_validate_duration(e, "conf.http.interval", json_object_get(http, "interval"),
                                 true);
    }
}

static void
conf_backend(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = json_object_get(spec, "conf");
    if (conf && !json_is_object(conf))
        km_errs_add(e, "conf", "must be an object");
}

static void
conf_virtual_outbound(struct km_errs *e, const json_t *spec)
{
    const json_t *conf = need_conf(e, spec);
    if (!conf)
        return;
    if (!km_jstr(conf, "host") || !km_jstr(conf, "host")[0])
        km_errs_add(e, "conf.host", "cannot be empty");
    if (!km_jstr(conf, "port") || !km_jstr(conf, "port")[0])
        km_errs_add(e, "conf.port", "cannot be empty");
}

static void
conf_external_service(struct km_errs *e, const json_t *spec)
{
    const json_t *net = json_object_get(spec, "networking");
    const char *addr = km_jstr(net, "address");
    struct km_tags_opts o = {.require_service = true};
    const char *colon;

    if (!json_is_object(net)) {
        km_errs_add(e, "networking", "should have networking");
    } else if (!addr || !addr[0]) {
        km_errs_add(e, "networking.address", "address can't be empty");
    } else {
        colon = strrchr(addr, ':');
        if (!colon || colon == addr || !colon[1])
            km_errs_add(e, "networking.address", "address has to be in the format host:port");
    }
    km_validate_tags(e, "tags", json_object_get(spec, "tags"), &o);
}

static void
conf_mesh_gateway(struct km_errs *e, const json_t *spec)
{
    const json_t *listeners = json_object_get(json_object_get(spec, "conf"), "listeners"), *l;
    size_t i;

    if (!json_is_object(json_object_get(spec, "conf"))) {
        km_errs_add(e, "conf", "cannot be empty");
        return;
    }
    if (json_array_size(listeners) == 0)
        km_errs_add(e, "conf.listeners", "cannot be empty");
    json_array_foreach (listeners, i, l) {
        char *lp = km_vp_index("conf.listeners", i);
        char *pp = km_vp_field(lp, "port");
        const char *proto = km_jstr(l, "protocol");
        km_validate_port(e, pp, json_object_get(l, "port"));
        if (!proto || (strcmp(proto, "TCP") && strcmp(proto, "TLS") && strcmp(proto, "HTTP") &&
                       strcmp(proto, "HTTPS")))
            km_verr_at(e, lp, "protocol", "cannot be empty");
        free(pp);
        free(lp);
    }
}

static const struct legacy_rule rules[] = {
    {"TrafficPermission", SEL_ANY, SEL_ANY, SEL_NONE, NULL},
    {"TrafficRoute", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_traffic_route},
    {"TrafficLog", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_backend},
    {"TrafficTrace", SEL_NONE, SEL_NONE, SEL_ANY, conf_backend},
    {"HealthCheck", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_health_check},
    {"CircuitBreaker", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_circuit_breaker},
    {"FaultInjection", SEL_HTTP, SEL_HTTP, SEL_NONE, conf_fault_injection},
    {"Retry", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_defined},
    {"Timeout", SEL_SERVICE, SEL_ONLY_SVC, SEL_NONE, conf_defined},
    {"RateLimit", SEL_ANY, SEL_ANY, SEL_NONE, conf_rate_limit},
    {"ProxyTemplate", SEL_NONE, SEL_NONE, SEL_ANY, NULL},
    {"VirtualOutbound", SEL_NONE, SEL_NONE, SEL_ANY, conf_virtual_outbound},
    {"MeshGatewayRoute", SEL_NONE, SEL_NONE, SEL_SERVICE, NULL},
    {"MeshGateway", SEL_NONE, SEL_NONE, SEL_SERVICE, conf_mesh_gateway},
    {"ExternalService", SEL_NONE, SEL_NONE, SEL_NONE, conf_external_service},
};

void
km_validate_legacy(const struct km_rtype *t, const struct km_resource *r, struct km_errs *e)
{
    for (size_t i = 0; i < KM_ARRAY_LEN(rules); i++) {
        const struct legacy_rule *lr = &rules[i];
        if (strcmp(lr->type, t->name) != 0)
            continue;
        selectors(e, "sources", json_object_get(r->spec, "sources"), lr->sources);
        selectors(e, "destinations", json_object_get(r->spec, "destinations"), lr->destinations);
        selectors(e, "selectors", json_object_get(r->spec, "selectors"), lr->selectors);
        if (lr->conf)
            lr->conf(e, r->spec);
        return;
    }
}
