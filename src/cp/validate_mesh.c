/* Mesh validation (Kuma's MeshResource.Validate): mtls, logging, tracing and metrics backends,
 * dataplane constraints, zone egress requirements. */
#include <stdlib.h>
#include <string.h>

#include <km/cp/validate.h>

/* True when an earlier element of <arr> (before <upto>) has the same "name". */
static bool
name_used_before(const json_t *arr, size_t upto, const char *name)
{
    for (size_t j = 0; j < upto; j++) {
        const char *n = km_jstr(json_array_get(arr, j), "name");
        if (n && name && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static bool
has_name(const json_t *arr, const char *name)
{
    const json_t *b;
    size_t i;

    json_array_foreach (arr, i, b) {
        const char *n = km_jstr(b, "name");
        if (n && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static bool
duration_ok(const char *s)
{
    int64_t ns;
    return s && km_duration_parse(s, true, &ns);
}

static void
validate_mtls(struct km_errs *e, const json_t *mtls)
{
    const json_t *backends = json_object_get(mtls, "backends"), *b;
    const char *enabled = km_jstr(mtls, "enabledBackend");
    size_t i;

    if (!json_is_object(mtls))
        return;
    if (json_array_size(backends) > 1)
        km_errs_add(e, "mtls.backends", "cannot have more than 1 backends");
    json_array_foreach (backends, i, b) {
        const char *name = km_jstr(b, "name");
        const char *type = km_jstr(b, "type");
        const json_t *dpcert = json_object_get(b, "dpCert");
        char *bp = km_vp_index("mtls.backends", i);
        if (name && name_used_before(backends, i, name))
            km_verr_at(e, bp, "name", "\"%s\" name is already used for another backend", name);
        if (type && strcmp(type, "builtin") != 0 && strcmp(type, "provided") != 0)
            km_verr_at(e, bp, "type",
                       "unknown backend type. Available backends: \"builtin\", \"provided\"");
        if (dpcert && !json_is_null(dpcert)) {
            const char *exp = km_jstr(json_object_get(dpcert, "rotation"), "expiration");
            if (!duration_ok(exp))
                km_errs_add(e, "mtls.dpcert.rotation.expiration", "has to be a valid format");
        }
        free(bp);
    }
    if (enabled && enabled[0] && !has_name(backends, enabled))
        km_errs_add(e, "mtls.enabledBackend", "has to be set to one of the backends in the mesh");
}

static void
validate_logging(struct km_errs *e, const json_t *logging)
{
    const json_t *backends = json_object_get(logging, "backends"), *b;
    const char *def = km_jstr(logging, "defaultBackend");
    size_t i;

    if (!json_is_object(logging))
        return;
    json_array_foreach (backends, i, b) {
        const char *name = km_jstr(b, "name"), *type = km_jstr(b, "type");
        const json_t *conf = json_object_get(b, "conf");
        char *bp = km_vp_index("logging.backends", i);
        if (!name || !name[0])
            km_verr_at(e, bp, "name", "cannot be empty");
        if (type && strcmp(type, "file") == 0) {
            const char *path = km_jstr(conf, "path");
            if (!path || !path[0])
                km_verr_at(e, bp, "config.path", "cannot be empty");
        } else if (type && strcmp(type, "tcp") == 0) {
            const char *addr = km_jstr(conf, "address");
            const char *colon = addr ? strrchr(addr, ':') : NULL;
            if (!addr || !addr[0])
                km_verr_at(e, bp, "config.address", "cannot be empty");
            else if (!colon || colon == addr || !colon[1])
                km_verr_at(e, bp, "config.address", "has to be in format of HOST:PORT");
        } else {
            km_verr_at(e, bp, "type", "unknown backend type. Available backends: \"tcp\", \"file\"");
        }
        if (name && name_used_before(backends, i, name))
            km_verr_at(e, bp, "name", "\"%s\" name is already used for another backend", name);
        free(bp);
    }
    if (def && def[0] && !has_name(backends, def))
        km_errs_add(e, "logging.defaultBackend",
                    "has to be set to one of the logging backend in mesh");
}

static void
validate_tracing(struct km_errs *e, const json_t *tracing)
{
    const json_t *backends = json_object_get(tracing, "backends"), *b;
    const char *def = km_jstr(tracing, "defaultBackend");
    size_t i;

    if (!json_is_object(tracing))
        return;
    json_array_foreach (backends, i, b) {
        const char *name = km_jstr(b, "name"), *type = km_jstr(b, "type");
        const json_t *conf = json_object_get(b, "conf");
        const json_t *sampling = json_object_get(b, "sampling");
        char *bp = km_vp_index("tracing.backends", i);
        if (!name || !name[0])
            km_verr_at(e, bp, "name", "cannot be empty");
        if (json_is_number(sampling) &&
            (json_number_value(sampling) < 0.0 || json_number_value(sampling) > 100.0))
            km_verr_at(e, bp, "sampling", "has to be in [0.0 - 100.0] range");
        if (type && strcmp(type, "zipkin") == 0) {
            const char *url = km_jstr(conf, "url"), *api = km_jstr(conf, "apiVersion");
            if (api && api[0] && strcmp(api, "httpJsonV1") != 0 && strcmp(api, "httpJson") != 0 &&
                strcmp(api, "httpProto") != 0)
                km_verr_at(e, bp, "config.apiVersion",
                           "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto");
            if (!url || !url[0]) {
                km_verr_at(e, bp, "config.url", "cannot be empty");
            } else {
                const char *hs = strstr(url, "://");
                const char *host = hs ? hs + 3 : NULL;
                const char *slash = host ? strchr(host, '/') : NULL;
                const char *colon = host ? strchr(host, ':') : NULL;
                if (!hs)
                    km_verr_at(e, bp, "config.url", "invalid URL");
                else if (!colon || (slash && colon > slash))
                    km_verr_at(e, bp, "config.url", "port has to be explicitly specified");
            }
        } else if (type && strcmp(type, "datadog") == 0) {
            const char *addr = km_jstr(conf, "address");
            char *pp = km_vp_field(bp, "config.port");
            if (!addr || !addr[0])
                km_verr_at(e, bp, "config.address", "cannot be empty");
            km_validate_port(e, pp, json_object_get(conf, "port"));
            free(pp);
        } else {
            km_verr_at(e, bp, "type",
                       "unknown backend type. Available backends: \"zipkin\", \"datadog\"");
        }
        if (name && name_used_before(backends, i, name))
            km_verr_at(e, bp, "name", "\"%s\" name is already used for another backend", name);
        free(bp);
    }
    if (def && def[0] && !has_name(backends, def))
        km_errs_add(e, "tracing.defaultBackend",
                    "has to be set to one of the tracing backend in mesh");
}

static void
validate_metrics(struct km_errs *e, const json_t *metrics)
{
    const json_t *backends = json_object_get(metrics, "backends"), *b;
    const char *en = km_jstr(metrics, "enabledBackend");
    size_t i;

    if (!json_is_object(metrics))
        return;
    json_array_foreach (backends, i, b) {
        const char *name = km_jstr(b, "name"), *type = km_jstr(b, "type");
        char *bp = km_vp_index("metrics.backends", i);
        if (name && name_used_before(backends, i, name))
            km_verr_at(e, bp, "name", "\"%s\" name is already used for another backend", name);
        if (!type || strcmp(type, "prometheus") != 0) {
            km_verr_at(e, bp, "type", "unknown backend type. Available backends: \"prometheus\"");
        } else {
            const json_t *agg = json_object_get(json_object_get(b, "conf"), "aggregate"), *a;
            size_t j;
            json_array_foreach (agg, j, a) {
                const char *an = km_jstr(a, "name");
                if (an && name_used_before(agg, j, an)) {
                    char *ap = km_vp_field(bp, "conf.aggregate");
                    char *aip = km_vp_index(ap, j);
                    km_verr_at(e, aip, "name", "duplicate entry: %s, values have to be unique", an);
                    free(aip);
                    free(ap);
                }
            }
        }
        free(bp);
    }
    if (en && en[0] && !has_name(backends, en))
        km_errs_add(e, "metrics.enabledBackend",
                    "has to be set to one of the backends in the mesh");
}

static void
validate_constraints(struct km_errs *e, const json_t *c)
{
    static const char *const lists[] = {"requirements", "restrictions"};
    const json_t *dpp = json_object_get(c, "dataplaneProxy");
    struct km_tags_opts o = {.require_at_least_one = true, .selector = true};

    for (size_t l = 0; l < 2; l++) {
        const json_t *arr = json_object_get(dpp, lists[l]), *it;
        size_t i;
        json_array_foreach (arr, i, it) {
            char *base = km_xasprintf("constraints.dataplaneProxy.%s[%zu].tags", lists[l], i);
            km_validate_tags(e, base, json_object_get(it, "tags"), &o);
            free(base);
        }
    }
}

void
km_validate_mesh_res(const struct km_rtype *t, const struct km_resource *r, struct km_errs *e)
{
    const json_t *routing = json_object_get(r->spec, "routing");
    const json_t *mtls = json_object_get(r->spec, "mtls");

    (void)t;
    validate_mtls(e, mtls);
    validate_logging(e, json_object_get(r->spec, "logging"));
    validate_tracing(e, json_object_get(r->spec, "tracing"));
    validate_metrics(e, json_object_get(r->spec, "metrics"));
    validate_constraints(e, json_object_get(r->spec, "constraints"));
    if (json_is_true(json_object_get(routing, "zoneEgress"))) {
        const char *en = km_jstr(mtls, "enabledBackend");
        if (!en || !en[0])
            km_errs_add(e, "mtls", "has to be set when zoneEgress enabled");
    }
}
