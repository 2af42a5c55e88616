/* kuma-dp's TLS: SDS secrets, TLS contexts (SSL_CTX per context and snapshot), ClientHello
 * inspection, filter chain matching, and the TLS pipes of the engine (see tls.h). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <km/common/pb.h>
#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/rbac.h>
#include <km/dp/tls.h>

#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"

#define TLS_PATHLEN  512
#define TLS_MAX_PEM  (256u * 1024u)
#define TLS_MAX_SANS 64

typedef Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext pb_common;
typedef Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig pb_sds;
typedef Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext pb_vc;
typedef Envoy__Extensions__TransportSockets__Tls__V3__Secret pb_secret;
typedef Envoy__Config__Core__V3__DataSource pb_ds;

#define URL_DOWNSTREAM "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define URL_UPSTREAM   "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

struct km_dp_tls_session_cache {
    pthread_mutex_t mu;
    SSL_SESSION *sess; /* owned, or NULL */
};

static int tls_ex_index = -1; /* SSL_CTX ex data: the km_dp_tls_ctx */
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_init_once(void)
{
    tls_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static void KM_PRINTF(2, 3)
    pathf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, TLS_PATHLEN, fmt, ap);
    va_end(ap);
}

/* ---- secrets ---- */

/* Inline PEM of a DataSource (inline_bytes or inline_string), NUL terminated; NULL with an
 * error otherwise. */
static char *
ds_pem(const pb_ds *d, const char *path, struct km_errs *errs)
{
    if (!d) {
        km_errs_add(errs, path, "is required");
        return NULL;
    }
    const char *p = NULL;
    size_t n = 0;
    if (d->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES) {
        p = (const char *)d->inline_bytes.data;
        n = d->inline_bytes.len;
    } else if (d->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING) {
        p = d->inline_string;
        n = p ? strlen(p) : 0;
    } else {
        km_errs_add(errs, path, "only inline_bytes and inline_string are supported");
        return NULL;
    }
    if (n == 0 || n > TLS_MAX_PEM || memchr(p, 0, n)) {
        km_errs_add(errs, path, "must be a PEM document of at most %u bytes", TLS_MAX_PEM);
        return NULL;
    }
    char *s = km_xcalloc(n + 1, 1);
    memcpy(s, p, n);
    return s;
}

/* Loads every certificate of a PEM document; NULL when none loads. */
static STACK_OF(X509) *
pem_certs(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    STACK_OF(X509) *sk = sk_X509_new_null();
    X509 *x;
    if (!b || !sk)
        goto fail;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            goto fail;
        }
    ERR_clear_error();
    BIO_free(b);
    if (sk_X509_num(sk) == 0) {
        sk_X509_free(sk);
        return NULL;
    }
    return sk;
fail:
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    ERR_clear_error();
    return NULL;
}

static EVP_PKEY *
pem_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    return k;
}

static int
secret_cmp(const void *a, const void *b)
{
    return strcmp(((const struct km_dp_secret *)a)->name, ((const struct km_dp_secret *)b)->name);
}

void
km_dp_tls_secrets_free(struct km_dp_secret *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].cert_pem);
        if (v[i].key_pem) {
            OPENSSL_cleanse(v[i].key_pem, strlen(v[i].key_pem));
            free(v[i].key_pem);
        }
        free(v[i].ca_pem);
    }
    free(v);
}

const struct km_dp_secret *
km_dp_tls_secret_find(const struct km_dp_secret *v, size_t n, const char *name)
{
    struct km_dp_secret key = {.name = (char *)name};
    return name && n ? bsearch(&key, v, n, sizeof(key), secret_cmp) : NULL;
}

bool
km_dp_tls_secrets_parse(const struct km_dp_xds_set *set, struct km_dp_secret **out, size_t *n,
                        struct km_errs *errs)
{
    size_t nerr0 = errs->n;
    struct km_dp_secret *v = km_xcalloc(set->n + 1, sizeof(*v));
    size_t k = 0;
    char res[TLS_PATHLEN], p[TLS_PATHLEN], err[256];

    for (size_t i = 0; i < set->n; i++) {
        pathf(res, "secret \"%.200s\"", set->v[i].name);
        pb_secret *s = (pb_secret *)km_pb_unpack(
            &envoy__extensions__transport_sockets__tls__v3__secret__descriptor, set->v[i].bytes,
            set->v[i].len, err, sizeof(err));
        if (!s) {
            km_errs_add(errs, res, "cannot decode Secret: %s", err);
            continue;
        }
        struct km_dp_secret *o = &v[k];
        memset(o, 0, sizeof(*o));
        o->name = km_xstrdup(set->v[i].name);
        bool ok = true;
        if (s->type_case == ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE &&
            s->tls_certificate) {
            pathf(p, "%s.tls_certificate.certificate_chain", res);
            o->cert_pem = ds_pem(s->tls_certificate->certificate_chain, p, errs);
            pathf(p, "%s.tls_certificate.private_key", res);
            o->key_pem = ds_pem(s->tls_certificate->private_key, p, errs);
            if (o->cert_pem && o->key_pem) {
                STACK_OF(X509) *sk = pem_certs(o->cert_pem);
                EVP_PKEY *key = pem_key(o->key_pem);
                if (!sk) {
                    pathf(p, "%s.tls_certificate.certificate_chain", res);
                    km_errs_add(errs, p, "no certificate could be loaded from the PEM");
                } else if (!key) {
                    pathf(p, "%s.tls_certificate.private_key", res);
                    km_errs_add(errs, p, "no private key could be loaded from the PEM");
                } else if (X509_check_private_key(sk_X509_value(sk, 0), key) != 1) {
                    pathf(p, "%s.tls_certificate.private_key", res);
                    km_errs_add(errs, p, "does not match the certificate");
                }
                ERR_clear_error();
                sk_X509_pop_free(sk, X509_free);
                EVP_PKEY_free(key);
            }
        } else if (s->type_case ==
                       ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT &&
                   s->validation_context) {
            pathf(p, "%s.validation_context", res);
            if (s->validation_context->n_match_typed_subject_alt_names) {
                pathf(p, "%s.validation_context.match_typed_subject_alt_names", res);
                km_errs_add(errs, p, "is not supported in a Secret (set it on the TLS context)");
                ok = false;
            }
            pathf(p, "%s.validation_context.trusted_ca", res);
            o->ca_pem = ds_pem(s->validation_context->trusted_ca, p, errs);
            if (o->ca_pem) {
                STACK_OF(X509) *sk = pem_certs(o->ca_pem);
                if (!sk)
                    km_errs_add(errs, p, "no certificate could be loaded from the PEM");
                sk_X509_pop_free(sk, X509_free);
            }
        } else {
            km_errs_add(errs, res, "tls_certificate or validation_context is required");
            ok = false;
        }
        (void)ok;
        k++;
        km_pb_free(&s->base);
    }
    qsort(v, k, sizeof(*v), secret_cmp);
    if (errs->n != nerr0) {
        km_dp_tls_secrets_free(v, k);
        *out = NULL;
        *n = 0;
        return false;
    }
    *out = v;
    *n = k;
    return true;
}

/* ---- contexts ---- */

