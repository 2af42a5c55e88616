/* Dataplane and user tokens: RS256 JWTs with OpenSSL 3, signing keys and revocation lists kept
 * as Secrets / GlobalSecrets in the store (see include/km/cp/tokens.h). */
#include <errno.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <km/common/util.h>
#include <km/cp/tokens.h>

/* Largest PEM signing key read from a secret. */
#define TOKENS_MAX_KEY_BYTES (64 * 1024)
/* Largest revocation list read from a secret. */
#define TOKENS_MAX_REVOCATIONS_BYTES (4 * 1024 * 1024)
/* Clock skew Kuma subtracts from iat/nbf and adds back to exp (seconds). */
#define TOKENS_SKEW_S 5

/* ---- base64 ---- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *
km_b64url_encode(const unsigned char *data, size_t len)
{
    char *out = km_xmalloc((len + 2) / 3 * 4 + 1);
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 | data[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)data[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = 0;
    return out;
}

static int
b64_value(char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Decodes <len> characters without padding in the url or standard alphabet. */
static unsigned char *
b64_decode_raw(const char *s, size_t len, bool url, size_t *outlen)
{
    if (len % 4 == 1)
        return NULL;
    unsigned char *out = km_xmalloc(len / 4 * 3 + 3);
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(s[i], url);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    out[o] = 0;
    *outlen = o;
    return out;
}

unsigned char *
km_b64url_decode(const char *s, size_t len, size_t *outlen)
{
    return b64_decode_raw(s, len, true, outlen);
}

/* Standard base64 with optional padding (Secret data). */
static unsigned char *
b64std_decode(const char *s, size_t *outlen)
{
    size_t len = strlen(s);
    if (len % 4 != 0)
        return NULL;
    size_t pad = 0;
    while (pad < 2 && len > pad && s[len - 1 - pad] == '=')
        pad++;
    return b64_decode_raw(s, len - pad, false, outlen);
}

static char *
b64std_encode(const unsigned char *data, size_t len)
{
    char *out = km_xmalloc((len + 2) / 3 * 4 + 1);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    out[n < 0 ? 0 : n] = 0;
    return out;
}

/* ---- small helpers ---- */

static void
ossl_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

/* A JSON member by exact name, else case-insensitively (Go's encoding/json does both). */
static json_t *
claim_get(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (v)
        return v;
    const char *k;
    json_object_foreach ((json_t *)o, k, v) {
        if (strcasecmp(k, key) == 0)
            return v;
    }
    return NULL;
}

static char *
claim_str_dup(const json_t *o, const char *key)
{
    const json_t *v = claim_get(o, key);
    return km_xstrdup(json_is_string(v) ? json_string_value(v) : "");
}

static int64_t
claim_time(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v))
        return (int64_t)json_real_value(v);
    return 0;
}

static const struct km_rtype *
secret_type(bool global)
{
    return km_registry_find(global ? "GlobalSecret" : "Secret");
}

/* Reads the decoded `data` of a Secret (mesh != "") or GlobalSecret (mesh ""); NULL with
 * *rc = KM_ENOTFOUND or another error. */
static char *
secret_data(struct km_store *s, const char *mesh, const char *name, size_t max, int *rc)
{
    struct km_resource *r = NULL;
    *rc = km_store_get(s, secret_type(mesh[0] == 0), mesh, name, &r);
    if (*rc)
        return NULL;
    const json_t *d = json_object_get(r->spec, "data");
    const char *b64 = json_is_string(d) ? json_string_value(d) : "";
    char *out = NULL;
    if (strlen(b64) / 4 * 3 > max) {
        *rc = KM_ELIMIT;
    } else {
        size_t n = 0;
        out = (char *)b64std_decode(b64, &n);
        if (!out)
            *rc = KM_EINVAL;
        else if (strlen(out) != n) {
            KM_FREE(out); /* binary key data (legacy DER) is not supported */
            *rc = KM_EINVAL;
        }
    }
    km_resource_free(r);
    return out;
}

/* Stores a new Secret / GlobalSecret holding <data>. */
static int
secret_create(struct km_store *s, const char *mesh, const char *name, const char *data)
{
    struct km_resource *r = km_resource_new(secret_type(mesh[0] == 0), mesh, name);
    char *b64 = b64std_encode((const unsigned char *)data, strlen(data));
    json_object_set_new(r->spec, "data", json_string(b64));
    free(b64);
    int rc = km_store_create(s, r);
    km_resource_free(r);
    return rc;
}

/* Serial of a key secret: <prefix> alone is 0 (Kuma 1.3 keys), "<prefix>-<digits>" its number;
 * -1 for other names. */
