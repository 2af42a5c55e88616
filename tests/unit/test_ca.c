/* The mesh CA: roots, workload certificates checked with OpenSSL's verifier, rotation,
 * provided backends, Mesh.mtls parsing, and errors naming their field. */
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/cp/ca.h>

#include "test.h"

static X509 *
pem_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    ASSERT(x != NULL);
    return x;
}

static EVP_PKEY *
pem_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    ASSERT(k != NULL);
    return k;
}

/* URI SANs of <x> joined with " ". Caller frees. */
static char *
uri_sans(X509 *x, int *crit)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, crit, NULL);
    struct km_sbuf b;

    km_sbuf_init(&b);
    km_sbuf_puts(&b, "");
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_URI)
            km_sbuf_printf(&b, "%s%.*s", b.len ? " " : "", g->d.uniformResourceIdentifier->length,
                           (const char *)g->d.uniformResourceIdentifier->data);
    }
    GENERAL_NAMES_free(gens);
    return km_sbuf_take(&b);
}

/* OpenSSL's chain verification of <leaf> against the single root <ca> for <purpose>. */
static int
verify(X509 *ca, X509 *leaf, int purpose)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int ok;

    X509_STORE_add_cert(st, ca);
    X509_STORE_CTX_init(ctx, st, leaf, NULL);
    X509_STORE_CTX_set_purpose(ctx, purpose);
    ok = X509_verify_cert(ctx);
    if (ok != 1 && getenv("KM_TEST_VERBOSE"))
        fprintf(stderr, "verify: %s\n",
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

static void
gen_root(enum km_ca_key_type kt, int bits, char **cert, char **key)
{
    struct km_ca_params p = {.mesh = "default", .key_type = kt, .rsa_bits = bits};
    struct km_errs e;

    km_errs_init(&e);
    if (km_ca_generate(&p, cert, key, &e) != 0) {
        char *j = km_errs_join(&e);
        KM_FAIL_AT("generate: %s", j);
    }
    km_errs_deinit(&e);
}

static const struct km_tag backend_tags[] = {
    {"kuma.io/service", "backend"}, {"version", "v1"},          {"kuma.io/protocol", "http"},
    {"kuma.io/service", "backend-api"}, {"version", "v1"},      {"kuma.io/service", "backend"},
};

static char *
errs_text(struct km_errs *e)
{
    char *j = km_errs_join(e);
    km_errs_deinit(e);
    km_errs_init(e);
    return j;
}

KM_TEST(ca_root_ecdsa_is_a_kuma_root)
{
    char *cert, *key, *sans;
    int crit = -1;
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cert, &key);
    X509 *x = pem_cert(cert);
    EVP_PKEY *k = pem_key(key);

    ASSERT_INT_EQ(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
    ASSERT_INT_EQ(X509_check_private_key(x, k), 1);
    char *subj = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    ASSERT_STR_EQ(subj, "/O=Kuma/OU=Mesh/CN=default");
    OPENSSL_free(subj);
    ASSERT(X509_get_extension_flags(x) & EXFLAG_CA);
    ASSERT(X509_get_extension_flags(x) & EXFLAG_SS);
    ASSERT_INT_EQ(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    ASSERT(X509_get0_subject_key_id(x) != NULL);
    sans = uri_sans(x, &crit);
    ASSERT_STR_EQ(sans, "spiffe://default");
    /* basic constraints and key usage are critical */
    ASSERT_INT_EQ(X509_EXTENSION_get_critical(
                      X509_get_ext(x, X509_get_ext_by_NID(x, NID_basic_constraints, -1))),
                  1);
    ASSERT_INT_EQ(X509_EXTENSION_get_critical(
                      X509_get_ext(x, X509_get_ext_by_NID(x, NID_key_usage, -1))),
                  1);
    int64_t nb, na, now = (int64_t)time(NULL);
    ASSERT_INT_EQ(km_ca_cert_validity(cert, &nb, &na), 0);
    ASSERT(nb <= now - 9 && nb >= now - 12);
    ASSERT(na >= now + KM_CA_ROOT_VALIDITY_S - 5 && na <= now + KM_CA_ROOT_VALIDITY_S + 5);
    free(sans);
    free(cert);
    free(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

KM_TEST(ca_issue_verifies_and_has_kuma_sans)
{
    char *cacert, *cakey, *cert = NULL, *key = NULL, *sans;
    struct km_errs e;
    struct km_identity id = {.mesh = "default", .tags = backend_tags,
                             .ntags = sizeof(backend_tags) / sizeof(backend_tags[0])};
    int crit = -1;

    km_errs_init(&e);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cacert, &cakey);
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &cert, &key, &e), 0);
    ASSERT(!km_errs_any(&e));
    X509 *ca = pem_cert(cacert), *x = pem_cert(cert);
    EVP_PKEY *k = pem_key(key);

    ASSERT_INT_EQ(verify(ca, x, X509_PURPOSE_SSL_SERVER), 1);
    ASSERT_INT_EQ(verify(ca, x, X509_PURPOSE_SSL_CLIENT), 1);
    ASSERT_INT_EQ(X509_check_private_key(x, k), 1);
    ASSERT_INT_EQ(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
    /* the hand-written P-256 encodings are byte-identical to OpenSSL's encoders */
    BIO *kb = BIO_new(BIO_s_mem());
    ASSERT(PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL) == 1);
    char *kdata;
    long klen = BIO_get_mem_data(kb, &kdata);
    ASSERT_INT_EQ(klen, (long)strlen(key));
    ASSERT(memcmp(kdata, key, (size_t)klen) == 0);
    BIO_free(kb);
    unsigned char *d1 = NULL, *d2 = NULL;
    int l1 = i2d_PUBKEY(k, &d1), l2 = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &d2);
    ASSERT(l1 == 91 && l1 == l2 && memcmp(d1, d2, (size_t)l1) == 0);
    OPENSSL_free(d1);
    OPENSSL_free(d2);
    /* empty subject, SANs sorted and deduplicated, critical */
    ASSERT_INT_EQ(X509_NAME_entry_count(X509_get_subject_name(x)), 0);
    sans = uri_sans(x, &crit);
    ASSERT_STR_EQ(sans, "spiffe://default/backend spiffe://default/backend-api "
                        "kuma://kuma.io/protocol/http kuma://kuma.io/service/backend "
                        "kuma://kuma.io/service/backend-api kuma://version/v1");
    ASSERT_INT_EQ(crit, 1);
    /* key usage, EKU, not a CA, issuer = CA subject, AKI = CA SKI */
    ASSERT_INT_EQ(X509_get_key_usage(x),
                  KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT | KU_KEY_AGREEMENT);
    ASSERT_INT_EQ(X509_get_extended_key_usage(x), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    ASSERT(!(X509_get_extension_flags(x) & EXFLAG_CA));
    ASSERT_INT_EQ(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca)), 0);
    ASSERT_INT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x),
                                        X509_get0_subject_key_id(ca)),
                  0);
    /* validity: now - 10s .. now + 24h; 128-bit serial */
    int64_t nb, na, now = (int64_t)time(NULL);
    ASSERT_INT_EQ(km_ca_cert_validity(cert, &nb, &na), 0);
    ASSERT(nb <= now - 9 && nb >= now - 12);
    ASSERT(na >= now + 86400 - 5 && na <= now + 86400 + 5);
    BIGNUM *sn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    ASSERT(!BN_is_zero(sn) && !BN_is_negative(sn) && BN_num_bits(sn) <= 128);
    BN_free(sn);

    /* two issues differ in key and serial */
    char *cert2, *key2;
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 3600, &cert2, &key2, &e), 0);
    ASSERT(strcmp(cert, cert2) != 0 && strcmp(key, key2) != 0);
    ASSERT_INT_EQ(km_ca_cert_validity(cert2, &nb, &na), 0);
    ASSERT(na - nb == 3600 + KM_CA_CLOCK_SKEW_S);

    /* a certificate from another root does not verify */
    char *other, *otherkey;
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &other, &otherkey);
    X509 *o = pem_cert(other);
    ASSERT(verify(o, x, X509_PURPOSE_SSL_SERVER) != 1);

    X509_free(o);
    free(other);
    free(otherkey);
    free(cert2);
    free(key2);
    free(sans);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(k);
    free(cacert);
    free(cakey);
    free(cert);
    free(key);
    km_errs_deinit(&e);
}