void
km_dp_tls_ctx_free(struct km_dp_tls_ctx *t)
{
    if (!t)
        return;
    free(t->cert_secret);
    free(t->ca_secret);
    for (size_t i = 0; i < t->nsans; i++)
        free(t->sans[i].value);
    free(t->sans);
    for (size_t i = 0; i < t->nalpn; i++)
        free(t->alpn[i]);
    free(t->alpn);
    free(t->sni);
    SSL_CTX_free(t->ssl_ctx);
    if (t->cache) {
        SSL_SESSION_free(t->cache->sess);
        pthread_mutex_destroy(&t->cache->mu);
        free(t->cache);
    }
    free(t);
}

/* An SDS reference: over ADS only. Returns the name or NULL (error added). */
static char *
sds_name(const pb_sds *s, const char *path, struct km_errs *errs)
{
    char p[TLS_PATHLEN];
    if (!s->name || !*s->name) {
        pathf(p, "%s.name", path);
        km_errs_add(errs, p, "is required");
        return NULL;
    }
    if (!s->sds_config || s->sds_config->config_source_specifier_case !=
                              ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS) {
        pathf(p, "%s.sds_config", path);
        km_errs_add(errs, p, "only ads is supported");
        return NULL;
    }
    return km_xstrdup(s->name);
}

static bool
parse_vc(const pb_vc *vc, const char *path, struct km_errs *errs, struct km_dp_tls_ctx *t)
{
    char p[TLS_PATHLEN];
    bool ok = true;
    if (vc->trusted_ca) {
        pathf(p, "%s.trusted_ca", path);
        km_errs_add(errs, p, "is only supported over SDS (validation_context_sds_secret_config)");
        ok = false;
    }
    if (vc->n_match_typed_subject_alt_names > TLS_MAX_SANS) {
        pathf(p, "%s.match_typed_subject_alt_names", path);
        km_errs_add(errs, p, "at most %d matchers", TLS_MAX_SANS);
        return false;
    }
    t->sans = km_xcalloc(vc->n_match_typed_subject_alt_names + 1, sizeof(*t->sans));
    for (size_t i = 0; i < vc->n_match_typed_subject_alt_names; i++) {
        const Envoy__Extensions__TransportSockets__Tls__V3__SubjectAltNameMatcher *m =
            vc->match_typed_subject_alt_names[i];
        pathf(p, "%s.match_typed_subject_alt_names[%zu]", path, i);
        if (m->san_type != ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__URI) {
            char q[TLS_PATHLEN];
            pathf(q, "%s.san_type", p);
            km_errs_add(errs, q, "only URI is supported");
            ok = false;
            continue;
        }
        const Envoy__Type__Matcher__V3__StringMatcher *sm = m->matcher;
        struct km_dp_san_match *o = &t->sans[t->nsans];
        switch (sm ? sm->match_pattern_case : 0) {
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
            o->how = KM_DP_SM_EXACT;
            o->value = km_xstrdup(sm->exact);
            break;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
            o->how = KM_DP_SM_PREFIX;
            o->value = km_xstrdup(sm->prefix);
            break;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
            o->how = KM_DP_SM_SUFFIX;
            o->value = km_xstrdup(sm->suffix);
            break;
        case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
            o->how = KM_DP_SM_CONTAINS;
            o->value = km_xstrdup(sm->contains);
            break;
        default: {
            char q[TLS_PATHLEN];
            pathf(q, "%s.matcher", p);
            km_errs_add(errs, q, "only exact, prefix, suffix and contains are supported");
            ok = false;
            continue;
        }
        }
        if (sm->ignore_case) {
            char q[TLS_PATHLEN];
            pathf(q, "%s.matcher.ignore_case", p);
            km_errs_add(errs, q, "is not supported");
            free(o->value);
            o->value = NULL;
            ok = false;
            continue;
        }
        t->nsans++;
    }
    return ok;
}

static int
tls_version(int v)
{
    switch (v) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_2:
        return TLS1_2_VERSION;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_3:
        return TLS1_3_VERSION;
    default:
        return -1;
    }
}

static bool
parse_common(const pb_common *cc, const char *path, struct km_errs *errs, struct km_dp_tls_ctx *t)
{
    char p[TLS_PATHLEN];
    bool ok = true;
    t->min_version = TLS1_2_VERSION;
    t->max_version = TLS1_3_VERSION;
    if (!cc) {
        km_errs_add(errs, path, "common_tls_context is required");
        return false;
    }
    if (cc->tls_params) {
        const Envoy__Extensions__TransportSockets__Tls__V3__TlsParameters *tp = cc->tls_params;
        if (tp->tls_minimum_protocol_version) {
            int v = tls_version(tp->tls_minimum_protocol_version);
            if (v < 0) {
                pathf(p, "%s.tls_params.tls_minimum_protocol_version", path);
                km_errs_add(errs, p, "only TLSv1_2 and TLSv1_3 are supported");
                ok = false;
            } else {
                t->min_version = v;
            }
        }
        if (tp->tls_maximum_protocol_version) {
            int v = tls_version(tp->tls_maximum_protocol_version);
            if (v < 0) {
                pathf(p, "%s.tls_params.tls_maximum_protocol_version", path);
                km_errs_add(errs, p, "only TLSv1_2 and TLSv1_3 are supported");
                ok = false;
            } else {
                t->max_version = v;
            }
        }
        if (ok && t->min_version > t->max_version) {
            pathf(p, "%s.tls_params", path);
            km_errs_add(errs, p, "the minimum version is above the maximum");
            ok = false;
        }
        if (tp->n_cipher_suites) {
            pathf(p, "%s.tls_params.cipher_suites", path);
            km_errs_add(errs, p, "is not supported (OpenSSL's defaults are used)");
            ok = false;
        }
    }
    if (cc->n_tls_certificates) {
        pathf(p, "%s.tls_certificates", path);
        km_errs_add(errs, p, "is not supported (use tls_certificate_sds_secret_configs)");
        ok = false;
    }
    if (cc->n_tls_certificate_sds_secret_configs != 1) {
        pathf(p, "%s.tls_certificate_sds_secret_configs", path);
        km_errs_add(errs, p, "exactly one certificate is supported");
        ok = false;
    } else {
        pathf(p, "%s.tls_certificate_sds_secret_configs[0]", path);
        t->cert_secret = sds_name(cc->tls_certificate_sds_secret_configs[0], p, errs);
        if (!t->cert_secret)
            ok = false;
    }
    if (cc->n_alpn_protocols > 16) {
        pathf(p, "%s.alpn_protocols", path);
        km_errs_add(errs, p, "at most 16 protocols");
        ok = false;
    } else {
        t->alpn = km_xcalloc(cc->n_alpn_protocols + 1, sizeof(char *));
        for (size_t i = 0; i < cc->n_alpn_protocols; i++) {
            size_t l = strlen(cc->alpn_protocols[i]);
            if (l == 0 || l > 255) {
                pathf(p, "%s.alpn_protocols[%zu]", path, i);
                km_errs_add(errs, p, "must be 1..255 bytes");
                ok = false;
                continue;
            }
            t->alpn[t->nalpn++] = km_xstrdup(cc->alpn_protocols[i]);
        }
    }
    switch (cc->validation_context_type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE__NOT_SET:
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT:
        pathf(p, "%s.validation_context", path);
        if (!parse_vc(cc->validation_context, p, errs, t))
            ok = false;
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_SDS_SECRET_CONFIG:
        pathf(p, "%s.validation_context_sds_secret_config", path);
        t->ca_secret = sds_name(cc->validation_context_sds_secret_config, p, errs);
        if (!t->ca_secret)
            ok = false;
        break;
    default: {
        const Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext__CombinedCertificateValidationContext
            *cv = cc->combined_validation_context;
        pathf(p, "%s.combined_validation_context", path);
        if (!cv || !cv->validation_context_sds_secret_config) {
            char q[TLS_PATHLEN];
            pathf(q, "%s.validation_context_sds_secret_config", p);
            km_errs_add(errs, q, "is required");
            ok = false;
            break;
        }
        char q[TLS_PATHLEN];
        pathf(q, "%s.validation_context_sds_secret_config", p);
        t->ca_secret = sds_name(cv->validation_context_sds_secret_config, q, errs);
        if (!t->ca_secret)
            ok = false;
        if (cv->default_validation_context) {
            pathf(q, "%s.default_validation_context", p);
            if (!parse_vc(cv->default_validation_context, q, errs, t))
                ok = false;
        }
    }
    }
    return ok;
}

