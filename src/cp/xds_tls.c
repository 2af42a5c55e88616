/* Envoy TLS resources of a mesh with mTLS, as proto3 JSON: SDS secrets, TLS contexts, the
 * PERMISSIVE inbound rewrite. */
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/xds_tls.h>

#define LOG_MOD "xds"
#define TAG_SERVICE "kuma.io/service"

const char *const km_xds_tls_alpn_kuma[] = {"kuma", NULL};
const char *const km_xds_tls_alpn_http[] = {"h2", "http/1.1", NULL};

static json_t *
must(json_t *j)
{
    if (j == NULL) {
        km_log_error(LOG_MOD, "out of memory building TLS JSON");
        abort();
    }
    return j;
}

static void
set_new(json_t *obj, const char *key, json_t *v)
{
    if (json_object_set_new(obj, key, must(v)) != 0) {
        km_log_error(LOG_MOD, "out of memory building TLS JSON");
        abort();
    }
}

char *
km_xds_tls_identity_name(const char *mesh)
{
    return km_xasprintf(KM_XDS_TLS_IDENTITY_FMT, mesh ? mesh : "");
}

char *
km_xds_tls_mesh_ca_name(const char *mesh)
{
    return km_xasprintf(KM_XDS_TLS_MESH_CA_FMT, mesh ? mesh : "");
}

/* {"inline_bytes": base64(pem)} */
static json_t *
inline_bytes(const char *pem)
{
    char *b64 = km_base64_encode(pem, strlen(pem));
    json_t *j = must(json_pack("{s:s}", "inline_bytes", b64 ? b64 : ""));
    free(b64);
    return j;
}

json_t *
km_xds_tls_identity_secret(const char *mesh, const char *cert_pem, const char *key_pem)
{
    char *name;
    json_t *j;

    if (mesh == NULL || cert_pem == NULL || key_pem == NULL)
        return NULL;
    name = km_xds_tls_identity_name(mesh);
    j = must(json_pack("{s:s, s:{s:o, s:o}}", "name", name, "tls_certificate",
                       "certificate_chain", inline_bytes(cert_pem), "private_key",
                       inline_bytes(key_pem)));
    free(name);
    return j;
}

json_t *
km_xds_tls_mesh_ca_secret(const char *mesh, const char *ca_pem)
{
    char *name;
    json_t *j;

    if (mesh == NULL || ca_pem == NULL)
        return NULL;
    name = km_xds_tls_mesh_ca_name(mesh);
    j = must(json_pack("{s:s, s:{s:o}}", "name", name, "validation_context", "trusted_ca",
                       inline_bytes(ca_pem)));
    free(name);
    return j;
}

json_t *
km_xds_tls_sds_config(const char *secret_name)
{
    if (secret_name == NULL)
        return NULL;
    return must(json_pack("{s:s, s:{s:{}, s:s}}", "name", secret_name, "sds_config", "ads",
                          "resource_api_version", "V3"));
}

/* {"san_type": "URI", "matcher": {<how>: value}} */
static json_t *
uri_matcher(const char *how, const char *value)
{
    return must(json_pack("{s:s, s:{s:s}}", "san_type", "URI", "matcher", how, value));
}

static json_t *
alpn_json(const char *const *alpn)
{
    json_t *a = must(json_array());
    for (size_t i = 0; alpn && alpn[i]; i++)
        json_array_append_new(a, must(json_string(alpn[i])));
    return a;
}

/* CommonTlsContext: own cert over SDS, mesh CA over SDS combined with <matcher> (stolen). */
static json_t *
common_ctx(const struct km_xds_tls_opts *o, json_t *matcher, const char *const *alpn)
{
    char *id = km_xds_tls_identity_name(o->mesh), *ca = km_xds_tls_mesh_ca_name(o->mesh);
    json_t *c = must(json_object());

    set_new(c, "tls_params",
            json_pack("{s:s, s:s}", "tls_minimum_protocol_version",
                      o->min_version ? o->min_version : "TLSv1_2",
                      "tls_maximum_protocol_version", o->max_version ? o->max_version : "TLSv1_3"));
    set_new(c, "tls_certificate_sds_secret_configs",
            json_pack("[o]", km_xds_tls_sds_config(id)));
    set_new(c, "combined_validation_context",
            json_pack("{s:{s:[o]}, s:o}", "default_validation_context",
                      "match_typed_subject_alt_names", matcher,
                      "validation_context_sds_secret_config", km_xds_tls_sds_config(ca)));
    if (alpn && alpn[0])
        set_new(c, "alpn_protocols", alpn_json(alpn));
    free(id);
    free(ca);
    return c;
}

json_t *
km_xds_tls_downstream(const struct km_xds_tls_opts *o)
{
    char *prefix;
    json_t *j;

    if (o == NULL || o->mesh == NULL)
        return NULL;
    prefix = km_xasprintf("spiffe://%s/", o->mesh);
    j = must(json_pack("{s:o, s:b}", "common_tls_context",
                       common_ctx(o, uri_matcher("prefix", prefix), o->alpn),
                       "require_client_certificate", 1));
    free(prefix);
    return j;
}

