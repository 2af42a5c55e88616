/* The mesh certificate authority with OpenSSL 3: builtin roots, workload certificates,
 * rotation points, provided backends and Mesh.mtls parsing. */
#include <errno.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <km/common/util.h>
#include <km/cp/ca.h>

#define TAG_SERVICE "kuma.io/service"

struct km_ca {
    X509 *cert;              /* the issuing CA */
    EVP_PKEY *key;
    const EVP_MD *md;        /* NULL for keys that sign without a digest (Ed25519) */
    char *chain_pem;         /* appended to each leaf: the issuer unless self-signed, and any
                                further non-self-signed certificates of the CA PEM */
    X509_EXTENSION *ext_bc;  /* prebuilt, copied into each leaf */
    X509_EXTENSION *ext_ku;
    X509_EXTENSION *ext_eku;
    X509_EXTENSION *ext_aki; /* NULL when the CA has no subject key identifier */
    EVP_PKEY_CTX *ec_gen;    /* reused P-256 key generation context */
};

/* ---- small helpers ---- */

/* Adds "<what>: <first OpenSSL error>" at <field> and clears the OpenSSL error queue. */
static void
ssl_err(struct km_errs *e, const char *field, const char *what)
{
    unsigned long code = ERR_get_error();
    char buf[256];

    if (code != 0) {
        ERR_error_string_n(code, buf, sizeof(buf));
        km_errs_add(e, field, "%s: %s", what, buf);
    } else {
        km_errs_add(e, field, "%s", what);
    }
    ERR_clear_error();
}

static char *
bio_take(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    return km_xstrndup(n > 0 ? data : "", n > 0 ? (size_t)n : 0);
}

static BIO *
bio_from_pem(const char *pem)
{
    size_t n = strnlen(pem, KM_CA_MAX_PEM + 1);
    if (n > KM_CA_MAX_PEM)
        return NULL;
    return BIO_new_mem_buf(pem, (int)n);
}

/* A trust domain / mesh name usable in a URI authority. */
static bool
mesh_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* A tag key or value usable in a URI path: printable ASCII without space, '?' and '#'. */
static bool
uri_part_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > KM_CA_MAX_SAN_LEN / 2)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\' || c == '"')
            return false;
    }
    return true;
}

static int
set_random_serial(X509 *x)
{
    unsigned char raw[16];
    BIGNUM *bn;
    int ok;

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    bn = BN_bin2bn(raw, sizeof(raw), NULL);
    if (bn == NULL)
        return -1;
    if (BN_is_zero(bn))
        BN_one(bn);
    ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

/* notBefore = now - skew, notAfter = now + validity. */
static int
set_validity(X509 *x, int64_t validity_s)
{
    time_t now = time(NULL);
    long days = (long)(validity_s / 86400), secs = (long)(validity_s % 86400);

    if (X509_time_adj_ex(X509_getm_notBefore(x), 0, -KM_CA_CLOCK_SKEW_S, &now) == NULL)
        return -1;
    if (X509_time_adj_ex(X509_getm_notAfter(x), (int)days, secs, &now) == NULL)
        return -1;
    return 0;
}

static X509_EXTENSION *
conf_ext(X509 *issuer, X509 *subject, int nid, const char *value)
{
    X509V3_CTX ctx;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, subject, NULL, NULL, 0);
    return X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
}

static int
add_conf_ext(X509 *issuer, X509 *subject, int nid, const char *value)
{
    X509_EXTENSION *ext = conf_ext(issuer, subject, nid, value);
    int ok;

    if (ext == NULL)
        return -1;
    ok = X509_add_ext(subject, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* Adds a subjectAltName extension of URIs. */
static int
add_uri_sans(X509 *x, char *const *uris, size_t n, bool critical)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    int ret = -1;

    if (gens == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();

        if (g == NULL || s == NULL || !ASN1_STRING_set(s, uris[i], (int)strlen(uris[i]))) {
            GENERAL_NAME_free(g);
            ASN1_IA5STRING_free(s);
            goto out;
        }
        GENERAL_NAME_set0_value(g, GEN_URI, s);
        if (!sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            goto out;
        }
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, critical ? 1 : 0, X509V3_ADD_DEFAULT) == 1)
        ret = 0;
out:
    GENERAL_NAMES_free(gens);
    return ret;
}

static EVP_PKEY *
gen_key(enum km_ca_key_type type, int rsa_bits, EVP_PKEY_CTX *ec_ctx)
{
    EVP_PKEY *k = NULL;

    if (type == KM_CA_KEY_RSA)
        return EVP_RSA_gen((unsigned int)(rsa_bits ? rsa_bits : KM_CA_RSA_DEFAULT_BITS));
    if (ec_ctx != NULL)
        return EVP_PKEY_generate(ec_ctx, &k) == 1 ? k : NULL;
    return EVP_EC_gen("P-256");
}

