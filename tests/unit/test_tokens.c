/* Dataplane / user tokens (src/cp/tokens.c) and API server access (src/cp/api_tokens.c). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include "test.h"

#include <km/cp/resource.h>
#include <km/cp/store.h>
#include <km/cp/tokens.h>

static struct km_store *
store_with_meshes(void)
{
    struct km_store *s = km_store_memory_new();
    const char *meshes[] = {"default", "other"};
    for (size_t i = 0; i < 2; i++) {
        struct km_resource *m = km_resource_new(km_registry_mesh(), "", meshes[i]);
        ASSERT_INT_EQ(km_store_create(s, m), 0);
        km_resource_free(m);
    }
    return s;
}

static void
put_secret(struct km_store *s, const char *mesh, const char *name, const char *b64)
{
    const struct km_rtype *t = km_registry_find(mesh[0] ? "Secret" : "GlobalSecret");
    struct km_resource *r = km_resource_new(t, mesh, name);
    json_object_set_new(r->spec, "data", json_string(b64));
    struct km_resource *old = NULL;
    if (km_store_get(s, t, mesh, name, &old) == 0) {
        r->version = old->version;
        ASSERT_INT_EQ(km_store_update(s, r), 0);
    } else {
        ASSERT_INT_EQ(km_store_create(s, r), 0);
    }
    km_resource_free(old);
    km_resource_free(r);
}

static char *
b64std(const char *s)
{
    /* small standard base64 for test data */
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(s);
    char *out = calloc(1, (n + 2) / 3 * 4 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)(unsigned char)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)(unsigned char)s[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)s[i + 2];
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = i + 1 < n ? tbl[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    return out;
}

