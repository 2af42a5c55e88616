/* The mesh certificate authority (Kuma's Mesh.mtls, 2.x): a root per mesh backend (builtin,
 * generated here; provided, loaded from DataSources), workload certificates with SPIFFE and
 * kuma:// URI SANs, rotation points, and the parsing of Mesh.mtls.
 *
 * Pure building blocks over OpenSSL 3: no store, no globals. PEM in, PEM out. Every error is
 * added to a struct km_errs with the field it is about. */
#ifndef KM_CP_CA_H
#define KM_CP_CA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/errs.h>

/* Kuma's defaults (pkg/plugins/ca/builtin, pkg/core/ca/issuer). */
#define KM_CA_ROOT_VALIDITY_S    ((int64_t)10 * 365 * 86400) /* 10 years */
#define KM_CA_LEAF_VALIDITY_S    ((int64_t)86400)            /* dpCert.rotation.expiration */
#define KM_CA_CLOCK_SKEW_S       10                          /* notBefore = now - 10s */
#define KM_CA_RSA_DEFAULT_BITS   2048
#define KM_CA_RSA_MIN_BITS       2048
#define KM_CA_RSA_MAX_BITS       8192
/* Bounds on input sizes: a PEM (cert chain or key) and the SANs of one identity. */
#define KM_CA_MAX_PEM            (256 * 1024)
#define KM_CA_MAX_SANS           256
#define KM_CA_MAX_SAN_LEN        1024

/* Secret names of a builtin backend: "<mesh>.ca-builtin-cert-<backend>",
 * "<mesh>.ca-builtin-key-<backend>". */
#define KM_CA_BUILTIN_CERT_FMT   "%s.ca-builtin-cert-%s"
#define KM_CA_BUILTIN_KEY_FMT    "%s.ca-builtin-key-%s"

enum km_ca_key_type {
    KM_CA_KEY_ECDSA_P256 = 0, /* the default */
    KM_CA_KEY_RSA,
};

/* A root CA to generate. */
struct km_ca_params {
    const char *mesh;           /* trust domain: CN and SAN URI spiffe://<mesh> */
    enum km_ca_key_type key_type;
    int rsa_bits;               /* KM_CA_KEY_RSA only; 0 = 2048 */
    int64_t validity_s;         /* 0 = 10 years */
};

/* Generates a self-signed mesh root: subject O=Kuma, OU=Mesh, CN=<mesh>; SAN URI
 * spiffe://<mesh>; basicConstraints critical CA:TRUE; keyUsage critical keyCertSign, cRLSign;
 * subject key identifier; notBefore now - 10s; random 128-bit serial; SHA-256 signature.
 * Returns 0 and sets *cert_pem, *key_pem (PKCS#8; caller frees), or -1 with errors. */
int km_ca_generate(const struct km_ca_params *p, char **cert_pem, char **key_pem,
                   struct km_errs *e);

/* One tag of a proxy: every inbound's tags, in any order, duplicates allowed. */
struct km_tag {
    const char *key;
    const char *value;
};

/* Who a workload certificate is for. */
struct km_identity {
    const char *mesh;           /* trust domain */
    const struct km_tag *tags;  /* the kuma.io/service values give the SPIFFE IDs */
    size_t ntags;
    enum km_ca_key_type key_type; /* of the fresh leaf key; ECDSA P-256 by default */
    int rsa_bits;                 /* RSA only; 0 = 2048 */
};

/* The URI SANs of <id>, in certificate order: spiffe://<mesh>/<service> for each distinct
 * kuma.io/service value (sorted), then kuma://<key>/<value> for each distinct tag (sorted by key,
 * then value). Returns the count and a NULL-terminated array in *out (free with
 * km_ca_sans_free), or -1 with errors (no service, empty or oversized values, characters that
 * are not allowed in a URI). */
int km_ca_identity_sans(const struct km_identity *id, char ***out, struct km_errs *e);
void km_ca_sans_free(char **sans);

/* Collects the tags of every inbound of a Dataplane spec (networking.inbound[].tags, or
 * networking.gateway.tags for a gateway) into *tags (caller frees the array only: the strings
 * are borrowed from <dp_spec>). Returns the count. */
size_t km_ca_dataplane_tags(const json_t *dp_spec, struct km_tag **tags);

/* A loaded CA (parsed certificate and key), to issue many certificates without parsing the
 * PEM each time. Not thread safe: one thread at a time per handle. */
struct km_ca;

/* Loads and checks a CA: the first certificate of <cert_pem> must be a CA (basicConstraints
 * CA:TRUE, keyCertSign when keyUsage is present) and match <key_pem>. Further certificates in
 * <cert_pem> (intermediate chain) are appended to each issued certificate. NULL with errors
 * at "cert"/"key". */
struct km_ca *km_ca_load(const char *cert_pem, const char *key_pem, struct km_errs *e);
void km_ca_free(struct km_ca *ca);