static bool
rsa_bits_ok(int bits)
{
    return bits == 0 || (bits >= KM_CA_RSA_MIN_BITS && bits <= KM_CA_RSA_MAX_BITS);
}

/* The digest to sign with using <key>: SHA-256, or none for keys that do not take one. */
static const EVP_MD *
sign_md(EVP_PKEY *key)
{
    int nid = NID_undef;
    if (EVP_PKEY_get_default_digest_nid(key, &nid) == 2 && nid == NID_undef)
        return NULL;
    return EVP_sha256();
}

static int
write_pems(X509 *cert, EVP_PKEY *key, const char *chain, char **cert_pem, char **key_pem)
{
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
    int ret = -1;

    if (cb == NULL || kb == NULL || !PEM_write_bio_X509(cb, cert) ||
        !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL))
        goto out;
    if (chain && chain[0] && BIO_puts(cb, chain) <= 0)
        goto out;
    *cert_pem = bio_take(cb);
    *key_pem = bio_take(kb);
    ret = 0;
out:
    BIO_free(cb);
    BIO_free(kb);
    return ret;
}

/* OpenSSL 3.0's generic encoders (X509_set_pubkey, PEM_write_bio_PrivateKey) cost ~300 us per
 * P-256 key, four times the rest of an issuance; the two encodings of a P-256 key are fixed
 * layouts, so they are written here from the raw key material (byte-identical to OpenSSL's
 * output: a unit test compares them). */
#define P256_PUB_LEN  65
#define P256_PRIV_LEN 32

static const unsigned char p256_pkcs8_head[] = {
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04,
    0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20};
static const unsigned char p256_pkcs8_mid[] = {0xa1, 0x44, 0x03, 0x42, 0x00};

/* The uncompressed public point and private scalar of a P-256 key. */
static int
p256_raw(EVP_PKEY *key, unsigned char pub[P256_PUB_LEN], unsigned char priv[P256_PRIV_LEN])
{
    BIGNUM *d = NULL;
    size_t n = 0;
    int ok;

    if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, pub, P256_PUB_LEN, &n) !=
            1 ||
        n != P256_PUB_LEN || pub[0] != 0x04)
        return -1;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &d) != 1)
        return -1;
    ok = BN_bn2binpad(d, priv, P256_PRIV_LEN) == P256_PRIV_LEN;
    BN_clear_free(d);
    return ok ? 0 : -1;
}

/* subjectPublicKeyInfo = id-ecPublicKey, prime256v1, <pub>. */
static int
p256_set_pubkey(X509 *x, const unsigned char pub[P256_PUB_LEN])
{
    unsigned char *enc = OPENSSL_malloc(P256_PUB_LEN);

    if (enc == NULL)
        return -1;
    memcpy(enc, pub, P256_PUB_LEN);
    if (X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_X9_62_id_ecPublicKey),
                               V_ASN1_OBJECT, OBJ_nid2obj(NID_X9_62_prime256v1), enc,
                               P256_PUB_LEN) != 1) {
        OPENSSL_free(enc);
        return -1;
    }
    return 0;
}

/* "-----BEGIN PRIVATE KEY-----" PKCS#8 of a P-256 key, base64 in 64-column lines. */
static char *
p256_pkcs8_pem(const unsigned char pub[P256_PUB_LEN], const unsigned char priv[P256_PRIV_LEN])
{
    unsigned char der[sizeof(p256_pkcs8_head) + P256_PRIV_LEN + sizeof(p256_pkcs8_mid) +
                      P256_PUB_LEN];
    unsigned char b64[(sizeof(der) + 2) / 3 * 4 + 1];
    struct km_sbuf b;
    size_t o = 0;
    int n;

    memcpy(der + o, p256_pkcs8_head, sizeof(p256_pkcs8_head));
    o += sizeof(p256_pkcs8_head);
    memcpy(der + o, priv, P256_PRIV_LEN);
    o += P256_PRIV_LEN;
    memcpy(der + o, p256_pkcs8_mid, sizeof(p256_pkcs8_mid));
    o += sizeof(p256_pkcs8_mid);
    memcpy(der + o, pub, P256_PUB_LEN);
    n = EVP_EncodeBlock(b64, der, (int)sizeof(der));
    OPENSSL_cleanse(der, sizeof(der));
    km_sbuf_init(&b);
    km_sbuf_puts(&b, "-----BEGIN PRIVATE KEY-----\n");
    for (int i = 0; i < n; i += 64) {
        km_sbuf_add(&b, (const char *)b64 + i, (size_t)(n - i < 64 ? n - i : 64));
        km_sbuf_puts(&b, "\n");
    }
    km_sbuf_puts(&b, "-----END PRIVATE KEY-----\n");
    OPENSSL_cleanse(b64, sizeof(b64));
    return km_sbuf_take(&b);
}

/* ---- root generation ---- */