KM_TEST(ca_rsa_root_and_rsa_leaf)
{
    char *cacert, *cakey, *cert, *key;
    struct km_errs e;
    struct km_tag t = {"kuma.io/service", "web"};
    struct km_identity id = {.mesh = "default", .tags = &t, .ntags = 1,
                             .key_type = KM_CA_KEY_RSA};

    km_errs_init(&e);
    gen_root(KM_CA_KEY_RSA, 3072, &cacert, &cakey);
    X509 *ca = pem_cert(cacert);
    EVP_PKEY *cak = pem_key(cakey);
    ASSERT_INT_EQ(EVP_PKEY_get_base_id(cak), EVP_PKEY_RSA);
    ASSERT_INT_EQ(EVP_PKEY_get_bits(cak), 3072);
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &cert, &key, &e), 0);
    X509 *x = pem_cert(cert);
    EVP_PKEY *k = pem_key(key);
    ASSERT_INT_EQ(EVP_PKEY_get_base_id(k), EVP_PKEY_RSA);
    ASSERT_INT_EQ(EVP_PKEY_get_bits(k), 2048);
    ASSERT_INT_EQ(verify(ca, x, X509_PURPOSE_SSL_CLIENT), 1);
    ASSERT_INT_EQ(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
    char *sans = uri_sans(x, NULL);
    ASSERT_STR_EQ(sans, "spiffe://default/web kuma://kuma.io/service/web");
    free(sans);
    /* an ECDSA leaf from the RSA root verifies too */
    id.key_type = KM_CA_KEY_ECDSA_P256;
    char *c2, *k2;
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &c2, &k2, &e), 0);
    X509 *x2 = pem_cert(c2);
    ASSERT_INT_EQ(verify(ca, x2, X509_PURPOSE_SSL_SERVER), 1);
    X509_free(x2);
    free(c2);
    free(k2);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
    free(cacert);
    free(cakey);
    free(cert);
    free(key);
    km_errs_deinit(&e);
}

