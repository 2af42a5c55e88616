/* Unit tests for src/cp/mesh_ca.c over the memory store: the builtin root created once as two
 * Secrets and reused, create-if-absent against another instance, a certificate Secret left
 * without its key, provided backends from Secrets, and the per-mesh cache of loaded CAs. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/mesh_ca.h>
#include <km/cp/store.h>

#include "test.h"

static struct km_store *
store_with_mesh(const char *mesh)
{
    struct km_store *s = km_store_memory_new();
    struct km_resource *m = km_resource_new(km_registry_mesh(), "", mesh);
    ASSERT_INT_EQ(km_store_create(s, m), 0);
    km_resource_free(m);
    return s;
}

static json_t *
spec_of(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (j == NULL)
        KM_FAIL_AT("bad test JSON: %s", err.text);
    return j;
}

static void
parse_mtls(const json_t *spec, struct km_mesh_mtls *m)
{
    struct km_errs e;
    km_errs_init(&e);
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, m, &e), 0);
    ASSERT(m->enabled);
    km_errs_deinit(&e);
}

/* The decoded data of Secret <name>, or NULL. */
static char *
secret_pem(struct km_store *s, const char *mesh, const char *name)
{
    char *b64 = km_mesh_ca_store_fetch(mesh, name, s);
    size_t n;
    char *raw, *pem;

    if (b64 == NULL)
        return NULL;
    raw = km_base64_decode(b64, &n);
    free(b64);
    ASSERT(raw != NULL);
    pem = km_xmalloc(n + 1);
    memcpy(pem, raw, n);
    pem[n] = '\0';
    free(raw);
    return pem;
}

static void
put_secret(struct km_store *s, const char *mesh, const char *name, const char *pem)
{
    struct km_resource *r = km_resource_new(km_registry_find("Secret"), mesh, name);
    char *b64 = km_base64_encode(pem, strlen(pem));
    json_object_set_new(r->spec, "data", json_string(b64));
    free(b64);
    ASSERT_INT_EQ(km_store_create(s, r), 0);
    km_resource_free(r);
}

#define BUILTIN_SPEC \
    "{\"mtls\": {\"enabledBackend\": \"ca-1\", \"backends\": [{\"name\": \"ca-1\", " \
    "\"type\": \"builtin\"}]}}"

KM_TEST(mesh_ca_builtin_created_once_then_reused)
{
    struct km_store *s = store_with_mesh("default");
    json_t *spec = spec_of(BUILTIN_SPEC);
    struct km_mesh_mtls m;
    struct km_errs e;
    char *c1, *k1, *c2, *k2, *stored;
    struct km_ca *ca;

    parse_mtls(spec, &m);
    km_errs_init(&e);
    ASSERT(secret_pem(s, "default", "default.ca-builtin-cert-ca-1") == NULL);
    ASSERT_INT_EQ(km_mesh_ca_load_pems(s, "default", &m, &c1, &k1, &e), 0);
    ASSERT_STR_CONTAINS(c1, "BEGIN CERTIFICATE");
    ASSERT_STR_CONTAINS(k1, "PRIVATE KEY");
    /* stored as Kuma does: base64 of the PEM under the backend's secret names */
    stored = secret_pem(s, "default", "default.ca-builtin-cert-ca-1");
    ASSERT(stored != NULL);
    ASSERT_STR_EQ(stored, c1);
    free(stored);
    stored = secret_pem(s, "default", "default.ca-builtin-key-ca-1");
    ASSERT(stored != NULL);
    ASSERT_STR_EQ(stored, k1);
    free(stored);
    /* a usable CA root for the mesh */
    ca = km_ca_load(c1, k1, &e);
    ASSERT(ca != NULL);
    km_ca_free(ca);

    /* the second call reuses them */
    ASSERT_INT_EQ(km_mesh_ca_load_pems(s, "default", &m, &c2, &k2, &e), 0);
    ASSERT_STR_EQ(c2, c1);
    ASSERT_STR_EQ(k2, k1);
    ASSERT_INT_EQ(e.n, 0);
    free(c1);
    free(k1);
    free(c2);
    free(k2);
    km_errs_deinit(&e);
    json_decref(spec);
    km_store_free(s);
}

