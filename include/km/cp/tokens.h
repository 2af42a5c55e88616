/* Tokens of the control plane, as Kuma 2.x issues them: RS256 JWTs signed with RSA-2048 keys
 * that live in the store.
 *
 * - Dataplane tokens: claims Name, Mesh, Tags (map of lists), Type, Workload plus exp/nbf/iat/jti
 *   (Go's field names, as Kuma marshals them). Signing keys are Secrets of the mesh named
 *   "dataplane-token-signing-key-<mesh>-<serial>" (PEM "RSA PRIVATE KEY" in data); the highest
 *   serial signs and its serial is the "kid" header; any stored serial verifies. Revoked token
 *   ids are listed, comma separated, in Secret "dataplane-token-revocations-<mesh>".
 * - User tokens: claims Name, Groups; GlobalSecrets "user-token-signing-key-<serial>", revocations
 *   in GlobalSecret "user-token-revocations". At start kuma-cp stores an admin token in
 *   GlobalSecret "admin-user-token".
 * - API server access (src/cp/api_tokens.c): direct loopback requests are admin, otherwise
 *   "Authorization: Bearer <user token>" names the user, else the anonymous user.
 *
 * Every function is thread safe (only the store is shared). Errors are written to <err> as
 * sentences naming what is wrong ("token is expired", "Secret ... is not found"). */
#ifndef KM_CP_TOKENS_H
#define KM_CP_TOKENS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/cp/store.h>

#define KM_TOKENS_DP_KEY_PREFIX      "dataplane-token-signing-key-"
#define KM_TOKENS_DP_REVOCATIONS     "dataplane-token-revocations-"
#define KM_TOKENS_USER_KEY_PREFIX    "user-token-signing-key"
#define KM_TOKENS_USER_REVOCATIONS   "user-token-revocations"
#define KM_TOKENS_ADMIN_TOKEN        "admin-user-token"
#define KM_TOKENS_RSA_BITS           2048
/* Longest token accepted for verification (bytes). */
#define KM_TOKENS_MAX_LEN            (16 * 1024)
/* Kuma's default validity when a dataplane token request has no validFor: 10 years. */
#define KM_TOKENS_DEFAULT_VALID_FOR_S ((int64_t)10 * 365 * 24 * 3600)

/* Users of the API server (Kuma's user.User). */
#define KM_USER_ADMIN                "mesh-system:admin"
#define KM_USER_ANONYMOUS            "mesh-system:anonymous"
#define KM_GROUP_ADMIN               "mesh-system:admin"
#define KM_GROUP_AUTHENTICATED       "mesh-system:authenticated"
#define KM_GROUP_UNAUTHENTICATED     "mesh-system:unauthenticated"

/* ---- base64url (RFC 4648 section 5, no padding) ---- */

/* Encodes <len> bytes; caller frees. */
char *km_b64url_encode(const unsigned char *data, size_t len);
/* Decodes unpadded base64url; NULL on any invalid character, padding or impossible length.
 * The result is NUL terminated (not counted in *outlen); caller frees. */
unsigned char *km_b64url_decode(const char *s, size_t len, size_t *outlen);

/* ---- keys ---- */

/* A new RSA-2048 private key as PEM ("-----BEGIN RSA PRIVATE KEY-----"); caller frees. NULL with
 * a message on failure. */
char *km_tokens_new_signing_key_pem(char *err, size_t errlen);

/* Makes sure mesh <mesh> has a dataplane token signing key (creates serial 1 when none).
 * 0 when a key exists or was created; KM_ENOTFOUND when the mesh does not exist; another
 * negative KM_E* with a message otherwise. Safe to call concurrently (a lost creation race
 * counts as success). The store event callback must not call it directly (it uses the store):
 * defer to another thread. */
int km_tokens_ensure_signing_key(struct km_store *s, const char *mesh, char *err, size_t errlen);
/* Same for the user token signing key (GlobalSecret "user-token-signing-key-1"). */
int km_tokens_ensure_user_key(struct km_store *s, char *err, size_t errlen);
/* kuma-cp start: ensures the user token signing key and, when GlobalSecret "admin-user-token"
 * is missing, issues a 10-year token for user mesh-system:admin (group mesh-system:admin) and
 * stores it there. 0 on success. */
int km_tokens_bootstrap(struct km_store *s, char *err, size_t errlen);

