/* Computed labels of resources written through the REST API, their checks, and KRI lookup.
 *
 * A zone control plane marks what it creates: kuma.io/mesh on mesh-scoped resources,
 * kuma.io/origin: zone, kuma.io/zone and kuma.io/env on types a zone may create, and
 * kuma.io/proxy-type (plus the listener labels) on proxies. Labels the user set win, except
 * the proxy ones which always follow the spec. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/labels.h>
#include <km/cp/validate.h>

#define L_MESH     "kuma.io/mesh"
#define L_ORIGIN   "kuma.io/origin"
#define L_ZONE     "kuma.io/zone"
#define L_ENV      "kuma.io/env"
#define L_PROXY    "kuma.io/proxy-type"
#define L_DISPLAY  "kuma.io/display-name"
#define L_WORKLOAD "kuma.io/workload"
#define L_LIS_ZI   "kuma.io/listener-zoneingress"
#define L_LIS_ZE   "kuma.io/listener-zoneegress"

/* Types whose descriptor carries Kuma's ProvidedByZone flag (zone-to-global types, secrets,
 * zones and every targetRef policy, which the registry flags itself). */
static const char *const zone_provided[] = {
    "Dataplane",          "DataplaneInsight",    "MeshGateway",
    "ZoneIngress",        "ZoneIngressInsight",  "ZoneEgress",
    "ZoneEgressInsight",  "Secret",              "GlobalSecret",
    "Zone",               "ZoneInsight",         "HostnameGenerator",
    "MeshService",        "MeshExternalService", "MeshIdentity",
    "MeshTrust",          "MeshZoneAddress",     "MeshOpenTelemetryBackend",
    "Workload",
};

static bool
in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return true;
    return false;
}

bool
km_type_provided_by_zone(const struct km_rtype *t)
{
    if (!t)
        return false;
    return t->is_targetref_policy || in_list(t->name, zone_provided, KM_ARRAY_LEN(zone_provided));
}

bool
km_type_is_proxy(const struct km_rtype *t)
{
    static const char *const proxies[] = {"Dataplane", "ZoneIngress", "ZoneEgress"};
    return t && in_list(t->name, proxies, KM_ARRAY_LEN(proxies));
}