struct km_dp_tls_ctx *
km_dp_tls_ctx_parse(const char *name, const char *type_url, const uint8_t *bytes, size_t len,
                    bool upstream, const char *base, struct km_errs *errs)
{
    char p[TLS_PATHLEN], err[256];
    const char *want = upstream ? URL_UPSTREAM : URL_DOWNSTREAM;
    const char *type = type_url ? km_pb_type_name(type_url) : "";
    pathf(p, "%s.typed_config", base);
    if (strcmp(type, want) != 0) {
        km_errs_add(errs, p, "transport socket %.100s (%.150s) is not supported (expected %s)",
                    name ? name : "", *type ? type : "no typed_config", want);
        return NULL;
    }
    struct km_dp_tls_ctx *t = km_xcalloc(1, sizeof(*t));
    t->upstream = upstream;
    bool ok;
    if (upstream) {
        Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *u =
            (Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *)km_pb_unpack(
                &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor,
                bytes, len, err, sizeof(err));
        if (!u) {
            km_errs_add(errs, p, "cannot decode %s: %s", want, err);
            km_dp_tls_ctx_free(t);
            return NULL;
        }
        char q[TLS_PATHLEN];
        pathf(q, "%s.common_tls_context", p);
        ok = parse_common(u->common_tls_context, q, errs, t);
        if (u->sni && *u->sni) {
            if (strlen(u->sni) > 255) {
                pathf(q, "%s.sni", p);
                km_errs_add(errs, q, "must be at most 255 bytes");
                ok = false;
            }
            t->sni = km_xstrdup(u->sni);
        }
        t->cache = km_xcalloc(1, sizeof(*t->cache));
        pthread_mutex_init(&t->cache->mu, NULL);
        km_pb_free(&u->base);
    } else {
        Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *d =
            (Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *)km_pb_unpack(
                &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor,
                bytes, len, err, sizeof(err));
        if (!d) {
            km_errs_add(errs, p, "cannot decode %s: %s", want, err);
            km_dp_tls_ctx_free(t);
            return NULL;
        }
        char q[TLS_PATHLEN];
        pathf(q, "%s.common_tls_context", p);
        ok = parse_common(d->common_tls_context, q, errs, t);
        t->require_client_cert = d->require_client_certificate && d->require_client_certificate->value;
        if (d->require_sni && d->require_sni->value) {
            pathf(q, "%s.require_sni", p);
            km_errs_add(errs, q, "is not supported");
            ok = false;
        }
        km_pb_free(&d->base);
    }
    if (ok && (t->require_client_cert || t->nsans) && !t->ca_secret) {
        km_errs_add(errs, p, "verifying the peer needs a validation context");
        ok = false;
    }
    if (!ok) {
        km_dp_tls_ctx_free(t);
        return NULL;
    }
    return t;
}

/* ---- SSL_CTX ---- */

/* ALPN wire format of <v> into <out> (at least 16 * 256 bytes); returns its length. */
static size_t
alpn_wire(char **v, size_t n, unsigned char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        out[k++] = (unsigned char)l;
        memcpy(out + k, v[i], l);
        k += l;
    }
    return k;
}

/* Server: the first of our protocols the client offers; none in common is fine (no ALPN). */
static int
tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct km_dp_tls_ctx *t = arg;
    (void)ssl;
    for (size_t i = 0; i < t->nalpn; i++) {
        size_t l = strlen(t->alpn[i]);
        for (unsigned int k = 0; k < inlen;) {
            unsigned int pl = in[k];
            if (k + 1 + pl > inlen)
                break;
            if (pl == l && memcmp(in + k + 1, t->alpn[i], l) == 0) {
                *out = in + k + 1;
                *outlen = (unsigned char)pl;
                return SSL_TLSEXT_ERR_OK;
            }
            k += 1 + pl;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Client: keep the newest session of the context for the next connection. */
static int
tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    struct km_dp_tls_ctx *t = SSL_CTX_get_ex_data(ctx, tls_ex_index);
    if (!t || !t->cache)
        return 0;
    pthread_mutex_lock(&t->cache->mu);
    SSL_SESSION_free(t->cache->sess);
    t->cache->sess = sess;
    pthread_mutex_unlock(&t->cache->mu);
    return 1; /* we took the reference */
}

void
km_dp_tls_ctx_bind(struct km_dp_tls_ctx *t, const struct km_dp_secret *secrets, size_t nsecrets)
{
    const struct km_dp_secret *cs = km_dp_tls_secret_find(secrets, nsecrets, t->cert_secret);
    const struct km_dp_secret *ca =
        t->ca_secret ? km_dp_tls_secret_find(secrets, nsecrets, t->ca_secret) : NULL;
    STACK_OF(X509) *chain = NULL, *cas = NULL;
    EVP_PKEY *key = NULL;
    SSL_CTX *ctx = NULL;

    pthread_once(&tls_once, tls_init_once);
    if (!cs || !cs->cert_pem || (t->ca_secret && (!ca || !ca->ca_pem)))
        return; /* not delivered yet */
    chain = pem_certs(cs->cert_pem);
    key = pem_key(cs->key_pem);
    cas = ca ? pem_certs(ca->ca_pem) : NULL;
    if (!chain || !key || (ca && !cas))
        goto fail;
    ctx = SSL_CTX_new(t->upstream ? TLS_client_method() : TLS_server_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, t->min_version);
    SSL_CTX_set_max_proto_version(ctx, t->max_version);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0)) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, key) != 1)
        goto fail;
    for (int i = 1; i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        if (SSL_CTX_add1_chain_cert(ctx, x) != 1)
            goto fail;
    }
    if (cas) {
        X509_STORE *st = SSL_CTX_get_cert_store(ctx);
        for (int i = 0; i < sk_X509_num(cas); i++)
            if (X509_STORE_add_cert(st, sk_X509_value(cas, i)) != 1)
                goto fail;
        int mode = SSL_VERIFY_PEER;
        if (!t->upstream && t->require_client_cert)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        if (!t->upstream) {
            /* the client's certificate must chain to one of these */
            STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
            for (int i = 0; names && i < sk_X509_num(cas); i++) {
                X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(sk_X509_value(cas, i)));
                if (nm && !sk_X509_NAME_push(names, nm))
                    X509_NAME_free(nm);
            }
            if (names)
                SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_ex_data(ctx, tls_ex_index, t);
    if (t->upstream) {
        unsigned char wire[16 * 256];
        size_t wl = alpn_wire(t->alpn, t->nalpn, wire);
        if (wl && SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)wl) != 0)
            goto fail;
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, tls_new_session);
    } else {
        if (t->nalpn)
            SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, t);
        /* stateless tickets; a fixed session id context for resumption */
        SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"kuma-dp", 7);
    }
    t->ssl_ctx = ctx;
    ctx = NULL;
