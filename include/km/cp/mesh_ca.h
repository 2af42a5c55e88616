/* The CA of a mesh in the store (Kuma's CA managers): the builtin backend's root is generated
 * once and kept as the Secrets "<mesh>.ca-builtin-cert-<backend>" and
 * "<mesh>.ca-builtin-key-<backend>" (data: base64 PEM); a provided backend's certificate and
 * key are read from their DataSources. A cache keeps one loaded struct km_ca per mesh so the
 * DP server issues proxy certificates without parsing PEM each time.
 *
 * The cache is not thread safe: one thread (the DP server's loop) owns it. The store calls
 * are the thread-safe store API. */
#ifndef KM_CP_MESH_CA_H
#define KM_CP_MESH_CA_H

#include <stdint.h>

#include <km/common/errs.h>
#include <km/cp/ca.h>
#include <km/cp/store.h>

/* km_ca_secret_fetch_fn over a store (<ud> is the struct km_store *): the `data` of Secret
 * <name> in <mesh>, or NULL. */
char *km_mesh_ca_store_fetch(const char *mesh, const char *name, void *ud);

/* Makes sure the root of the builtin backend <m> of <mesh> exists in <st>: reads both
 * Secrets, and when the certificate is missing generates a root (km_ca_generate with m->ca)
 * and creates the certificate Secret, then the key Secret. Creation is create-if-absent: when
 * another kuma-cp on the same database created the certificate first (KM_ECONFLICT), its
 * Secrets are read instead. A certificate without its key (another instance is writing it,
 * or died between the two writes) is an error for now; after <orphan_s> seconds it is
 * deleted (by version) so the next call starts over. Returns 0 with the PEMs (caller frees),
 * or -1 with errors at "mtls.backends[i]". */
int km_mesh_ca_ensure_builtin(struct km_store *st, const char *mesh,
                              const struct km_mesh_mtls *m, int64_t orphan_s, char **cert_pem,
                              char **key_pem, struct km_errs *e);

/* The PEMs of the enabled backend of <m> (builtin: km_mesh_ca_ensure_builtin with a 60 s
 * orphan delay; provided: km_ca_provided_load with Secrets from <st>). 0 or -1 with errors. */
int km_mesh_ca_load_pems(struct km_store *st, const char *mesh, const struct km_mesh_mtls *m,
                         char **cert_pem, char **key_pem, struct km_errs *e);

/* A loaded mesh CA, owned by the cache. */
struct km_mesh_ca {
    char *mesh;                 /* owned */
    char *backend;              /* owned: the enabled backend's name */
    enum km_mtls_backend_type type;
    char *cert_pem;             /* owned: the CA certificate(s): what proxies trust */
    char *key_pem;              /* owned */
    struct km_ca *ca;           /* owned: loaded handle */
    uint64_t generation;        /* unique per load: a proxy certificate issued under another
                                   generation must be re-issued */
};

struct km_mesh_ca_cache;
struct km_mesh_ca_cache *km_mesh_ca_cache_new(void);
void km_mesh_ca_cache_free(struct km_mesh_ca_cache *c);

/* The CA of <mesh> for its current spec (<mesh_spec>, the Mesh's spec; may be NULL): loads
 * the PEMs (km_mesh_ca_load_pems) and keeps the cached entry when they are unchanged, else
 * loads them anew with a new generation. Sets *out to NULL and returns 0 when mTLS is
 * disabled (the entry is dropped). Returns -1 with errors when mtls is malformed or the CA
 * cannot be loaded (the previous entry, if any, is kept and returned in *out). */
int km_mesh_ca_cache_get(struct km_mesh_ca_cache *c, struct km_store *st, const char *mesh,
                         const json_t *mesh_spec, const struct km_mesh_ca **out,
                         struct km_errs *e);

/* Drops the entry of <mesh> (the mesh was deleted). */
void km_mesh_ca_cache_drop(struct km_mesh_ca_cache *c, const char *mesh);

#endif