static const char *
jstr(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void
set_if_absent(json_t *labels, const char *k, const char *v)
{
    if (!json_object_get(labels, k))
        json_object_set_new(labels, k, json_string(v));
}

/* kuma.io/proxy-type and the listener labels of a proxy. */
static void
compute_proxy(const struct km_rtype *t, const json_t *spec, json_t *labels)
{
    if (strcmp(t->name, "ZoneIngress") == 0) {
        json_object_set_new(labels, L_PROXY, json_string("zoneingress"));
        return;
    }
    if (strcmp(t->name, "ZoneEgress") == 0) {
        json_object_set_new(labels, L_PROXY, json_string("zoneegress"));
        return;
    }
    const json_t *net = json_object_get(spec, "networking");
    const char *gtype = jstr(json_object_get(net, "gateway"), "type");
    json_object_set_new(labels, L_PROXY,
                        json_string(gtype && strcmp(gtype, "BUILTIN") == 0 ? "gateway"
                                                                            : "sidecar"));
    bool ingress = false, egress = false;
    size_t i;
    const json_t *l;
    json_array_foreach (json_object_get(net, "listeners"), i, l) {
        const char *lt = jstr(l, "type");
        if (lt && strcmp(lt, "ZoneIngress") == 0)
            ingress = true;
        else if (lt && strcmp(lt, "ZoneEgress") == 0)
            egress = true;
    }
    if (ingress)
        json_object_set_new(labels, L_LIS_ZI, json_string("enabled"));
    else
        json_object_del(labels, L_LIS_ZI);
    if (egress)
        json_object_set_new(labels, L_LIS_ZE, json_string("enabled"));
    else
        json_object_del(labels, L_LIS_ZE);
}

json_t *
km_labels_compute(const struct km_rtype *t, const json_t *spec, const json_t *existing,
                  const char *mesh, const struct km_labels_ctx *ctx)
{
    json_t *labels = json_object();
    const char *k;
    json_t *v;

    if (json_is_object(existing)) {
        json_object_foreach ((json_t *)existing, k, v) {
            if (json_is_string(v))
                json_object_set(labels, k, v);
        }
    }
    if (!t)
        return labels;
    if (t->scope == KM_SCOPE_MESH)
        set_if_absent(labels, L_MESH, mesh && mesh[0] ? mesh : "default");
    if (!ctx->global && km_type_provided_by_zone(t)) {
        set_if_absent(labels, L_ORIGIN, "zone");
        const char *origin = jstr(labels, L_ORIGIN);
        if (!origin || strcmp(origin, "global") != 0) {
            set_if_absent(labels, L_ZONE, ctx->zone ? ctx->zone : KM_DEFAULT_ZONE_NAME);
            set_if_absent(labels, L_ENV, ctx->kubernetes ? "kubernetes" : "universal");
        }
    }
    if (km_type_is_proxy(t))
        compute_proxy(t, spec, labels);
    return labels;
}

void
km_labels_validate_request(const json_t *labels, const char *res_mesh,
                           const struct km_labels_ctx *ctx, struct km_errs *errs)
{
    if (!json_is_object(labels) || json_object_size(labels) == 0)
        return;
    const char *origin = jstr(labels, L_ORIGIN);
    if (origin && strcmp(origin, "global") != 0 && strcmp(origin, "zone") != 0)
        km_errs_add(errs, "labels[\"" L_ORIGIN "\"]", "unknown resource origin \"%s\"", origin);
    km_labels_check_origin_for_write(labels, ctx, "labels", errs);
    if (!ctx->global && !(origin && strcmp(origin, "global") == 0)) {
        const char *zone = ctx->zone ? ctx->zone : KM_DEFAULT_ZONE_NAME;
        const char *z = jstr(labels, L_ZONE);
        if (z && strcmp(z, zone) != 0)
            km_errs_add(errs, "labels[\"" L_ZONE "\"]", L_ZONE " label should have %s value",
                        zone);
        const char *m = jstr(labels, L_MESH);
        if (m && strcmp(m, res_mesh ? res_mesh : "") != 0)
            km_errs_add(errs, "labels[\"" L_MESH "\"]",
                        L_MESH " label must not differ from mesh set on resource");
    }
    km_validate_label_entries(labels, errs);
}

void
km_labels_check_origin_for_write(const json_t *labels, const struct km_labels_ctx *ctx,
                                 const char *base, struct km_errs *errs)
{
    const char *origin = jstr(labels, L_ORIGIN);
    if (!ctx->global || !origin || strcmp(origin, "global") == 0)
        return;
    char *path = km_vp_key(base, L_ORIGIN);
    km_errs_add(errs, path, "the origin label must be set to 'global'");
    free(path);
}

void
km_labels_check_immutable(const json_t *cur, const json_t *next, struct km_errs *errs)
{
    static const char *const immutable[] = {L_ORIGIN, L_ZONE, L_DISPLAY};
    for (size_t i = 0; i < KM_ARRAY_LEN(immutable); i++) {
        const char *was = jstr(cur, immutable[i]);
        const char *now = jstr(next, immutable[i]);
        if (!was)
            continue;
        char *path = km_vp_key("labels", immutable[i]);
        if (!now)
            km_errs_add(errs, path, "is immutable, cannot be removed (was \"%s\")", was);
        else if (strcmp(was, now) != 0)
            km_errs_add(errs, path, "is immutable, cannot be changed from \"%s\" to \"%s\"", was,
                        now);
        free(path);
    }
}

static bool
dns1035_chars_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return s[n - 1] != '-';
}

char *
km_labels_check_workload(const json_t *labels, const struct km_labels_ctx *ctx)
{
    const char *w = jstr(labels, L_WORKLOAD);
    if (!w || !w[0] || ctx->kubernetes)
        return NULL;
    if (ctx->global)
        return km_xstrdup("bad request: labels[\"" L_WORKLOAD "\"]: not allowed on Global "
                          "control plane");
    bool too_long = strlen(w) > 63, bad = !dns1035_chars_ok(w);
    if (!too_long && !bad)
        return NULL;
    return km_xasprintf(
        "bad request: labels[\"" L_WORKLOAD "\"]: must be a valid DNS-1035 label (at most 63 "
        "characters, matching regex [a-z]([-a-z0-9]*[a-z0-9])?): %s%s%s",
        too_long ? "must be no more than 63 characters" : "", too_long && bad ? "; " : "",
        bad ? "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
              "start with an alphabetic character, and end with an alphanumeric character "
              "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
              "'[a-z]([-a-z0-9]*[a-z0-9])?')"
            : "");
}

/* ---- KRI ---- */