fail:
    if (!t->ssl_ctx)
        km_log_warn("dp", "TLS context (%s, %s): cannot build: %s", t->cert_secret,
                    t->ca_secret ? t->ca_secret : "-", ERR_reason_error_string(ERR_peek_error()));
    ERR_clear_error();
    SSL_CTX_free(ctx);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(cas, X509_free);
    EVP_PKEY_free(key);
}

/* ---- ClientHello ---- */

static uint32_t
rd16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

int
km_dp_tls_parse_client_hello(const uint8_t *buf, size_t len, struct km_dp_client_hello *out)
{
    memset(out, 0, sizeof(*out));
    if (len >= 1 && buf[0] != 0x16)
        return -1;
    if (len >= 2 && buf[1] != 0x03)
        return -1;
    if (len < 5)
        return 0;
    size_t rl = rd16(buf + 3);
    if (rl < 4 || rl > 16384 + 2048)
        return -1;
    if (len < 5 + rl)
        return 0; /* the whole first record; a ClientHello split over records loses SNI/ALPN */
    const uint8_t *p = buf + 5, *end = buf + 5 + rl;
    if (p[0] != 0x01)
        return -1;
    size_t hl = (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    p += 4;
    if (hl < (size_t)(end - p))
        end = p + hl;
    /* version(2) random(32) */
    if (end - p < 34)
        return 1;
    p += 34;
    if (end - p < 1 || end - p < 1 + p[0])
        return 1;
    p += 1 + p[0]; /* session id */
    if (end - p < 2 || (size_t)(end - p) < 2 + rd16(p))
        return 1;
    p += 2 + rd16(p); /* cipher suites */
    if (end - p < 1 || end - p < 1 + p[0])
        return 1;
    p += 1 + p[0]; /* compression */
    if (end - p < 2)
        return 1;
    size_t el = rd16(p);
    p += 2;
    if ((size_t)(end - p) < el)
        return 1;
    end = p + el;
    while (end - p >= 4) {
        uint32_t type = rd16(p), l = rd16(p + 2);
        p += 4;
        if ((size_t)(end - p) < l)
            break;
        const uint8_t *e = p, *ee = p + l;
        if (type == 0 && l >= 2) { /* server_name */
            e += 2;
            while (ee - e >= 3) {
                uint32_t nl = rd16(e + 1);
                if ((size_t)(ee - e - 3) < nl)
                    break;
                if (e[0] == 0 && nl < sizeof(out->sni)) {
                    for (uint32_t i = 0; i < nl; i++) {
                        char c = (char)e[3 + i];
                        out->sni[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
                    }
                    out->sni[nl] = 0;
                    if (memchr(out->sni, 0, nl))
                        out->sni[0] = 0;
                    break;
                }
                e += 3 + nl;
            }
        } else if (type == 16 && l >= 2) { /* ALPN */
            e += 2;
            while (ee - e >= 1 && out->nalpn < 8) {
                uint32_t pl = e[0];
                if ((size_t)(ee - e - 1) < pl)
                    break;
                if (pl > 0 && pl < sizeof(out->alpn[0]) && !memchr(e + 1, 0, pl)) {
                    memcpy(out->alpn[out->nalpn], e + 1, pl);
                    out->alpn[out->nalpn++][pl] = 0;
                }
                e += 1 + pl;
            }
        }
        p += l;
    }
    return 1;
}

/* ---- filter chain match ---- */

bool
km_dp_tls_listener_inspects(const struct km_dp_listener *l)
{
    for (size_t i = 0; i < l->nchains; i++)
        if (l->chains[i].transport_protocol || l->chains[i].nserver_names || l->chains[i].nalpn)
            return true;
    return false;
}

static bool
sni_match(const struct km_dp_chain *ch, const char *sni)
{
    for (size_t i = 0; i < ch->nserver_names; i++) {
        const char *n = ch->server_names[i];
        if (strcmp(n, sni) == 0)
            return true;
        if (n[0] == '*' && n[1] == '.') {
            size_t ls = strlen(sni), ln = strlen(n + 1);
            if (ls > ln && strcmp(sni + ls - ln, n + 1) == 0)
                return true;
        }
    }
    return false;
}

static bool
alpn_match(const struct km_dp_chain *ch, const struct km_dp_client_hello *h)
{
    for (size_t i = 0; i < ch->nalpn; i++)
        for (size_t j = 0; h && j < h->nalpn; j++)
            if (strcmp(ch->alpn[i], h->alpn[j]) == 0)
                return true;
    return false;
}

const struct km_dp_chain *
km_dp_tls_chain_select(const struct km_dp_listener *l, uint16_t port,
                       const struct km_dp_client_hello *hello, bool tls)
{
    size_t n = l->nchains;
    if (n == 0)
        return NULL;
    bool *cand = km_xcalloc(n, sizeof(bool)), *next = km_xcalloc(n, sizeof(bool));
    const struct km_dp_chain *found = NULL;
    const char *tp = tls ? "tls" : "raw_buffer";
    const char *sni = hello ? hello->sni : "";
    bool any;
    /* 1. destination port */
    any = false;
    for (size_t i = 0; i < n; i++)
        any |= (next[i] = l->chains[i].dest_port != 0 && l->chains[i].dest_port == port);
    for (size_t i = 0; i < n; i++)
        cand[i] = any ? next[i] : l->chains[i].dest_port == 0;
    /* 2. server names */
    any = false;
    for (size_t i = 0; i < n; i++)
        any |= (next[i] = cand[i] && *sni && sni_match(&l->chains[i], sni));
    for (size_t i = 0; i < n; i++)
        cand[i] = any ? next[i] : cand[i] && l->chains[i].nserver_names == 0;
    /* 3. transport protocol */
    any = false;
    for (size_t i = 0; i < n; i++)
        any |= (next[i] = cand[i] && l->chains[i].transport_protocol &&
                          strcmp(l->chains[i].transport_protocol, tp) == 0);
    for (size_t i = 0; i < n; i++)
        cand[i] = any ? next[i] : cand[i] && !l->chains[i].transport_protocol;
    /* 4. application protocols */
    any = false;
    for (size_t i = 0; i < n; i++)
        any |= (next[i] = cand[i] && alpn_match(&l->chains[i], hello));
    for (size_t i = 0; i < n; i++)
        cand[i] = any ? next[i] : cand[i] && l->chains[i].nalpn == 0;
    for (size_t i = 0; i < n && !found; i++)
        if (cand[i])
            found = &l->chains[i];
    free(cand);
    free(next);
    return found;
}

/* ---- pipes: inspection, handshake, relay ---- */

enum pipe_state { P_INSPECT = 0, P_CONNECT, P_HANDSHAKE, P_RELAY };

struct pipe_buf {
    uint8_t *b; /* owned, KM_DP_TLS_BUF */
    size_t off, len;
};

struct km_dp_tls_pipe {
    struct km_dp_worker *w;            /* borrowed */
    struct km_dp_pub *pub;             /* ref */
    enum pipe_state st;
    bool upstream;
    size_t lidx;                       /* inbound: listener */
    uint16_t port;
    const struct km_dp_chain *chain;   /* inbound: the chosen chain (borrowed from pub) */
    size_t ci;                         /* upstream: cluster */
    const struct km_dp_tls_ctx *t;     /* borrowed from pub */
    SSL *ssl;                          /* owned */
    int sfd, pfd;                      /* TLS socket, our socketpair end (-1 before) */
    struct km_io *sio, *pio;
    struct km_timer *timer;
    struct pipe_buf s2p, p2s;
    bool s_eof, p_eof, s_shut, p_shut;
    int rd_want, wr_want;              /* KM_IO_* the last blocked SSL_read/SSL_write needs */
    bool peek_wait;                    /* inspect: part of a ClientHello peeked, re-peek on the
                                          timer (the socket stays readable: no busy loop) */
    uint64_t deadline;                 /* inspect: when to give up waiting (loop ms) */
    unsigned sev, pev;                 /* current interest on sfd / pfd */
    unsigned spurious;                 /* wakeups in a row without interest (HUP, ERR) */
    struct km_dp_tls_pipe *prev, *next;
};

static void pipe_update(struct km_dp_tls_pipe *p);

static void
pipe_link(struct km_dp_tls_pipe *p)
{
    struct km_dp_worker *w = p->w;
    p->prev = NULL;
    p->next = w->tls_pipes;
    if (w->tls_pipes)
        w->tls_pipes->prev = p;
    w->tls_pipes = p;
}

static void
pipe_free(struct km_dp_tls_pipe *p)
{
    struct km_dp_worker *w = p->w;
    if (p->prev)
        p->prev->next = p->next;
    else
        w->tls_pipes = p->next;
    if (p->next)
        p->next->prev = p->prev;
    km_io_free(p->sio);
    km_io_free(p->pio);
    km_timer_free(p->timer);
    SSL_free(p->ssl);
    if (p->sfd != -1)
        close(p->sfd);
    if (p->pfd != -1)
        close(p->pfd);
    free(p->s2p.b);
    free(p->p2s.b);
    km__dp_pub_unref(p->pub);
    free(p);
}

void
km__dp_tls_worker_deinit(struct km_dp_worker *w)
{
    while (w->tls_pipes)
        pipe_free(w->tls_pipes);
}

static void
pipe_lstat(struct km_dp_tls_pipe *p, size_t idx)
{
    km_dp_stat_inc(p->pub->lst[p->lidx], p->w->id, idx);
}

static void
pipe_cstat(struct km_dp_tls_pipe *p, size_t idx)
{
    km_dp_stat_inc(p->pub->cst[p->ci], p->w->id, idx);
}

/* The URI SANs of the peer certificate (up to TLS_MAX_SANS, caller frees with free_sans). */
static size_t
peer_uri_sans(SSL *ssl, char **out)
{
    X509 *x = SSL_get1_peer_certificate(ssl);
    size_t n = 0;
    if (!x)
        return 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && n < TLS_MAX_SANS; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_URI)
            continue;
        const ASN1_IA5STRING *s = g->d.uniformResourceIdentifier;
        int l = ASN1_STRING_length(s);
        const unsigned char *d = ASN1_STRING_get0_data(s);
        if (l <= 0 || memchr(d, 0, (size_t)l))
            continue;
        out[n] = km_xcalloc((size_t)l + 1, 1);
        memcpy(out[n++], d, (size_t)l);
    }
    GENERAL_NAMES_free(gens);
    X509_free(x);
    return n;
}

