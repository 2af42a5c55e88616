/* Self-signed server certificates with OpenSSL 3. */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include <km/common/tlsgen.h>
#include <km/common/util.h>

static char *
bio_take(BIO *b)
{
    char *data;
    long n = BIO_get_mem_data(b, &data);
    return km_xstrndup(data, n > 0 ? (size_t)n : 0);
}

static int
add_ext(X509 *cert, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

int
km_tls_selfsigned(const char *const *dns, size_t ndns, int days, char **cert_pem, char **key_pem,
                  char *err, size_t errlen)
{
    int ret = -1;
    X509 *cert = NULL;
    BIO *cb = NULL, *kb = NULL;
    struct km_sbuf san;
    km_sbuf_init(&san);
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key)
        goto fail;
    cert = X509_new();
    if (!cert)
        goto fail;
    X509_set_version(cert, 2);
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        goto fail;
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (!bn)
        goto fail;
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"kuma-c", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)(ndns ? dns[0] : "localhost"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    for (size_t i = 0; i < ndns; i++)
        km_sbuf_printf(&san, "DNS:%s,", dns[i]);
    km_sbuf_puts(&san, "IP:127.0.0.1");
    if (add_ext(cert, NID_subject_alt_name, san.ptr) || add_ext(cert, NID_basic_constraints,
                                                                "critical,CA:FALSE") ||
        add_ext(cert, NID_key_usage, "critical,digitalSignature,keyEncipherment") ||
        add_ext(cert, NID_ext_key_usage, "serverAuth"))
        goto fail;
    if (!X509_sign(cert, key, EVP_sha256()))
        goto fail;
    cb = BIO_new(BIO_s_mem());
    kb = BIO_new(BIO_s_mem());
    if (!cb || !kb || !PEM_write_bio_X509(cb, cert) ||
        !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL))
        goto fail;
    *cert_pem = bio_take(cb);
    *key_pem = bio_take(kb);
    ret = 0;
    goto out;
fail:
    snprintf(err, errlen, "cannot generate a self-signed certificate: %s",
             ERR_reason_error_string(ERR_get_error()) ? ERR_reason_error_string(ERR_get_error())
                                                      : "OpenSSL error");
out:
    km_sbuf_deinit(&san);
    BIO_free(cb);
    BIO_free(kb);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ret;
}