KM_TEST(ca_rotation_point_is_four_fifths)
{
    char *cacert, *cakey, *cert, *key;
    struct km_errs e;
    struct km_tag t = {"kuma.io/service", "web"};
    struct km_identity id = {.mesh = "m1", .tags = &t, .ntags = 1};
    int64_t nb, na;

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_rotation_time(1000, 2000), 1800);
    ASSERT_INT_EQ(km_ca_rotation_time(0, 86400), 69120);
    ASSERT_INT_EQ(km_ca_rotation_time(5, 5), 5);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cacert, &cakey);
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 990, &cert, &key, &e), 0);
    ASSERT_INT_EQ(km_ca_cert_validity(cert, &nb, &na), 0);
    ASSERT_INT_EQ(na - nb, 1000);
    ASSERT(!km_ca_rotation_due(cert, nb));
    ASSERT(!km_ca_rotation_due(cert, nb + 799));
    ASSERT(km_ca_rotation_due(cert, nb + 800));
    ASSERT(km_ca_rotation_due(cert, na + 1));
    ASSERT(km_ca_rotation_due("garbage", nb));
    ASSERT_INT_EQ(km_ca_cert_validity("garbage", &nb, &na), -1);
    free(cacert);
    free(cakey);
    free(cert);
    free(key);
    km_errs_deinit(&e);
}

