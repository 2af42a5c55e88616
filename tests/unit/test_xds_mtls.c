/* Unit tests for mTLS in the xDS generator (src/cp/xds_gen.c with src/cp/xds_tls.c): golden
 * files for STRICT and PERMISSIVE (tests/golden/xds/mtls_*.input.json -> .golden.json;
 * UPDATE_GOLDEN=1 rewrites them; the certificates are fixed PEMs injected through the proxy
 * id), the shape of the TLS contexts and secrets, packing with our .proto schema, and what
 * must not change: meshes without mTLS and proxyless clients. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/errs.h>
#include <km/common/pbjson.h>
#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/resource.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>

#include "test.h"
#include "xds_golden.h"

#define URL_DOWNSTREAM \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define URL_UPSTREAM \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

static const char *const mtls_cases[] = {"mtls_strict", "mtls_permissive"};

struct mcase {
    json_t *input;             /* owned */
    struct km_resource **dps;  /* owned */
    size_t ndps;
    struct km_resource *mesh;  /* owned, may be NULL */
    const char **requested;    /* owned array */
    size_t nreq;
    struct km_mesh_view view;
    struct km_xds_proxy_id proxy;
};


static struct km_resource *
decode_as(const json_t *doc, const char *type)
{
    struct km_errs e;
    struct km_resource *r;

    km_errs_init(&e);
    r = km_resource_decode(doc, km_registry_find(type), &e);
    if (r == NULL) {
        char *msg = km_errs_join(&e);
        KM_FAIL_AT("cannot decode %s: %s", type, msg);
    }
    km_errs_deinit(&e);
    return r;
}

/* Input document: {"mesh": Mesh (optional), "proxy": {"name", "dataplane",
 * "requested_listeners", "tls": {"cert", "key", "ca"}}, "dataplanes": [...]}. */
static void
case_from_json(struct mcase *c, json_t *input)
{
    const json_t *dps = json_object_get(input, "dataplanes");
    const json_t *proxy = json_object_get(input, "proxy");
    const json_t *req = json_object_get(proxy, "requested_listeners");
    const json_t *tls = json_object_get(proxy, "tls");
    const json_t *mesh = json_object_get(input, "mesh");
    const char *own = json_string_value(json_object_get(proxy, "dataplane"));

    memset(c, 0, sizeof(*c));
    c->input = input;
    c->ndps = json_array_size(dps);
    c->dps = km_xcalloc(c->ndps + 1, sizeof(*c->dps));
    for (size_t i = 0; i < c->ndps; i++)
        c->dps[i] = decode_as(json_array_get(dps, i), "Dataplane");
    if (json_is_object(mesh))
        c->mesh = decode_as(mesh, "Mesh");
    c->nreq = json_array_size(req);
    c->requested = km_xcalloc(c->nreq + 1, sizeof(*c->requested));
    for (size_t i = 0; i < c->nreq; i++)
        c->requested[i] = json_string_value(json_array_get(req, i));
    c->view.mesh = "default";
    c->view.mesh_res = c->mesh;
    c->view.dataplanes = (const struct km_resource *const *)c->dps;
    c->view.ndataplanes = c->ndps;
    c->proxy.mesh = "default";
    c->proxy.name = json_string_value(json_object_get(proxy, "name"));
    c->proxy.requested_listeners = c->requested;
    c->proxy.nrequested_listeners = c->nreq;
    c->proxy.cert_pem = json_string_value(json_object_get(tls, "cert"));
    c->proxy.key_pem = json_string_value(json_object_get(tls, "key"));
    c->proxy.ca_pem = json_string_value(json_object_get(tls, "ca"));
    for (size_t i = 0; own && i < c->ndps; i++)
        if (strcmp(c->dps[i]->name, own) == 0)
            c->proxy.dataplane = c->dps[i];
    if (own && c->proxy.dataplane == NULL)
        KM_FAIL_AT("proxy.dataplane %s is not among the dataplanes", own);
}