/* Another kuma-cp on the same database made the root first: its Secrets win. */
KM_TEST(mesh_ca_builtin_uses_the_root_of_another_instance)
{
    struct km_store *s = store_with_mesh("default");
    json_t *spec = spec_of(BUILTIN_SPEC);
    struct km_ca_params p = {.mesh = "default"};
    struct km_mesh_mtls m;
    struct km_errs e;
    char *oc, *ok, *c, *k;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_generate(&p, &oc, &ok, &e), 0);
    put_secret(s, "default", "default.ca-builtin-cert-ca-1", oc);
    put_secret(s, "default", "default.ca-builtin-key-ca-1", ok);
    parse_mtls(spec, &m);
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "default", &m, 60, &c, &k, &e), 0);
    ASSERT_STR_EQ(c, oc);
    ASSERT_STR_EQ(k, ok);
    free(c);
    free(k);
    free(oc);
    free(ok);
    km_errs_deinit(&e);
    json_decref(spec);
    km_store_free(s);
}

/* A certificate Secret without its key: an instance is between its two writes (error, retry
 * later), or died there (deleted after the orphan delay, then made anew). */
KM_TEST(mesh_ca_builtin_certificate_without_key)
{
    struct km_store *s = store_with_mesh("default");
    json_t *spec = spec_of(BUILTIN_SPEC);
    struct km_ca_params p = {.mesh = "default"};
    struct km_mesh_mtls m;
    struct km_errs e;
    char *oc, *ok, *c = NULL, *k = NULL, *msg;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_generate(&p, &oc, &ok, &e), 0);
    put_secret(s, "default", "default.ca-builtin-cert-ca-1", oc);
    parse_mtls(spec, &m);
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "default", &m, 60, &c, &k, &e), -1);
    ASSERT(c == NULL && k == NULL);
    msg = km_errs_join(&e);
    ASSERT_STR_CONTAINS(msg, "mtls.backends[0]");
    ASSERT_STR_CONTAINS(msg, "without Secret default.ca-builtin-key-ca-1");
    free(msg);
    ASSERT(secret_pem(s, "default", "default.ca-builtin-key-ca-1") == NULL);
    /* still there: too recent to be an orphan */
    msg = secret_pem(s, "default", "default.ca-builtin-cert-ca-1");
    ASSERT(msg != NULL);
    free(msg);

    /* with no orphan delay the lone certificate is deleted, the next call starts over */
    km_errs_deinit(&e);
    km_errs_init(&e);
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "default", &m, 0, &c, &k, &e), -1);
    ASSERT(secret_pem(s, "default", "default.ca-builtin-cert-ca-1") == NULL);
    km_errs_deinit(&e);
    km_errs_init(&e);
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "default", &m, 0, &c, &k, &e), 0);
    ASSERT(strcmp(c, oc) != 0);
    free(c);
    free(k);
    free(oc);
    free(ok);
    km_errs_deinit(&e);
    json_decref(spec);
    km_store_free(s);
}

KM_TEST(mesh_ca_builtin_errors_name_the_backend)
{
    struct km_store *s = store_with_mesh("default");
    json_t *spec = spec_of(BUILTIN_SPEC);
    struct km_mesh_mtls m;
    struct km_errs e;
    char *c = NULL, *k = NULL, *msg;

    parse_mtls(spec, &m);
    km_errs_init(&e);
    /* a mesh that does not exist: the store refuses the Secret */
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "nope", &m, 60, &c, &k, &e), -1);
    msg = km_errs_join(&e);
    ASSERT_STR_CONTAINS(msg, "mtls.backends[0]");
    ASSERT_STR_CONTAINS(msg, "nope.ca-builtin-cert-ca-1");
    free(msg);
    km_errs_deinit(&e);

    /* secret data that is not base64 of a PEM */
    km_errs_init(&e);
    {
        struct km_resource *r = km_resource_new(km_registry_find("Secret"), "default",
                                                "default.ca-builtin-cert-ca-1");
        json_object_set_new(r->spec, "data", json_string("!!!"));
        ASSERT_INT_EQ(km_store_create(s, r), 0);
        km_resource_free(r);
    }
    ASSERT_INT_EQ(km_mesh_ca_ensure_builtin(s, "default", &m, 60, &c, &k, &e), -1);
    msg = km_errs_join(&e);
    ASSERT_STR_CONTAINS(msg, "not a base64 PEM");
    free(msg);
    km_errs_deinit(&e);
    json_decref(spec);
    km_store_free(s);
}