static long
key_serial(const char *name, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0)
        return -1;
    if (name[pl] == 0)
        return 0;
    if (name[pl] != '-' || !name[pl + 1])
        return -1;
    long v = 0;
    for (const char *p = name + pl + 1; *p; p++) {
        if (*p < '0' || *p > '9' || v > (LONG_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static char *
key_secret_name(const char *prefix, const char *kid)
{
    if (strcmp(kid, "0") == 0)
        return km_xstrdup(prefix);
    return km_xasprintf("%s-%s", prefix, kid);
}

/* Latest signing key with <prefix> in <mesh> ("" = GlobalSecrets): PEM and kid (caller frees
 * both). KM_ENOTFOUND when there is none. */
static int
latest_key(struct km_store *s, const char *mesh, const char *prefix, char **pem, char **kid)
{
    struct km_resource_list l;
    km_resource_list_init(&l);
    int rc = km_store_list(s, secret_type(mesh[0] == 0), mesh[0] ? mesh : NULL, &l);
    if (rc) {
        km_resource_list_deinit(&l);
        return rc;
    }
    long best = -1;
    const char *best_name = NULL;
    for (size_t i = 0; i < l.n; i++) {
        long serial = key_serial(l.items[i]->name, prefix);
        if (serial > best) {
            best = serial;
            best_name = l.items[i]->name;
        }
    }
    if (!best_name) {
        km_resource_list_deinit(&l);
        return KM_ENOTFOUND;
    }
    *pem = secret_data(s, mesh, best_name, TOKENS_MAX_KEY_BYTES, &rc);
    *kid = rc ? NULL : km_xasprintf("%ld", best);
    km_resource_list_deinit(&l);
    return rc;
}

static void
key_not_found(char *err, size_t errlen, const char *mesh, const char *prefix, const char *kid)
{
    char *name = key_secret_name(prefix, kid);
    if (mesh[0])
        snprintf(err, errlen, "there is no signing key with KID %s. Secret of name \"%s\" in mesh "
                 "\"%s\" is not found. If signing key was rotated, regenerate the token", kid,
                 name, mesh);
    else
        snprintf(err, errlen, "there is no signing key with KID %s. GlobalSecret of name \"%s\" "
                 "is not found. If signing key was rotated, regenerate the token", kid, name);
    free(name);
}

/* ---- keys ---- */

char *
km_tokens_new_signing_key_pem(char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_RSA_gen(KM_TOKENS_RSA_BITS);
    if (!key) {
        ossl_error(err, errlen, "failed to generate RSA key");
        return NULL;
    }
    char *out = NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio && PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL) == 1) {
        char *p = NULL;
        long n = BIO_get_mem_data(bio, &p);
        out = km_xstrndup(p, (size_t)n);
    } else {
        ossl_error(err, errlen, "failed to encode RSA key");
    }
    BIO_free(bio);
    EVP_PKEY_free(key);
    return out;
}

static int
ensure_key(struct km_store *s, const char *mesh, const char *prefix, char *err, size_t errlen)
{
    char *pem = NULL, *kid = NULL;
    int rc = latest_key(s, mesh, prefix, &pem, &kid);
    free(pem);
    free(kid);
    if (rc == 0)
        return 0;
    if (rc != KM_ENOTFOUND) {
        snprintf(err, errlen, "could not retrieve signing key from secret manager: %s",
                 km_strerror(rc));
        return rc;
    }
    if (mesh[0]) {
        struct km_resource *m = NULL;
        rc = km_store_get(s, km_registry_mesh(), "", mesh, &m);
        km_resource_free(m);
        if (rc) {
            snprintf(err, errlen, "mesh of name %s is not found", mesh);
            return rc;
        }
    }
    pem = km_tokens_new_signing_key_pem(err, errlen);
    if (!pem)
        return KM_EIO;
    char *name = km_xasprintf("%s-1", prefix);
    rc = secret_create(s, mesh, name, pem);
    free(pem);
    if (rc == KM_ECONFLICT)
        rc = 0; /* created concurrently */
    if (rc == 0)
        km_log_info("tokens", "default signing key created (%s%s%s)", name,
                    mesh[0] ? " in mesh " : "", mesh);
    else if (rc == KM_ENOTFOUND)
        snprintf(err, errlen, "mesh of name %s is not found", mesh);
    else
        snprintf(err, errlen, "could not create signing key with prefix %s: %s", prefix,
                 km_strerror(rc));
    free(name);
    return rc;
}

static char *
dp_key_prefix(const char *mesh)
{
    return km_xasprintf(KM_TOKENS_DP_KEY_PREFIX "%s", mesh);
}

int
km_tokens_ensure_signing_key(struct km_store *s, const char *mesh, char *err, size_t errlen)
{
    if (!mesh || !mesh[0]) {
        snprintf(err, errlen, "mesh cannot be empty");
        return KM_EINVAL;
    }
    char *prefix = dp_key_prefix(mesh);
    int rc = ensure_key(s, mesh, prefix, err, errlen);
    free(prefix);
    return rc;
}

int
km_tokens_ensure_user_key(struct km_store *s, char *err, size_t errlen)
{
    return ensure_key(s, "", KM_TOKENS_USER_KEY_PREFIX, err, errlen);
}

int
km_tokens_bootstrap(struct km_store *s, char *err, size_t errlen)
{
    int rc = km_tokens_ensure_user_key(s, err, errlen);
    if (rc)
        return rc;
    struct km_resource *r = NULL;
    rc = km_store_get(s, secret_type(true), "", KM_TOKENS_ADMIN_TOKEN, &r);
    km_resource_free(r);
    if (rc == 0)
        return 0;
    if (rc != KM_ENOTFOUND) {
        snprintf(err, errlen, "could not check if token exist: %s", km_strerror(rc));
        return rc;
    }
    km_log_info("tokens", "Admin User Token not found. Generating.");
    const char *groups[] = {KM_GROUP_ADMIN};
    char *token = NULL;
    rc = km_token_issue_user(s, KM_USER_ADMIN, groups, 1, KM_TOKENS_DEFAULT_VALID_FOR_S, &token,
                             err, errlen);
    if (rc)
        return rc;
    rc = secret_create(s, "", KM_TOKENS_ADMIN_TOKEN, token);
    free(token);
    if (rc == KM_ECONFLICT)
        rc = 0;
    if (rc)
        snprintf(err, errlen, "could not store GlobalSecret %s: %s", KM_TOKENS_ADMIN_TOKEN,
                 km_strerror(rc));
    else
        km_log_info("tokens", "bootstrap of Admin User Token is enabled. To extract admin "
                    "credentials read GlobalSecret %s from localhost (its data is the token, "
                    "base64 encoded)", KM_TOKENS_ADMIN_TOKEN);
    return rc;
}

/* ---- JWT ---- */

static EVP_PKEY *
load_key(const char *pem, bool *is_private, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (!bio) {
        ossl_error(err, errlen, "cannot read key");
        return NULL;
    }
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    *is_private = k != NULL;
    if (!k) {
        ERR_clear_error();
        (void)BIO_reset(bio);
        k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    }
    BIO_free(bio);
    if (!k) {
        ossl_error(err, errlen, "signing key is not a PEM encoded RSA key");
        return NULL;
    }
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
        snprintf(err, errlen, "signing key is not an RSA key");
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

static void
uuid4(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        /* RAND_bytes does not fail on a seeded system; fall back to a time based value */
        int64_t t = km_now_us();
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (unsigned char)(t >> (i % 8 * 8)) ^ (unsigned char)(i * 37);
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

char *
km_jwt_sign(const json_t *claims, const char *key_pem, const char *kid, int64_t valid_for_s,
            int64_t now_s, char *err, size_t errlen)
{
    bool priv = false;
    EVP_PKEY *key = load_key(key_pem, &priv, err, errlen);
    if (!key)
        return NULL;
    char *out = NULL, *hjs = NULL, *cjs = NULL, *h64 = NULL, *c64 = NULL, *s64 = NULL;
    unsigned char *sig = NULL;
    EVP_MD_CTX *md = NULL;
    json_t *c = NULL;
    if (!priv) {
        snprintf(err, errlen, "signing key is not a private key");
        goto done;
    }
    if (now_s == 0)
        now_s = (int64_t)time(NULL);
    int64_t iat = now_s - TOKENS_SKEW_S;
    char jti[37];
    uuid4(jti);
    c = json_deep_copy(claims);
    json_object_set_new(c, "exp", json_integer(iat + valid_for_s + TOKENS_SKEW_S));
    json_object_set_new(c, "nbf", json_integer(iat));
    json_object_set_new(c, "iat", json_integer(iat));
    json_object_set_new(c, "jti", json_string(jti));
    json_t *h = json_pack("{s:s, s:s, s:s}", "alg", "RS256", "kid", kid, "typ", "JWT");
    hjs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    cjs = json_dumps(c, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hjs || !cjs) {
        snprintf(err, errlen, "could not encode the token claims");
        goto done;
    }
    h64 = km_b64url_encode((const unsigned char *)hjs, strlen(hjs));
    c64 = km_b64url_encode((const unsigned char *)cjs, strlen(cjs));
    char *input = km_xasprintf("%s.%s", h64, c64);
    size_t siglen = 0;
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)input, strlen(input)) != 1) {
        ossl_error(err, errlen, "could not sign a token");
        free(input);
        goto done;
    }
    sig = km_xmalloc(siglen);
    if (EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1) {
        ossl_error(err, errlen, "could not sign a token");
        free(input);
        goto done;
    }
    s64 = km_b64url_encode(sig, siglen);
    out = km_xasprintf("%s.%s", input, s64);
    free(input);
done:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    json_decref(c);
    free(hjs);
    free(cjs);
    free(h64);
    free(c64);
    free(s64);
    free(sig);
    return out;
}