static void
free_sans(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
}

static bool
san_ok(const struct km_dp_tls_ctx *t, char **sans, size_t n)
{
    if (t->nsans == 0)
        return true;
    for (size_t i = 0; i < t->nsans; i++) {
        struct km_dp_principal pr = {.kind = KM_DP_PR_AUTH,
                                     .how = (enum km_dp_str_match)t->sans[i].how,
                                     .value = t->sans[i].value};
        struct km_dp_rbac_policy pol = {.name = "", .principals = &pr, .nprincipals = 1};
        struct km_dp_rbac r = {.rules = {.present = true, .policies = &pol, .npolicies = 1}};
        struct km_dp_rbac_result res;
        km_dp_rbac_check(&r, true, (const char *const *)sans, n, &res);
        if (res.allowed)
            return true;
    }
    return false;
}

/* Hands the plaintext side to the chain's filter; an HTTP connection manager takes <peer>
 * (the verified identity for its HTTP RBAC filter), others free it. Returns false when the
 * pipe is gone. */
static bool
pipe_deliver(struct km_dp_tls_pipe *p, struct km_dp_peer *peer)
{
    int sv[2];
    const unsigned char *proto = NULL;
    unsigned protolen = 0;
    SSL_get0_alpn_selected(p->ssl, &proto, &protolen);
    bool h2 = p->chain->codec == KM_DP_CODEC_HTTP2 ||
              (protolen == 2 && memcmp(proto, "h2", 2) == 0);
    if (p->chain->kind == KM_DP_FILTER_TCP_PROXY || !h2) {
        /* direct: the filter reads and writes through the SSL on the socket itself (no relay
         * hop); HTTP/2 keeps the pipe */
        struct km_dp_worker *w = p->w;
        struct km_dp_pub *pub = km__dp_pub_ref(p->pub);
        const struct km_dp_chain *chain = p->chain;
        size_t lidx = p->lidx;
        int fd = p->sfd;
        SSL *ssl = p->ssl;
        p->sfd = -1;
        p->ssl = NULL;
        km_io_free(p->sio);
        p->sio = NULL;
        pipe_free(p);
        if (chain->kind == KM_DP_FILTER_TCP_PROXY) {
            km__dp_peer_free(peer);
            km__dp_tcp_accept_tls(w, pub, lidx, chain, fd, ssl);
        } else {
            km__dp_http_accept_tls(w, pub, lidx, chain, fd, ssl, peer);
        }
        km__dp_pub_unref(pub);
        return false;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1) {
        km__dp_peer_free(peer);
        pipe_lstat(p, KM_DP_LS_OVERFLOW);
        pipe_free(p);
        return false;
    }
    p->pfd = sv[0];
    p->st = P_RELAY;
    km_timer_stop(p->timer);
    if (p->chain->kind == KM_DP_FILTER_TCP_PROXY) {
        km__dp_peer_free(peer);
        km__dp_tcp_accept(p->w, p->pub, p->lidx, p->chain, sv[1]);
    } else {
        km__dp_http_accept_peer(p->w, p->pub, p->lidx, p->chain, sv[1], peer);
    }
    return true;
}