static json_t *
load_input(const char *name)
{
    char *path = xg_golden_path(name, ".input.json");
    json_error_t jerr;
    json_t *input = json_load_file(path, 0, &jerr);

    if (input == NULL)
        KM_FAIL_AT("%s: %s (line %d)", path, jerr.text, jerr.line);
    free(path);
    return input;
}

static void
case_load(struct mcase *c, const char *name)
{
    case_from_json(c, load_input(name));
}

static void
case_free(struct mcase *c)
{
    for (size_t i = 0; i < c->ndps; i++)
        km_resource_free(c->dps[i]);
    free(c->dps);
    km_resource_free(c->mesh);
    free(c->requested);
    json_decref(c->input);
}

static json_t *
case_generate(const struct mcase *c)
{
    return xg_generate(&c->view, &c->proxy);
}


static void
run_golden(const char *name)
{
    struct mcase c;
    case_load(&c, name);
    json_t *doc = case_generate(&c);
    char *got = xg_dump(doc);
    json_decref(doc);
    case_free(&c);
    xg_check_golden(name, got);
    free(got);
}

KM_TEST(xds_mtls_golden_strict) { run_golden("mtls_strict"); }
KM_TEST(xds_mtls_golden_permissive) { run_golden("mtls_permissive"); }

/* ---- helpers over the generated JSON ---- */