/* The three parts of a compact JWS. */
struct jwt_parts {
    const char *p[3];
    size_t len[3];
};

static int
jwt_split(const char *token, struct jwt_parts *jp, char *err, size_t errlen)
{
    if (!token || !token[0]) {
        snprintf(err, errlen, "token is malformed: token is empty");
        return -1;
    }
    size_t tl = strnlen(token, KM_TOKENS_MAX_LEN + 1);
    if (tl > KM_TOKENS_MAX_LEN) {
        snprintf(err, errlen, "token is malformed: token is longer than %d bytes",
                 KM_TOKENS_MAX_LEN);
        return -1;
    }
    const char *p = token;
    for (int i = 0; i < 3; i++) {
        const char *dot = strchr(p, '.');
        if ((i < 2 && !dot) || (i == 2 && dot)) {
            snprintf(err, errlen, "token is malformed: token contains an invalid number of "
                                  "segments");
            return -1;
        }
        jp->p[i] = p;
        jp->len[i] = dot ? (size_t)(dot - p) : strlen(p);
        p = dot ? dot + 1 : p + jp->len[i];
    }
    return 0;
}

static json_t *
jwt_segment_json(const struct jwt_parts *jp, int i, const char *what, char *err, size_t errlen)
{
    size_t n = 0;
    unsigned char *raw = km_b64url_decode(jp->p[i], jp->len[i], &n);
    if (!raw) {
        snprintf(err, errlen, "token is malformed: could not base64 decode %s", what);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, &je);
    free(raw);
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(err, errlen, "token is malformed: could not JSON decode %s", what);
        return NULL;
    }
    return j;
}

