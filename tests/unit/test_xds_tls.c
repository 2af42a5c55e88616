/* TLS/SDS builders: every output packs against our Envoy descriptors (so every field name and
 * enum value exists), and the key fields are what Kuma sends. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/pbjson.h>
#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_tls.h>
#include <km/cp/xds_types.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/core/v3/core.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "test.h"

#define DOWNSTREAM_D                                                                               \
    envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor
#define UPSTREAM_D envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor

/* Packs <j> as <d>, decodes it back and returns the decoded JSON (the canonical form). */
static json_t *
pack(const ProtobufCMessageDescriptor *d, const json_t *j)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    json_t *out;

    km_xds_register_types();
    ASSERT(j != NULL);
    if (km_pbjson_encode(d, j, &buf, &len, err, sizeof(err)) != 0) {
        char *s = json_dumps(j, JSON_INDENT(1));
        KM_FAIL_AT("encode %s: %s\n%s", d->name, err, s);
    }
    out = km_pbjson_decode(d, buf, len, err, sizeof(err));
    if (out == NULL)
        KM_FAIL_AT("decode %s: %s", d->name, err);
    free(buf);
    return out;
}

static const char *
path_str(const json_t *j, const char *path)
{
    /* "a.b.0.c": object keys and array indexes */
    char *p = km_xstrdup(path), *save = NULL;
    const json_t *cur = j;

    for (char *t = strtok_r(p, ".", &save); t && cur; t = strtok_r(NULL, ".", &save)) {
        if (json_is_array(cur))
            cur = json_array_get(cur, (size_t)atoi(t));
        else
            cur = json_object_get(cur, t);
    }
    free(p);
    return json_is_string(cur) ? json_string_value(cur) : NULL;
}

static const json_t *
path_get(const json_t *j, const char *path)
{
    char *p = km_xstrdup(path), *save = NULL;
    const json_t *cur = j;

    for (char *t = strtok_r(p, ".", &save); t && cur; t = strtok_r(NULL, ".", &save))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(t)) : json_object_get(cur, t);
    free(p);
    return cur;
}

static const char *const CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
static const char *const KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

static char *
b64dec(const char *s)
{
    size_t n;
    char *d = km_base64_decode(s, &n);
    ASSERT(d != NULL);
    return d;
}

KM_TEST(xds_tls_secrets_pack_and_carry_the_pems)
{
    const ProtobufCMessageDescriptor *sd = km_xds_type_descriptor(KM_XDS_SECRET);
    json_t *id = km_xds_tls_identity_secret("default", CERT, KEY);
    json_t *ca = km_xds_tls_mesh_ca_secret("default", CERT);
    json_t *pid = pack(sd, id), *pca = pack(sd, ca);
    char *c, *k;

    ASSERT_STR_EQ(path_str(pid, "name"), "identity_cert:secret:default");
    c = b64dec(path_str(pid, "tls_certificate.certificate_chain.inline_bytes"));
    k = b64dec(path_str(pid, "tls_certificate.private_key.inline_bytes"));
    ASSERT_STR_EQ(c, CERT);
    ASSERT_STR_EQ(k, KEY);
    free(c);
    free(k);
    ASSERT_STR_EQ(path_str(pca, "name"), "mesh_ca:secret:default");
    c = b64dec(path_str(pca, "validation_context.trusted_ca.inline_bytes"));
    ASSERT_STR_EQ(c, CERT);
    free(c);
    ASSERT(km_xds_tls_identity_secret(NULL, CERT, KEY) == NULL);
    ASSERT(km_xds_tls_mesh_ca_secret("m", NULL) == NULL);
    json_decref(id);
    json_decref(ca);
    json_decref(pid);
    json_decref(pca);
}