/* Issues a workload certificate for <id> with a fresh key: empty subject, the URI SANs of
 * km_ca_identity_sans (critical, as the subject is empty), basicConstraints critical CA:FALSE,
 * keyUsage critical digitalSignature+keyEncipherment+keyAgreement (Kuma's set), EKU
 * serverAuth+clientAuth, authority key identifier, notBefore now - 10s, notAfter
 * now + <validity_s> (0 = 24h), random 128-bit serial, SHA-256 signature. *cert_pem holds
 * the leaf followed by the CA's chain beyond the root (if any). Returns 0 or -1 with errors.
 * An ECDSA leaf costs ~75 us of CPU (bench/ca_bench.c), an RSA-2048 leaf ~100-200 ms (prime
 * generation). */
int km_ca_issue_with(struct km_ca *ca, const struct km_identity *id, int64_t validity_s,
                     char **cert_pem, char **key_pem, struct km_errs *e);

/* km_ca_load + km_ca_issue_with + km_ca_free. */
int km_ca_issue(const char *ca_cert_pem, const char *ca_key_pem, const struct km_identity *id,
                int64_t validity_s, char **cert_pem, char **key_pem, struct km_errs *e);

/* Validity of the first certificate of <cert_pem> in Unix seconds. 0 or -1 when unreadable. */
int km_ca_cert_validity(const char *cert_pem, int64_t *not_before, int64_t *not_after);

/* Kuma's rotation point (pkg/xds/secrets ExpiringSoon): notBefore + 4/5 of the lifetime. */
int64_t km_ca_rotation_time(int64_t not_before, int64_t not_after);

/* True once 4/5 of the certificate's lifetime has passed at <now> (Unix seconds), and for a
 * certificate that cannot be read. */
bool km_ca_rotation_due(const char *cert_pem, int64_t now);

/* ---- Mesh.mtls ---- */

enum km_mtls_backend_type {
    KM_MTLS_BUILTIN = 0,
    KM_MTLS_PROVIDED,
};

enum km_mtls_mode {
    KM_MTLS_STRICT = 0, /* the default */
    KM_MTLS_PERMISSIVE,
};

/* The enabled backend of a Mesh. Strings and JSON are borrowed from the mesh spec. */
struct km_mesh_mtls {
    bool enabled;                 /* enabledBackend set (and found) */
    const char *backend;          /* its name */
    size_t backend_index;         /* in mtls.backends[] */
    enum km_mtls_backend_type type;
    enum km_mtls_mode mode;
    int64_t dp_cert_validity_s;   /* dpCert.rotation.expiration, default 24h */
    bool skip_validation;         /* mtls.skipValidation */
    struct km_ca_params ca;       /* builtin: conf.caCert (RSAbits selects RSA), mesh unset */
    const json_t *cert;           /* provided: conf.cert DataSource */
    const json_t *key;            /* provided: conf.key DataSource */
};

/* Parses spec.mtls of a Mesh (<mesh_spec> is the whole spec object; NULL or without mtls:
 * disabled). Returns 0, or -1 with errors at "mtls.…" paths (unknown enabled backend,
 * unknown type or mode, malformed durations, RSAbits out of range, provided backend without
 * cert/key). */
int km_mesh_mtls_parse(const json_t *mesh_spec, struct km_mesh_mtls *out, struct km_errs *e);

/* Fetches the base64 `data` of Secret <name> in <mesh>: returns a malloc'ed string or NULL
 * when there is no such secret. */
typedef char *(*km_ca_secret_fetch_fn)(const char *mesh, const char *name, void *ud);

/* Loads a Kuma DataSource ({"secret": name} | {"file": path} | {"inline": base64} |
 * {"inlineString": text}) into a NUL-terminated malloc'ed buffer (*out, *len; at most
 * KM_CA_MAX_PEM bytes). <field> names the DataSource in errors. <fetch> may be NULL (then a
 * secret source is an error). Returns 0 or -1 with errors. */
int km_ca_datasource_load(const json_t *ds, const char *field, const char *mesh,
                          km_ca_secret_fetch_fn fetch, void *ud, char **out, size_t *len,
                          struct km_errs *e);

/* Loads the cert and key of a provided backend (<m> from km_mesh_mtls_parse) and checks them
 * as Kuma does (a key pair; each certificate a CA with keyCertSign, no keyAgreement). Errors
 * at "mtls.backends[i].conf.cert" / ".key". Returns 0 and the PEMs (caller frees) or -1. */
int km_ca_provided_load(const struct km_mesh_mtls *m, const char *mesh,
                        km_ca_secret_fetch_fn fetch, void *ud, char **cert_pem, char **key_pem,
                        struct km_errs *e);

/* Base64 (standard alphabet, padded) helpers for Secret data. Caller frees; decode returns
 * NULL on malformed input. */
char *km_base64_encode(const void *data, size_t len);
void *km_base64_decode(const char *s, size_t *len);

#endif