int
km_jwt_decode(const char *token, json_t **header, json_t **claims, char *err, size_t errlen)
{
    struct jwt_parts jp;
    *header = *claims = NULL;
    if (jwt_split(token, &jp, err, errlen))
        return -1;
    *header = jwt_segment_json(&jp, 0, "header", err, errlen);
    if (!*header)
        return -1;
    *claims = jwt_segment_json(&jp, 1, "claim", err, errlen);
    if (!*claims) {
        json_decref(*header);
        *header = NULL;
        return -1;
    }
    return 0;
}

static int
check_times(const json_t *claims, int64_t now_s, char *err, size_t errlen)
{
    if (now_s == 0)
        now_s = (int64_t)time(NULL);
    const json_t *exp = json_object_get(claims, "exp");
    const json_t *nbf = json_object_get(claims, "nbf");
    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf))) {
        snprintf(err, errlen, "token has invalid claims: token is malformed: invalid type for "
                              "claim");
        return -1;
    }
    if (exp && now_s > claim_time(claims, "exp")) { /* Go: now.After(exp) */
        snprintf(err, errlen, "token has invalid claims: token is expired");
        return -1;
    }
    if (nbf && now_s < claim_time(claims, "nbf")) {
        snprintf(err, errlen, "token is not yet valid: 'valid_from' date is in the future. "
                              "Check the clock of the machine that generated the token");
        return -1;
    }
    return 0;
}

static int
verify_signature(const struct jwt_parts *jp, EVP_PKEY *key, char *err, size_t errlen)
{
    size_t siglen = 0;
    unsigned char *sig = km_b64url_decode(jp->p[2], jp->len[2], &siglen);
    if (!sig) {
        snprintf(err, errlen, "token is malformed: could not base64 decode signature");
        return -1;
    }
    size_t inlen = jp->len[0] + 1 + jp->len[1];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(md, sig, siglen, (const unsigned char *)jp->p[0], inlen) == 1;
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    free(sig);
    if (!ok) {
        snprintf(err, errlen, "token signature is invalid: crypto/rsa: verification error");
        return -1;
    }
    return 0;
}

int
km_jwt_verify(const char *token, const char *key_pem, int64_t now_s, char *err, size_t errlen)
{
    struct jwt_parts jp;
    json_t *h = NULL, *c = NULL;
    if (km_jwt_decode(token, &h, &c, err, errlen))
        return -1;
    jwt_split(token, &jp, err, errlen);
    int rc = -1;
    const char *alg = json_string_value(json_object_get(h, "alg"));
    if (!alg || strcmp(alg, "RS256") != 0) {
        snprintf(err, errlen, "token is unverifiable: unsupported token alg %s. Allowed "
                 "algorithm is RS256", alg ? alg : "(none)");
        goto done;
    }
    bool priv = false;
    EVP_PKEY *key = load_key(key_pem, &priv, err, errlen);
    if (!key)
        goto done;
    rc = verify_signature(&jp, key, err, errlen);
    EVP_PKEY_free(key);
    if (rc == 0)
        rc = check_times(c, now_s, err, errlen);
done:
    json_decref(h);
    json_decref(c);
    return rc;
}