int
km_ca_generate(const struct km_ca_params *p, char **cert_pem, char **key_pem, struct km_errs *e)
{
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    X509_NAME *name;
    char *uri = NULL;
    int64_t validity;
    int ret = -1;

    *cert_pem = *key_pem = NULL;
    if (p == NULL || !mesh_name_ok(p->mesh)) {
        km_errs_add(e, "mesh", "must be a non-empty name of letters, digits, '.', '-', '_'");
        return -1;
    }
    if (p->key_type != KM_CA_KEY_ECDSA_P256 && p->key_type != KM_CA_KEY_RSA) {
        km_errs_add(e, "keyType", "unknown key type");
        return -1;
    }
    if (p->key_type == KM_CA_KEY_RSA && !rsa_bits_ok(p->rsa_bits)) {
        km_errs_add(e, "caCert.RSAbits", "must be between %d and %d", KM_CA_RSA_MIN_BITS,
                    KM_CA_RSA_MAX_BITS);
        return -1;
    }
    validity = p->validity_s ? p->validity_s : KM_CA_ROOT_VALIDITY_S;
    if (validity < 0) {
        km_errs_add(e, "caCert.expiration", "must be positive");
        return -1;
    }
    key = gen_key(p->key_type, p->rsa_bits, NULL);
    if (key == NULL) {
        ssl_err(e, "", "could not generate the CA key");
        goto out;
    }
    x = X509_new();
    if (x == NULL || !X509_set_version(x, X509_VERSION_3) || set_random_serial(x) ||
        set_validity(x, validity) || !X509_set_pubkey(x, key))
        goto fail;
    name = X509_get_subject_name(x);
    /* Kuma's subject; V_ASN1_UTF8STRING rather than MBSTRING_* so a long mesh name is not
     * refused by the 64-character limit on common names */
    if (!X509_NAME_add_entry_by_txt(name, "O", V_ASN1_UTF8STRING, (const unsigned char *)"Kuma",
                                    -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "OU", V_ASN1_UTF8STRING,
                                    (const unsigned char *)"Mesh", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", V_ASN1_UTF8STRING,
                                    (const unsigned char *)p->mesh, -1, -1, 0) ||
        !X509_set_issuer_name(x, name))
        goto fail;
    uri = km_xasprintf("spiffe://%s", p->mesh);
    if (add_conf_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") ||
        add_conf_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        add_conf_ext(x, x, NID_subject_key_identifier, "hash") || add_uri_sans(x, &uri, 1, false))
        goto fail;
    if (!X509_sign(x, key, sign_md(key)))
        goto fail;
    if (write_pems(x, key, NULL, cert_pem, key_pem))
        goto fail;
    ret = 0;
    goto out;
fail:
    ssl_err(e, "", "could not build the CA certificate");
out:
    free(uri);
    X509_free(x);
    EVP_PKEY_free(key);
    return ret;
}

/* ---- identities ---- */

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int
cmp_tag(const void *a, const void *b)
{
    const struct km_tag *x = *(const struct km_tag *const *)a;
    const struct km_tag *y = *(const struct km_tag *const *)b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->value, y->value);
}

void
km_ca_sans_free(char **sans)
{
    if (sans == NULL)
        return;
    for (char **p = sans; *p; p++)
        free(*p);
    free(sans);
}

int
km_ca_identity_sans(const struct km_identity *id, char ***out, struct km_errs *e)
{
    const char **svcs = NULL;
    const struct km_tag **tags = NULL;
    size_t nsvc = 0, ntag = 0, n = 0;
    char **sans = NULL;
    int ret = -1;

    *out = NULL;
    if (id == NULL || !mesh_name_ok(id->mesh)) {
        km_errs_add(e, "mesh", "must be a non-empty name of letters, digits, '.', '-', '_'");
        return -1;
    }
    if (id->ntags > KM_CA_MAX_SANS) {
        km_errs_add(e, "tags", "too many tags (%zu, at most %d)", id->ntags, KM_CA_MAX_SANS);
        return -1;
    }
    svcs = km_xcalloc(id->ntags + 1, sizeof(*svcs));
    tags = km_xcalloc(id->ntags + 1, sizeof(*tags));
    for (size_t i = 0; i < id->ntags; i++) {
        const struct km_tag *t = &id->tags[i];
        char field[64];

        snprintf(field, sizeof(field), "tags[%zu]", i);
        if (t->key == NULL || t->value == NULL || !uri_part_ok(t->key) ||
            !uri_part_ok(t->value)) {
            km_errs_add(e, field,
                        "key and value must be non-empty printable ASCII without spaces, '?', "
                        "'#', '\\' or '\"' (at most %d characters)", KM_CA_MAX_SAN_LEN / 2);
            goto out;
        }
        if (strcmp(t->key, TAG_SERVICE) == 0)
            svcs[nsvc++] = t->value;
        tags[ntag++] = t;
    }
    if (nsvc == 0) {
        km_errs_add(e, "tags", "a \"%s\" tag is required for a SPIFFE ID", TAG_SERVICE);
        goto out;
    }
    qsort(svcs, nsvc, sizeof(*svcs), cmp_str);
    qsort(tags, ntag, sizeof(*tags), cmp_tag);
    sans = km_xcalloc(nsvc + ntag + 1, sizeof(*sans));
    for (size_t i = 0; i < nsvc; i++)
        if (i == 0 || strcmp(svcs[i], svcs[i - 1]) != 0)
            sans[n++] = km_xasprintf("spiffe://%s/%s", id->mesh, svcs[i]);
    for (size_t i = 0; i < ntag; i++)
        if (i == 0 || cmp_tag(&tags[i], &tags[i - 1]) != 0)
            sans[n++] = km_xasprintf("kuma://%s/%s", tags[i]->key, tags[i]->value);
    *out = sans;
    ret = (int)n;
out:
    free(svcs);
    free(tags);
    return ret;
}