KM_TEST(ca_bad_inputs_name_the_field)
{
    char *cacert, *cakey, *cert = (char *)"x", *key = (char *)"x", *j;
    struct km_errs e;
    struct km_tag notsvc = {"version", "v1"}, bad = {"kuma.io/service", "a b"};
    struct km_identity id = {.mesh = "default", .tags = &notsvc, .ntags = 1};
    struct km_ca_params p = {.mesh = "bad/mesh"};

    km_errs_init(&e);
    ASSERT_INT_EQ(km_ca_generate(&p, &cert, &key, &e), -1);
    ASSERT(cert == NULL && key == NULL);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mesh:");
    free(j);
    p.mesh = "default";
    p.key_type = KM_CA_KEY_RSA;
    p.rsa_bits = 1024;
    ASSERT_INT_EQ(km_ca_generate(&p, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "RSAbits");
    free(j);

    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cacert, &cakey);
    /* no kuma.io/service tag */
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "tags: a \"kuma.io/service\" tag is required");
    free(j);
    /* a value that cannot be in a URI */
    id.tags = &bad;
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "tags[0]:");
    free(j);
    id.tags = backend_tags;
    /* garbage CA */
    ASSERT_INT_EQ(km_ca_issue("not a pem", cakey, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "cert:");
    free(j);
    ASSERT_INT_EQ(km_ca_issue(cacert, "nope", &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "key:");
    free(j);
    /* key of another CA */
    char *c2, *k2;
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &c2, &k2);
    ASSERT_INT_EQ(km_ca_issue(cacert, k2, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "key: does not match the certificate");
    free(j);
    /* a leaf is not a CA */
    char *leaf, *leafkey;
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, 0, &leaf, &leafkey, &e), 0);
    ASSERT_INT_EQ(km_ca_issue(leaf, leafkey, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "cert: basic constraint 'CA' must be set to 'true'");
    free(j);
    /* negative validity */
    ASSERT_INT_EQ(km_ca_issue(cacert, cakey, &id, -5, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "dpCert.rotation.expiration");
    free(j);
    /* an absurdly large PEM is refused, not parsed */
    size_t big = KM_CA_MAX_PEM + 10;
    char *huge = km_xmalloc(big + 1);
    memset(huge, 'A', big);
    huge[big] = '\0';
    ASSERT_INT_EQ(km_ca_issue(huge, cakey, &id, 0, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "cert:");
    free(j);
    free(huge);
    free(leaf);
    free(leafkey);
    free(c2);
    free(k2);
    free(cacert);
    free(cakey);
    km_errs_deinit(&e);
}

KM_TEST(ca_identity_sans_limits)
{
    struct km_errs e;
    struct km_tag *many = km_xcalloc(KM_CA_MAX_SANS + 1, sizeof(*many));
    struct km_identity id = {.mesh = "default", .tags = many, .ntags = KM_CA_MAX_SANS + 1};
    char **sans = NULL, *j;

    km_errs_init(&e);
    for (size_t i = 0; i <= KM_CA_MAX_SANS; i++)
        many[i] = (struct km_tag){"kuma.io/service", "s"};
    ASSERT_INT_EQ(km_ca_identity_sans(&id, &sans, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "tags: too many tags");
    free(j);
    id.ntags = KM_CA_MAX_SANS;
    ASSERT_INT_EQ(km_ca_identity_sans(&id, &sans, &e), 2);
    ASSERT_STR_EQ(sans[0], "spiffe://default/s");
    ASSERT_STR_EQ(sans[1], "kuma://kuma.io/service/s");
    ASSERT(sans[2] == NULL);
    km_ca_sans_free(sans);
    free(many);
    km_errs_deinit(&e);
}

KM_TEST(ca_dataplane_tags_from_inbounds_or_gateway)
{
    json_error_t je;
    json_t *dp = json_loads("{\"networking\":{\"address\":\"10.0.0.1\",\"inbound\":["
                            "{\"port\":1,\"tags\":{\"kuma.io/service\":\"a\",\"v\":\"1\"}},"
                            "{\"port\":2,\"tags\":{\"kuma.io/service\":\"b\",\"n\":5}}]}}",
                            0, &je);
    json_t *gw = json_loads(
        "{\"networking\":{\"gateway\":{\"tags\":{\"kuma.io/service\":\"gw\"}}}}", 0, &je);
    struct km_tag *tags;
    size_t n = km_ca_dataplane_tags(dp, &tags);

    ASSERT_INT_EQ(n, 3);
    ASSERT_STR_EQ(tags[0].key, "kuma.io/service");
    ASSERT_STR_EQ(tags[2].value, "b");
    free(tags);
    n = km_ca_dataplane_tags(gw, &tags);
    ASSERT_INT_EQ(n, 1);
    ASSERT_STR_EQ(tags[0].value, "gw");
    free(tags);
    n = km_ca_dataplane_tags(NULL, &tags);
    ASSERT_INT_EQ(n, 0);
    free(tags);
    json_decref(dp);
    json_decref(gw);
}

static json_t *
load(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (j == NULL)
        KM_FAIL_AT("json: %s", je.text);
    return j;
}

KM_TEST(ca_mesh_mtls_parse)
{
    struct km_mesh_mtls m;
    struct km_errs e;
    json_t *spec;
    char *j;

    km_errs_init(&e);
    /* no mtls / no enabled backend: disabled */
    spec = load("{}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT(!m.enabled);
    json_decref(spec);
    spec = load("{\"mtls\":{\"backends\":[{\"name\":\"ca-1\",\"type\":\"builtin\"}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT(!m.enabled);
    json_decref(spec);

    /* builtin defaults */
    spec = load("{\"mtls\":{\"enabledBackend\":\"ca-1\",\"backends\":[{\"name\":\"x\","
                "\"type\":\"provided\"},{\"name\":\"ca-1\",\"type\":\"builtin\"}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT(m.enabled);
    ASSERT_STR_EQ(m.backend, "ca-1");
    ASSERT_INT_EQ(m.backend_index, 1);
    ASSERT_INT_EQ(m.type, KM_MTLS_BUILTIN);
    ASSERT_INT_EQ(m.mode, KM_MTLS_STRICT);
    ASSERT_INT_EQ(m.dp_cert_validity_s, 86400);
    ASSERT_INT_EQ(m.ca.key_type, KM_CA_KEY_ECDSA_P256);
    ASSERT_INT_EQ(m.ca.validity_s, KM_CA_ROOT_VALIDITY_S);
    json_decref(spec);

    /* everything set */
    spec = load("{\"mtls\":{\"enabledBackend\":\"ca-1\",\"skipValidation\":true,\"backends\":["
                "{\"name\":\"ca-1\",\"type\":\"builtin\",\"mode\":\"PERMISSIVE\","
                "\"dpCert\":{\"rotation\":{\"expiration\":\"1d\"}},"
                "\"conf\":{\"caCert\":{\"RSAbits\":4096,\"expiration\":\"2y\"}}}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT_INT_EQ(m.mode, KM_MTLS_PERMISSIVE);
    ASSERT(m.skip_validation);
    ASSERT_INT_EQ(m.dp_cert_validity_s, 86400);
    ASSERT_INT_EQ(m.ca.key_type, KM_CA_KEY_RSA);
    ASSERT_INT_EQ(m.ca.rsa_bits, 4096);
    ASSERT_INT_EQ(m.ca.validity_s, 2 * 365 * 86400);
    json_decref(spec);

    /* errors name their field */
    spec = load("{\"mtls\":{\"enabledBackend\":\"nope\",\"backends\":[{\"name\":\"ca-1\","
                "\"type\":\"builtin\"}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.enabledBackend: has to be set to one of the backends");
    free(j);
    json_decref(spec);
    spec = load("{\"mtls\":{\"enabledBackend\":\"ca-1\",\"backends\":[{\"name\":\"ca-1\","
                "\"type\":\"vault\",\"mode\":\"LAX\",\"dpCert\":{\"rotation\":{\"expiration\":"
                "\"soon\"}}}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), -1);
    ASSERT(!m.enabled);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].type: unknown backend type");
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].mode: should be one of [STRICT PERMISSIVE]");
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].dpCert.rotation.expiration:");
    free(j);
    json_decref(spec);
    spec = load("{\"mtls\":{\"enabledBackend\":\"ca-1\",\"backends\":[{\"name\":\"ca-1\","
                "\"type\":\"builtin\",\"conf\":{\"caCert\":{\"RSAbits\":512,"
                "\"expiration\":\"-1h\"}}}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.caCert.RSAbits:");
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.caCert.expiration:");
    free(j);
    json_decref(spec);
    spec = load("{\"mtls\":{\"enabledBackend\":\"p\",\"backends\":[{\"name\":\"p\","
                "\"type\":\"provided\",\"conf\":{\"cert\":{\"file\":\"/x\"}}}]}}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.key: has to be defined");
    free(j);
    json_decref(spec);
    spec = load("{\"mtls\":\"on\"}");
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls: must be an object");
    free(j);
    json_decref(spec);
    km_errs_deinit(&e);
}

/* Secret store for the provided-backend tests: name -> base64 data. */
static char *
fetch_secret(const char *mesh, const char *name, void *ud)
{
    json_t *secrets = ud;
    const char *v = json_string_value(json_object_get(secrets, name));
    ASSERT_STR_EQ(mesh, "default");
    return v ? km_xstrdup(v) : NULL;
}

KM_TEST(ca_provided_backend_from_inline_secret_and_file)
{
    char *cacert, *cakey, *cert, *key, *b64c, *b64k, *j;
    char path[] = "/tmp/km-ca-test-XXXXXX";
    struct km_mesh_mtls m;
    struct km_errs e;
    json_t *spec, *secrets;
    int fd;

    km_errs_init(&e);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cacert, &cakey);
    b64c = km_base64_encode(cacert, strlen(cacert));
    b64k = km_base64_encode(cakey, strlen(cakey));
    fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT(write(fd, cakey, strlen(cakey)) == (ssize_t)strlen(cakey));
    close(fd);

    /* cert inline (base64), key from a file */
    spec = json_pack("{s:{s:s, s:[{s:s, s:s, s:{s:{s:s}, s:{s:s}}}]}}", "mtls", "enabledBackend",
                     "p", "backends", "name", "p", "type", "provided", "conf", "cert", "inline",
                     b64c, "key", "file", path);
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT_INT_EQ(m.type, KM_MTLS_PROVIDED);
    ASSERT_INT_EQ(km_ca_provided_load(&m, "default", NULL, NULL, &cert, &key, &e), 0);
    ASSERT_STR_EQ(cert, cacert);
    ASSERT_STR_EQ(key, cakey);
    free(cert);
    free(key);
    json_decref(spec);

    /* both from secrets; inlineString works too */
    secrets = json_pack("{s:s, s:s}", "ca-cert", b64c, "ca-key", b64k);
    spec = json_pack("{s:{s:s, s:[{s:s, s:s, s:{s:{s:s}, s:{s:s}}}]}}", "mtls", "enabledBackend",
                     "p", "backends", "name", "p", "type", "provided", "conf", "cert", "secret",
                     "ca-cert", "key", "inlineString", cakey);
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT_INT_EQ(km_ca_provided_load(&m, "default", fetch_secret, secrets, &cert, &key, &e), 0);
    ASSERT_STR_EQ(cert, cacert);
    ASSERT_STR_EQ(key, cakey);
    /* and the loaded pair issues certificates */
    struct km_tag t = {"kuma.io/service", "web"};
    struct km_identity id = {.mesh = "default", .tags = &t, .ntags = 1};
    char *leaf, *leafkey;
    ASSERT_INT_EQ(km_ca_issue(cert, key, &id, 0, &leaf, &leafkey, &e), 0);
    free(cert);
    free(key);
    json_decref(spec);

    /* a leaf given as the CA: Kuma's X509-SVID checks, at cert[0] */
    char *lb64 = km_base64_encode(leaf, strlen(leaf));
    spec = json_pack("{s:{s:s, s:[{s:s, s:s, s:{s:{s:s}, s:{s:s}}}]}}", "mtls", "enabledBackend",
                     "p", "backends", "name", "p", "type", "provided", "conf", "cert", "inline",
                     lb64, "key", "inlineString", leafkey);
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT_INT_EQ(km_ca_provided_load(&m, "default", NULL, NULL, &cert, &key, &e), -1);
    ASSERT(cert == NULL && key == NULL);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.cert[0]: basic constraint 'CA' must be set");
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.cert[0]: key usage extension 'keyCertSign'");
    ASSERT_STR_CONTAINS(j, "'keyAgreement' must NOT be set");
    free(j);
    json_decref(spec);

    /* cert and key that do not match */
    spec = json_pack("{s:{s:s, s:[{s:s, s:s, s:{s:{s:s}, s:{s:s}}}]}}", "mtls", "enabledBackend",
                     "p", "backends", "name", "p", "type", "provided", "conf", "cert", "inline",
                     b64c, "key", "inlineString", leafkey);
    ASSERT_INT_EQ(km_mesh_mtls_parse(spec, &m, &e), 0);
    ASSERT_INT_EQ(km_ca_provided_load(&m, "default", NULL, NULL, &cert, &key, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "mtls.backends[0].conf.cert: not a valid TLS key pair");
    free(j);
    json_decref(spec);

    /* DataSource errors */
    json_t *ds = load("{}");
    size_t n;
    char *out;
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.cert", "default", NULL, NULL, &out, &n, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.cert: data source has to be chosen. Available sources: secret, "
                           "file, inline");
    free(j);
    json_decref(ds);
    ds = load("{\"secret\":\"\"}");
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.cert", "default", NULL, NULL, &out, &n, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.cert.secret: cannot be empty");
    free(j);
    json_decref(ds);
    ds = load("{\"secret\":\"missing\"}");
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.cert", "default", fetch_secret, secrets, &out,
                                        &n, &e),
                  -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.cert.secret: secret \"missing\" not found");
    free(j);
    json_decref(ds);
    ds = load("{\"inline\":\"not*base64\"}");
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.cert", "default", NULL, NULL, &out, &n, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.cert.inline: is not valid base64");
    free(j);
    json_decref(ds);
    ds = load("{\"file\":\"/nonexistent/km\"}");
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.key", "default", NULL, NULL, &out, &n, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.key.file: could not read \"/nonexistent/km\"");
    free(j);
    json_decref(ds);
    ds = load("{\"file\":\"/a\",\"inline\":\"QQ==\"}");
    ASSERT_INT_EQ(km_ca_datasource_load(ds, "conf.key", "default", NULL, NULL, &out, &n, &e), -1);
    j = errs_text(&e);
    ASSERT_STR_CONTAINS(j, "conf.key: only one data source may be set");
    free(j);
    json_decref(ds);

    unlink(path);
    json_decref(secrets);
    free(lb64);
    free(leaf);
    free(leafkey);
    free(b64c);
    free(b64k);
    free(cacert);
    free(cakey);
    km_errs_deinit(&e);
}