KM_TEST(xds_tls_downstream_context)
{
    struct km_xds_tls_opts o = {.mesh = "default", .alpn = km_xds_tls_alpn_http};
    json_t *ctx = km_xds_tls_downstream(&o);
    json_t *p = pack(&DOWNSTREAM_D,
                     ctx);

    ASSERT(json_is_true(json_object_get(p, "require_client_certificate")));
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_certificate_sds_secret_configs.0.name"),
                  "identity_cert:secret:default");
    ASSERT(json_is_object(path_get(
        p, "common_tls_context.tls_certificate_sds_secret_configs.0.sds_config.ads")));
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_certificate_sds_secret_configs.0.sds_config."
                              "resource_api_version"),
                  "V3");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.combined_validation_context."
                              "validation_context_sds_secret_config.name"),
                  "mesh_ca:secret:default");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.combined_validation_context.default_validation_"
                              "context.match_typed_subject_alt_names.0.san_type"),
                  "URI");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.combined_validation_context."
                              "default_validation_context.match_typed_subject_alt_names.0.matcher."
                              "prefix"),
                  "spiffe://default/");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.alpn_protocols.0"), "h2");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.alpn_protocols.1"), "http/1.1");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_params.tls_minimum_protocol_version"),
                  "TLSv1_2");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_params.tls_maximum_protocol_version"),
                  "TLSv1_3");
    json_decref(ctx);
    json_decref(p);

    /* no ALPN, TLS 1.3 only */
    o.alpn = NULL;
    o.min_version = "TLSv1_3";
    ctx = km_xds_tls_downstream(&o);
    p = pack(&DOWNSTREAM_D,
             ctx);
    ASSERT(path_get(p, "common_tls_context.alpn_protocols") == NULL);
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_params.tls_minimum_protocol_version"),
                  "TLSv1_3");
    json_decref(ctx);
    json_decref(p);
    ASSERT(km_xds_tls_downstream(NULL) == NULL);
}

KM_TEST(xds_tls_upstream_context_and_sni)
{
    struct km_xds_tls_opts o = {.mesh = "default"};
    char *sni = km_xds_tls_sni("backend", "default", NULL);
    json_t *ctx = km_xds_tls_upstream(&o, "backend", sni);
    json_t *p = pack(&UPSTREAM_D,
                     ctx);

    ASSERT_STR_EQ(sni, "backend{mesh=default}");
    ASSERT_STR_EQ(path_str(p, "sni"), "backend{mesh=default}");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.combined_validation_context."
                              "default_validation_context.match_typed_subject_alt_names.0.matcher."
                              "exact"),
                  "spiffe://default/backend");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.tls_certificate_sds_secret_configs.0.name"),
                  "identity_cert:secret:default");
    ASSERT_STR_EQ(path_str(p, "common_tls_context.alpn_protocols.0"), "kuma");
    ASSERT(path_get(p, "common_tls_context.alpn_protocols.1") == NULL);
    json_decref(ctx);
    json_decref(p);
    free(sni);

    /* "*": any service of the mesh */
    ctx = km_xds_tls_upstream(&o, "*", NULL);
    p = pack(&UPSTREAM_D,
             ctx);
    ASSERT_STR_EQ(path_str(p, "common_tls_context.combined_validation_context."
                              "default_validation_context.match_typed_subject_alt_names.0.matcher."
                              "prefix"),
                  "spiffe://default/");
    ASSERT(path_get(p, "sni") == NULL);
    json_decref(ctx);
    json_decref(p);

    /* SNI with tags: key order, mesh among them, service and non-strings left out */
    json_error_t je;
    json_t *tags = json_loads("{\"version\":\"v1\",\"kuma.io/service\":\"x\",\"app\":\"a\","
                              "\"n\":3,\"zone\":\"z\"}",
                              0, &je);
    sni = km_xds_tls_sni("backend", "m1", tags);
    ASSERT_STR_EQ(sni, "backend{app=a,mesh=m1,version=v1,zone=z}");
    free(sni);
    json_decref(tags);
    ASSERT(km_xds_tls_sni(NULL, "m", NULL) == NULL);
}