/* The handshake is done: verify, check RBAC, start relaying. */
static bool
pipe_established(struct km_dp_tls_pipe *p)
{
    char *sans[TLS_MAX_SANS];
    size_t n = peer_uri_sans(p->ssl, sans);
    bool authenticated = SSL_get0_peer_certificate(p->ssl) != NULL &&
                         SSL_get_verify_result(p->ssl) == X509_V_OK;
    bool ok = san_ok(p->t, sans, n);
    if (p->upstream) {
        pipe_cstat(p, KM_DP_CS_SSL_HANDSHAKE);
        if (SSL_session_reused(p->ssl))
            pipe_cstat(p, KM_DP_CS_SSL_REUSED);
        if (!ok) {
            pipe_cstat(p, KM_DP_CS_SSL_FAIL_SAN);
            pipe_cstat(p, KM_DP_CS_CONNECT_FAIL);
        }
        free_sans(sans, n);
        if (!ok) {
            pipe_free(p);
            return false;
        }
        p->st = P_RELAY;
        km_timer_stop(p->timer);
        return true;
    }
    pipe_lstat(p, KM_DP_LS_SSL_HANDSHAKE);
    if (!ok) {
        pipe_lstat(p, KM_DP_LS_SSL_FAIL_SAN);
        free_sans(sans, n);
        pipe_free(p);
        return false;
    }
    if (p->chain->rbac) {
        struct km_dp_rbac_result r;
        struct km_dp_stat_block *rb =
            p->pub->rst[p->pub->hst_off[p->lidx] + (size_t)(p->chain - p->pub->snap->listeners[p->lidx].chains)];
        km_dp_rbac_check(p->chain->rbac, authenticated, (const char *const *)sans, n, &r);
        if (rb) {
            km_dp_stat_inc(rb, p->w->id, r.allowed ? KM_DP_RS_ALLOWED : KM_DP_RS_DENIED);
            if (r.shadow_evaluated)
                km_dp_stat_inc(rb, p->w->id,
                               r.shadow_allowed ? KM_DP_RS_SHADOW_ALLOWED : KM_DP_RS_SHADOW_DENIED);
        }
        if (!r.allowed) {
            km_log_debug("dp", "rbac: denied %s on %s", n ? sans[0] : "(no URI SAN)",
                         p->pub->snap->listeners[p->lidx].name);
            free_sans(sans, n);
            pipe_free(p);
            return false;
        }
    }
    /* HTTP chains check their HTTP RBAC filter per request against this identity (kept
     * for the connection: the filter may come with a later config) */
    struct km_dp_peer *peer = NULL;
    if (p->chain->kind == KM_DP_FILTER_HCM) {
        peer = km_xcalloc(1, sizeof(*peer));
        peer->authenticated = authenticated;
        peer->uri_sans = km_xcalloc(n ? n : 1, sizeof(char *));
        for (size_t i = 0; i < n; i++)
            peer->uri_sans[peer->nsans++] = sans[i]; /* moved */
        n = 0;
    }
    free_sans(sans, n);
    return pipe_deliver(p, peer);
}

/* Counts a failed handshake by its cause. */
static void
pipe_hs_failed(struct km_dp_tls_pipe *p)
{
    long vr = SSL_get_verify_result(p->ssl);
    bool verify = vr != X509_V_OK;
    unsigned long e = ERR_peek_error();
    bool nocert = ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE;
    if (p->upstream) {
        pipe_cstat(p, verify ? KM_DP_CS_SSL_FAIL_VERIFY : KM_DP_CS_SSL_ERROR);
        pipe_cstat(p, KM_DP_CS_CONNECT_FAIL);
    } else {
        pipe_lstat(p, nocert ? KM_DP_LS_SSL_NO_CERT
                             : verify ? KM_DP_LS_SSL_FAIL_VERIFY : KM_DP_LS_SSL_ERROR);
    }
    km_log_debug("dp", "TLS handshake failed: %s (verify: %s)",
                 e ? ERR_reason_error_string(e) : "connection closed",
                 X509_verify_cert_error_string(vr));
    ERR_clear_error();
    pipe_free(p);
}

/* Drives the handshake. Returns false when the pipe is gone. */
static bool
pipe_handshake(struct km_dp_tls_pipe *p)
{
    int r = SSL_do_handshake(p->ssl);
    if (r == 1)
        return pipe_established(p);
    int e = SSL_get_error(p->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        p->rd_want = e == SSL_ERROR_WANT_READ ? KM_IO_READ : KM_IO_WRITE;
        return true;
    }
    pipe_hs_failed(p);
    return false;
}

/* Moves bytes both ways. Returns false when the pipe is gone. */
static bool
pipe_pump(struct km_dp_tls_pipe *p)
{
    bool progress = true;
    for (int rounds = 0; progress && rounds < 16; rounds++) {
        progress = false;
        /* TLS -> plain */
        if (p->s2p.len > 0 && p->pfd != -1) {
            ssize_t n = send(p->pfd, p->s2p.b + p->s2p.off, p->s2p.len, MSG_NOSIGNAL);
            if (n > 0) {
                p->s2p.off += (size_t)n;
                p->s2p.len -= (size_t)n;
                progress = true;
            } else if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                goto dead;
            }
        }
        if (p->s2p.len == 0 && !p->s_eof) {
            ERR_clear_error();
            int n = SSL_read(p->ssl, p->s2p.b, (int)KM_DP_TLS_BUF);
            if (n > 0) {
                p->s2p.off = 0;
                p->s2p.len = (size_t)n;
                p->rd_want = 0;
                progress = true;
            } else {
                int e = SSL_get_error(p->ssl, n);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    p->rd_want = e == SSL_ERROR_WANT_READ ? KM_IO_READ : KM_IO_WRITE;
                } else if (e == SSL_ERROR_ZERO_RETURN) {
                    p->s_eof = true;
                    progress = true;
                } else {
                    goto dead;
                }
            }
        }
        if (p->s_eof && p->s2p.len == 0 && !p->p_shut && p->pfd != -1) {
            shutdown(p->pfd, SHUT_WR);
            p->p_shut = true;
        }
        /* plain -> TLS */
        if (p->p2s.len > 0) {
            ERR_clear_error();
            int n = SSL_write(p->ssl, p->p2s.b + p->p2s.off, (int)p->p2s.len);
            if (n > 0) {
                p->p2s.off += (size_t)n;
                p->p2s.len -= (size_t)n;
                p->wr_want = 0;
                progress = true;
            } else {
                int e = SSL_get_error(p->ssl, n);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    p->wr_want = e == SSL_ERROR_WANT_READ ? KM_IO_READ : KM_IO_WRITE;
                else
                    goto dead;
            }
        }
        if (p->p2s.len == 0 && !p->p_eof && p->pfd != -1) {
            ssize_t n = recv(p->pfd, p->p2s.b, KM_DP_TLS_BUF, 0);
            if (n > 0) {
                p->p2s.off = 0;
                p->p2s.len = (size_t)n;
                progress = true;
            } else if (n == 0) {
                p->p_eof = true;
                progress = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                goto dead;
            }
        }
        if (p->p_eof && p->p2s.len == 0 && !p->s_shut) {
            ERR_clear_error();
            (void)SSL_shutdown(p->ssl); /* close_notify; we may still read */
            shutdown(p->sfd, SHUT_WR);
            p->s_shut = true;
        }
    }
    if (p->s_eof && p->p_eof && p->s_shut && p->p_shut && p->s2p.len == 0 && p->p2s.len == 0) {
        pipe_free(p);
        return false;
    }
    if (p->p_eof && p->p2s.len == 0 && p->pfd != -1) {
        /* the filter closed its end for good (not just a half-close): nothing left to do, even
         * if the TLS peer keeps the connection open */
        struct pollfd pf = {.fd = p->pfd, .events = 0};
        if (poll(&pf, 1, 0) == 1 && (pf.revents & POLLHUP)) {
            pipe_free(p);
            return false;
        }
    }
    return true;
dead:
    ERR_clear_error();
    pipe_free(p);
    return false;
}

static void pipe_on_s(struct km_io *io, int fd, unsigned events, void *arg);
static void pipe_on_p(struct km_io *io, int fd, unsigned events, void *arg);