KM_TEST(ca_base64_round_trip_and_rejects)
{
    const char *cases[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    size_t n;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *enc = km_base64_encode(cases[i], strlen(cases[i]));
        ASSERT_STR_EQ(enc, want[i]);
        char *dec = km_base64_decode(enc, &n);
        ASSERT(dec != NULL);
        ASSERT_INT_EQ(n, strlen(cases[i]));
        ASSERT(memcmp(dec, cases[i], n) == 0);
        free(enc);
        free(dec);
    }
    ASSERT(km_base64_decode("Zg=", &n) == NULL);
    ASSERT(km_base64_decode("Z===", &n) == NULL);
    ASSERT(km_base64_decode("Zg==Zg==", &n) == NULL);
    ASSERT(km_base64_decode("Zm9v\n", &n) == NULL);
    ASSERT(km_base64_decode("=Zm9", &n) == NULL);
}

KM_TEST(ca_loaded_handle_issues_many)
{
    char *cacert, *cakey;
    struct km_errs e;
    struct km_tag t = {"kuma.io/service", "web"};
    struct km_identity id = {.mesh = "default", .tags = &t, .ntags = 1};

    km_errs_init(&e);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &cacert, &cakey);
    struct km_ca *ca = km_ca_load(cacert, cakey, &e);
    ASSERT(ca != NULL);
    X509 *root = pem_cert(cacert);
    for (int i = 0; i < 20; i++) {
        char *c, *k;
        ASSERT_INT_EQ(km_ca_issue_with(ca, &id, 60, &c, &k, &e), 0);
        X509 *x = pem_cert(c);
        ASSERT_INT_EQ(verify(root, x, X509_PURPOSE_SSL_SERVER), 1);
        /* a self-signed root is not appended to the leaf */
        ASSERT(strstr(strstr(c, "END CERTIFICATE") + 1, "BEGIN CERTIFICATE") == NULL);
        X509_free(x);
        free(c);
        free(k);
    }
    X509_free(root);
    km_ca_free(ca);
    free(cacert);
    free(cakey);
    km_errs_deinit(&e);
}