static void
push_tags(const json_t *tags, struct km_tag **v, size_t *n, size_t *cap)
{
    const char *k;
    json_t *val;

    if (!json_is_object(tags))
        return;
    json_object_foreach ((json_t *)tags, k, val) {
        if (!json_is_string(val))
            continue;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 8;
            *v = km_xrealloc(*v, *cap * sizeof(**v));
        }
        (*v)[*n].key = k;
        (*v)[*n].value = json_string_value(val);
        (*n)++;
    }
}

size_t
km_ca_dataplane_tags(const json_t *dp_spec, struct km_tag **tags)
{
    const json_t *net = json_object_get(dp_spec, "networking");
    const json_t *inbounds = json_object_get(net, "inbound");
    size_t n = 0, cap = 0;

    *tags = NULL;
    for (size_t i = 0; i < json_array_size(inbounds); i++)
        push_tags(json_object_get(json_array_get(inbounds, i), "tags"), tags, &n, &cap);
    if (n == 0)
        push_tags(json_object_get(json_object_get(net, "gateway"), "tags"), tags, &n, &cap);
    return n;
}

/* ---- loaded CA ---- */

static bool
self_signed(X509 *x)
{
    return X509_check_issued(x, x) == X509_V_OK;
}

void
km_ca_free(struct km_ca *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    free(ca->chain_pem);
    X509_EXTENSION_free(ca->ext_bc);
    X509_EXTENSION_free(ca->ext_ku);
    X509_EXTENSION_free(ca->ext_eku);
    X509_EXTENSION_free(ca->ext_aki);
    EVP_PKEY_CTX_free(ca->ec_gen);
    free(ca);
}

/* Reads every certificate of <pem>; NULL when there is none or one is malformed. */
static STACK_OF(X509) *
read_certs(const char *pem)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *b = bio_from_pem(pem);
    X509 *x;

    if (sk == NULL || b == NULL)
        goto fail;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            goto fail;
        }
    }
    /* the loop ends at end of input (PEM_R_NO_START_LINE) or at a malformed block */
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || sk_X509_num(sk) == 0)
        goto fail;
    ERR_clear_error();
    BIO_free(b);
    return sk;
fail:
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    return NULL;
}

static EVP_PKEY *
read_key(const char *pem)
{
    BIO *b = bio_from_pem(pem);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

struct km_ca *
km_ca_load(const char *cert_pem, const char *key_pem, struct km_errs *e)
{
    struct km_ca *ca = km_xcalloc(1, sizeof(*ca));
    STACK_OF(X509) *certs = NULL;
    BIO *chain = NULL;
    uint32_t ku;

    if (cert_pem == NULL || (certs = read_certs(cert_pem)) == NULL) {
        ssl_err(e, "cert", "not a PEM certificate (or larger than 256 KiB)");
        goto fail;
    }
    if (key_pem == NULL || (ca->key = read_key(key_pem)) == NULL) {
        ssl_err(e, "key", "not a PEM private key (or larger than 256 KiB)");
        goto fail;
    }
    ca->cert = sk_X509_value(certs, 0);
    X509_up_ref(ca->cert);
    if (!(X509_get_extension_flags(ca->cert) & EXFLAG_CA)) {
        km_errs_add(e, "cert", "basic constraint 'CA' must be set to 'true'");
        goto fail;
    }
    ku = X509_get_key_usage(ca->cert);
    if (ku != UINT32_MAX && !(ku & KU_KEY_CERT_SIGN)) {
        km_errs_add(e, "cert", "key usage extension 'keyCertSign' must be set");
        goto fail;
    }
    if (X509_check_private_key(ca->cert, ca->key) != 1) {
        ERR_clear_error();
        km_errs_add(e, "key", "does not match the certificate");
        goto fail;
    }
    ca->md = sign_md(ca->key);
    /* the chain sent after each leaf: everything but self-signed roots */
    chain = BIO_new(BIO_s_mem());
    if (chain == NULL)
        goto ssl_fail;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);
        if (!self_signed(c) && !PEM_write_bio_X509(chain, c))
            goto ssl_fail;
    }
    ca->chain_pem = bio_take(chain);
    ca->ext_bc = conf_ext(ca->cert, NULL, NID_basic_constraints, "critical,CA:FALSE");
    ca->ext_ku = conf_ext(ca->cert, NULL, NID_key_usage,
                          "critical,digitalSignature,keyEncipherment,keyAgreement");
    ca->ext_eku = conf_ext(ca->cert, NULL, NID_ext_key_usage, "serverAuth,clientAuth");
    if (ca->ext_bc == NULL || ca->ext_ku == NULL || ca->ext_eku == NULL)
        goto ssl_fail;
    if (X509_get0_subject_key_id(ca->cert) != NULL) {
        ca->ext_aki = conf_ext(ca->cert, NULL, NID_authority_key_identifier, "keyid");
        if (ca->ext_aki == NULL)
            goto ssl_fail;
    }
    ca->ec_gen = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ca->ec_gen == NULL || EVP_PKEY_keygen_init(ca->ec_gen) != 1 ||
        EVP_PKEY_CTX_set_group_name(ca->ec_gen, "P-256") != 1)
        goto ssl_fail;
    BIO_free(chain);
    sk_X509_pop_free(certs, X509_free);
    return ca;