/* Kuma's ParseWithValidation: kid header, key of that serial (Secret in <mesh>, GlobalSecret
 * when <mesh> is ""), RS256 signature, times, then the revocation list <revocations>. On success
 * *claims holds the claims (caller decrefs). */
static int
validate_token(struct km_store *s, const char *token, const char *mesh, const char *prefix,
               const char *revocations, json_t **claims, char *err, size_t errlen)
{
    struct jwt_parts jp;
    json_t *h = NULL, *c = NULL;
    char inner[512];
    int rc = -1;
    *claims = NULL;
    if (km_jwt_decode(token, &h, &c, inner, sizeof(inner))) {
        snprintf(err, errlen, "could not parse token: %s", inner);
        return -1;
    }
    jwt_split(token, &jp, inner, sizeof(inner));
    const json_t *kidj = json_object_get(h, "kid");
    const char *alg = json_string_value(json_object_get(h, "alg"));
    if (!kidj) {
        snprintf(err, errlen, "could not parse token: token is unverifiable: error while "
                              "executing keyfunc: JWT token must have kid header");
        goto done;
    }
    if (!json_is_string(kidj)) {
        snprintf(err, errlen, "could not parse token: token is unverifiable: error while "
                              "executing keyfunc: JWT token kid header must be a string");
        goto done;
    }
    if (!alg || strcmp(alg, "RS256") != 0) {
        snprintf(err, errlen, "could not parse token: token is unverifiable: error while "
                 "executing keyfunc: unsupported token alg %.32s. Allowed algorithm is RS256",
                 alg ? alg : "");
        goto done;
    }
    const char *kid = json_string_value(kidj);
    char *name = NULL;
    int src = KM_ENOTFOUND;
    bool kid_ok = kid[0] && strlen(kid) <= 18 && strspn(kid, "0123456789") == strlen(kid);
    if (kid_ok) {
        name = key_secret_name(prefix, kid);
        char *pem = secret_data(s, mesh, name, TOKENS_MAX_KEY_BYTES, &src);
        free(name);
        if (pem) {
            bool priv = false;
            EVP_PKEY *key = load_key(pem, &priv, inner, sizeof(inner));
            free(pem);
            if (!key) {
                snprintf(err, errlen, "could not parse token: %s", inner);
                goto done;
            }
            int vrc = verify_signature(&jp, key, inner, sizeof(inner));
            EVP_PKEY_free(key);
            if (vrc) {
                snprintf(err, errlen, "could not parse token: %s", inner);
                goto done;
            }
        }
    }
    if (src == KM_ENOTFOUND) {
        key_not_found(err, errlen, mesh, prefix, kid_ok ? kid : "?");
        goto done;
    }
    if (src) {
        snprintf(err, errlen, "could not retrieve signing key: %s", km_strerror(src));
        goto done;
    }
    if (check_times(c, 0, inner, sizeof(inner))) {
        if (strncmp(inner, "token is not yet valid", 22) == 0)
            snprintf(err, errlen, "%s", inner);
        else
            snprintf(err, errlen, "could not parse token: %s", inner);
        goto done;
    }
    /* revocations: comma separated ids, one trailing newline allowed */
    int rrc = 0;
    char *list = secret_data(s, mesh, revocations, TOKENS_MAX_REVOCATIONS_BYTES, &rrc);
    if (!list && rrc != KM_ENOTFOUND) {
        snprintf(err, errlen, "could not check if the token is revoked: %s", km_strerror(rrc));
        goto done;
    }
    const json_t *jti = json_object_get(c, "jti");
    if (list && !list[0])
        KM_FREE(list); /* an empty list revokes nothing */
    if (list) {
        size_t l = strlen(list);
        if (l && list[l - 1] == '\n')
            list[l - 1] = 0;
        const char *id = json_is_string(jti) ? json_string_value(jti) : "";
        bool revoked = false;
        /* Go's strings.Split keeps empty fields: "a,,b" contains "" */
        for (const char *p = list; !revoked;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            revoked = n == strlen(id) && strncmp(p, id, n) == 0;
            if (!comma)
                break;
            p = comma + 1;
        }
        free(list);
        if (revoked) {
            snprintf(err, errlen, "token is revoked");
            goto done;
        }
    }
    *claims = c;
    c = NULL;
    rc = 0;
done:
    json_decref(h);
    json_decref(c);
    return rc;
}

/* ---- dataplane tokens ---- */

void
km_dp_claims_deinit(struct km_dp_claims *c)
{
    if (!c)
        return;
    KM_FREE(c->name);
    KM_FREE(c->mesh);
    KM_FREE(c->type);
    KM_FREE(c->workload);
    KM_FREE(c->jti);
    json_decref(c->tags);
    c->tags = NULL;
}

