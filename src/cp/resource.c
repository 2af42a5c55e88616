/* Resource instances: creation, copy, the JSON codec (Kuma's REST/Universal form), KRI and
 * the deprecation warnings Kuma returns on PUT. */
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/resource.h>
#include <km/cp/validate.h>

struct km_resource *
km_resource_new(const struct km_rtype *t, const char *mesh, const char *name)
{
    struct km_resource *r = km_xcalloc(1, sizeof(*r));

    r->type = t;
    r->mesh = km_xstrdup(t && t->scope == KM_SCOPE_MESH && mesh ? mesh : "");
    r->name = km_xstrdup(name ? name : "");
    r->spec = json_object();
    if (!r->spec)
        abort();
    return r;
}

void
km_resource_free(struct km_resource *r)
{
    if (!r)
        return;
    free(r->mesh);
    free(r->name);
    json_decref(r->labels);
    json_decref(r->spec);
    json_decref(r->status);
    free(r);
}

struct km_resource *
km_resource_dup(const struct km_resource *r)
{
    struct km_resource *d;

    if (!r)
        return NULL;
    d = km_xcalloc(1, sizeof(*d));
    d->type = r->type;
    d->mesh = km_xstrdup(r->mesh ? r->mesh : "");
    d->name = km_xstrdup(r->name ? r->name : "");
    d->version = r->version;
    d->creation_us = r->creation_us;
    d->modification_us = r->modification_us;
    d->labels = r->labels ? json_deep_copy(r->labels) : NULL;
    d->spec = r->spec ? json_deep_copy(r->spec) : json_object();
    d->status = r->status ? json_deep_copy(r->status) : NULL;
    if (!d->spec)
        abort();
    return d;
}

static bool
is_meta_key(const char *k)
{
    static const char *const keys[] = {"type", "mesh", "name", "labels", "creationTime",
                                       "modificationTime", "kri"};
    for (size_t i = 0; i < KM_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i], k) == 0)
            return true;
    return false;
}

/* Go's wording for a meta field of the wrong JSON type. */
static void
shape_error(struct km_errs *errs, const char *tname, const char *field, const json_t *v,
            const char *want)
{
    km_errs_add(errs, "",
                KM_DECODE_BAD_REQUEST_PREFIX
                "%s object: \"json: cannot unmarshal %s into Go struct field ResourceMeta.%s of "
                "type %s\"",
                tname, km_json_kind(v), field, want);
}

static bool
meta_string(const json_t *doc, const char *key, const char *tname, const char **out,
            struct km_errs *errs)
{
    const json_t *v = json_object_get(doc, key);

    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        shape_error(errs, tname, key, v, "string");
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool
meta_time(const json_t *doc, const char *key, const char *tname, int64_t *out,
          struct km_errs *errs)
{
    const char *s;