/* Interest on both sockets from the state. */
static void
pipe_update(struct km_dp_tls_pipe *p)
{
    unsigned sev = 0, pev = 0;
    switch (p->st) {
    case P_INSPECT:
        sev = p->peek_wait ? 0 : KM_IO_READ;
        break;
    case P_CONNECT:
        sev = KM_IO_WRITE;
        break;
    case P_HANDSHAKE:
        sev = p->rd_want ? (unsigned)p->rd_want : KM_IO_READ;
        break;
    case P_RELAY:
        if (p->s2p.len == 0 && !p->s_eof)
            sev |= p->rd_want ? (unsigned)p->rd_want : KM_IO_READ;
        if (p->p2s.len > 0)
            sev |= p->wr_want ? (unsigned)p->wr_want : KM_IO_WRITE;
        if (p->pfd != -1) {
            if (p->p2s.len == 0 && !p->p_eof)
                pev |= KM_IO_READ;
            if (p->s2p.len > 0)
                pev |= KM_IO_WRITE;
        }
        break;
    }
    p->sev = sev;
    p->pev = pev;
    if (!p->sio)
        p->sio = km_io_new(p->w->loop, p->sfd, sev, pipe_on_s, p);
    else
        km_io_set(p->sio, sev);
    if (p->pfd != -1) {
        if (!p->pio)
            p->pio = km_io_new(p->w->loop, p->pfd, pev, pipe_on_p, p);
        else
            km_io_set(p->pio, pev);
    }
    if (!p->sio || (p->pfd != -1 && !p->pio))
        pipe_free(p);
}

/* Inspection: peek at the first bytes. Returns false when the pipe is gone. */
static bool
pipe_inspect(struct km_dp_tls_pipe *p, bool timeout)
{
    uint8_t buf[KM_DP_TLS_MAX_HELLO];
    struct km_dp_client_hello h;
    int tls = 0;
    if (!timeout) {
        ssize_t n = recv(p->sfd, buf, sizeof(buf), MSG_PEEK);
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            pipe_free(p);
            return false;
        }
        if (n < 0)
            return true;
        tls = km_dp_tls_parse_client_hello(buf, (size_t)n, &h);
        p->peek_wait = false;
        if (tls == 0 && (size_t)n < sizeof(buf)) {
            /* wait for more: look again shortly */
            p->peek_wait = true;
            uint64_t now = km_loop_now_ms(p->w->loop);
            uint64_t left = p->deadline > now ? p->deadline - now : 1;
            km_timer_arm(p->timer, left < 5 ? left : 5);
            return true;
        }
        if (tls == 0)
            tls = 1; /* a huge hello: TLS without SNI/ALPN */
    } else {
        tls = -1;
    }
    const struct km_dp_listener *l = &p->pub->snap->listeners[p->lidx];
    const struct km_dp_chain *ch = km_dp_tls_chain_select(l, p->port, tls > 0 ? &h : NULL, tls > 0);
    if (!ch) {
        pipe_lstat(p, KM_DP_LS_NO_CHAIN);
        pipe_free(p);
        return false;
    }
    if (!ch->tls) {
        /* plaintext or the application's own TLS: the filter gets the socket itself */
        struct km_dp_worker *w = p->w;
        struct km_dp_pub *pub = km__dp_pub_ref(p->pub);
        int fd = p->sfd;
        size_t lidx = p->lidx;
        p->sfd = -1;
        km_io_free(p->sio);
        p->sio = NULL;
        pipe_free(p);
        if (ch->kind == KM_DP_FILTER_TCP_PROXY)
            km__dp_tcp_accept(w, pub, lidx, ch, fd);
        else
            km__dp_http_accept(w, pub, lidx, ch, fd);
        km__dp_pub_unref(pub);
        return false;
    }
    p->chain = ch;
    p->t = ch->tls;
    if (!p->t->ssl_ctx || !(p->ssl = SSL_new(p->t->ssl_ctx)) || SSL_set_fd(p->ssl, p->sfd) != 1) {
        pipe_lstat(p, KM_DP_LS_SSL_ERROR);
        pipe_free(p);
        return false;
    }
    SSL_set_accept_state(p->ssl);
    p->st = P_HANDSHAKE;
    km_timer_arm(p->timer, KM_DP_TLS_HANDSHAKE_MS);
    return pipe_handshake(p);
}

static void
pipe_step(struct km_dp_tls_pipe *p, bool timeout)
{
    switch (p->st) {
    case P_INSPECT:
        if (!pipe_inspect(p, timeout && km_loop_now_ms(p->w->loop) >= p->deadline))
            return;
        break;
    case P_CONNECT: {
        int err = 0;
        socklen_t len = sizeof(err);
        if (timeout || getsockopt(p->sfd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err) {
            pipe_cstat(p, KM_DP_CS_CONNECT_FAIL);
            if (timeout)
                pipe_cstat(p, KM_DP_CS_CONNECT_TIMEOUT);
            pipe_free(p);
            return;
        }
        p->st = P_HANDSHAKE;
        if (!pipe_handshake(p))
            return;
        break;
    }
    case P_HANDSHAKE:
        if (timeout) {
            if (p->upstream) {
                pipe_cstat(p, KM_DP_CS_CONNECT_TIMEOUT);
                pipe_cstat(p, KM_DP_CS_CONNECT_FAIL);
            } else {
                pipe_lstat(p, KM_DP_LS_SSL_ERROR);
            }
            pipe_free(p);
            return;
        }
        if (!pipe_handshake(p))
            return;
        break;
    case P_RELAY:
        break;
    }
    if (p->st == P_RELAY && !pipe_pump(p))
        return;
    pipe_update(p);
}

/* A wakeup nobody asked for (epoll reports HUP and ERR regardless): a socket error or too
 * many in a row end the pipe, instead of spinning. Returns false when the pipe is gone. */
static bool
pipe_wanted(struct km_dp_tls_pipe *p, int fd, unsigned events, unsigned interest)
{
    if (events & interest) {
        p->spurious = 0;
        return true;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0 ||
        ++p->spurious > 64) {
        pipe_free(p);
        return false;
    }
    return true;
}

static void
pipe_on_s(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct km_dp_tls_pipe *p = arg;
    (void)io;
    if (pipe_wanted(p, fd, events, p->sev))
        pipe_step(p, false);
}

static void
pipe_on_p(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct km_dp_tls_pipe *p = arg;
    (void)io;
    if (pipe_wanted(p, fd, events, p->pev))
        pipe_step(p, false);
}

static void
pipe_on_timer(struct km_timer *t, void *arg)
{
    (void)t;
    pipe_step(arg, true);
}

static struct km_dp_tls_pipe *
pipe_new(struct km_dp_worker *w, struct km_dp_pub *pub, int fd)
{
    struct km_dp_tls_pipe *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->s2p.b = malloc(KM_DP_TLS_BUF);
    p->p2s.b = malloc(KM_DP_TLS_BUF);
    p->w = w;
    p->pub = km__dp_pub_ref(pub);
    p->sfd = fd;
    p->pfd = -1;
    pipe_link(p);
    p->timer = km_timer_new(w->loop, 0, pipe_on_timer, p);
    if (!p->s2p.b || !p->p2s.b || !p->timer) {
        pipe_free(p);
        return NULL;
    }
    km_timer_stop(p->timer);
    return p;
}

void
km__dp_tls_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                  const struct km_dp_chain *chain, int fd, uint16_t port)
{
    pthread_once(&tls_once, tls_init_once);
    struct km_dp_tls_pipe *p = pipe_new(w, pub, fd);
    if (!p) {
        km_dp_stat_inc(pub->lst[lidx], w->id, KM_DP_LS_OVERFLOW);
        close(fd);
        return;
    }
    p->lidx = lidx;
    p->port = port;
    if (!chain) {
        p->st = P_INSPECT;
        p->deadline = km_loop_now_ms(w->loop) + KM_DP_TLS_INSPECT_MS;
        km_timer_arm(p->timer, KM_DP_TLS_INSPECT_MS);
        pipe_update(p);
        return;
    }
    p->chain = chain;
    p->t = chain->tls;
    if (!p->t->ssl_ctx || !(p->ssl = SSL_new(p->t->ssl_ctx)) || SSL_set_fd(p->ssl, fd) != 1) {
        pipe_lstat(p, KM_DP_LS_SSL_ERROR);
        pipe_free(p);
        return;
    }
    SSL_set_accept_state(p->ssl);
    p->st = P_HANDSHAKE;
    km_timer_arm(p->timer, KM_DP_TLS_HANDSHAKE_MS);
    pipe_step(p, false);
}