KM_TEST(mesh_ca_provided_from_secrets)
{
    struct km_store *s = store_with_mesh("default");
    struct km_ca_params p = {.mesh = "default"};
    json_t *spec = spec_of("{\"mtls\": {\"enabledBackend\": \"own\", \"backends\": [{\"name\": "
                           "\"own\", \"type\": \"provided\", \"conf\": {\"cert\": {\"secret\": "
                           "\"my-cert\"}, \"key\": {\"secret\": \"my-key\"}}}]}}");
    struct km_mesh_mtls m;
    struct km_errs e;
    char *oc, *ok, *c = NULL, *k = NULL, *msg;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_generate(&p, &oc, &ok, &e), 0);
    parse_mtls(spec, &m);
    /* missing secrets: an error on the DataSource field */
    ASSERT_INT_EQ(km_mesh_ca_load_pems(s, "default", &m, &c, &k, &e), -1);
    msg = km_errs_join(&e);
    ASSERT_STR_CONTAINS(msg, "mtls.backends[0].conf.cert");
    free(msg);
    km_errs_deinit(&e);
    km_errs_init(&e);
    put_secret(s, "default", "my-cert", oc);
    put_secret(s, "default", "my-key", ok);
    ASSERT_INT_EQ(km_mesh_ca_load_pems(s, "default", &m, &c, &k, &e), 0);
    ASSERT_STR_CONTAINS(c, "BEGIN CERTIFICATE");
    ASSERT_STR_CONTAINS(k, "PRIVATE KEY");
    /* nothing generated for a provided backend */
    ASSERT(secret_pem(s, "default", "default.ca-builtin-cert-own") == NULL);
    free(c);
    free(k);
    free(oc);
    free(ok);
    km_errs_deinit(&e);
    json_decref(spec);
    km_store_free(s);
}

KM_TEST(mesh_ca_cache_keeps_reloads_and_drops)
{
    struct km_store *s = store_with_mesh("default");
    struct km_mesh_ca_cache *cache = km_mesh_ca_cache_new();
    json_t *spec = spec_of(BUILTIN_SPEC);
    json_t *spec2 = spec_of("{\"mtls\": {\"enabledBackend\": \"ca-2\", \"backends\": [{\"name\": "
                            "\"ca-1\", \"type\": \"builtin\"}, {\"name\": \"ca-2\", \"type\": "
                            "\"builtin\", \"conf\": {\"caCert\": {\"RSAbits\": 2048}}}]}}");
    json_t *off = spec_of("{\"mtls\": {\"backends\": [{\"name\": \"ca-1\", \"type\": "
                          "\"builtin\"}]}}");
    json_t *bad = spec_of("{\"mtls\": {\"enabledBackend\": \"zzz\"}}");
    const struct km_mesh_ca *a = NULL, *b = NULL;
    struct km_errs e;
    uint64_t gen;
    char *cert1;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", spec, &a, &e), 0);
    ASSERT(a != NULL && a->ca != NULL);
    ASSERT_STR_EQ(a->backend, "ca-1");
    ASSERT_INT_EQ(a->type, KM_MTLS_BUILTIN);
    gen = a->generation;
    cert1 = km_xstrdup(a->cert_pem);
    /* same spec, same Secrets: the same entry */
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", spec, &b, &e), 0);
    ASSERT(b == a);
    ASSERT(b->generation == gen);
    /* a malformed spec keeps what was loaded */
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", bad, &b, &e), -1);
    ASSERT(b == a);
    km_errs_deinit(&e);
    km_errs_init(&e);
    /* switching the backend: another root, a new generation */
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", spec2, &b, &e), 0);
    ASSERT(b != NULL);
    ASSERT_STR_EQ(b->backend, "ca-2");
    ASSERT(b->generation != gen);
    ASSERT(strcmp(b->cert_pem, cert1) != 0);
    /* disabled: nothing, and the entry is gone */
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", off, &b, &e), 0);
    ASSERT(b == NULL);
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", NULL, &b, &e), 0);
    ASSERT(b == NULL);
    /* back to ca-1: its Secrets are still in the store, the same root */
    ASSERT_INT_EQ(km_mesh_ca_cache_get(cache, s, "default", spec, &b, &e), 0);
    ASSERT_STR_EQ(b->cert_pem, cert1);
    ASSERT(b->generation != gen);
    km_mesh_ca_cache_drop(cache, "default");
    km_mesh_ca_cache_drop(cache, "other");
    km_mesh_ca_cache_drop(NULL, "default");
    ASSERT_INT_EQ(e.n, 0);
    free(cert1);
    km_errs_deinit(&e);
    json_decref(spec);
    json_decref(spec2);
    json_decref(off);
    json_decref(bad);
    km_mesh_ca_cache_free(cache);
    km_mesh_ca_cache_free(NULL);
    km_store_free(s);
}