KM_TEST(xds_tls_transport_socket_and_cluster)
{
    struct km_xds_tls_opts o = {.mesh = "default"};
    json_t *ts = km_xds_tls_transport_socket(km_xds_tls_downstream(&o), false);
    json_t *p = pack(&envoy__config__core__v3__transport_socket__descriptor, ts);

    ASSERT_STR_EQ(path_str(p, "name"), "envoy.transport_sockets.tls");
    ASSERT_STR_EQ(path_str(p, "typed_config.@type"), KM_XDS_TLS_URL_DOWNSTREAM);
    ASSERT(json_is_true(path_get(p, "typed_config.require_client_certificate")));
    json_decref(ts);
    json_decref(p);

    json_t *cluster = json_pack("{s:s, s:s, s:s, s:{s:{s:{}, s:s}}}", "name", "backend", "type",
                                "EDS", "connect_timeout", "5s", "eds_cluster_config",
                                "eds_config", "ads", "resource_api_version", "V3");
    char *sni = km_xds_tls_sni("backend", "default", NULL);
    ASSERT_INT_EQ(km_xds_tls_outbound_cluster(cluster, &o, "backend", sni), 0);
    p = pack(km_xds_type_descriptor(KM_XDS_CLUSTER), cluster);
    ASSERT_STR_EQ(path_str(p, "transport_socket.typed_config.@type"), KM_XDS_TLS_URL_UPSTREAM);
    ASSERT_STR_EQ(path_str(p, "transport_socket.typed_config.sni"), "backend{mesh=default}");
    ASSERT_INT_EQ(km_xds_tls_outbound_cluster(NULL, &o, "backend", sni), -1);
    ASSERT_INT_EQ(km_xds_tls_outbound_cluster(cluster, &o, NULL, sni), -1);
    free(sni);
    json_decref(cluster);
    json_decref(p);
}

/* An inbound listener as src/cp/xds_gen.c makes it. */
static json_t *
inbound_listener(void)
{
    json_error_t je;
    json_t *l = json_loads(
        "{\"name\":\"inbound:10.0.0.1:8080\",\"address\":{\"socket_address\":{\"address\":"
        "\"10.0.0.1\",\"port_value\":8080}},\"filter_chains\":[{\"filters\":[{\"name\":"
        "\"envoy.filters.network.tcp_proxy\",\"typed_config\":{\"@type\":\"type.googleapis.com/"
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\",\"stat_prefix\":"
        "\"localhost_8080\",\"cluster\":\"localhost:8080\"}}]}],\"traffic_direction\":"
        "\"INBOUND\"}",
        0, &je);
    if (l == NULL)
        KM_FAIL_AT("json: %s", je.text);
    return l;
}

KM_TEST(xds_tls_inbound_listener_strict)
{
    struct km_xds_tls_opts o = {.mesh = "default"};
    json_t *l = inbound_listener(), *p;

    ASSERT_INT_EQ(km_xds_tls_inbound_listener(l, &o, false), 0);
    p = pack(km_xds_type_descriptor(KM_XDS_LISTENER), l);
    ASSERT_INT_EQ(json_array_size(json_object_get(p, "filter_chains")), 1);
    ASSERT_STR_EQ(path_str(p, "filter_chains.0.transport_socket.name"),
                  "envoy.transport_sockets.tls");
    ASSERT_STR_EQ(path_str(p, "filter_chains.0.transport_socket.typed_config.@type"),
                  KM_XDS_TLS_URL_DOWNSTREAM);
    ASSERT_STR_EQ(path_str(p, "filter_chains.0.filters.0.name"),
                  "envoy.filters.network.tcp_proxy");
    ASSERT(path_get(p, "listener_filters") == NULL);
    json_decref(l);
    json_decref(p);

    json_t *bad = json_pack("{s:s}", "name", "x");
    ASSERT_INT_EQ(km_xds_tls_inbound_listener(bad, &o, false), -1);
    ASSERT_INT_EQ(km_xds_tls_inbound_listener(bad, &o, true), -1);
    ASSERT(json_object_size(bad) == 1);
    json_decref(bad);
}

