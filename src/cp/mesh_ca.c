/* The CA of a mesh in the store: builtin roots generated once and kept as Secrets, provided
 * roots read from DataSources, and a per-mesh cache of loaded CAs for the DP server. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <km/common/util.h>
#include <km/cp/mesh_ca.h>

#define LOG_MOD "mesh-ca"
#define ORPHAN_S 60

char *
km_mesh_ca_store_fetch(const char *mesh, const char *name, void *ud)
{
    struct km_store *st = ud;
    struct km_resource *r = NULL;
    const json_t *data;
    char *out = NULL;

    if (st == NULL || mesh == NULL || name == NULL)
        return NULL;
    if (km_store_get(st, km_registry_find("Secret"), mesh, name, &r) != 0)
        return NULL;
    data = json_object_get(r->spec, "data");
    if (json_is_string(data))
        out = km_xstrdup(json_string_value(data));
    km_resource_free(r);
    return out;
}

/* Reads Secret <name> and decodes its data into a NUL-terminated PEM (*pem), also giving the
 * stored resource's version and creation time. Returns 0, KM_ENOTFOUND, another store error,
 * or -1 when the data is not base64 of a bounded text. */
static int
secret_read(struct km_store *st, const char *mesh, const char *name, char **pem,
            int64_t *version, int64_t *created_us)
{
    struct km_resource *r = NULL;
    int rc = km_store_get(st, km_registry_find("Secret"), mesh, name, &r);
    const char *data;
    size_t len = 0;
    char *raw;

    *pem = NULL;
    if (rc != 0)
        return rc;
    if (version)
        *version = r->version;
    if (created_us)
        *created_us = r->creation_us;
    data = json_string_value(json_object_get(r->spec, "data"));
    raw = data ? km_base64_decode(data, &len) : NULL;
    km_resource_free(r);
    if (raw == NULL || len == 0 || len > KM_CA_MAX_PEM || memchr(raw, '\0', len) != NULL) {
        free(raw);
        return -1;
    }
    *pem = km_xmalloc(len + 1);
    memcpy(*pem, raw, len);
    (*pem)[len] = '\0';
    free(raw);
    return 0;
}

/* Creates Secret <name> with base64(<pem>). Returns the store's code. */
static int
secret_create(struct km_store *st, const char *mesh, const char *name, const char *pem)
{
    struct km_resource *r = km_resource_new(km_registry_find("Secret"), mesh, name);
    char *b64 = km_base64_encode(pem, strlen(pem));
    int rc;

    if (b64 == NULL) {
        km_resource_free(r);
        return KM_EINVAL;
    }
    json_object_set_new(r->spec, "data", json_string(b64));
    free(b64);
    rc = km_store_create(st, r);
    km_resource_free(r);
    return rc;
}

int
km_mesh_ca_ensure_builtin(struct km_store *st, const char *mesh, const struct km_mesh_mtls *m,
                          int64_t orphan_s, char **cert_pem, char **key_pem, struct km_errs *e)
{
    char field[64], *cname = NULL, *kname = NULL, *cert = NULL, *key = NULL;
    char *gcert = NULL, *gkey = NULL;
    int64_t cver = 0, ccreated = 0;
    int rc, ret = -1;

    *cert_pem = *key_pem = NULL;
    snprintf(field, sizeof(field), "mtls.backends[%zu]", m ? m->backend_index : 0);
    if (st == NULL || mesh == NULL || m == NULL || !m->enabled || m->type != KM_MTLS_BUILTIN) {
        km_errs_add(e, field, "not an enabled builtin backend");
        return -1;
    }
    cname = km_xasprintf(KM_CA_BUILTIN_CERT_FMT, mesh, m->backend);
    kname = km_xasprintf(KM_CA_BUILTIN_KEY_FMT, mesh, m->backend);

    rc = secret_read(st, mesh, cname, &cert, &cver, &ccreated);
    if (rc == KM_ENOTFOUND) {
        struct km_ca_params p = m->ca;
        p.mesh = mesh;
        if (km_ca_generate(&p, &gcert, &gkey, e) != 0)
            goto out;
        rc = secret_create(st, mesh, cname, gcert);
        if (rc == 0) {
            /* ours: the key follows; another instance that lost the race reads both */
            rc = secret_create(st, mesh, kname, gkey);
            if (rc != 0 && rc != KM_ECONFLICT) {
                km_errs_add(e, field, "cannot store Secret %s: %s", kname, km_strerror(rc));
                goto out;
            }
            km_log_info(LOG_MOD, "mesh %s: generated the root of builtin CA backend %s", mesh,
                        m->backend);
        } else if (rc != KM_ECONFLICT) {
            km_errs_add(e, field, "cannot store Secret %s: %s", cname, km_strerror(rc));
            goto out;
        }
        rc = secret_read(st, mesh, cname, &cert, &cver, &ccreated);
    }
    if (rc != 0) {
        km_errs_add(e, field, "cannot read Secret %s: %s", cname,
                    rc == -1 ? "data is not a base64 PEM" : km_strerror(rc));
        goto out;
    }
    rc = secret_read(st, mesh, kname, &key, NULL, NULL);
    if (rc == KM_ENOTFOUND) {
        int64_t age_s = (km_now_us() - ccreated) / 1000000;
        if (orphan_s >= 0 && age_s >= orphan_s) {
            /* written by an instance that stopped before the key: start over next time */
            km_log_warn(LOG_MOD, "mesh %s: Secret %s has no key Secret %s since %" PRId64
                        "s, deleting it", mesh, cname, kname, age_s);
            km_store_remove(st, km_registry_find("Secret"), mesh, cname, cver);
        }
        km_errs_add(e, field, "Secret %s exists without Secret %s", cname, kname);
        goto out;
    }
    if (rc != 0) {
        km_errs_add(e, field, "cannot read Secret %s: %s", kname,
                    rc == -1 ? "data is not a base64 PEM" : km_strerror(rc));
        goto out;
    }
    *cert_pem = cert;
    *key_pem = key;
    cert = key = NULL;
    ret = 0;
out:
    free(cname);
    free(kname);
    free(cert);
    free(key);
    free(gcert);
    free(gkey);
    return ret;
}