/* {"k": ["b", "a"]} -> {"k": ["b", "a"]} checked: an object of arrays of strings. */
static bool
tags_valid(const json_t *tags, char *err, size_t errlen)
{
    if (!tags || json_is_null(tags))
        return true;
    if (!json_is_object(tags)) {
        snprintf(err, errlen, "tags: must be an object of string lists");
        return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)tags, k, v) {
        if (!json_is_array(v)) {
            snprintf(err, errlen, "tags[\"%.200s\"]: must be a list of strings", k);
            return false;
        }
        size_t i;
        json_t *e;
        json_array_foreach (v, i, e) {
            if (!json_is_string(e)) {
                snprintf(err, errlen, "tags[\"%.200s\"][%zu]: must be a string", k, i);
                return false;
            }
        }
    }
    return true;
}

static int
issue(struct km_store *s, const char *mesh, const char *prefix, const json_t *claims,
      int64_t valid_for_s, char **token, char *err, size_t errlen)
{
    char *pem = NULL, *kid = NULL;
    int rc = latest_key(s, mesh, prefix, &pem, &kid);
    if (rc == KM_ENOTFOUND) {
        /* keys are created with the mesh / at start; create lazily when that did not happen */
        char e2[256];
        if (ensure_key(s, mesh, prefix, e2, sizeof(e2)) == 0)
            rc = latest_key(s, mesh, prefix, &pem, &kid);
    }
    if (rc == KM_ENOTFOUND) {
        key_not_found(err, errlen, mesh, prefix, "1");
        return rc;
    }
    if (rc) {
        snprintf(err, errlen, "could not retrieve signing key from secret manager: %s",
                 km_strerror(rc));
        return rc;
    }
    *token = km_jwt_sign(claims, pem, kid, valid_for_s, 0, err, errlen);
    free(pem);
    free(kid);
    return *token ? 0 : KM_EIO;
}

int
km_token_issue_dataplane(struct km_store *s, const char *mesh, const char *name,
                         const json_t *tags, const char *type, const char *workload,
                         int64_t valid_for_s, char **token, char *err, size_t errlen)
{
    *token = NULL;
    if (!mesh || !mesh[0]) {
        snprintf(err, errlen, "mesh: cannot be empty");
        return KM_EINVAL;
    }
    if (valid_for_s < 0 || valid_for_s > (int64_t)1000 * 365 * 24 * 3600) {
        snprintf(err, errlen, "validFor: must be between 0 and 1000 years");
        return KM_EINVAL;
    }
    if (type && type[0] && strcmp(type, "dataplane") != 0 && strcmp(type, "ingress") != 0 &&
        strcmp(type, "egress") != 0) {
        snprintf(err, errlen, "type: %s is not a valid proxy type", type);
        return KM_EINVAL;
    }
    if (!tags_valid(tags, err, errlen))
        return KM_EINVAL;
    /* Go marshals the map with sorted keys and keeps the value order */
    json_t *t = json_object();
    if (json_is_object(tags)) {
        const char **keys = km_xcalloc(json_object_size(tags) + 1, sizeof(*keys));
        size_t n = 0;
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)tags, k, v)
            keys[n++] = k;
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
                const char *tmp = keys[j];
                keys[j] = keys[j - 1];
                keys[j - 1] = tmp;
            }
        for (size_t i = 0; i < n; i++)
            json_object_set(t, keys[i], json_object_get(tags, keys[i]));
        free(keys);
    }
    json_t *c = json_pack("{s:s, s:s, s:o, s:s, s:s}", "Name", name ? name : "", "Mesh", mesh,
                          "Tags", t, "Type", type ? type : "", "Workload",
                          workload ? workload : "");
    char *prefix = dp_key_prefix(mesh);
    int rc = issue(s, mesh, prefix, c, valid_for_s, token, err, errlen);
    free(prefix);
    json_decref(c);
    return rc;
}

static void
dp_claims_fill(struct km_dp_claims *out, const json_t *c)
{
    km_dp_claims_deinit(out);
    out->name = claim_str_dup(c, "Name");
    out->mesh = claim_str_dup(c, "Mesh");
    out->type = claim_str_dup(c, "Type");
    out->workload = claim_str_dup(c, "Workload");
    const json_t *jti = json_object_get(c, "jti");
    out->jti = km_xstrdup(json_is_string(jti) ? json_string_value(jti) : "");
    out->tags = json_object();
    const json_t *tags = claim_get(c, "Tags");
    if (json_is_object(tags)) {
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)tags, k, v) {
            json_t *arr = json_array();
            size_t i;
            json_t *e;
            json_array_foreach (v, i, e) {
                if (json_is_string(e))
                    json_array_append(arr, e);
            }
            json_object_set_new(out->tags, k, arr);
        }
    }
    out->exp = claim_time(c, "exp");
    out->nbf = claim_time(c, "nbf");
    out->iat = claim_time(c, "iat");
}