ssl_fail:
    ssl_err(e, "cert", "could not prepare the CA");
fail:
    BIO_free(chain);
    sk_X509_pop_free(certs, X509_free);
    km_ca_free(ca);
    return NULL;
}

int
km_ca_issue_with(struct km_ca *ca, const struct km_identity *id, int64_t validity_s,
                 char **cert_pem, char **key_pem, struct km_errs *e)
{
    unsigned char pub[P256_PUB_LEN], priv[P256_PRIV_LEN];
    char **sans = NULL;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    bool fast = false;
    int n, ret = -1;

    *cert_pem = *key_pem = NULL;
    memset(priv, 0, sizeof(priv));
    if (ca == NULL || id == NULL) {
        km_errs_add(e, "", "no CA or identity");
        return -1;
    }
    if (validity_s < 0) {
        km_errs_add(e, "dpCert.rotation.expiration", "must be positive");
        return -1;
    }
    if (id->key_type != KM_CA_KEY_ECDSA_P256 && id->key_type != KM_CA_KEY_RSA) {
        km_errs_add(e, "keyType", "unknown key type");
        return -1;
    }
    if (id->key_type == KM_CA_KEY_RSA && !rsa_bits_ok(id->rsa_bits)) {
        km_errs_add(e, "rsaBits", "must be between %d and %d", KM_CA_RSA_MIN_BITS,
                    KM_CA_RSA_MAX_BITS);
        return -1;
    }
    n = km_ca_identity_sans(id, &sans, e);
    if (n < 0)
        return -1;
    key = gen_key(id->key_type, id->rsa_bits, ca->ec_gen);
    if (key == NULL)
        goto fail;
    fast = id->key_type == KM_CA_KEY_ECDSA_P256 && p256_raw(key, pub, priv) == 0;
    x = X509_new();
    if (x == NULL || !X509_set_version(x, X509_VERSION_3) || set_random_serial(x) ||
        set_validity(x, validity_s ? validity_s : KM_CA_LEAF_VALIDITY_S) ||
        !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        (fast ? p256_set_pubkey(x, pub) != 0 : !X509_set_pubkey(x, key)))
        goto fail;
    /* the subject stays empty, so the SAN extension is critical (RFC 5280 4.2.1.6) */
    if (!X509_add_ext(x, ca->ext_bc, -1) || !X509_add_ext(x, ca->ext_ku, -1) ||
        !X509_add_ext(x, ca->ext_eku, -1) || (ca->ext_aki && !X509_add_ext(x, ca->ext_aki, -1)) ||
        add_uri_sans(x, sans, (size_t)n, true))
        goto fail;
    if (!X509_sign(x, ca->key, ca->md))
        goto fail;
    if (fast) {
        BIO *cb = BIO_new(BIO_s_mem());
        if (cb == NULL || !PEM_write_bio_X509(cb, x) ||
            (ca->chain_pem[0] && BIO_puts(cb, ca->chain_pem) <= 0)) {
            BIO_free(cb);
            goto fail;
        }
        *cert_pem = bio_take(cb);
        *key_pem = p256_pkcs8_pem(pub, priv);
        BIO_free(cb);
    } else if (write_pems(x, key, ca->chain_pem, cert_pem, key_pem)) {
        goto fail;
    }
    ret = 0;
    goto out;
fail:
    ssl_err(e, "", "could not issue the certificate");
out:
    OPENSSL_cleanse(priv, sizeof(priv));
    km_ca_sans_free(sans);
    X509_free(x);
    EVP_PKEY_free(key);
    return ret;
}