json_t *
km_xds_tls_upstream(const struct km_xds_tls_opts *o, const char *service, const char *sni)
{
    json_t *matcher, *j;
    char *id;

    if (o == NULL || o->mesh == NULL || service == NULL)
        return NULL;
    if (strcmp(service, "*") == 0) {
        id = km_xasprintf("spiffe://%s/", o->mesh);
        matcher = uri_matcher("prefix", id);
    } else {
        id = km_xasprintf("spiffe://%s/%s", o->mesh, service);
        matcher = uri_matcher("exact", id);
    }
    free(id);
    j = must(json_pack("{s:o}", "common_tls_context",
                       common_ctx(o, matcher, o->alpn ? o->alpn : km_xds_tls_alpn_kuma)));
    if (sni && sni[0])
        set_new(j, "sni", json_string(sni));
    return j;
}

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *
km_xds_tls_sni(const char *service, const char *mesh, const json_t *extra_tags)
{
    size_t n = 0, cap = (json_is_object(extra_tags) ? json_object_size(extra_tags) : 0) + 1;
    const char **keys;
    struct km_sbuf b;
    const char *k;
    json_t *v;

    if (service == NULL || mesh == NULL)
        return NULL;
    keys = km_xcalloc(cap, sizeof(*keys));
    keys[n++] = "mesh";
    if (json_is_object(extra_tags))
        json_object_foreach ((json_t *)extra_tags, k, v)
            if (json_is_string(v) && strcmp(k, TAG_SERVICE) != 0 && strcmp(k, "mesh") != 0)
                keys[n++] = k;
    qsort(keys, n, sizeof(*keys), cmp_cstr);
    km_sbuf_init(&b);
    km_sbuf_printf(&b, "%s{", service);
    for (size_t i = 0; i < n; i++)
        km_sbuf_printf(&b, "%s%s=%s", i ? "," : "", keys[i],
                       strcmp(keys[i], "mesh") == 0
                           ? mesh
                           : json_string_value(json_object_get(extra_tags, keys[i])));
    km_sbuf_puts(&b, "}");
    free(keys);
    return km_sbuf_take(&b);
}

json_t *
km_xds_tls_transport_socket(json_t *ctx, bool upstream)
{
    json_t *typed;

    if (ctx == NULL)
        return NULL;
    typed = must(json_pack("{s:s}", "@type",
                           upstream ? KM_XDS_TLS_URL_UPSTREAM : KM_XDS_TLS_URL_DOWNSTREAM));
    if (json_object_update(typed, ctx) != 0)
        must(NULL);
    json_decref(ctx);
    return must(json_pack("{s:s, s:o}", "name", KM_XDS_TLS_SOCKET_NAME, "typed_config", typed));
}

/* A deep copy of <chain> with filter_chain_match.transport_protocol = <tp> and, when
 * <kuma_alpn>, application_protocols ["kuma"]. */
static json_t *
chain_variant(const json_t *chain, const char *tp, bool kuma_alpn)
{
    json_t *c = must(json_deep_copy(chain));
    json_t *m = json_object_get(c, "filter_chain_match");

    if (!json_is_object(m)) {
        m = must(json_object());
        set_new(c, "filter_chain_match", m);
    }
    set_new(m, "transport_protocol", json_string(tp));
    if (kuma_alpn)
        set_new(m, "application_protocols", alpn_json(km_xds_tls_alpn_kuma));
    return c;
}

static bool
has_tls_inspector(const json_t *filters)
{
    for (size_t i = 0; i < json_array_size(filters); i++) {
        const char *n = json_string_value(json_object_get(json_array_get(filters, i), "name"));
        if (n && strcmp(n, KM_XDS_TLS_INSPECTOR_NAME) == 0)
            return true;
    }
    return false;
}

int
km_xds_tls_inbound_listener(json_t *listener, const struct km_xds_tls_opts *o, bool permissive)
{
    json_t *chains = json_object_get(listener, "filter_chains"), *out, *lf;

    if (o == NULL || o->mesh == NULL || !json_is_array(chains))
        return -1;
    if (!permissive) {
        for (size_t i = 0; i < json_array_size(chains); i++) {
            json_t *c = json_array_get(chains, i);
            if (json_is_object(c))
                set_new(c, "transport_socket",
                        km_xds_tls_transport_socket(km_xds_tls_downstream(o), false));
        }
        return 0;
    }
    out = must(json_array());
    for (size_t i = 0; i < json_array_size(chains); i++) {
        const json_t *c = json_array_get(chains, i);
        json_t *mtls;

        if (!json_is_object(c))
            continue;
        json_array_append_new(out, chain_variant(c, "raw_buffer", false));
        json_array_append_new(out, chain_variant(c, "tls", false));
        mtls = chain_variant(c, "tls", true);
        set_new(mtls, "transport_socket",
                km_xds_tls_transport_socket(km_xds_tls_downstream(o), false));
        json_array_append_new(out, mtls);
    }
    set_new(listener, "filter_chains", out);
    lf = json_object_get(listener, "listener_filters");
    if (!json_is_array(lf)) {
        lf = must(json_array());
        set_new(listener, "listener_filters", lf);
    }
    if (!has_tls_inspector(lf))
        json_array_append_new(lf, must(json_pack("{s:s, s:{s:s}}", "name",
                                                 KM_XDS_TLS_INSPECTOR_NAME, "typed_config",
                                                 "@type", KM_XDS_TLS_URL_INSPECTOR)));
    return 0;
}

int
km_xds_tls_outbound_cluster(json_t *cluster, const struct km_xds_tls_opts *o,
                            const char *service, const char *sni)
{
    json_t *ctx;

    if (!json_is_object(cluster) || (ctx = km_xds_tls_upstream(o, service, sni)) == NULL)
        return -1;
    set_new(cluster, "transport_socket", km_xds_tls_transport_socket(ctx, true));
    return 0;
}