int
km_token_verify_dataplane(struct km_store *s, const char *token, const char *mesh,
                          const char *name, struct km_dp_claims *out, char *err, size_t errlen)
{
    struct km_dp_claims local = {0};
    struct km_dp_claims *cl = out ? out : &local;
    if (!mesh || !mesh[0]) {
        snprintf(err, errlen, "mesh cannot be empty");
        return -1;
    }
    if (!token || !token[0]) {
        snprintf(err, errlen, "dataplane token is missing: generate one with `kumactl generate "
                              "dataplane-token` and pass it to kuma-dp");
        return -1;
    }
    char *prefix = dp_key_prefix(mesh);
    char *rev = km_xasprintf(KM_TOKENS_DP_REVOCATIONS "%s", mesh);
    json_t *c = NULL;
    int rc = validate_token(s, token, mesh, prefix, rev, &c, err, errlen);
    free(prefix);
    free(rev);
    if (rc == 0) {
        dp_claims_fill(cl, c);
        json_decref(c);
        if (name && cl->name[0] && strcmp(name, cl->name) != 0) {
            snprintf(err, errlen, "proxy name from requestor: %s is different than in token: %s",
                     name, cl->name);
            rc = -1;
        } else if (cl->mesh[0] && strcmp(mesh, cl->mesh) != 0) {
            snprintf(err, errlen, "proxy mesh from requestor: %s is different than in token: %s",
                     mesh, cl->mesh);
            rc = -1;
        }
    }
    km_dp_claims_deinit(&local);
    return rc;
}

static bool
str_array_has(const json_t *arr, const char *s)
{
    size_t i;
    json_t *e;
    json_array_foreach (arr, i, e) {
        if (json_is_string(e) && strcmp(json_string_value(e), s) == 0)
            return true;
    }
    return false;
}

/* Go's %q of a []string: ["a" "b"]. */
static char *
quote_list(const json_t *arr)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_puts(&b, "[");
    size_t i;
    json_t *e;
    json_array_foreach (arr, i, e) {
        km_sbuf_printf(&b, "%s\"%s\"", i ? " " : "", json_string_value(e));
    }
    km_sbuf_puts(&b, "]");
    return km_sbuf_take(&b);
}

static int
strp_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A tag value list sorted like Kuma's MultiValueTagSet.Values. */
static json_t *
sorted_unique(const json_t *arr)
{
    size_t n = json_array_size(arr);
    const char **v = km_xcalloc(n + 1, sizeof(*v));
    size_t m = 0;
    size_t i;
    json_t *e;
    json_array_foreach (arr, i, e) {
        if (json_is_string(e))
            v[m++] = json_string_value(e);
    }
    qsort(v, m, sizeof(*v), strp_cmp);
    json_t *out = json_array();
    for (i = 0; i < m; i++) {
        if (i == 0 || strcmp(v[i], v[i - 1]) != 0)
            json_array_append_new(out, json_string(v[i]));
    }
    free(v);
    return out;
}

int
km_token_check_bindings(const struct km_dp_claims *c, const json_t *dp_tags,
                        const char *dp_workload, char *err, size_t errlen)
{
    const char *k;
    json_t *allowed;
    /* iterate in sorted order so the first reported problem is stable */
    json_t *keys = json_array();
    json_object_foreach (c->tags, k, allowed)
        json_array_append_new(keys, json_string(k));
    json_t *sk = sorted_unique(keys);
    json_decref(keys);
    size_t i;
    json_t *kj;
    int rc = 0;
    json_array_foreach (sk, i, kj) {
        k = json_string_value(kj);
        allowed = json_object_get(c->tags, k);
        const json_t *have = json_object_get(dp_tags, k);
        if (!json_is_array(have)) {
            snprintf(err, errlen, "dataplane has no tag \"%s\" required by the token", k);
            rc = -1;
            break;
        }
        size_t j;
        json_t *v;
        json_array_foreach (have, j, v) {
            if (json_is_string(v) && !str_array_has(allowed, json_string_value(v))) {
                json_t *sv = sorted_unique(allowed);
                char *q = quote_list(sv);
                snprintf(err, errlen, "dataplane contains tag \"%s\" with value \"%s\" which is "
                         "not allowed with this token. Allowed values in token are %s", k,
                         json_string_value(v), q);
                free(q);
                json_decref(sv);
                rc = -1;
                break;
            }
        }
        if (rc)
            break;
    }
    json_decref(sk);
    if (rc)
        return rc;
    if (c->workload && c->workload[0]) {
        if (!dp_workload) {
            snprintf(err, errlen, "dataplane has no workload label required by the token");
            return -1;
        }
        if (strcmp(dp_workload, c->workload) != 0) {
            snprintf(err, errlen, "dataplane workload \"%s\" is not allowed with this token. "
                     "Allowed workload in token is \"%s\"", dp_workload, c->workload);
            return -1;
        }
    }
    return 0;
}