/* ---- generic JWT (exposed for tests and offline issuing) ---- */

/* Signs <claims> (a JSON object; exp/nbf/iat/jti are added: iat = nbf = now - 5 s,
 * exp = iat + valid_for + 5 s, jti = random UUID) with the PEM private key <key_pem>, header
 * {"alg":"RS256","kid":<kid>,"typ":"JWT"}. <now_s> 0 means the current time. Caller frees. */
char *km_jwt_sign(const json_t *claims, const char *key_pem, const char *kid, int64_t valid_for_s,
                  int64_t now_s, char *err, size_t errlen);
/* Splits and checks the form of <token> without checking the signature: *header and *claims
 * get the decoded JSON objects (caller decrefs). 0 or -1 with a message. */
int km_jwt_decode(const char *token, json_t **header, json_t **claims, char *err, size_t errlen);
/* Verifies the RS256 signature of <token> against the public half of the PEM private or public
 * key <key_pem>, then exp/nbf against <now_s> (0 = now). 0, or -1 with a message. */
int km_jwt_verify(const char *token, const char *key_pem, int64_t now_s, char *err,
                  size_t errlen);

/* ---- dataplane tokens ---- */

struct km_dp_claims {
    char *name;     /* owned; "" when the token is not bound to a name */
    char *mesh;     /* owned; "" when not bound to a mesh */
    json_t *tags;   /* owned object {"tag": ["v1", "v2"]}, maybe empty */
    char *type;     /* owned; "", "dataplane", "ingress", "egress" */
    char *workload; /* owned; "" when not bound */
    char *jti;      /* owned */
    int64_t exp, nbf, iat; /* seconds since the epoch, 0 when absent */
};
void km_dp_claims_deinit(struct km_dp_claims *c);

/* Issues a dataplane token for mesh <mesh> signed with its latest key (created first when the
 * mesh exists and has none). <name>, <type>, <workload> may be NULL or ""; <tags> (may be NULL)
 * is an object of string arrays. *token is owned by the caller. Returns 0, KM_ENOTFOUND when the
 * mesh has no signing key and does not exist (message is Kuma's "there is no signing key..."),
 * KM_EINVAL for bad input, or another KM_E*. */
int km_token_issue_dataplane(struct km_store *s, const char *mesh, const char *name,
                             const json_t *tags, const char *type, const char *workload,
                             int64_t valid_for_s, char **token, char *err, size_t errlen);

/* Verifies a dataplane token presented by a proxy of mesh <mesh>: the signature with the mesh's
 * key whose serial is the token's "kid", expiry, the revocation list of the mesh; then, as
 * Kuma's universal authenticator, a name bound in the token must equal <name> (when <name> is
 * not NULL) and a mesh bound in the token must equal <mesh>. Fills <out> (may be NULL; deinit it
 * also on failure). Returns 0, or -1 with Kuma's message in <err>. */
int km_token_verify_dataplane(struct km_store *s, const char *token, const char *mesh,
                              const char *name, struct km_dp_claims *out, char *err,
                              size_t errlen);

/* The tags binding of Kuma's authenticator: every tag of the token must exist on the dataplane
 * and every value the dataplane has for it must be allowed by the token; then the workload
 * binding against the dataplane's "kuma.io/workload" label (<dp_workload>, NULL when absent).
 * <dp_tags> is the dataplane's multi-valued tag set (see km_token_dataplane_tags). */
int km_token_check_bindings(const struct km_dp_claims *c, const json_t *dp_tags,
                            const char *dp_workload, char *err, size_t errlen);

/* Kuma's TagSet of a Dataplane spec (the JSON kept in km_resource.spec): every inbound's tags,
 * or the gateway's tags, as {"tag": ["v1", ...]} with sorted unique values. Caller decrefs. */
json_t *km_token_dataplane_tags(const json_t *dp_spec);

/* Everything the DP server needs in one call: verify <token> for Dataplane resource <dp>
 * (mesh, name, tags, kuma.io/workload label). An empty or NULL token is refused. */
int km_token_authenticate_dataplane(struct km_store *s, const char *token,
                                    const struct km_resource *dp, char *err, size_t errlen);

/* ---- user tokens ---- */