/* The PEM of a stored key secret. */
static char *
secret_pem(struct km_store *s, const char *mesh, const char *name)
{
    const struct km_rtype *t = km_registry_find(mesh[0] ? "Secret" : "GlobalSecret");
    struct km_resource *r = NULL;
    ASSERT_INT_EQ(km_store_get(s, t, mesh, name, &r), 0);
    const char *b64 = json_string_value(json_object_get(r->spec, "data"));
    /* decode via the url decoder after mapping the alphabet */
    char *u = strdup(b64);
    size_t n = strlen(u);
    while (n && u[n - 1] == '=')
        u[--n] = 0;
    for (char *p = u; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    size_t len = 0;
    char *pem = (char *)km_b64url_decode(u, n, &len);
    ASSERT(pem != NULL);
    free(u);
    km_resource_free(r);
    return pem;
}

static json_t *
claims_of(const char *token)
{
    json_t *h = NULL, *c = NULL;
    char err[256];
    ASSERT_INT_EQ(km_jwt_decode(token, &h, &c, err, sizeof(err)), 0);
    json_decref(h);
    return c;
}

static json_t *
header_of(const char *token)
{
    json_t *h = NULL, *c = NULL;
    char err[256];
    ASSERT_INT_EQ(km_jwt_decode(token, &h, &c, err, sizeof(err)), 0);
    json_decref(c);
    return h;
}

static char *
issue_dp(struct km_store *s, const char *mesh, const char *name, const char *tags_json)
{
    json_t *tags = tags_json ? json_loads(tags_json, 0, NULL) : NULL;
    char *tok = NULL;
    char err[512];
    int rc = km_token_issue_dataplane(s, mesh, name, tags, NULL, NULL, 3600, &tok, err,
                                      sizeof(err));
    if (rc)
        KM_FAIL_AT("issue: %s", err);
    json_decref(tags);
    return tok;
}

KM_TEST(tokens_b64url_round_trip)
{
    unsigned char buf[64];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(0xff - i * 7);
    for (size_t len = 0; len <= 12; len++) {
        char *e = km_b64url_encode(buf, len);
        ASSERT_INT_EQ(strlen(e), (len * 4 + 2) / 3);
        ASSERT(strchr(e, '=') == NULL && strchr(e, '+') == NULL && strchr(e, '/') == NULL);
        size_t n = 99;
        unsigned char *d = km_b64url_decode(e, strlen(e), &n);
        ASSERT(d != NULL);
        ASSERT_INT_EQ(n, len);
        ASSERT(memcmp(d, buf, len) == 0);
        free(d);
        free(e);
    }
    /* 0xfb 0xff encodes with both url-only characters */
    unsigned char uc[] = {0xfb, 0xff, 0xbf};
    char *e = km_b64url_encode(uc, 3);
    ASSERT_STR_EQ(e, "-_-_");
    free(e);
    size_t n;
    const char *bad[] = {"a", "abcde", "ab=", "ab+c", "ab/c", "a b", "ab\n", "abc="};
    for (size_t i = 0; i < KM_ARRAY_LEN(bad); i++)
        ASSERT(km_b64url_decode(bad[i], strlen(bad[i]), &n) == NULL);
    unsigned char *d = km_b64url_decode("", 0, &n);
    ASSERT(d != NULL);
    ASSERT_INT_EQ(n, 0);
    free(d);
}

KM_TEST(tokens_dataplane_issue_and_verify)
{
    struct km_store *s = store_with_meshes();
    char *tok = issue_dp(s, "default", "dp-1", "{\"kuma.io/service\": [\"web\", \"api\"]}");
    /* header and Kuma's claim names */
    json_t *h = header_of(tok);
    ASSERT_STR_EQ(json_string_value(json_object_get(h, "alg")), "RS256");
    ASSERT_STR_EQ(json_string_value(json_object_get(h, "kid")), "1");
    ASSERT_STR_EQ(json_string_value(json_object_get(h, "typ")), "JWT");
    json_decref(h);
    json_t *c = claims_of(tok);
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "Name")), "dp-1");
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "Mesh")), "default");
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "Type")), "");
    ASSERT_INT_EQ(json_array_size(json_object_get(json_object_get(c, "Tags"), "kuma.io/service")),
                  2);
    int64_t iat = json_integer_value(json_object_get(c, "iat"));
    int64_t exp = json_integer_value(json_object_get(c, "exp"));
    ASSERT_INT_EQ(exp - iat, 3600 + 5);
    ASSERT(llabs((long long)(iat - (time(NULL) - 5))) <= 2);
    ASSERT_INT_EQ(strlen(json_string_value(json_object_get(c, "jti"))), 36);
    json_decref(c);
    /* the signing key was created lazily as Kuma names it */
    char *pem = secret_pem(s, "default", "dataplane-token-signing-key-default-1");
    ASSERT_STR_CONTAINS(pem, "-----BEGIN RSA PRIVATE KEY-----");
    free(pem);

    struct km_dp_claims cl = {0};
    char err[512] = "";
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "default", "dp-1", &cl, err, sizeof(err)), 0);
    ASSERT_STR_EQ(cl.name, "dp-1");
    ASSERT_STR_EQ(cl.mesh, "default");
    ASSERT_INT_EQ(json_array_size(json_object_get(cl.tags, "kuma.io/service")), 2);
    km_dp_claims_deinit(&cl);
    /* name NULL: no name check */
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "default", NULL, NULL, err, sizeof(err)), 0);
    /* another dataplane's token */
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "default", "dp-2", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_EQ(err, "proxy name from requestor: dp-2 is different than in token: dp-1");
    free(tok);
    /* a token without a name fits any dataplane of the mesh */
    tok = issue_dp(s, "default", NULL, NULL);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "default", "anything", NULL, err, sizeof(err)),
                  0);
    free(tok);
    km_store_free(s);
}