static void
tags_merge(json_t *acc, const json_t *tags)
{
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)tags, k, v) {
        if (!json_is_string(v))
            continue;
        json_t *arr = json_object_get(acc, k);
        if (!arr) {
            arr = json_array();
            json_object_set_new(acc, k, arr);
        }
        if (!str_array_has(arr, json_string_value(v)))
            json_array_append(arr, v);
    }
}

json_t *
km_token_dataplane_tags(const json_t *dp_spec)
{
    json_t *acc = json_object();
    const json_t *net = json_object_get(dp_spec, "networking");
    const json_t *gw = json_object_get(net, "gateway");
    if (json_is_object(gw)) {
        tags_merge(acc, json_object_get(gw, "tags"));
    } else {
        size_t i;
        json_t *in;
        json_array_foreach (json_object_get(net, "inbound"), i, in)
            tags_merge(acc, json_object_get(in, "tags"));
    }
    const char *k;
    json_t *v;
    json_object_foreach (acc, k, v)
        json_object_set_new(acc, k, sorted_unique(v));
    return acc;
}

int
km_token_authenticate_dataplane(struct km_store *s, const char *token,
                                const struct km_resource *dp, char *err, size_t errlen)
{
    struct km_dp_claims c = {0};
    int rc = km_token_verify_dataplane(s, token, dp->mesh, dp->name, &c, err, errlen);
    if (rc == 0) {
        json_t *tags = km_token_dataplane_tags(dp->spec);
        const json_t *w = json_object_get(dp->labels, "kuma.io/workload");
        rc = km_token_check_bindings(&c, tags, json_is_string(w) ? json_string_value(w) : NULL,
                                     err, errlen);
        json_decref(tags);
    }
    km_dp_claims_deinit(&c);
    return rc;
}

/* ---- users ---- */

void
km_user_init(struct km_user *u, const char *name)
{
    u->name = km_xstrdup(name ? name : "");
    u->groups = NULL;
    u->ngroups = 0;
}

void
km_user_add_group(struct km_user *u, const char *group)
{
    u->groups = km_xrealloc(u->groups, (u->ngroups + 1) * sizeof(*u->groups));
    u->groups[u->ngroups++] = km_xstrdup(group);
}

void
km_user_deinit(struct km_user *u)
{
    for (size_t i = 0; i < u->ngroups; i++)
        free(u->groups[i]);
    KM_FREE(u->groups);
    KM_FREE(u->name);
    u->ngroups = 0;
}

bool
km_user_in_group(const struct km_user *u, const char *group)
{
    for (size_t i = 0; i < u->ngroups; i++) {
        if (strcmp(u->groups[i], group) == 0)
            return true;
    }
    return false;
}

bool
km_user_is_admin(const struct km_user *u)
{
    return (u->name && strcmp(u->name, KM_USER_ADMIN) == 0) ||
           km_user_in_group(u, KM_GROUP_ADMIN);
}

char *
km_user_string(const struct km_user *u)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_printf(&b, "%s/", u->name ? u->name : "");
    for (size_t i = 0; i < u->ngroups; i++)
        km_sbuf_printf(&b, "%s%s", i ? "," : "", u->groups[i]);
    return km_sbuf_take(&b);
}

int
km_token_issue_user(struct km_store *s, const char *name, const char *const *groups,
                    size_t ngroups, int64_t valid_for_s, char **token, char *err, size_t errlen)
{
    *token = NULL;
    if (!name || !name[0]) {
        snprintf(err, errlen, "name: cannot be empty");
        return KM_EINVAL;
    }
    if (valid_for_s <= 0 || valid_for_s > (int64_t)1000 * 365 * 24 * 3600) {
        snprintf(err, errlen, "validFor: must be between 1s and 1000 years");
        return KM_EINVAL;
    }
    json_t *g = json_null();
    if (groups) {
        g = json_array();
        for (size_t i = 0; i < ngroups; i++)
            json_array_append_new(g, json_string(groups[i]));
    }
    json_t *c = json_pack("{s:s, s:o}", "Name", name, "Groups", g);
    int rc = issue(s, "", KM_TOKENS_USER_KEY_PREFIX, c, valid_for_s, token, err, errlen);
    json_decref(c);
    return rc;
}

int
km_token_verify_user(struct km_store *s, const char *token, struct km_user *u, char *err,
                     size_t errlen)
{
    json_t *c = NULL;
    u->name = NULL;
    u->groups = NULL;
    u->ngroups = 0;
    if (validate_token(s, token, "", KM_TOKENS_USER_KEY_PREFIX, KM_TOKENS_USER_REVOCATIONS, &c,
                       err, errlen))
        return -1;
    char *name = claim_str_dup(c, "Name");
    km_user_init(u, name);
    free(name);
    const json_t *g = claim_get(c, "Groups");
    size_t i;
    json_t *e;
    json_array_foreach (g, i, e) {
        if (json_is_string(e))
            km_user_add_group(u, json_string_value(e));
    }
    json_decref(c);
    return 0;
}