/* An SSL_CTX presenting <cert>/<key> and requiring a peer certificate from <ca>. */
static SSL_CTX *
tls_ctx(bool server, const char *ca, const char *cert, const char *key)
{
    SSL_CTX *c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    X509 *cx = pem_cert(cert), *cax = pem_cert(ca);
    EVP_PKEY *k = pem_key(key);

    ASSERT(c != NULL);
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    ASSERT_INT_EQ(SSL_CTX_use_certificate(c, cx), 1);
    ASSERT_INT_EQ(SSL_CTX_use_PrivateKey(c, k), 1);
    ASSERT_INT_EQ(X509_STORE_add_cert(SSL_CTX_get_cert_store(c), cax), 1);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    X509_free(cx);
    X509_free(cax);
    EVP_PKEY_free(k);
    return c;
}

/* Runs a TLS 1.3 handshake over a BIO pair; 1 when both sides finish. */
static int
handshake(SSL_CTX *sc, SSL_CTX *cc)
{
    SSL *s = SSL_new(sc), *c = SSL_new(cc);
    BIO *sb, *cb;
    int sdone = 0, cdone = 0;

    BIO_new_bio_pair(&sb, 0, &cb, 0);
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    for (int i = 0; i < 20 && !(sdone && cdone); i++) {
        int rc = SSL_do_handshake(c);
        if (rc == 1)
            cdone = 1;
        else if (SSL_get_error(c, rc) != SSL_ERROR_WANT_READ)
            break;
        rc = SSL_do_handshake(s);
        if (rc == 1)
            sdone = 1;
        else if (SSL_get_error(s, rc) != SSL_ERROR_WANT_READ)
            break;
    }
    /* TLS 1.3: the server checks the client certificate after its own handshake step, so
     * let the client read the server's verdict */
    if (sdone && cdone) {
        char buf[1];
        SSL_write(c, "x", 1);
        if (SSL_read(s, buf, 1) != 1)
            sdone = 0;
    }
    SSL_free(s);
    SSL_free(c);
    ERR_clear_error();
    return sdone && cdone;
}