/* Number of occurrences of key <key> anywhere in <j>. */
static size_t
count_key(const json_t *j, const char *key)
{
    size_t n = 0, i;
    const char *k;
    json_t *v;

    if (json_is_object(j)) {
        json_object_foreach((json_t *)j, k, v) {
            if (strcmp(k, key) == 0)
                n++;
            n += count_key(v, key);
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            n += count_key(v, key);
    }
    return n;
}

static const char *
sget(const json_t *j, const char *path)
{
    char *p = km_xstrdup(path), *save = NULL;
    const json_t *cur = j;

    for (char *tok = strtok_r(p, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save)) {
        char *end;
        long idx = strtol(tok, &end, 10);
        cur = *end == '\0' ? json_array_get(cur, (size_t)idx) : json_object_get(cur, tok);
    }
    free(p);
    return json_string_value(cur);
}

static char *
b64dec(const char *s)
{
    size_t n;
    char *d = km_base64_decode(s, &n);
    ASSERT(d != NULL);
    char *r = km_xmalloc(n + 1);
    memcpy(r, d, n);
    r[n] = '\0';
    free(d);
    return r;
}

KM_TEST(xds_mtls_strict_shape)
{
    struct mcase c;
    json_t *doc, *lds, *cds, *sds, *l, *chain, *cl;
    char *pem;

    case_load(&c, "mtls_strict");
    doc = case_generate(&c);
    lds = json_object_get(doc, "lds");
    cds = json_object_get(doc, "cds");
    sds = json_object_get(doc, "sds");

    /* the inbound: one filter chain, the downstream context, requiring client certificates
     * from the mesh and referring to both secrets over ADS */
    l = json_object_get(lds, "inbound:10.0.0.1:8080");
    ASSERT(l != NULL);
    ASSERT_INT_EQ(json_array_size(json_object_get(l, "filter_chains")), 1);
    chain = json_array_get(json_object_get(l, "filter_chains"), 0);
    ASSERT_STR_EQ(sget(chain, "transport_socket.name"), "envoy.transport_sockets.tls");
    ASSERT_STR_EQ(sget(chain, "transport_socket.typed_config.@type"), URL_DOWNSTREAM);
    ASSERT(json_is_true(json_object_get(json_object_get(json_object_get(chain,
        "transport_socket"), "typed_config"), "require_client_certificate")));
    ASSERT_STR_EQ(sget(chain, "transport_socket.typed_config.common_tls_context."
                              "tls_certificate_sds_secret_configs.0.name"),
                  "identity_cert:secret:default");
    ASSERT_STR_EQ(sget(chain, "transport_socket.typed_config.common_tls_context."
                              "combined_validation_context.validation_context_sds_secret_config."
                              "name"),
                  "mesh_ca:secret:default");
    ASSERT_STR_EQ(sget(chain, "transport_socket.typed_config.common_tls_context."
                              "combined_validation_context.default_validation_context."
                              "match_typed_subject_alt_names.0.matcher.prefix"),
                  "spiffe://default/");
    ASSERT(json_object_get(l, "listener_filters") == NULL); /* no inspector in STRICT */

    /* outbound listeners stay plaintext (the application talks to its sidecar) */
    ASSERT_INT_EQ(count_key(json_object_get(lds, "outbound:127.0.0.1:33033"), "transport_socket"),
                  0);

    /* outbound clusters: upstream context, SNI and the exact SPIFFE ID of the destination */
    cl = json_object_get(cds, "backend");
    ASSERT_STR_EQ(sget(cl, "transport_socket.typed_config.@type"), URL_UPSTREAM);
    ASSERT_STR_EQ(sget(cl, "transport_socket.typed_config.sni"), "backend{mesh=default}");
    ASSERT_STR_EQ(sget(cl, "transport_socket.typed_config.common_tls_context."
                           "combined_validation_context.default_validation_context."
                           "match_typed_subject_alt_names.0.matcher.exact"),
                  "spiffe://default/backend");
    ASSERT_STR_EQ(sget(cl, "transport_socket.typed_config.common_tls_context.alpn_protocols.0"),
                  "kuma");
    ASSERT_STR_EQ(sget(json_object_get(cds, "db"), "transport_socket.typed_config.sni"),
                  "db{mesh=default}");
    /* the local application's cluster is plaintext */
    ASSERT(json_object_get(json_object_get(cds, "localhost:18080"), "transport_socket") == NULL);

    /* the two secrets carry the injected PEMs */
    ASSERT_INT_EQ(json_object_size(sds), 2);
    pem = b64dec(sget(sds, "identity_cert:secret:default.tls_certificate.certificate_chain."
                           "inline_bytes"));
    ASSERT_STR_EQ(pem, c.proxy.cert_pem);
    free(pem);
    pem = b64dec(sget(sds, "identity_cert:secret:default.tls_certificate.private_key."
                           "inline_bytes"));
    ASSERT_STR_EQ(pem, c.proxy.key_pem);
    free(pem);
    pem = b64dec(sget(sds, "mesh_ca:secret:default.validation_context.trusted_ca.inline_bytes"));
    ASSERT_STR_EQ(pem, c.proxy.ca_pem);
    free(pem);
    json_decref(doc);
    case_free(&c);
}

KM_TEST(xds_mtls_permissive_shape)
{
    struct mcase c;
    json_t *doc, *l, *chains;

    case_load(&c, "mtls_permissive");
    doc = case_generate(&c);
    l = json_object_get(json_object_get(doc, "lds"), "inbound:10.0.0.3:5432");
    ASSERT(l != NULL);
    chains = json_object_get(l, "filter_chains");
    ASSERT_INT_EQ(json_array_size(chains), 3);
    ASSERT_STR_EQ(sget(chains, "0.filter_chain_match.transport_protocol"), "raw_buffer");
    ASSERT(json_object_get(json_array_get(chains, 0), "transport_socket") == NULL);
    ASSERT_STR_EQ(sget(chains, "1.filter_chain_match.transport_protocol"), "tls");
    ASSERT(json_object_get(json_array_get(chains, 1), "transport_socket") == NULL);
    ASSERT_STR_EQ(sget(chains, "2.filter_chain_match.transport_protocol"), "tls");
    ASSERT_STR_EQ(sget(chains, "2.filter_chain_match.application_protocols.0"), "kuma");
    ASSERT_STR_EQ(sget(chains, "2.transport_socket.typed_config.@type"), URL_DOWNSTREAM);
    ASSERT_STR_EQ(sget(l, "listener_filters.0.name"), "envoy.filters.listener.tls_inspector");
    /* outbounds are mTLS in PERMISSIVE too */
    ASSERT_STR_EQ(sget(json_object_get(doc, "cds"), "backend.transport_socket.typed_config.sni"),
                  "backend{mesh=default}");
    ASSERT_INT_EQ(json_object_size(json_object_get(doc, "sds")), 2);
    json_decref(doc);
    case_free(&c);
}

/* ---- what mTLS must not touch ---- */

/* The generated document of <input> with the Mesh replaced by <mesh> (NULL: no Mesh). */
static char *
generate_with_mesh(const char *name, const char *mesh_json)
{
    json_t *input = load_input(name);
    struct mcase c;
    json_t *doc;
    char *text;

    if (mesh_json)
        json_object_set_new(input, "mesh", json_loads(mesh_json, 0, NULL));
    else
        json_object_del(input, "mesh");
    case_from_json(&c, input);
    doc = case_generate(&c);
    text = xg_dump(doc);
    json_decref(doc);
    case_free(&c);
    return text;
}

KM_TEST(xds_mtls_off_changes_nothing)
{
    static const char *const meshes[] = {
        "{\"type\": \"Mesh\", \"name\": \"default\"}",
        ("{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": {\"backends\": [{\"name\": "
         "\"ca-1\", \"type\": \"builtin\"}]}}"),
        ("{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": {\"enabledBackend\": \"\", "
         "\"backends\": [{\"name\": \"ca-1\", \"type\": \"builtin\"}]}}"),
    };
    static const char *const cases[] = {"sidecar_http", "sidecar_tcp", "proxyless_echo",
                                        "mtls_strict"};

    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        char *base = generate_with_mesh(cases[i], NULL);
        ASSERT(strstr(base, "transport_socket") == NULL);
        ASSERT(strstr(base, "secret") == NULL);
        for (size_t m = 0; m < KM_ARRAY_LEN(meshes); m++) {
            char *got = generate_with_mesh(cases[i], meshes[m]);
            if (strcmp(base, got) != 0)
                KM_FAIL_AT("case %s: mesh %s without mTLS changes the output", cases[i],
                           meshes[m]);
            free(got);
        }
        free(base);
    }
}

KM_TEST(xds_mtls_proxyless_clients_get_no_tls)
{
    json_t *input = load_input("proxyless_echo");
    json_t *mtls = load_input("mtls_strict");
    struct mcase c;
    json_t *doc;

    /* the same client in a mesh with mTLS, even with certificates at hand */
    json_object_set(input, "mesh", json_object_get(mtls, "mesh"));
    json_object_set(json_object_get(input, "proxy"), "tls",
                    json_object_get(json_object_get(mtls, "proxy"), "tls"));
    json_decref(mtls);
    case_from_json(&c, input);
    ASSERT(c.proxy.dataplane == NULL && c.nreq > 0);
    doc = case_generate(&c);
    ASSERT(json_object_size(json_object_get(doc, "lds")) > 0);
    ASSERT_INT_EQ(count_key(doc, "transport_socket"), 0);
    ASSERT_INT_EQ(json_object_size(json_object_get(doc, "sds")), 0);
    json_decref(doc);
    case_free(&c);
}

/* Without a certificate (the CA failed) the TLS contexts stay: traffic fails closed. */
KM_TEST(xds_mtls_without_certificate_fails_closed)
{
    struct mcase c;
    json_t *doc;

    case_load(&c, "mtls_strict");
    c.proxy.cert_pem = c.proxy.key_pem = c.proxy.ca_pem = NULL;
    doc = case_generate(&c);
    ASSERT_INT_EQ(json_object_size(json_object_get(doc, "sds")), 0);
    ASSERT(sget(json_object_get(json_object_get(doc, "lds"), "inbound:10.0.0.1:8080"),
                "filter_chains.0.transport_socket.name") != NULL);
    ASSERT(sget(json_object_get(doc, "cds"), "backend.transport_socket.name") != NULL);
    json_decref(doc);
    case_free(&c);

    /* the CA alone: only the CA secret */
    case_load(&c, "mtls_strict");
    c.proxy.cert_pem = NULL;
    doc = case_generate(&c);
    ASSERT_INT_EQ(json_object_size(json_object_get(doc, "sds")), 1);
    ASSERT(json_object_get(json_object_get(doc, "sds"), "mesh_ca:secret:default") != NULL);
    json_decref(doc);
    case_free(&c);
}

/* A Mesh whose mtls is malformed (stored behind the validator's back) is served without mTLS
 * rather than crashing or half-configured. */
KM_TEST(xds_mtls_malformed_mesh_is_ignored)
{
    static const char *const bad[] = {
        "{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": \"yes\"}",
        "{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": {\"enabledBackend\": \"nope\"}}",
        ("{\"type\": \"Mesh\", \"name\": \"default\", \"mtls\": {\"enabledBackend\": \"a\", "
         "\"backends\": [{\"name\": \"a\", \"type\": \"vault\"}]}}"),
    };
    char *base = generate_with_mesh("mtls_strict", NULL);
    for (size_t i = 0; i < KM_ARRAY_LEN(bad); i++) {
        char *got = generate_with_mesh("mtls_strict", bad[i]);
        ASSERT_STR_EQ(got, base);
        free(got);
    }
    free(base);
}

/* ---- every generated resource packs with our .proto subset and decodes back the same ---- */

/* What proto3 does not put on the wire: empty lists and maps, and the RBAC action ALLOW
 * (the enum's zero value). */
static void
drop_empty_arrays(json_t *j)
{
    const char *k;
    json_t *v;
    void *tmp;
    size_t i;

    if (json_is_object(j)) {
        json_object_foreach_safe(j, tmp, k, v) {
            if ((json_is_array(v) && json_array_size(v) == 0) ||
                (strcmp(k, "policies") == 0 && json_is_object(v) && json_object_size(v) == 0) ||
                (strcmp(k, "action") == 0 && json_is_string(v) &&
                 strcmp(json_string_value(v), "ALLOW") == 0))
                json_object_del(j, k);
            else
                drop_empty_arrays(v);
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            drop_empty_arrays(v);
    }
}

KM_TEST(xds_mtls_pack_with_schema)
{
    size_t packed = 0, secrets = 0;

    km_xds_register_types();
    for (size_t i = 0; i < KM_ARRAY_LEN(mtls_cases); i++) {
        struct mcase c;
        struct km_xds_resources res;

        case_load(&c, mtls_cases[i]);
        km_xds_generate(&c.view, &c.proxy, &res);
        for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
            const ProtobufCMessageDescriptor *d = km_xds_type_descriptor(t);
            const char *rname;
            json_t *r;

            json_object_foreach(res.by_type[t], rname, r) {
                uint8_t *buf = NULL, *abuf = NULL;
                size_t len = 0, alen = 0;
                char err[512] = "";
                json_t *back, *norm;

                if (km_pbjson_encode(d, r, &buf, &len, err, sizeof(err)) != 0)
                    KM_FAIL_AT("case %s: %s %s does not fit our schema: %s", mtls_cases[i],
                               km_xds_type_short[t], rname, err);
                if (km_pbjson_encode_any(d, r, &abuf, &alen, err, sizeof(err)) != 0)
                    KM_FAIL_AT("case %s: %s %s as Any: %s", mtls_cases[i],
                               km_xds_type_short[t], rname, err);
                back = km_pbjson_decode(d, buf, len, err, sizeof(err));
                if (back == NULL)
                    KM_FAIL_AT("case %s: %s %s does not decode: %s", mtls_cases[i],
                               km_xds_type_short[t], rname, err);
                norm = json_deep_copy(r);
                drop_empty_arrays(norm);
                if (!json_equal(back, norm)) {
                    char *a = json_dumps(norm, JSON_COMPACT), *b = json_dumps(back, JSON_COMPACT);
                    KM_FAIL_AT("case %s: %s %s changes in a wire round trip:\n  generated: %s\n"
                               "  decoded:   %s", mtls_cases[i], km_xds_type_short[t], rname,
                               a, b);
                }
                json_decref(back);
                json_decref(norm);
                free(buf);
                free(abuf);
                packed++;
                secrets += t == KM_XDS_SECRET;
            }
        }
        km_xds_resources_deinit(&res);
        case_free(&c);
    }
    ASSERT_INT_EQ(secrets, 4);
    ASSERT(packed > 15);
}