int
km_ca_issue(const char *ca_cert_pem, const char *ca_key_pem, const struct km_identity *id,
            int64_t validity_s, char **cert_pem, char **key_pem, struct km_errs *e)
{
    struct km_ca *ca = km_ca_load(ca_cert_pem, ca_key_pem, e);
    int ret;

    if (ca == NULL) {
        *cert_pem = *key_pem = NULL;
        return -1;
    }
    ret = km_ca_issue_with(ca, id, validity_s, cert_pem, key_pem, e);
    km_ca_free(ca);
    return ret;
}

/* ---- validity and rotation ---- */

static int
asn1_time_unix(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    *out = (int64_t)timegm(&tm);
    return 0;
}

int
km_ca_cert_validity(const char *cert_pem, int64_t *not_before, int64_t *not_after)
{
    BIO *b = cert_pem ? bio_from_pem(cert_pem) : NULL;
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    int ret = -1;

    if (x && asn1_time_unix(X509_get0_notBefore(x), not_before) == 0 &&
        asn1_time_unix(X509_get0_notAfter(x), not_after) == 0)
        ret = 0;
    ERR_clear_error();
    X509_free(x);
    BIO_free(b);
    return ret;
}

int64_t
km_ca_rotation_time(int64_t not_before, int64_t not_after)
{
    int64_t life = not_after > not_before ? not_after - not_before : 0;
    return not_before + life / 5 * 4 + (life % 5) * 4 / 5;
}

bool
km_ca_rotation_due(const char *cert_pem, int64_t now)
{
    int64_t nb, na;

    if (km_ca_cert_validity(cert_pem, &nb, &na) != 0)
        return true;
    return now >= km_ca_rotation_time(nb, na);
}

/* ---- base64 ---- */

char *
km_base64_encode(const void *data, size_t len)
{
    char *out;

    if (len > (size_t)INT_MAX / 4 * 3)
        return NULL;
    out = km_xmalloc(len / 3 * 4 + 5);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static int
b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

void *
km_base64_decode(const char *s, size_t *len)
{
    size_t n = strlen(s), o = 0, pad = 0;
    unsigned char *out;

    if (n % 4 != 0)
        return NULL;
    if (n >= 1 && s[n - 1] == '=')
        pad++;
    if (n >= 2 && s[n - 2] == '=')
        pad++;
    out = km_xmalloc(n / 4 * 3 + 1);
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        bool last = i + 4 == n;

        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)s[i + (size_t)j];
            v[j] = b64_val(c);
            if (v[j] < 0 && !(c == '=' && last && (size_t)j >= 4 - pad))
                goto bad;
            if (v[j] < 0)
                v[j] = 0;
        }
        out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (!(last && pad == 2))
            out[o++] = (unsigned char)((v[1] & 0xf) << 4 | v[2] >> 2);
        if (!(last && pad >= 1))
            out[o++] = (unsigned char)((v[2] & 0x3) << 6 | v[3]);
    }
    out[o] = '\0';
    *len = o;
    return out;
bad:
    free(out);
    return NULL;
}

/* ---- Mesh.mtls ---- */

static bool
parse_duration_field(const json_t *v, const char *path, int64_t *out_s, struct km_errs *e)
{
    int64_t ns;

    if (v == NULL)
        return true;
    if (!json_is_string(v) || !km_duration_parse(json_string_value(v), true, &ns) || ns <= 0) {
        km_errs_add(e, path, "has to be a valid positive duration (for example \"24h\", \"1d\", "
                    "\"10y\")");
        return false;
    }
    *out_s = ns / 1000000000;
    if (*out_s == 0)
        *out_s = 1;
    return true;
}