    *out = 0;
    if (!meta_string(doc, key, tname, &s, errs))
        return false;
    if (!s)
        return true;
    if (!km_time_parse(s, out)) {
        km_errs_add(errs, "",
                    KM_DECODE_BAD_REQUEST_PREFIX "%s object: \"parsing time \\\"%s\\\" as RFC 3339 "
                    "failed\"",
                    tname, s);
        return false;
    }
    return true;
}

struct km_resource *
km_resource_decode(const json_t *doc, const struct km_rtype *expect, struct km_errs *errs)
{
    const struct km_rtype *t = expect;
    const char *tname = expect ? expect->name : "resource";
    const char *type_s, *mesh_s, *name_s;
    const json_t *labels, *v;
    struct km_resource *r = NULL;
    int64_t ctime, mtime;
    const char *key;
    size_t before = errs->n;

    if (!json_is_object(doc)) {
        km_errs_add(errs, "",
                    KM_DECODE_BAD_REQUEST_PREFIX "%s object: \"json: cannot unmarshal %s into Go "
                    "value of type map[string]interface {}\"",
                    tname, km_json_kind(doc));
        return NULL;
    }
    if (!meta_string(doc, "type", tname, &type_s, errs) ||
        !meta_string(doc, "mesh", tname, &mesh_s, errs) ||
        !meta_string(doc, "name", tname, &name_s, errs))
        return NULL;
    labels = json_object_get(doc, "labels");
    if (labels && json_is_null(labels))
        labels = NULL;
    if (labels) {
        if (!json_is_object(labels)) {
            shape_error(errs, tname, "labels", labels, "map[string]string");
            return NULL;
        }
        json_object_foreach ((json_t *)labels, key, v) {
            if (!json_is_string(v)) {
                shape_error(errs, tname, "labels", v, "string");
                return NULL;
            }
        }
    }
    if (!meta_time(doc, "creationTime", tname, &ctime, errs) ||
        !meta_time(doc, "modificationTime", tname, &mtime, errs))
        return NULL;

    if (!t) {
        if (!type_s || !type_s[0]) {
            km_errs_add(errs, "type", "must be defined");
            return NULL;
        }
        t = km_registry_find(type_s);
        if (!t) {
            km_errs_add(errs, "type", "unknown type \"%s\"", type_s);
            return NULL;
        }
        tname = t->name;
    } else if (t->has_spec && (!type_s || strcmp(type_s, t->name) != 0)) {
        /* new-style types: the OpenAPI schema pins "type" to one value */
        km_errs_add(errs, "", "type in body should be one of [%s]", t->name);
        return NULL;
    }
    /* legacy types: a body type differing from the URL is reported by km_validate_request,
     * after the name, as Kuma does */

    if (t->has_spec) {
        const json_t *spec = json_object_get(doc, "spec");
        const json_t *status = json_object_get(doc, "status");
        if (spec && !json_is_null(spec) && !json_is_object(spec)) {
            km_errs_add(errs, "", "spec in body must be of type object: \"%s\"",
                        km_json_kind(spec));
            return NULL;
        }
        if (status && !json_is_null(status) && !json_is_object(status)) {
            km_errs_add(errs, "", "status in body must be of type object: \"%s\"",
                        km_json_kind(status));
            return NULL;
        }
        /* new-style schemas default the mesh of mesh-scoped resources to "default" */
        if (t->scope == KM_SCOPE_MESH && !mesh_s)
            mesh_s = "default";
        r = km_resource_new(t, mesh_s, name_s);
        if (json_is_object(spec)) {
            json_decref(r->spec);
            r->spec = json_deep_copy(spec);
        }
        if (json_is_object(status))
            r->status = json_deep_copy(status);
    } else {
        r = km_resource_new(t, mesh_s, name_s);
        json_object_foreach ((json_t *)doc, key, v) {
            if (is_meta_key(key))
                continue;
            json_object_set_new(r->spec, key, json_deep_copy(v));
        }
    }
    if (labels && json_object_size(labels) > 0)
        r->labels = json_deep_copy(labels);
    r->creation_us = ctime;
    r->modification_us = mtime;
    (void)before;
    return r;
}

static const char *
label(const struct km_resource *r, const char *k)
{
    const json_t *v = r->labels ? json_object_get(r->labels, k) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static const char *
display_name(const struct km_resource *r)
{
    const char *d = label(r, "kuma.io/display-name");
    return d && d[0] ? d : r->name;
}

char *
km_resource_kri(const struct km_resource *r)
{
    const char *zone, *ns;

    if (!r || !r->type || !r->type->short_name)
        return NULL;
    zone = label(r, "kuma.io/zone");
    ns = label(r, "k8s.kuma.io/namespace");
    return km_xasprintf("kri_%s_%s_%s_%s_%s_", r->type->short_name, r->mesh ? r->mesh : "",
                        zone ? zone : "", ns ? ns : "", display_name(r));
}

/* ---- output normalisation: the defaults Kuma's typed structs show ---- */

static bool
type_is(const struct km_resource *r, const char *n)
{
    return strcmp(r->type->name, n) == 0;
}

/* SNI sections: {port, section name}. */
struct sni_sec {
    long long port;
    char *section;
};

static size_t
sni_sections(const struct km_resource *r, struct sni_sec *out, size_t max)
{
    size_t n = 0;
    const json_t *ports, *p;
    size_t i;
    long long port;

    if (type_is(r, "MeshExternalService")) {
        const json_t *match = json_object_get(r->spec, "match");
        if (km_jint(match, "port", &port)) {
            const char *nm = km_jstr(match, "name");
            out[0].port = port;
            out[0].section = nm && nm[0] ? km_xstrdup(nm) : km_xasprintf("%lld", port);
            return 1;
        }
        return 0;
    }
    if (!type_is(r, "MeshService") && !type_is(r, "MeshMultiZoneService"))
        return 0;
    ports = json_object_get(r->spec, "ports");
    json_array_foreach (ports, i, p) {
        const char *nm;
        if (n == max || !km_jint(p, "port", &port))
            continue;
        nm = km_jstr(p, "name");
        out[n].port = port;
        out[n].section = nm && nm[0] ? km_xstrdup(nm) : km_xasprintf("%lld", port);
        n++;
    }
    return n;
}

static int
cmp_sec(const void *a, const void *b)
{
    const struct sni_sec *x = a, *y = b;
    return (x->port > y->port) - (x->port < y->port);
}

static char *
sni_of(const struct km_resource *r, const char *section)
{
    const char *zone = label(r, "kuma.io/zone"), *ns = label(r, "k8s.kuma.io/namespace");
    struct km_sbuf b;

    km_sbuf_init(&b);
    km_sbuf_printf(&b, "sni.%s.%s", r->type->short_name, r->mesh);
    if (zone && zone[0]) {
        km_sbuf_printf(&b, ".%s", zone);
        if (ns && ns[0])
            km_sbuf_printf(&b, ".%s", ns);
    }
    km_sbuf_printf(&b, ".%s.%s", display_name(r), section);
    return km_sbuf_take(&b);
}

#define KM_MAX_SNI 512

static json_t *
snis_json(const struct km_resource *r)
{
    struct sni_sec *secs = km_xcalloc(KM_MAX_SNI, sizeof(*secs));
    size_t n = sni_sections(r, secs, KM_MAX_SNI);
    json_t *arr = NULL;

    if (n > 0) {
        qsort(secs, n, sizeof(*secs), cmp_sec);
        arr = json_array();
        for (size_t i = 0; i < n; i++) {
            char *s = sni_of(r, secs[i].section);
            json_array_append_new(arr, json_pack("{s:I,s:s}", "port", (json_int_t)secs[i].port,
                                                 "sni", s));
            free(s);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(secs[i].section);
    free(secs);
    return arr;
}

static void
set_default(json_t *obj, const char *k, json_t *v)
{
    if (json_is_object(obj) && !json_object_get(obj, k))
        json_object_set_new(obj, k, v);
    else
        json_decref(v);
}

static void
mal_format_defaults(json_t *spec)
{
    static const char *const sections[] = {"to", "from", "rules"};
    static const char *const kinds[] = {"file", "tcp"};

    for (size_t s = 0; s < KM_ARRAY_LEN(sections); s++) {
        json_t *arr = json_object_get(spec, sections[s]), *item;
        size_t i;
        json_array_foreach (arr, i, item) {
            json_t *backends = json_object_get(json_object_get(item, "default"), "backends");
            json_t *be;
            size_t j;
            json_array_foreach (backends, j, be) {
                for (size_t k = 0; k < KM_ARRAY_LEN(kinds); k++) {
                    json_t *fmt = json_object_get(json_object_get(be, kinds[k]), "format");
                    set_default(fmt, "omitEmptyValues", json_false());
                }
            }
        }
    }
}

/* Adds defaults to the copies of spec/status being encoded; returns the status to emit (new
 * reference) or NULL. */
static json_t *
normalise(const struct km_resource *r, json_t *spec)
{
    json_t *status = r->status ? json_deep_copy(r->status) : NULL;

    if (type_is(r, "MeshService")) {
        json_t *ports = json_object_get(spec, "ports"), *p;
        size_t i;
        set_default(spec, "state", json_string("Unavailable"));
        json_array_foreach (ports, i, p) {
            if (json_is_object(p)) {
                json_object_del(p, "protocol"); /* not a field of MeshService ports */
                set_default(p, "appProtocol", json_string("tcp"));
            }
        }
        if (!status)
            status = json_object();
        set_default(status, "tls", json_object());
        set_default(status, "dataplaneProxies", json_object());
    } else if (type_is(r, "MeshExternalService")) {
        if (!status)
            status = json_object();
        set_default(status, "vip", json_object());
    } else if (type_is(r, "Workload")) {
        json_t *dpp;
        if (!status)
            status = json_object();
        set_default(status, "dataplaneProxies", json_object());
        dpp = json_object_get(status, "dataplaneProxies");
        set_default(dpp, "connected", json_integer(0));
        set_default(dpp, "healthy", json_integer(0));
        set_default(dpp, "total", json_integer(0));
    } else if (type_is(r, "MeshMultiZoneService") || type_is(r, "MeshTrust") ||
               type_is(r, "MeshIdentity") || type_is(r, "MeshOpenTelemetryBackend") ||
               type_is(r, "MeshMetric") || type_is(r, "MeshTrace")) {
        /* Types with a status struct: Kuma always shows it, empty at least. */
        if (!status)
            status = json_object();
    } else if (type_is(r, "MeshAccessLog")) {
        mal_format_defaults(spec);
        if (!status)
            status = json_object();
    }
    return status;
}

json_t *
km_resource_encode(const struct km_resource *r)
{
    char tbuf[40];
    json_t *o, *spec;
    const char *key;
    json_t *v;
    char *kri;

    if (!r || !r->type)
        return NULL;
    o = json_object();
    if (!o)
        abort();
    json_object_set_new(o, "type", json_string(r->type->name));
    if (r->type->scope == KM_SCOPE_MESH)
        json_object_set_new(o, "mesh", json_string(r->mesh ? r->mesh : ""));
    json_object_set_new(o, "name", json_string(r->name ? r->name : ""));
    km_time_format(r->creation_us, tbuf, sizeof(tbuf));
    json_object_set_new(o, "creationTime", json_string(tbuf));
    km_time_format(r->modification_us, tbuf, sizeof(tbuf));
    json_object_set_new(o, "modificationTime", json_string(tbuf));
    if (r->labels && json_object_size(r->labels) > 0)
        json_object_set_new(o, "labels", json_deep_copy(r->labels));
    kri = km_resource_kri(r);
    if (kri) {
        json_object_set_new(o, "kri", json_string(kri));
        free(kri);
    }
    spec = r->spec ? json_deep_copy(r->spec) : json_object();
    if (r->type->has_spec) {
        json_t *status = normalise(r, spec);
        json_t *snis = snis_json(r);
        if (snis)
            json_object_set_new(o, "snis", snis);
        json_object_set_new(o, "spec", spec);
        if (status)
            json_object_set_new(o, "status", status);
    } else {
        json_object_foreach (spec, key, v) {
            if (!is_meta_key(key))
                json_object_set(o, key, v);
        }
        json_decref(spec);
    }
    return o;
}

/* ---- deprecation warnings ---- */

static const char dns1035_msg[] =
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
static const char dns1123_label_msg[] =
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/* Kubernetes' IsDNS1035Label messages joined by "; "; NULL when valid. */
static char *
dns1035_problems(const char *s)
{
    struct km_sbuf b;
    bool chars_ok;
    size_t n = strlen(s);

    km_sbuf_init(&b);
    if (n > 63)
        km_sbuf_puts(&b, "must be no more than 63 characters");
    chars_ok = n > 0 && s[0] >= 'a' && s[0] <= 'z';
    for (size_t i = 0; chars_ok && i < n; i++)
        chars_ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-';
    if (chars_ok && s[n - 1] == '-')
        chars_ok = false;
    if (!chars_ok) {
        if (b.len)
            km_sbuf_puts(&b, "; ");
        km_sbuf_puts(&b, dns1035_msg);
    }
    if (!b.len) {
        km_sbuf_deinit(&b);
        return NULL;
    }
    return km_sbuf_take(&b);
}

/* IsDNS1123Label as worded by the apimachinery Kuma 2.14 uses. */
static char *
dns1123_label_problems(const char *s)
{
    struct km_sbuf b;

    km_sbuf_init(&b);
    if (strlen(s) > 63)
        km_sbuf_puts(&b, "must be no more than 63 characters");
    if (!km_is_dns1123_label(s) && strlen(s) <= 63) {
        if (b.len)
            km_sbuf_puts(&b, "; ");
        km_sbuf_puts(&b, strchr(s, '.') && km_is_dns1123_subdomain(s) ? "must not contain dots"
                                                                         : dns1123_label_msg);
    } else if (strlen(s) > 63 && !km_is_dns1123_subdomain(s)) {
        km_sbuf_printf(&b, "; %s", dns1123_label_msg);
    }
    if (!b.len) {
        km_sbuf_deinit(&b);
        return NULL;
    }
    return km_sbuf_take(&b);
}

static void
sni_warnings(const struct km_resource *r, json_t *out)
{
    struct sni_sec *secs = km_xcalloc(KM_MAX_SNI, sizeof(*secs));
    size_t n = sni_sections(r, secs, KM_MAX_SNI);
    const char *zone = label(r, "kuma.io/zone"), *ns = label(r, "k8s.kuma.io/namespace");

    for (size_t i = 0; i < n; i++) {
        struct {
            const char *what, *val;
        } f[4] = {{"mesh", r->mesh}, {"name", display_name(r)}, {NULL, NULL}, {NULL, NULL}};
        size_t nf = 2;
        char *p, *sni;

        if (zone && zone[0]) {
            f[nf].what = "zone";
            f[nf++].val = zone;
            if (ns && ns[0]) {
                f[nf].what = "namespace";
                f[nf++].val = ns;
            }
        }
        if (!r->mesh[0] || !display_name(r)[0])
            continue;
        for (size_t j = 0; j < nf; j++) {
            p = dns1123_label_problems(f[j].val);
            if (p) {
                char *w = km_xasprintf("Invalid %s SNI (port \"%s\"): %s \"%s\" does not conform "
                                       "to RFC 1123: %s. This is deprecated.",
                                       r->type->name, secs[i].section, f[j].what, f[j].val, p);
                json_array_append_new(out, json_string(w));
                free(w);
                free(p);
            }
        }
        p = dns1123_label_problems(secs[i].section);
        if (p) {
            char *w = km_xasprintf("Invalid %s SNI (port \"%s\"): %s. This is deprecated.",
                                   r->type->name, secs[i].section, p);
            json_array_append_new(out, json_string(w));
            free(w);
            free(p);
        }
        sni = sni_of(r, secs[i].section);
        if (strlen(sni) > 253) {
            char *w = km_xasprintf("Invalid %s SNI (port \"%s\"): computed SNI is %zu characters "
                                   "which exceeds the DNS hostname limit (253). This is "
                                   "deprecated.",
                                   r->type->name, secs[i].section, strlen(sni));
            json_array_append_new(out, json_string(w));
            free(w);
        }
        free(sni);
    }
    for (size_t i = 0; i < n; i++)
        free(secs[i].section);
    free(secs);
}

json_t *
km_resource_warnings(const struct km_resource *r)
{
    json_t *out = json_array();

    if (!r || !r->type)
        return out;
    if (type_is(r, "Mesh") || type_is(r, "MeshService") || type_is(r, "MeshExternalService") ||
        type_is(r, "MeshMultiZoneService")) {
        char *p = dns1035_problems(display_name(r));
        if (p) {
            char *w = km_xasprintf("Invalid %s resource name: '%s'. It does not conform to the "
                                   "DNS format (RFC 1035). This is deprecated. Errors: %s",
                                   r->type->name, display_name(r), p);
            json_array_append_new(out, json_string(w));
            free(w);
            free(p);
        }
        sni_warnings(r, out);
    } else if (type_is(r, "MeshTrust")) {
        if (json_object_get(r->spec, "origin"))
            json_array_append_new(out, json_string("setting spec.origin field is deprecated"));
    }
    return out;
}