KM_TEST(tokens_dataplane_tampered_and_malformed)
{
    struct km_store *s = store_with_meshes();
    char *tok = issue_dp(s, "default", "dp-1", NULL);
    char err[512];
    /* claims swapped for another name, signature kept */
    char *dot1 = strchr(tok, '.'), *dot2 = strchr(dot1 + 1, '.');
    json_t *c = claims_of(tok);
    json_object_set_new(c, "Name", json_string("dp-2"));
    char *cj = json_dumps(c, JSON_COMPACT);
    char *c64 = km_b64url_encode((const unsigned char *)cj, strlen(cj));
    char *forged = km_xasprintf("%.*s.%s%s", (int)(dot1 - tok), tok, c64, dot2);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, forged, "default", "dp-2", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_EQ(err, "could not parse token: token signature is invalid: crypto/rsa: "
                       "verification error");
    free(forged);
    free(c64);
    free(cj);
    json_decref(c);
    /* one signature character changed */
    char *bad = strdup(tok);
    size_t l = strlen(bad);
    bad[l - 3] = bad[l - 3] == 'A' ? 'B' : 'A';
    ASSERT_INT_EQ(km_token_verify_dataplane(s, bad, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "signature is invalid");
    free(bad);
    /* garbage of every kind: refused with a message, no crash */
    const char *garbage[] = {"", "abc", "a.b", "a.b.c.d", "!!.@@.##", "e30.e30.", "e30.e30.AAAA",
                             "bnVsbA.bnVsbA.AAAA", "W10.e30.AAAA"};
    for (size_t i = 0; i < KM_ARRAY_LEN(garbage); i++) {
        err[0] = 0;
        ASSERT_INT_EQ(km_token_verify_dataplane(s, garbage[i], "default", NULL, NULL, err,
                                                sizeof(err)),
                      -1);
        ASSERT(err[0] != 0);
    }
    ASSERT_INT_EQ(km_token_verify_dataplane(s, "e30.e30.AAAA", "default", NULL, NULL, err,
                                            sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "JWT token must have kid header");
    ASSERT_INT_EQ(km_token_verify_dataplane(s, NULL, "default", NULL, NULL, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "dataplane token is missing");
    /* too long */
    char *huge = malloc(KM_TOKENS_MAX_LEN + 100);
    memset(huge, 'A', KM_TOKENS_MAX_LEN + 99);
    huge[KM_TOKENS_MAX_LEN + 99] = 0;
    huge[10] = '.';
    huge[20] = '.';
    ASSERT_INT_EQ(km_token_verify_dataplane(s, huge, "default", NULL, NULL, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "longer than");
    free(huge);
    /* alg other than RS256 (header {"alg":"HS256","kid":"1"}) */
    const char *hs = "{\"alg\":\"HS256\",\"kid\":\"1\",\"typ\":\"JWT\"}";
    char *h64 = km_b64url_encode((const unsigned char *)hs, strlen(hs));
    char *alg = km_xasprintf("%s%s", h64, dot1);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, alg, "default", NULL, NULL, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "unsupported token alg HS256");
    free(alg);
    free(h64);
    free(tok);
    km_store_free(s);
}

KM_TEST(tokens_dataplane_wrong_kid_and_rotation)
{
    struct km_store *s = store_with_meshes();
    char *tok1 = issue_dp(s, "default", "dp-1", NULL);
    char err[512];
    /* a second key: new tokens use it, old tokens still verify */
    char *pem2 = km_tokens_new_signing_key_pem(err, sizeof(err));
    char *b = b64std(pem2);
    put_secret(s, "default", "dataplane-token-signing-key-default-2", b);
    free(b);
    char *tok2 = issue_dp(s, "default", "dp-1", NULL);
    json_t *h = header_of(tok2);
    ASSERT_STR_EQ(json_string_value(json_object_get(h, "kid")), "2");
    json_decref(h);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok1, "default", "dp-1", NULL, err, sizeof(err)),
                  0);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok2, "default", "dp-1", NULL, err, sizeof(err)),
                  0);
    /* token signed with key 2 but claiming kid 1 */
    json_t *c = json_pack("{s:s, s:s}", "Name", "dp-1", "Mesh", "default");
    char *wrong = km_jwt_sign(c, pem2, "1", 60, 0, err, sizeof(err));
    ASSERT(wrong != NULL);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, wrong, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "signature is invalid");
    free(wrong);
    /* unknown kid */
    wrong = km_jwt_sign(c, pem2, "9", 60, 0, err, sizeof(err));
    ASSERT_INT_EQ(km_token_verify_dataplane(s, wrong, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_EQ(err, "there is no signing key with KID 9. Secret of name "
                       "\"dataplane-token-signing-key-default-9\" in mesh \"default\" is not "
                       "found. If signing key was rotated, regenerate the token");
    free(wrong);
    /* kid that is not a serial */
    wrong = km_jwt_sign(c, pem2, "../x", 60, 0, err, sizeof(err));
    ASSERT_INT_EQ(km_token_verify_dataplane(s, wrong, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "there is no signing key");
    free(wrong);
    /* deleting key 1 invalidates the old tokens */
    ASSERT_INT_EQ(km_store_remove(s, km_registry_find("Secret"), "default",
                                  "dataplane-token-signing-key-default-1", 0),
                  0);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok1, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "there is no signing key with KID 1");
    json_decref(c);
    free(pem2);
    free(tok1);
    free(tok2);
    km_store_free(s);
}

KM_TEST(tokens_dataplane_wrong_mesh)
{
    struct km_store *s = store_with_meshes();
    char err[512];
    char *tok = issue_dp(s, "default", "dp-1", NULL);
    /* the other mesh has its own key: the default mesh's token does not verify there */
    ASSERT_INT_EQ(km_tokens_ensure_signing_key(s, "other", err, sizeof(err)), 0);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "other", "dp-1", NULL, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "signature is invalid");
    free(tok);
    /* signed with the other mesh's key but bound to mesh default */
    char *pem = secret_pem(s, "other", "dataplane-token-signing-key-other-1");
    json_t *c = json_pack("{s:s, s:s}", "Name", "dp-1", "Mesh", "default");
    tok = km_jwt_sign(c, pem, "1", 60, 0, err, sizeof(err));
    ASSERT_INT_EQ(km_token_verify_dataplane(s, tok, "other", "dp-1", NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "proxy mesh from requestor: other is different than in token: default");
    free(tok);
    json_decref(c);
    free(pem);
    /* a mesh that does not exist: no key, and none is created */
    ASSERT_INT_EQ(km_tokens_ensure_signing_key(s, "ghost", err, sizeof(err)), KM_ENOTFOUND);
    char *t2 = NULL;
    ASSERT_INT_EQ(km_token_issue_dataplane(s, "ghost", "x", NULL, NULL, NULL, 60, &t2, err,
                                           sizeof(err)),
                  KM_ENOTFOUND);
    ASSERT_STR_CONTAINS(err, "Secret of name \"dataplane-token-signing-key-ghost-1\" in mesh "
                             "\"ghost\" is not found");
    ASSERT(t2 == NULL);
    km_store_free(s);
}

KM_TEST(tokens_expiry_and_not_before)
{
    struct km_store *s = store_with_meshes();
    char err[512];
    ASSERT_INT_EQ(km_tokens_ensure_signing_key(s, "default", err, sizeof(err)), 0);
    char *pem = secret_pem(s, "default", "dataplane-token-signing-key-default-1");
    json_t *c = json_pack("{s:s, s:s}", "Name", "dp-1", "Mesh", "default");
    int64_t now = (int64_t)time(NULL);
    /* issued two hours ago for one hour */
    char *old = km_jwt_sign(c, pem, "1", 3600, now - 7200, err, sizeof(err));
    ASSERT_INT_EQ(km_jwt_verify(old, pem, 0, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "token has invalid claims: token is expired");
    ASSERT_INT_EQ(km_jwt_verify(old, pem, now - 7000, err, sizeof(err)), 0);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, old, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_EQ(err, "could not parse token: token has invalid claims: token is expired");
    free(old);
    /* issued in the future */
    char *future = km_jwt_sign(c, pem, "1", 3600, now + 600, err, sizeof(err));
    ASSERT_INT_EQ(km_token_verify_dataplane(s, future, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_CONTAINS(err, "token is not yet valid");
    free(future);
    /* validFor 0: valid for the 5 s of skew only */
    char *zero = km_jwt_sign(c, pem, "1", 0, now, err, sizeof(err));
    ASSERT_INT_EQ(km_jwt_verify(zero, pem, now, err, sizeof(err)), 0);
    ASSERT_INT_EQ(km_jwt_verify(zero, pem, now + 1, err, sizeof(err)), -1);
    free(zero);
    json_decref(c);
    free(pem);
    km_store_free(s);
}

KM_TEST(tokens_dataplane_revocation)
{
    struct km_store *s = store_with_meshes();
    char err[512];
    char *t1 = issue_dp(s, "default", "dp-1", NULL);
    char *t2 = issue_dp(s, "default", "dp-1", NULL);
    json_t *c = claims_of(t1);
    const char *jti = json_string_value(json_object_get(c, "jti"));
    /* empty list, then a list with t1's id (comma separated, trailing newline) */
    put_secret(s, "default", "dataplane-token-revocations-default", "");
    ASSERT_INT_EQ(km_token_verify_dataplane(s, t1, "default", "dp-1", NULL, err, sizeof(err)), 0);
    char *list = km_xasprintf("aaaa,%s\n", jti);
    char *b = b64std(list);
    put_secret(s, "default", "dataplane-token-revocations-default", b);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, t1, "default", "dp-1", NULL, err, sizeof(err)),
                  -1);
    ASSERT_STR_EQ(err, "token is revoked");
    ASSERT_INT_EQ(km_token_verify_dataplane(s, t2, "default", "dp-1", NULL, err, sizeof(err)), 0);
    /* the list of another mesh does not apply */
    free(b);
    free(list);
    json_decref(c);
    free(t1);
    free(t2);
    km_store_free(s);
}

KM_TEST(tokens_dataplane_tag_and_workload_bindings)
{
    json_t *spec = json_loads(
        "{\"networking\": {\"address\": \"10.0.0.1\", \"inbound\": ["
        "{\"port\": 1, \"tags\": {\"kuma.io/service\": \"web\", \"team\": \"a\"}},"
        "{\"port\": 2, \"tags\": {\"kuma.io/service\": \"web-api\", \"team\": \"a\"}}]}}",
        0, NULL);
    json_t *tags = km_token_dataplane_tags(spec);
    char *dump = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS);
    ASSERT_STR_EQ(dump, "{\"kuma.io/service\":[\"web\",\"web-api\"],\"team\":[\"a\"]}");
    free(dump);
    struct km_dp_claims c = {0};
    char err[512];
    c.tags = json_loads("{\"kuma.io/service\": [\"web\", \"web-api\"]}", 0, NULL);
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, NULL, err, sizeof(err)), 0);
    json_decref(c.tags);
    c.tags = json_loads("{\"kuma.io/service\": [\"web\"]}", 0, NULL);
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "dataplane contains tag \"kuma.io/service\" with value \"web-api\" which "
                       "is not allowed with this token. Allowed values in token are [\"web\"]");
    json_decref(c.tags);
    c.tags = json_loads("{\"version\": [\"v1\"]}", 0, NULL);
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "dataplane has no tag \"version\" required by the token");
    json_decref(c.tags);
    c.tags = json_object();
    c.workload = strdup("backend");
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "dataplane has no workload label required by the token");
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, "front", err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "dataplane workload \"front\" is not allowed with this token");
    ASSERT_INT_EQ(km_token_check_bindings(&c, tags, "backend", err, sizeof(err)), 0);
    km_dp_claims_deinit(&c);
    json_decref(tags);
    /* gateway tags */
    json_t *gw = json_loads("{\"networking\": {\"gateway\": {\"tags\": {\"kuma.io/service\": "
                            "\"gw\"}}}}",
                            0, NULL);
    tags = km_token_dataplane_tags(gw);
    ASSERT_STR_EQ(json_string_value(json_array_get(json_object_get(tags, "kuma.io/service"), 0)),
                  "gw");
    json_decref(tags);
    json_decref(gw);

    /* everything at once against a Dataplane resource */
    struct km_store *s = store_with_meshes();
    struct km_resource *dp = km_resource_new(km_registry_find("Dataplane"), "default", "dp-1");
    json_decref(dp->spec);
    dp->spec = spec;
    char *tok = issue_dp(s, "default", "dp-1", "{\"kuma.io/service\": [\"web\", \"web-api\"]}");
    ASSERT_INT_EQ(km_token_authenticate_dataplane(s, tok, dp, err, sizeof(err)), 0);
    free(tok);
    tok = issue_dp(s, "default", "dp-1", "{\"kuma.io/service\": [\"web\"]}");
    ASSERT_INT_EQ(km_token_authenticate_dataplane(s, tok, dp, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "not allowed with this token");
    free(tok);
    ASSERT_INT_EQ(km_token_authenticate_dataplane(s, "", dp, err, sizeof(err)), -1);
    km_resource_free(dp);
    km_store_free(s);
}