int
km_mesh_mtls_parse(const json_t *mesh_spec, struct km_mesh_mtls *out, struct km_errs *e)
{
    const json_t *mtls = json_object_get(mesh_spec, "mtls");
    const json_t *backends, *b = NULL, *v, *conf;
    const char *enabled;
    char base[64], path[160];
    size_t before = e->n;

    memset(out, 0, sizeof(*out));
    out->dp_cert_validity_s = KM_CA_LEAF_VALIDITY_S;
    if (mtls == NULL || json_is_null(mtls))
        return 0;
    if (!json_is_object(mtls)) {
        km_errs_add(e, "mtls", "must be an object");
        return -1;
    }
    v = json_object_get(mtls, "skipValidation");
    out->skip_validation = json_is_true(v);
    v = json_object_get(mtls, "enabledBackend");
    if (v != NULL && !json_is_string(v)) {
        km_errs_add(e, "mtls.enabledBackend", "must be a string");
        return -1;
    }
    enabled = v ? json_string_value(v) : NULL;
    if (enabled == NULL || enabled[0] == '\0')
        return 0;
    backends = json_object_get(mtls, "backends");
    for (size_t i = 0; i < json_array_size(backends); i++) {
        const json_t *c = json_array_get(backends, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        if (name && strcmp(name, enabled) == 0) {
            b = c;
            out->backend_index = i;
            break;
        }
    }
    if (b == NULL) {
        km_errs_add(e, "mtls.enabledBackend", "has to be set to one of the backends in the mesh");
        return -1;
    }
    out->enabled = true;
    out->backend = enabled;
    snprintf(base, sizeof(base), "mtls.backends[%zu]", out->backend_index);

    v = json_object_get(b, "type");
    if (json_is_string(v) && strcmp(json_string_value(v), "builtin") == 0) {
        out->type = KM_MTLS_BUILTIN;
    } else if (json_is_string(v) && strcmp(json_string_value(v), "provided") == 0) {
        out->type = KM_MTLS_PROVIDED;
    } else {
        snprintf(path, sizeof(path), "%s.type", base);
        km_errs_add(e, path, "unknown backend type. Available backends: \"builtin\", \"provided\"");
    }

    v = json_object_get(b, "mode");
    if (v == NULL || json_is_null(v) ||
        (json_is_string(v) && strcmp(json_string_value(v), "STRICT") == 0) ||
        (json_is_integer(v) && json_integer_value(v) == 0)) {
        out->mode = KM_MTLS_STRICT;
    } else if ((json_is_string(v) && strcmp(json_string_value(v), "PERMISSIVE") == 0) ||
               (json_is_integer(v) && json_integer_value(v) == 1)) {
        out->mode = KM_MTLS_PERMISSIVE;
    } else {
        snprintf(path, sizeof(path), "%s.mode", base);
        km_errs_add(e, path, "should be one of [STRICT PERMISSIVE]");
    }

    snprintf(path, sizeof(path), "%s.dpCert.rotation.expiration", base);
    parse_duration_field(
        json_object_get(json_object_get(json_object_get(b, "dpCert"), "rotation"), "expiration"),
        path, &out->dp_cert_validity_s, e);

    conf = json_object_get(b, "conf");
    if (conf != NULL && !json_is_null(conf) && !json_is_object(conf)) {
        snprintf(path, sizeof(path), "%s.conf", base);
        km_errs_add(e, path, "must be an object");
        conf = NULL;
    }
    if (out->type == KM_MTLS_BUILTIN) {
        const json_t *cacert = json_object_get(conf, "caCert");
        out->ca.key_type = KM_CA_KEY_ECDSA_P256;
        out->ca.validity_s = KM_CA_ROOT_VALIDITY_S;
        v = json_object_get(cacert, "RSAbits");
        if (v != NULL && !json_is_null(v)) {
            json_int_t bits = json_is_integer(v) ? json_integer_value(v) : -1;
            snprintf(path, sizeof(path), "%s.conf.caCert.RSAbits", base);
            if (bits != 0 && (bits < KM_CA_RSA_MIN_BITS || bits > KM_CA_RSA_MAX_BITS)) {
                km_errs_add(e, path, "must be an integer between %d and %d", KM_CA_RSA_MIN_BITS,
                            KM_CA_RSA_MAX_BITS);
            } else if (bits != 0) {
                out->ca.key_type = KM_CA_KEY_RSA;
                out->ca.rsa_bits = (int)bits;
            }
        }
        snprintf(path, sizeof(path), "%s.conf.caCert.expiration", base);
        parse_duration_field(json_object_get(cacert, "expiration"), path, &out->ca.validity_s, e);
    } else if (out->type == KM_MTLS_PROVIDED) {
        out->cert = json_object_get(conf, "cert");
        out->key = json_object_get(conf, "key");
        if (!json_is_object(out->cert)) {
            snprintf(path, sizeof(path), "%s.conf.cert", base);
            km_errs_add(e, path, "has to be defined");
            out->cert = NULL;
        }
        if (!json_is_object(out->key)) {
            snprintf(path, sizeof(path), "%s.conf.key", base);
            km_errs_add(e, path, "has to be defined");
            out->key = NULL;
        }
    }
    if (e->n > before) {
        out->enabled = false;
        return -1;
    }
    return 0;
}

/* ---- DataSources and provided backends ---- */

int
km_ca_datasource_load(const json_t *ds, const char *field, const char *mesh,
                      km_ca_secret_fetch_fn fetch, void *ud, char **out, size_t *len,
                      struct km_errs *e)
{
    static const char *const keys[] = {"secret", "file", "inline", "inlineString"};
    const char *which = NULL, *val = NULL;
    char path[256];
    char *data = NULL;
    size_t n = 0;

    *out = NULL;
    *len = 0;
    for (size_t i = 0; json_is_object(ds) && i < sizeof(keys) / sizeof(keys[0]); i++) {
        const json_t *v = json_object_get(ds, keys[i]);
        if (v == NULL || json_is_null(v))
            continue;
        snprintf(path, sizeof(path), "%s.%s", field, keys[i]);
        if (which != NULL) {
            km_errs_add(e, field, "only one data source may be set (%s and %s)", which, keys[i]);
            return -1;
        }
        which = keys[i];
        if (!json_is_string(v)) {
            km_errs_add(e, path, "must be a string");
            return -1;
        }
        val = json_string_value(v);
        if (val[0] == '\0') {
            km_errs_add(e, path, "cannot be empty");
            return -1;
        }
    }
    if (which == NULL) {
        km_errs_add(e, field, "data source has to be chosen. Available sources: secret, file, "
                    "inline");
        return -1;
    }
    snprintf(path, sizeof(path), "%s.%s", field, which);
    if (strcmp(which, "inlineString") == 0) {
        n = strlen(val);
        data = km_xstrndup(val, n);
    } else if (strcmp(which, "inline") == 0 || strcmp(which, "secret") == 0) {
        char *b64 = NULL;
        const char *src = val;

        if (strcmp(which, "secret") == 0) {
            if (fetch == NULL || (b64 = fetch(mesh, val, ud)) == NULL) {
                km_errs_add(e, path, "secret \"%s\" not found", val);
                return -1;
            }
            src = b64;
        }
        if (strlen(src) > (size_t)KM_CA_MAX_PEM / 3 * 4 + 4 ||
            (data = km_base64_decode(src, &n)) == NULL) {
            km_errs_add(e, path, "%s", strcmp(which, "secret") == 0
                                           ? "secret data is not valid base64 (or too large)"
                                           : "is not valid base64 (or too large)");
            free(b64);
            return -1;
        }
        free(b64);
    } else {
        data = km_read_file(val, KM_CA_MAX_PEM, &n);
        if (data == NULL) {
            km_errs_add(e, path, "could not read \"%s\": %s", val,
                        errno == EFBIG ? "larger than 256 KiB" : strerror(errno));
            return -1;
        }
    }
    if (n > KM_CA_MAX_PEM || memchr(data, '\0', n) != NULL) {
        km_errs_add(e, path, "must be PEM text of at most 256 KiB");
        free(data);
        return -1;
    }
    *out = data;
    *len = n;
    return 0;
}

/* Kuma's checks of a provided CA (pkg/plugins/ca/provided ca_cert_validator). */
static void
validate_provided(const char *cert_pem, const char *key_pem, const char *conf,
                  struct km_errs *e)
{
    STACK_OF(X509) *certs = read_certs(cert_pem);
    EVP_PKEY *key = read_key(key_pem);
    char path[160];

    snprintf(path, sizeof(path), "%s.cert", conf);
    if (certs == NULL || key == NULL || X509_check_private_key(sk_X509_value(certs, 0), key) != 1) {
        ERR_clear_error();
        km_errs_add(e, path, "not a valid TLS key pair");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        uint32_t ku = X509_get_key_usage(x);

        snprintf(path, sizeof(path), "%s.cert[%d]", conf, i);
        if (ku == UINT32_MAX)
            ku = 0;
        if (!(X509_get_extension_flags(x) & EXFLAG_CA))
            km_errs_add(e, path, "basic constraint 'CA' must be set to 'true' (see X509-SVID: "
                        "4.1. Basic Constraints)");
        if (!(ku & KU_KEY_CERT_SIGN))
            km_errs_add(e, path, "key usage extension 'keyCertSign' must be set (see X509-SVID: "
                        "4.3. Key Usage)");
        if (ku & KU_KEY_AGREEMENT)
            km_errs_add(e, path, "key usage extension 'keyAgreement' must NOT be set (see "
                        "X509-SVID: Appendix A. X.509 Field Reference)");
    }
out:
    ERR_clear_error();
    sk_X509_pop_free(certs, X509_free);
    EVP_PKEY_free(key);
}

int
km_ca_provided_load(const struct km_mesh_mtls *m, const char *mesh, km_ca_secret_fetch_fn fetch,
                    void *ud, char **cert_pem, char **key_pem, struct km_errs *e)
{
    char conf[64], path[96];
    size_t before = e->n, n;

    *cert_pem = *key_pem = NULL;
    snprintf(conf, sizeof(conf), "mtls.backends[%zu].conf", m->backend_index);
    if (!m->enabled || m->type != KM_MTLS_PROVIDED || m->cert == NULL || m->key == NULL) {
        km_errs_add(e, conf, "not an enabled provided backend with cert and key");
        return -1;
    }
    snprintf(path, sizeof(path), "%s.cert", conf);
    km_ca_datasource_load(m->cert, path, mesh, fetch, ud, cert_pem, &n, e);
    snprintf(path, sizeof(path), "%s.key", conf);
    km_ca_datasource_load(m->key, path, mesh, fetch, ud, key_pem, &n, e);
    if (e->n == before)
        validate_provided(*cert_pem, *key_pem, conf, e);
    if (e->n > before) {
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
        return -1;
    }
    return 0;
}