int
km_mesh_ca_load_pems(struct km_store *st, const char *mesh, const struct km_mesh_mtls *m,
                     char **cert_pem, char **key_pem, struct km_errs *e)
{
    if (m != NULL && m->type == KM_MTLS_PROVIDED)
        return km_ca_provided_load(m, mesh, km_mesh_ca_store_fetch, st, cert_pem, key_pem, e);
    return km_mesh_ca_ensure_builtin(st, mesh, m, ORPHAN_S, cert_pem, key_pem, e);
}

/* ---- cache ---- */

struct km_mesh_ca_cache {
    struct km_mesh_ca **v; /* owned */
    size_t n;
    uint64_t next_generation;
};

struct km_mesh_ca_cache *
km_mesh_ca_cache_new(void)
{
    return km_xcalloc(1, sizeof(struct km_mesh_ca_cache));
}

static void
entry_free(struct km_mesh_ca *ca)
{
    if (ca == NULL)
        return;
    free(ca->mesh);
    free(ca->backend);
    free(ca->cert_pem);
    if (ca->key_pem) {
        OPENSSL_cleanse(ca->key_pem, strlen(ca->key_pem));
        free(ca->key_pem);
    }
    km_ca_free(ca->ca);
    free(ca);
}

void
km_mesh_ca_cache_free(struct km_mesh_ca_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        entry_free(c->v[i]);
    free(c->v);
    free(c);
}

static ssize_t
cache_index(const struct km_mesh_ca_cache *c, const char *mesh)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i]->mesh, mesh) == 0)
            return (ssize_t)i;
    return -1;
}

void
km_mesh_ca_cache_drop(struct km_mesh_ca_cache *c, const char *mesh)
{
    ssize_t i;

    if (c == NULL || mesh == NULL || (i = cache_index(c, mesh)) < 0)
        return;
    entry_free(c->v[i]);
    c->v[i] = c->v[--c->n];
}

int
km_mesh_ca_cache_get(struct km_mesh_ca_cache *c, struct km_store *st, const char *mesh,
                     const json_t *mesh_spec, const struct km_mesh_ca **out, struct km_errs *e)
{
    struct km_mesh_mtls m;
    struct km_mesh_ca *cur, *ne;
    char *cert = NULL, *key = NULL;
    struct km_ca *ca;
    ssize_t i;

    *out = NULL;
    if (c == NULL || mesh == NULL)
        return -1;
    i = cache_index(c, mesh);
    cur = i >= 0 ? c->v[i] : NULL;
    if (km_mesh_mtls_parse(mesh_spec, &m, e) != 0) {
        *out = cur;
        return -1;
    }
    if (!m.enabled) {
        km_mesh_ca_cache_drop(c, mesh);
        return 0;
    }
    if (km_mesh_ca_load_pems(st, mesh, &m, &cert, &key, e) != 0) {
        *out = cur;
        return -1;
    }
    if (cur && cur->type == m.type && strcmp(cur->backend, m.backend) == 0 &&
        strcmp(cur->cert_pem, cert) == 0 && strcmp(cur->key_pem, key) == 0) {
        free(cert);
        OPENSSL_cleanse(key, strlen(key));
        free(key);
        *out = cur;
        return 0;
    }
    ca = km_ca_load(cert, key, e);
    if (ca == NULL) {
        free(cert);
        OPENSSL_cleanse(key, strlen(key));
        free(key);
        *out = cur;
        return -1;
    }
    ne = km_xcalloc(1, sizeof(*ne));
    ne->mesh = km_xstrdup(mesh);
    ne->backend = km_xstrdup(m.backend);
    ne->type = m.type;
    ne->cert_pem = cert;
    ne->key_pem = key;
    ne->ca = ca;
    ne->generation = ++c->next_generation;
    if (cur) {
        entry_free(cur);
        c->v[i] = ne;
    } else {
        c->v = km_xrealloc(c->v, (c->n + 1) * sizeof(*c->v));
        c->v[c->n++] = ne;
    }
    km_log_info(LOG_MOD, "mesh %s: loaded CA of %s backend %s", mesh,
                m.type == KM_MTLS_BUILTIN ? "builtin" : "provided", m.backend);
    *out = ne;
    return 0;
}