KM_TEST(tokens_user_issue_verify_revoke_bootstrap)
{
    struct km_store *s = km_store_memory_new();
    char err[512];
    const char *groups[] = {"team-a", "team-b"};
    char *tok = NULL;
    ASSERT_INT_EQ(km_token_issue_user(s, "john", groups, 2, 600, &tok, err, sizeof(err)), 0);
    json_t *c = claims_of(tok);
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "Name")), "john");
    ASSERT_INT_EQ(json_array_size(json_object_get(c, "Groups")), 2);
    struct km_user u;
    ASSERT_INT_EQ(km_token_verify_user(s, tok, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "john");
    ASSERT_INT_EQ(u.ngroups, 2);
    ASSERT(!km_user_is_admin(&u));
    char *us = km_user_string(&u);
    ASSERT_STR_EQ(us, "john/team-a,team-b");
    free(us);
    km_user_deinit(&u);
    /* the key is a GlobalSecret named as Kuma's */
    char *pem = secret_pem(s, "", "user-token-signing-key-1");
    free(pem);
    /* revoked */
    char *list = km_xasprintf("%s", json_string_value(json_object_get(c, "jti")));
    char *b = b64std(list);
    put_secret(s, "", "user-token-revocations", b);
    ASSERT_INT_EQ(km_token_verify_user(s, tok, &u, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "token is revoked");
    free(b);
    free(list);
    json_decref(c);
    free(tok);
    /* groups NULL gives a null claim; empty name and validFor 0 are refused */
    ASSERT_INT_EQ(km_token_issue_user(s, "x", NULL, 0, 600, &tok, err, sizeof(err)), 0);
    c = claims_of(tok);
    ASSERT(json_is_null(json_object_get(c, "Groups")));
    json_decref(c);
    free(tok);
    ASSERT_INT_EQ(km_token_issue_user(s, "", NULL, 0, 600, &tok, err, sizeof(err)), KM_EINVAL);
    ASSERT_INT_EQ(km_token_issue_user(s, "x", NULL, 0, 0, &tok, err, sizeof(err)), KM_EINVAL);
    /* a dataplane token is not a user token (different keys) */
    /* bootstrap: admin-user-token holds an admin token; a second run keeps it */
    ASSERT_INT_EQ(km_tokens_bootstrap(s, err, sizeof(err)), 0);
    char *admin = secret_pem(s, "", "admin-user-token");
    ASSERT_INT_EQ(km_tokens_bootstrap(s, err, sizeof(err)), 0);
    char *admin2 = secret_pem(s, "", "admin-user-token");
    ASSERT_STR_EQ(admin, admin2);
    ASSERT_INT_EQ(km_token_verify_user(s, admin, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "mesh-system:admin");
    ASSERT(km_user_is_admin(&u));
    km_user_deinit(&u);
    free(admin);
    free(admin2);
    km_store_free(s);
}

static struct sockaddr_in
v4(const char *ip)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

KM_TEST(tokens_api_direct_loopback)
{
    struct sockaddr_in lo = v4("127.0.0.1"), lo2 = v4("127.0.0.2"), ext = v4("10.1.2.3");
    struct sockaddr_in6 lo6;
    memset(&lo6, 0, sizeof(lo6));
    lo6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::1", &lo6.sin6_addr);
    struct km_api_peer p = {.addr = (struct sockaddr *)&lo, .host = "localhost:5681"};
    ASSERT(km_api_is_direct_loopback(&p));
    p.host = "127.0.0.1:5681";
    ASSERT(km_api_is_direct_loopback(&p));
    p.host = "[::1]:5681";
    ASSERT(km_api_is_direct_loopback(&p));
    p.host = "LOCALHOST.";
    ASSERT(km_api_is_direct_loopback(&p));
    p.addr = (struct sockaddr *)&lo2; /* all of 127/8 is loopback, as Go's IsLoopback */
    ASSERT(km_api_is_direct_loopback(&p));
    p.addr = (struct sockaddr *)&lo6;
    ASSERT(km_api_is_direct_loopback(&p));
    p.addr = (struct sockaddr *)&ext;
    ASSERT(!km_api_is_direct_loopback(&p));
    p.addr = NULL;
    ASSERT(!km_api_is_direct_loopback(&p));
    p.addr = (struct sockaddr *)&lo;
    const char *bad_hosts[] = {"example.com", "10.0.0.1:5681", "localhost:", "localhost:99999",
                               "user@localhost", "localhost/x", "", "::1", "[::1"};
    for (size_t i = 0; i < KM_ARRAY_LEN(bad_hosts); i++) {
        p.host = bad_hosts[i];
        if (km_api_is_direct_loopback(&p))
            KM_FAIL_AT("host %s counted as loopback", bad_hosts[i]);
    }
    p.host = NULL;
    ASSERT(!km_api_is_direct_loopback(&p));
    p.host = "localhost:5681";
    p.x_forwarded_for = "1.2.3.4";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.x_forwarded_for = NULL;
    p.forwarded = "for=1.2.3.4";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.forwarded = NULL;
    p.x_real_ip = "1.2.3.4";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.x_real_ip = NULL;
    p.sec_fetch_site = "cross-site";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.sec_fetch_site = "same-origin";
    ASSERT(km_api_is_direct_loopback(&p));
    p.origin = "http://localhost:5681";
    ASSERT(km_api_is_direct_loopback(&p));
    p.origin = "http://localhost:5682";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.origin = "http://evil.example.com";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.origin = "http://localhost:5681/";
    ASSERT(!km_api_is_direct_loopback(&p));
    p.origin = "null";
    ASSERT(!km_api_is_direct_loopback(&p));
}

KM_TEST(tokens_api_authenticate_and_access)
{
    struct km_store *s = km_store_memory_new();
    struct sockaddr_in lo = v4("127.0.0.1");
    char err[512];
    struct km_user u;
    struct km_api_peer p = {.addr = (struct sockaddr *)&lo, .host = "localhost"};
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "mesh-system:admin");
    ASSERT(km_user_in_group(&u, "mesh-system:authenticated"));
    km_user_deinit(&u);
    /* anonymous */
    p.host = "example.com";
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "mesh-system:anonymous");
    const char *mesh_item[] = {"meshes", "default"};
    const char *secrets[] = {"meshes", "default", "secrets"};
    const char *gsecret[] = {"global-secrets", "admin-user-token"};
    const char *dps[] = {"meshes", "default", "dataplanes"};
    ASSERT(km_api_access_allowed(&u, "GET", mesh_item, 2, err, sizeof(err)));
    ASSERT(km_api_access_allowed(&u, "GET", dps, 3, err, sizeof(err)));
    ASSERT(!km_api_access_allowed(&u, "PUT", mesh_item, 2, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "cannot access changes to the resource of type \"Mesh\"");
    ASSERT(!km_api_access_allowed(&u, "DELETE", mesh_item, 2, err, sizeof(err)));
    ASSERT(!km_api_access_allowed(&u, "GET", secrets, 3, err, sizeof(err)));
    ASSERT_STR_EQ(err, "user \"mesh-system:anonymous/mesh-system:unauthenticated\" cannot access "
                       "the resource of type \"Secret\"");
    ASSERT(!km_api_access_allowed(&u, "GET", gsecret, 2, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "\"GlobalSecret\"");
    km_user_deinit(&u);
    /* bearer tokens */
    const char *admin_groups[] = {"mesh-system:admin"};
    char *tok = NULL;
    ASSERT_INT_EQ(km_token_issue_user(s, "ops", admin_groups, 1, 600, &tok, err, sizeof(err)), 0);
    char *hdr = km_xasprintf("Bearer %s", tok);
    p.authorization = hdr;
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "ops");
    ASSERT(km_user_is_admin(&u));
    ASSERT(km_api_access_allowed(&u, "PUT", secrets, 3, err, sizeof(err)));
    km_user_deinit(&u);
    free(hdr);
    free(tok);
    ASSERT_INT_EQ(km_token_issue_user(s, "dev", NULL, 0, 600, &tok, err, sizeof(err)), 0);
    hdr = km_xasprintf("Bearer %s", tok);
    p.authorization = hdr;
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), 0);
    ASSERT(!km_user_is_admin(&u));
    ASSERT(!km_api_access_allowed(&u, "PUT", mesh_item, 2, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "user \"dev/mesh-system:authenticated\"");
    km_user_deinit(&u);
    free(hdr);
    free(tok);
    p.authorization = "Bearer not.a.token";
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "could not parse token");
    p.authorization = "Basic abc"; /* not a bearer token: ignored */
    ASSERT_INT_EQ(km_api_authenticate(s, &p, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.name, "mesh-system:anonymous");
    km_user_deinit(&u);
    km_store_free(s);
}