KM_TEST(ca_issued_certs_do_mutual_tls13)
{
    char *ca, *cakey, *sc, *sk, *cc, *ck, *fca, *fkey, *fc, *fk;
    struct km_errs e;
    struct km_tag st = {"kuma.io/service", "backend"}, ct = {"kuma.io/service", "web"};
    struct km_identity sid = {.mesh = "default", .tags = &st, .ntags = 1};
    struct km_identity cid = {.mesh = "default", .tags = &ct, .ntags = 1};

    km_errs_init(&e);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &ca, &cakey);
    gen_root(KM_CA_KEY_ECDSA_P256, 0, &fca, &fkey);
    ASSERT_INT_EQ(km_ca_issue(ca, cakey, &sid, 0, &sc, &sk, &e), 0);
    ASSERT_INT_EQ(km_ca_issue(ca, cakey, &cid, 0, &cc, &ck, &e), 0);
    ASSERT_INT_EQ(km_ca_issue(fca, fkey, &cid, 0, &fc, &fk, &e), 0);

    SSL_CTX *server = tls_ctx(true, ca, sc, sk), *client = tls_ctx(false, ca, cc, ck);
    SSL_CTX *foreign = tls_ctx(false, ca, fc, fk);
    ASSERT_INT_EQ(handshake(server, client), 1);
    /* a client certificate from another mesh CA is refused */
    ASSERT_INT_EQ(handshake(server, foreign), 0);

    SSL_CTX_free(server);
    SSL_CTX_free(client);
    SSL_CTX_free(foreign);
    free(ca);
    free(cakey);
    free(sc);
    free(sk);
    free(cc);
    free(ck);
    free(fca);
    free(fkey);
    free(fc);
    free(fk);
    km_errs_deinit(&e);
}