struct km_user {
    char *name;    /* owned */
    char **groups; /* owned, each owned */
    size_t ngroups;
};
void km_user_init(struct km_user *u, const char *name);
void km_user_add_group(struct km_user *u, const char *group);
void km_user_deinit(struct km_user *u);
bool km_user_in_group(const struct km_user *u, const char *group);
/* Admin as Kuma's default static access: user or group "mesh-system:admin". */
bool km_user_is_admin(const struct km_user *u);
/* "name/group1,group2" (Kuma's User.String); caller frees. */
char *km_user_string(const struct km_user *u);

/* Issues a user token (latest user signing key, created when missing). <groups> may be NULL
 * (the claim is then null, as Kuma's). */
int km_token_issue_user(struct km_store *s, const char *name, const char *const *groups,
                        size_t ngroups, int64_t valid_for_s, char **token, char *err,
                        size_t errlen);
/* Verifies a user token (signature with the key of its kid, expiry, revocations) and fills <u>
 * with its name and groups (without the implicit mesh-system:authenticated group). 0 or -1. */
int km_token_verify_user(struct km_store *s, const char *token, struct km_user *u, char *err,
                         size_t errlen);

/* ---- API server access (src/cp/api_tokens.c) ---- */

struct km_cp;
struct MHD_Connection;
struct sockaddr;

/* What a request says about its origin, for the localhost rule and authentication. */
struct km_api_peer {
    const struct sockaddr *addr; /* borrowed; NULL when unknown */
    const char *host;            /* Host header, may be NULL */
    const char *forwarded;       /* Forwarded */
    const char *x_forwarded_for; /* X-Forwarded-For */
    const char *x_real_ip;       /* X-Real-IP */
    const char *sec_fetch_site;  /* Sec-Fetch-Site */
    const char *origin;          /* Origin */
    const char *authorization;   /* Authorization */
};

/* Kuma's direct-loopback rule (localhostIsAdmin): peer address is loopback (127.0.0.0/8, ::1,
 * ::ffff:127.0.0.0/104), no Forwarded / X-Forwarded-For / X-Real-IP header, the Host is
 * localhost or a loopback address, Sec-Fetch-Site is absent, "same-origin" or "none", and an
 * Origin, when present, is the same loopback origin as the Host. */
bool km_api_is_direct_loopback(const struct km_api_peer *p);

/* Establishes the user of a request: admin for direct loopback calls, else the user of a valid
 * "Bearer" token, else anonymous. Authenticated users get the group mesh-system:authenticated.
 * Returns 0, or -1 (answer 401) when a Bearer token is present but invalid (reason in <err>). */
int km_api_authenticate(struct km_store *s, const struct km_api_peer *p, struct km_user *u,
                        char *err, size_t errlen);

/* Static access rules for resource paths (<segs> are the path segments): Secrets and
 * GlobalSecrets (any method) and every method other than GET/HEAD/OPTIONS need an admin.
 * Returns true when allowed; otherwise writes Kuma's 403 detail into <detail>. */
bool km_api_access_allowed(const struct km_user *u, const char *method, const char *const *segs,
                           size_t nsegs, char *detail, size_t len);

/* An answer produced by km_api_access. */
struct km_api_answer {
    unsigned status;          /* 0 = no answer: route the request normally */
    const char *content_type; /* borrowed, static */
    char *body;               /* owned */
};

/* The hook at the top of the REST API's request handling (after the body is read). Answers
 * 401 / 403 refusals, POST /tokens/dataplane, POST /tokens/user and GET /who-am-i itself and
 * returns true; returns false (ans->status 0) when the request may be routed as usual. */
bool km_api_access(struct km_cp *cp, struct MHD_Connection *conn, const char *method,
                   const char *url, const char *body, size_t body_len, struct km_api_answer *ans);
/* Queues <ans> on <conn> and frees its body; returns libmicrohttpd's MHD_YES / MHD_NO. */
int km_api_answer_send(struct MHD_Connection *conn, struct km_api_answer *ans);

/* Handlers of the token endpoints, callable without libmicrohttpd (tests): fill <ans>. */
void km_api_tokens_dataplane(struct km_store *s, const struct km_user *u, const char *body,
                             size_t body_len, struct km_api_answer *ans);
void km_api_tokens_user(struct km_store *s, const struct km_user *u, const char *body,
                        size_t body_len, struct km_api_answer *ans);

#endif