static json_t *
answer_json_of(const struct km_api_answer *a)
{
    json_t *j = json_loads(a->body, 0, NULL);
    ASSERT(j != NULL);
    return j;
}

KM_TEST(tokens_api_endpoints)
{
    struct km_store *s = store_with_meshes();
    struct km_user admin, anon;
    km_user_init(&admin, "mesh-system:admin");
    km_user_add_group(&admin, "mesh-system:admin");
    km_user_init(&anon, "mesh-system:anonymous");
    km_user_add_group(&anon, "mesh-system:unauthenticated");
    struct km_api_answer a = {0};
#define USER_REQ(who_, req_)                                                                       \
    do {                                                                                           \
        free(a.body);                                                                              \
        a.body = NULL;                                                                             \
        km_api_tokens_user(s, &(who_), req_, strlen(req_), &a);                                    \
    } while (0)
#define DP_REQ(who_, req_)                                                                         \
    do {                                                                                           \
        free(a.body);                                                                              \
        a.body = NULL;                                                                             \
        km_api_tokens_dataplane(s, &(who_), req_, strlen(req_), &a);                               \
    } while (0)
    /* Kuma's golden answers (pkg/plugins/authn/api-server/tokens/ws/testdata) */
    USER_REQ(admin, "{\"groups\": [\"a\"], \"validFor\": \"24h\"}");
    ASSERT_INT_EQ(a.status, 400);
    json_t *j = answer_json_of(&a);
    json_t *want = json_loads(
        "{\"type\": \"/std-errors\", \"status\": 400, \"title\": \"Invalid request\", "
        "\"detail\": \"Resource is not valid\", \"invalid_parameters\": [{\"field\": \"name\", "
        "\"reason\": \"cannot be empty\"}], \"details\": \"Resource is not valid\", \"causes\": "
        "[{\"field\": \"name\", \"message\": \"cannot be empty\"}]}",
        0, NULL);
    ASSERT(json_equal(j, want));
    json_decref(j);
    json_decref(want);
    USER_REQ(admin, "{\"name\": \"john\"}");
    j = answer_json_of(&a);
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_array_get(json_object_get(j, "invalid_parameters"), 0), "reason")),
                  "cannot be empty");
    json_decref(j);
    USER_REQ(admin, "{\"name\": \"john\", \"validFor\": \"0s\"}");
    ASSERT_STR_CONTAINS(a.body, "cannot be empty or nil");
    USER_REQ(admin, "{\"name\": \"john\", \"validFor\": \"soon\"}");
    ASSERT_STR_CONTAINS(a.body, "is invalid: time: invalid duration \\\"soon\\\"");
    USER_REQ(admin, "{\"name\": 5, \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 400);
    USER_REQ(admin, "not json");
    ASSERT_INT_EQ(a.status, 400);
    USER_REQ(admin, "{\"name\": \"john\", \"groups\": [1], \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 400);
    USER_REQ(anon, "{\"name\": \"john\", \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 403);
    j = answer_json_of(&a);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "title")), "Access Denied");
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "detail")),
                  "user \"mesh-system:anonymous/mesh-system:unauthenticated\" cannot access "
                  "generate user token");
    json_decref(j);
    USER_REQ(admin, "{\"name\": \"john\", \"groups\": [\"g\"], \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 200);
    ASSERT_STR_EQ(a.content_type, "text/plain");
    struct km_user u;
    char err[512];
    ASSERT_INT_EQ(km_token_verify_user(s, a.body, &u, err, sizeof(err)), 0);
    ASSERT_STR_EQ(u.groups[0], "g");
    km_user_deinit(&u);

    /* dataplane tokens */
    DP_REQ(admin, "{\"name\": \"dp-1\", \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 400);
    ASSERT_STR_CONTAINS(a.body, "\"field\": \"mesh\"");
    DP_REQ(admin, "{\"mesh\": \"default\", \"type\": \"sidecar\"}");
    ASSERT_STR_CONTAINS(a.body, "sidecar is not a valid proxy type");
    DP_REQ(admin, "{\"mesh\": \"default\", \"tags\": {\"a\": \"b\"}}");
    ASSERT_INT_EQ(a.status, 400);
    DP_REQ(anon, "{\"mesh\": \"default\", \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 403);
    ASSERT_STR_CONTAINS(a.body, "cannot access generate dataplane token");
    DP_REQ(admin, "{\"mesh\": \"ghost\", \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 404);
    ASSERT_STR_CONTAINS(a.body, "Signing Key not found");
    DP_REQ(admin, "{\"name\": \"dp-1\", \"mesh\": \"default\", \"tags\": {\"kuma.io/service\": "
                  "[\"web\"]}, \"type\": \"dataplane\", \"validFor\": \"1h\"}");
    ASSERT_INT_EQ(a.status, 200);
    struct km_dp_claims c = {0};
    ASSERT_INT_EQ(km_token_verify_dataplane(s, a.body, "default", "dp-1", &c, err, sizeof(err)),
                  0);
    ASSERT_STR_EQ(c.type, "dataplane");
    ASSERT_INT_EQ(c.exp - c.iat, 3605);
    km_dp_claims_deinit(&c);
    /* no validFor: Kuma's 10 years */
    DP_REQ(admin, "{\"mesh\": \"default\"}");
    ASSERT_INT_EQ(a.status, 200);
    ASSERT_INT_EQ(km_token_verify_dataplane(s, a.body, "default", "x", &c, err, sizeof(err)), 0);
    ASSERT_INT_EQ(c.exp - c.iat, KM_TOKENS_DEFAULT_VALID_FOR_S + 5);
    km_dp_claims_deinit(&c);
    free(a.body);
    km_user_deinit(&admin);
    km_user_deinit(&anon);
    km_store_free(s);
}