int
km__dp_tls_connect(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei)
{
    const struct km_dp_cluster *cl = &pub->snap->clusters[ci];
    const struct km_dp_tls_ctx *t = cl->tls;
    pthread_once(&tls_once, tls_init_once);
    if (!t->ssl_ctx) {
        km_dp_stat_inc(pub->cst[ci], w->id, KM_DP_CS_SSL_ERROR);
        return -ECONNREFUSED; /* the secrets are not there yet */
    }
    int fd = km__dp_connect(&cl->eps[ei]);
    if (fd < 0)
        return fd;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct km_dp_tls_pipe *p = pipe_new(w, pub, fd);
    if (!p) {
        close(fd);
        close(sv[0]);
        close(sv[1]);
        return -ENOMEM;
    }
    p->upstream = true;
    p->ci = ci;
    p->t = t;
    p->pfd = sv[0];
    p->ssl = SSL_new(t->ssl_ctx);
    if (!p->ssl || SSL_set_fd(p->ssl, fd) != 1) {
        pipe_free(p);
        close(sv[1]);
        return -ENOMEM;
    }
    SSL_set_connect_state(p->ssl);
    if (t->sni)
        SSL_set_tlsext_host_name(p->ssl, t->sni);
    pthread_mutex_lock(&t->cache->mu);
    if (t->cache->sess)
        SSL_set_session(p->ssl, t->cache->sess);
    pthread_mutex_unlock(&t->cache->mu);
    p->st = P_CONNECT;
    km_timer_arm(p->timer, cl->connect_timeout_ms ? cl->connect_timeout_ms : 5000);
    pipe_update(p);
    return sv[1];
}

/* ---- direct TLS (no pipe) ---- */

static ssize_t
tls_io_error(SSL *ssl, int r, unsigned *want, bool rd)
{
    int se = errno;
    int e = SSL_get_error(ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = KM_IO_READ;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *want = KM_IO_WRITE;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        if (rd)
            return 0;
        errno = EPIPE;
        return -1;
    case SSL_ERROR_SYSCALL:
        errno = se && se != EAGAIN && se != EWOULDBLOCK && se != EINTR ? se : ECONNRESET;
        break;
    default:
        errno = EPROTO;
        break;
    }
    /* a broken connection: no close_notify on it later */
    SSL_set_quiet_shutdown(ssl, 1);
    se = errno;
    ERR_clear_error();
    errno = se;
    return -1;
}

ssize_t
km__dp_tls_recv(void *ssl, void *buf, size_t n, unsigned *want)
{
    ERR_clear_error();
    int r = SSL_read(ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    return tls_io_error(ssl, r, want, true);
}

ssize_t
km__dp_tls_send(void *ssl, const void *buf, size_t n, unsigned *want)
{
    ERR_clear_error();
    int r = SSL_write(ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    return tls_io_error(ssl, r, want, false);
}

size_t
km__dp_tls_pending(void *ssl)
{
    int n = SSL_pending(ssl);
    return n > 0 ? (size_t)n : 0;
}

void
km__dp_tls_notify(void *ssl)
{
    ERR_clear_error();
    if (SSL_is_init_finished((SSL *)ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

void
km__dp_tls_free(void *ssl)
{
    SSL_free(ssl);
}

int
km__dp_tls_connect_direct(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, long ei,
                          void **out)
{
    const struct km_dp_cluster *cl = &pub->snap->clusters[ci];
    const struct km_dp_tls_ctx *t = cl->tls;
    pthread_once(&tls_once, tls_init_once);
    if (!t->ssl_ctx) {
        km_dp_stat_inc(pub->cst[ci], w->id, KM_DP_CS_SSL_ERROR);
        return -ECONNREFUSED; /* the secrets are not there yet */
    }
    SSL *ssl = SSL_new(t->ssl_ctx);
    if (!ssl)
        return -ENOMEM;
    int fd = km__dp_connect(&cl->eps[ei]);
    if (fd < 0) {
        SSL_free(ssl);
        return fd;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
        return -ENOMEM;
    }
    SSL_set_connect_state(ssl);
    if (t->sni)
        SSL_set_tlsext_host_name(ssl, t->sni);
    pthread_mutex_lock(&t->cache->mu);
    if (t->cache->sess)
        SSL_set_session(ssl, t->cache->sess);
    pthread_mutex_unlock(&t->cache->mu);
    *out = ssl;
    return fd;
}

int
km__dp_tls_handshake_up(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, void *ssl_,
                        unsigned *want)
{
    SSL *ssl = ssl_;
    struct km_dp_stat_block *cst = pub->cst[ci];
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r != 1) {
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            *want = e == SSL_ERROR_WANT_READ ? KM_IO_READ : KM_IO_WRITE;
            return 0;
        }
        long vr = SSL_get_verify_result(ssl);
        unsigned long err = ERR_peek_error();
        km_dp_stat_inc(cst, w->id, vr != X509_V_OK ? KM_DP_CS_SSL_FAIL_VERIFY : KM_DP_CS_SSL_ERROR);
        km_log_debug("dp", "TLS handshake failed: %s (verify: %s)",
                     err ? ERR_reason_error_string(err) : "connection closed",
                     X509_verify_cert_error_string(vr));
        SSL_set_quiet_shutdown(ssl, 1);
        ERR_clear_error();
        return -1;
    }
    *want = 0;
    km_dp_stat_inc(cst, w->id, KM_DP_CS_SSL_HANDSHAKE);
    if (SSL_session_reused(ssl))
        km_dp_stat_inc(cst, w->id, KM_DP_CS_SSL_REUSED);
    char *sans[TLS_MAX_SANS];
    size_t n = peer_uri_sans(ssl, sans);
    bool ok = san_ok(pub->snap->clusters[ci].tls, sans, n);
    free_sans(sans, n);
    if (!ok) {
        km_dp_stat_inc(cst, w->id, KM_DP_CS_SSL_FAIL_SAN);
        SSL_set_quiet_shutdown(ssl, 1);
        return -1;
    }
    return 1;
}

int
km__dp_tls_relay(struct km_dp_worker *w, struct km_dp_pub *pub, int fd, void *ssl)
{
    int sv[2];
    struct km_dp_tls_pipe *p = pipe_new(w, pub, fd);
    if (!p) {
        SSL_free(ssl);
        close(fd);
        return -ENOMEM;
    }
    p->ssl = ssl;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1) {
        int e = errno;
        pipe_free(p); /* closes fd, frees ssl */
        return -e;
    }
    p->pfd = sv[0];
    p->st = P_RELAY;
    pipe_step(p, false); /* bytes the SSL holds already; may end the pipe (sv[1] sees EOF) */
    return sv[1];
}