KM_TEST(xds_tls_inbound_listener_permissive)
{
    struct km_xds_tls_opts o = {.mesh = "default"};
    json_t *l = inbound_listener(), *p;

    ASSERT_INT_EQ(km_xds_tls_inbound_listener(l, &o, true), 0);
    /* idempotent on the inspector */
    p = pack(km_xds_type_descriptor(KM_XDS_LISTENER), l);
    ASSERT_INT_EQ(json_array_size(json_object_get(p, "filter_chains")), 3);
    ASSERT_STR_EQ(path_str(p, "listener_filters.0.name"), "envoy.filters.listener.tls_inspector");
    ASSERT_STR_EQ(path_str(p, "listener_filters.0.typed_config.@type"), KM_XDS_TLS_URL_INSPECTOR);
    ASSERT_STR_EQ(path_str(p, "filter_chains.0.filter_chain_match.transport_protocol"),
                  "raw_buffer");
    ASSERT(path_get(p, "filter_chains.0.transport_socket") == NULL);
    ASSERT_STR_EQ(path_str(p, "filter_chains.1.filter_chain_match.transport_protocol"), "tls");
    ASSERT(path_get(p, "filter_chains.1.filter_chain_match.application_protocols") == NULL);
    ASSERT(path_get(p, "filter_chains.1.transport_socket") == NULL);
    ASSERT_STR_EQ(path_str(p, "filter_chains.2.filter_chain_match.transport_protocol"), "tls");
    ASSERT_STR_EQ(path_str(p, "filter_chains.2.filter_chain_match.application_protocols.0"),
                  "kuma");
    ASSERT_STR_EQ(path_str(p, "filter_chains.2.transport_socket.typed_config.@type"),
                  KM_XDS_TLS_URL_DOWNSTREAM);
    for (int i = 0; i < 3; i++) {
        char key[64];
        snprintf(key, sizeof(key), "filter_chains.%d.filters.0.typed_config.cluster", i);
        ASSERT_STR_EQ(path_str(p, key), "localhost:8080");
    }
    json_decref(p);
    /* a listener that already has the inspector keeps one */
    json_t *l2 = inbound_listener();
    json_object_set_new(l2, "listener_filters",
                        json_pack("[{s:s, s:{s:s}}]", "name", KM_XDS_TLS_INSPECTOR_NAME,
                                  "typed_config", "@type", KM_XDS_TLS_URL_INSPECTOR));
    ASSERT_INT_EQ(km_xds_tls_inbound_listener(l2, &o, true), 0);
    ASSERT_INT_EQ(json_array_size(json_object_get(l2, "listener_filters")), 1);
    json_decref(l2);
    json_decref(l);
}

KM_TEST(xds_tls_secret_from_real_ca_packs)
{
    struct km_ca_params cp = {.mesh = "default"};
    struct km_tag t = {"kuma.io/service", "web"};
    struct km_identity id = {.mesh = "default", .tags = &t, .ntags = 1};
    struct km_errs e;
    char *cacert, *cakey, *cert, *key, *c;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_generate(&cp, &cacert, &cakey, &e), 0);
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &cert, &key, &e), 0);
    json_t *s = km_xds_tls_identity_secret("default", cert, key);
    json_t *p = pack(km_xds_type_descriptor(KM_XDS_SECRET), s);
    c = b64dec(path_str(p, "tls_certificate.certificate_chain.inline_bytes"));
    ASSERT_STR_EQ(c, cert);
    free(c);
    json_decref(s);
    json_decref(p);
    free(cacert);
    free(cakey);
    free(cert);
    free(key);
    km_errs_deinit(&e);
}