/* Go's %q for the byte strings that appear in KRI errors (ASCII escapes only). */
static void
go_quote(struct km_sbuf *b, const char *s)
{
    km_sbuf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            km_sbuf_puts(b, "\\\"");
            break;
        case '\\':
            km_sbuf_puts(b, "\\\\");
            break;
        case '\n':
            km_sbuf_puts(b, "\\n");
            break;
        case '\t':
            km_sbuf_puts(b, "\\t");
            break;
        case '\r':
            km_sbuf_puts(b, "\\r");
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                km_sbuf_printf(b, "\\x%02x", *p);
            else
                km_sbuf_add(b, (const char *)p, 1);
            break;
        }
    }
    km_sbuf_puts(b, "\"");
}

static void
kri_error(char *err, size_t errlen, const char *what, const char *arg)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_puts(&b, what);
    go_quote(&b, arg);
    snprintf(err, errlen, "%s", b.ptr ? b.ptr : what);
    km_sbuf_deinit(&b);
}

int
km_kri_parse(const char *s, struct km_kri *out, char *err, size_t errlen)
{
    const char *parts[6];
    size_t lens[6];
    size_t n = 0;
    const char *p = s;

    memset(out, 0, sizeof(*out));
    /* The first six '_'-separated parts; the rest (joined without '_') is the section. */
    while (n < 6) {
        const char *us = strchr(p, '_');
        if (!us)
            break;
        parts[n] = p;
        lens[n] = (size_t)(us - p);
        n++;
        p = us + 1;
    }
    if (n < 6) {
        kri_error(err, errlen, "invalid identifier string: ", s);
        return -1;
    }
    if (lens[0] != 3 || strncmp(parts[0], "kri", 3) != 0) {
        kri_error(err, errlen, "identifier must start with 'kri': ", s);
        return -1;
    }
    char *shrt = km_xstrndup(parts[1], lens[1]);
    const struct km_rtype *t = NULL;
    for (size_t i = 0; shrt[0] && i < km_registry_count(); i++) {
        const struct km_rtype *c = km_registry_at(i);
        if (c->short_name && strcmp(c->short_name, shrt) == 0) {
            t = c;
            break;
        }
    }
    if (!t) {
        kri_error(err, errlen, "unknown short name of resource type: ", shrt);
        free(shrt);
        return -1;
    }
    free(shrt);
    out->type = t;
    out->mesh = km_xstrndup(parts[2], lens[2]);
    out->zone = km_xstrndup(parts[3], lens[3]);
    out->ns = km_xstrndup(parts[4], lens[4]);
    out->name = km_xstrndup(parts[5], lens[5]);
    struct km_sbuf sec;
    km_sbuf_init(&sec);
    km_sbuf_puts(&sec, "");
    for (const char *q = p; *q; q++)
        if (*q != '_')
            km_sbuf_add(&sec, q, 1);
    out->section = km_sbuf_take(&sec);
    return 0;
}

void
km_kri_deinit(struct km_kri *k)
{
    free(k->mesh);
    free(k->zone);
    free(k->ns);
    free(k->name);
    free(k->section);
    memset(k, 0, sizeof(*k));
}

char *
km_hashed_name(const char *mesh, const char *name, const char *const *extra, size_t n)
{
    /* FNV-1a 64 over the concatenated values, big-endian hex, then each hex digit mapped
     * into Kubernetes' "safe" alphabet (no vowels, no look-alikes). */
    static const char safe[] = "bcdfghjklmnpqrstvwxz2456789";
    uint64_t h = 14695981039346656037ULL;
    const char *vals[2] = {mesh ? mesh : "", name ? name : ""};
    for (size_t i = 0; i < 2 + n; i++) {
        const char *v = i < 2 ? vals[i] : extra[i - 2];
        for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
            h ^= *p;
            h *= 1099511628211ULL;
        }
    }
    char hex[17], enc[17];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)h);
    for (size_t i = 0; i < 16; i++)
        enc[i] = safe[(unsigned char)hex[i] % (sizeof(safe) - 1)];
    enc[16] = '\0';
    const char *nm = name ? name : "";
    int keep = (int)strlen(nm);
    if (keep > 253 - 17)
        keep = 253 - 17;
    return km_xasprintf("%.*s-%s", keep, nm, enc);
}

char *
km_kri_store_name(const struct km_kri *k, const struct km_labels_ctx *ctx)
{
    bool local = ctx->global ? k->zone[0] == '\0'
                             : strcmp(k->zone, ctx->zone ? ctx->zone : KM_DEFAULT_ZONE_NAME) == 0;
    if (local)
        return km_xstrdup(k->name);
    const char *extra[2];
    size_t n = 0;
    if (k->zone[0])
        extra[n++] = k->zone;
    if (k->ns[0])
        extra[n++] = k->ns;
    return km_hashed_name(k->mesh, k->name, extra, n);
}
