/* API server access control and the token endpoints (Kuma's pkg/api-server/authn, the
 * user-token plugin and the builtin token web service):
 *
 * - direct loopback requests are the admin user (apiServer.authn.localhostIsAdmin);
 * - otherwise "Authorization: Bearer <user token>" names the user; an invalid token is a 401;
 * - without either the user is mesh-system:anonymous (group mesh-system:unauthenticated);
 * - Secrets / GlobalSecrets (Kuma's admin resources) and every write need an admin (403);
 * - POST /tokens/dataplane and POST /tokens/user issue tokens (admin only), GET /who-am-i. */
#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/cp/cp.h>
#include <km/cp/tokens.h>

#define API_TOKENS_MAX_SEGS 8
/* Largest token request body read (the API server already bounds bodies). */
#define API_TOKENS_MAX_GROUPS 256

/* ---- answers ---- */

static void
answer_json(struct km_api_answer *ans, unsigned status, json_t *body)
{
    free(ans->body);
    ans->status = status;
    ans->content_type = "application/json";
    ans->body = json_dumps(body, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(body);
}

/* Kuma's error shape; <field>/<reason> add one invalid parameter when not NULL. */
static void
answer_error(struct km_api_answer *ans, unsigned status, const char *title, const char *detail,
             const char *field, const char *reason)
{
    json_t *e = json_object();
    json_object_set_new(e, "type", json_string("/std-errors"));
    json_object_set_new(e, "status", json_integer(status));
    json_object_set_new(e, "title", json_string(title));
    json_object_set_new(e, "detail", json_string(detail));
    if (field) {
        json_object_set_new(e, "invalid_parameters",
                            json_pack("[{s:s, s:s}]", "field", field, "reason", reason));
        json_object_set_new(e, "details", json_string(detail));
        json_object_set_new(e, "causes",
                            json_pack("[{s:s, s:s}]", "field", field, "message", reason));
    } else {
        json_object_set_new(e, "details", json_string(detail));
    }
    answer_json(ans, status, e);
}

static void
answer_text(struct km_api_answer *ans, unsigned status, char *text)
{
    free(ans->body);
    ans->status = status;
    ans->content_type = "text/plain";
    ans->body = text;
}

int
km_api_answer_send(struct MHD_Connection *conn, struct km_api_answer *ans)
{
    char *body = ans->body;
    ans->body = NULL;
    size_t len = body ? strlen(body) : 0;
    enum MHD_ResponseMemoryMode mode = body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body ? (void *)body : (void *)"", mode);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (body && ans->content_type)
        MHD_add_response_header(resp, "Content-Type", ans->content_type);
    enum MHD_Result ret = MHD_queue_response(conn, ans->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- localhost rule ---- */

static bool
addr_is_loopback(const struct sockaddr *sa)
{
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

/* Canonical form of a host name or IP literal (lowercase, no trailing dot, IPs as inet_ntop
 * prints them) into <out>; false when the name is unusable. */
static bool
canonical_host(const char *h, size_t n, char *out, size_t outlen)
{
    if (n == 0 || n >= outlen || n >= 256)
        return false;
    char buf[256];
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)tolower((unsigned char)h[i]);
    buf[n] = 0;
    if (n > 1 && buf[n - 1] == '.')
        buf[--n] = 0;
    unsigned char a[16];
    if (inet_pton(AF_INET, buf, a) == 1)
        return inet_ntop(AF_INET, a, out, (socklen_t)outlen) != NULL;
    if (inet_pton(AF_INET6, buf, a) == 1)
        return inet_ntop(AF_INET6, a, out, (socklen_t)outlen) != NULL;
    for (size_t i = 0; i < n; i++) {
        if (strchr("/?#@[]:\\ ", buf[i]) || (unsigned char)buf[i] < 0x20)
            return false;
    }
    memcpy(out, buf, n + 1);
    return true;
}

static bool
host_is_loopback(const char *h)
{
    if (strcmp(h, "localhost") == 0)
        return true;
    unsigned char a[16];
    if (inet_pton(AF_INET, h, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, h, a) == 1) {
        static const unsigned char one[16] = {[15] = 1};
        static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
        return memcmp(a, one, 16) == 0 || (memcmp(a, mapped, 12) == 0 && a[12] == 127);
    }
    return false;
}

/* "host[:port]" of a Host header or an origin, as Go's url.Parse + Hostname/Port read it. */
static bool
parse_authority(const char *scheme, const char *s, char *host, size_t hostlen, long *port)
{
    size_t n = strlen(s);
    const char *hs, *rest;
    size_t hn;
    if (n == 0 || s[n - 1] == ':')
        return false;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return false;
        hs = s + 1;
        hn = (size_t)(close - hs);
        rest = close + 1;
        if (memchr(hs, '.', hn) && !memchr(hs, ':', hn))
            return false;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':'))
            return false;
        hs = s;
        hn = colon ? (size_t)(colon - s) : n;
        rest = s + hn;
    }
    if (*rest == ':') {
        rest++;
        if (!*rest || strlen(rest) > 5 || strspn(rest, "0123456789") != strlen(rest))
            return false;
        *port = strtol(rest, NULL, 10);
    } else if (*rest) {
        return false;
    } else {
        *port = strcmp(scheme, "https") == 0 ? 443 : 80;
    }
    if (*port <= 0 || *port > 65535)
        return false;
    return canonical_host(hs, hn, host, hostlen);
}

static bool
same_origin_loopback(const char *origin, const char *req_host)
{
    if (!origin || !origin[0])
        return true;
    const char *scheme;
    const char *auth;
    if (strncasecmp(origin, "http://", 7) == 0) {
        scheme = "http";
        auth = origin + 7;
    } else if (strncasecmp(origin, "https://", 8) == 0) {
        scheme = "https";
        auth = origin + 8;
    } else {
        return false;
    }
    if (strpbrk(auth, "/?#@"))
        return false;
    char oh[256], rh[256];
    long op = 0, rp = 0;
    if (!parse_authority(scheme, auth, oh, sizeof(oh), &op) || !host_is_loopback(oh))
        return false;
    if (!parse_authority(scheme, req_host, rh, sizeof(rh), &rp))
        return false;
    return strcmp(oh, rh) == 0 && op == rp;
}

bool
km_api_is_direct_loopback(const struct km_api_peer *p)
{
    if (!addr_is_loopback(p->addr))
        return false;
    if ((p->forwarded && p->forwarded[0]) || (p->x_forwarded_for && p->x_forwarded_for[0]) ||
        (p->x_real_ip && p->x_real_ip[0]))
        return false;
    char h[256];
    long port = 0;
    if (!p->host || strpbrk(p->host, "/?#@") ||
        !parse_authority("http", p->host, h, sizeof(h), &port) || !host_is_loopback(h))
        return false;
    const char *sfs = p->sec_fetch_site;
    if (sfs && sfs[0] && strcmp(sfs, "same-origin") != 0 && strcmp(sfs, "none") != 0)
        return false;
    return same_origin_loopback(p->origin, p->host);
}

/* ---- authentication and access ---- */

int
km_api_authenticate(struct km_store *s, const struct km_api_peer *p, struct km_user *u,
                    char *err, size_t errlen)
{
    if (km_api_is_direct_loopback(p)) {
        km_user_init(u, KM_USER_ADMIN);
        km_user_add_group(u, KM_GROUP_ADMIN);
        km_user_add_group(u, KM_GROUP_AUTHENTICATED);
        return 0;
    }
    const char *a = p->authorization;
    if (a && strncmp(a, "Bearer ", 7) == 0) {
        if (km_token_verify_user(s, a + 7, u, err, errlen))
            return -1;
        km_user_add_group(u, KM_GROUP_AUTHENTICATED);
        return 0;
    }
    km_user_init(u, KM_USER_ANONYMOUS);
    km_user_add_group(u, KM_GROUP_UNAUTHENTICATED);
    return 0;
}

static bool
method_is_read(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0;
}

static const struct km_rtype *
path_type(const char *const *segs, size_t n)
{
    if (n >= 3 && strcmp(segs[0], "meshes") == 0)
        return km_registry_by_path(segs[2]);
    if (n >= 1)
        return km_registry_by_path(segs[0]);
    return NULL;
}

bool
km_api_access_allowed(const struct km_user *u, const char *method, const char *const *segs,
                      size_t nsegs, char *detail, size_t len)
{
    if (km_user_is_admin(u))
        return true;
    const struct km_rtype *t = path_type(segs, nsegs);
    bool admin_type = t && (strcmp(t->name, "Secret") == 0 || strcmp(t->name, "GlobalSecret") == 0);
    if (!admin_type && method_is_read(method))
        return true;
    char *us = km_user_string(u);
    if (admin_type)
        snprintf(detail, len, "user \"%s\" cannot access the resource of type \"%s\"", us,
                 t->name);
    else if (t)
        snprintf(detail, len, "user \"%s\" cannot access changes to the resource of type "
                 "\"%s\": only admins (localhost or group %s) can change resources", us, t->name,
                 KM_GROUP_ADMIN);
    else
        snprintf(detail, len, "user \"%s\" cannot access %s on this path: only admins "
                 "(localhost or group %s) can", us, method, KM_GROUP_ADMIN);
    free(us);
    return false;
}

/* ---- token endpoints ---- */

static void
validation_error(struct km_api_answer *ans, const char *field, const char *reason)
{
    answer_error(ans, 400, "Invalid request", "Resource is not valid", field, reason);
}

static bool
deny_unless_admin(const struct km_user *u, const char *action, struct km_api_answer *ans)
{
    if (km_user_is_admin(u))
        return false;
    char *us = km_user_string(u);
    char *d = km_xasprintf("user \"%s\" cannot access %s", us, action);
    answer_error(ans, 403, "Access Denied", d, NULL, NULL);
    free(d);
    free(us);
    return true;
}

/* Parses the JSON request object; answers 400 and returns NULL when it is not one. */
static json_t *
read_request(const char *body, size_t len, const char *what, struct km_api_answer *ans)
{
    char perr[256];
    json_t *j = km_json_parse(body ? body : "", len, perr, sizeof(perr));
    if (!json_is_object(j)) {
        char *d = j ? km_xasprintf("%s: the request body must be a JSON object", what)
                    : km_xasprintf("%s: %s", what, perr);
        answer_error(ans, 400, "Bad Request", d, NULL, NULL);
        free(d);
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A string member (absent or null = ""); answers 400 for another JSON type. */
static bool
req_string(const json_t *req, const char *key, const char *go_type, const char **out,
           struct km_api_answer *ans)
{
    const json_t *v = json_object_get(req, key);
    *out = "";
    if (!v || json_is_null(v))
        return true;
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return true;
    }
    char *d = km_xasprintf("json: cannot unmarshal %s into Go struct field %s.%s of type string",
                           json_is_object(v) ? "object" : json_is_array(v) ? "array"
                           : json_is_boolean(v) ? "bool" : "number",
                           go_type, key);
    answer_error(ans, 400, "Bad Request", d, key, "must be a string");
    free(d);
    return false;
}

/* Go's time.ParseDuration into seconds; reason for "validFor" on failure. */
static bool
parse_valid_for(const char *s, int64_t *secs, char *reason, size_t len)
{
    int64_t ns = 0;
    if (!km_duration_parse(s, false, &ns)) {
        snprintf(reason, len, "is invalid: time: invalid duration \"%s\"", s);
        return false;
    }
    if (ns < 0) {
        snprintf(reason, len, "is invalid: must not be negative");
        return false;
    }
    *secs = ns / 1000000000;
    return true;
}

void
km_api_tokens_dataplane(struct km_store *s, const struct km_user *u, const char *body,
                        size_t body_len, struct km_api_answer *ans)
{
    json_t *req = read_request(body, body_len, "could not read the dataplane token request", ans);
    if (!req)
        return;
    const char *name, *mesh, *type, *workload, *valid_for;
    if (!req_string(req, "name", "DataplaneTokenRequest", &name, ans) ||
        !req_string(req, "mesh", "DataplaneTokenRequest", &mesh, ans) ||
        !req_string(req, "type", "DataplaneTokenRequest", &type, ans) ||
        !req_string(req, "workload", "DataplaneTokenRequest", &workload, ans) ||
        !req_string(req, "validFor", "DataplaneTokenRequest", &valid_for, ans))
        goto done;
    const json_t *tags = json_object_get(req, "tags");
    char reason[256];
    if (tags && !json_is_null(tags)) {
        const char *k;
        json_t *v;
        bool ok = json_is_object(tags);
        json_object_foreach ((json_t *)tags, k, v) {
            size_t i;
            json_t *e;
            ok = ok && json_is_array(v);
            json_array_foreach (v, i, e)
                ok = ok && json_is_string(e);
        }
        if (!ok) {
            answer_error(ans, 400, "Bad Request",
                         "json: cannot unmarshal tags: must be a map of string lists", "tags",
                         "must be a map of string lists");
            goto done;
        }
    }
    /* validation, in Kuma's order: mesh, validFor, type */
    int64_t valid_for_s = KM_TOKENS_DEFAULT_VALID_FOR_S;
    if (!mesh[0]) {
        validation_error(ans, "mesh", "cannot be empty");
        goto done;
    }
    if (valid_for[0] && !parse_valid_for(valid_for, &valid_for_s, reason, sizeof(reason))) {
        validation_error(ans, "validFor", reason);
        goto done;
    }
    if (type[0] && strcmp(type, "dataplane") != 0 && strcmp(type, "ingress") != 0 &&
        strcmp(type, "egress") != 0) {
        snprintf(reason, sizeof(reason), "%s is not a valid proxy type", type);
        validation_error(ans, "type", reason);
        goto done;
    }
    if (deny_unless_admin(u, "generate dataplane token", ans))
        goto done;
    char err[512];
    char *token = NULL;
    int rc = km_token_issue_dataplane(s, mesh, name, tags, type, workload, valid_for_s, &token,
                                      err, sizeof(err));
    if (rc == 0)
        answer_text(ans, 200, token);
    else if (rc == KM_ENOTFOUND)
        answer_error(ans, 404, "Signing Key not found", err, NULL, NULL);
    else if (rc == KM_EINVAL)
        answer_error(ans, 400, "Could not issue a token", err, NULL, NULL);
    else if (rc == KM_EUNAVAIL)
        answer_error(ans, 503, "Could not issue a token", err, NULL, NULL);
    else
        answer_error(ans, 500, "Could not issue a token", err, NULL, NULL);
done:
    json_decref(req);
}

void
km_api_tokens_user(struct km_store *s, const struct km_user *u, const char *body,
                   size_t body_len, struct km_api_answer *ans)
{
    if (deny_unless_admin(u, "generate user token", ans))
        return;
    json_t *req = read_request(body, body_len, "could not read the user token request", ans);
    if (!req)
        return;
    const char *name, *valid_for;
    const char **groups = NULL;
    size_t ngroups = 0;
    if (!req_string(req, "name", "UserTokenRequest", &name, ans) ||
        !req_string(req, "validFor", "UserTokenRequest", &valid_for, ans))
        goto done;
    const json_t *g = json_object_get(req, "groups");
    if (g && !json_is_null(g)) {
        bool ok = json_is_array(g) && json_array_size(g) <= API_TOKENS_MAX_GROUPS;
        size_t i;
        json_t *e;
        json_array_foreach (g, i, e)
            ok = ok && json_is_string(e);
        if (!ok) {
            answer_error(ans, 400, "Bad Request",
                         "json: cannot unmarshal groups: must be a list of at most 256 strings",
                         "groups", "must be a list of strings");
            goto done;
        }
        groups = km_xcalloc(json_array_size(g) + 1, sizeof(*groups));
        json_array_foreach (g, i, e)
            groups[ngroups++] = json_string_value(e);
    }
    int64_t valid_for_s = 0;
    char reason[256];
    if (!name[0]) {
        validation_error(ans, "name", "cannot be empty");
        goto done;
    }
    if (!valid_for[0]) {
        validation_error(ans, "validFor", "cannot be empty");
        goto done;
    }
    if (!parse_valid_for(valid_for, &valid_for_s, reason, sizeof(reason))) {
        validation_error(ans, "validFor", reason);
        goto done;
    }
    if (valid_for_s == 0) {
        validation_error(ans, "validFor", "cannot be empty or nil");
        goto done;
    }
    char err[512];
    char *token = NULL;
    int rc = km_token_issue_user(s, name, groups, ngroups, valid_for_s, &token, err,
                                 sizeof(err));
    if (rc == 0)
        answer_text(ans, 200, token);
    else if (rc == KM_ENOTFOUND)
        answer_error(ans, 404, "Signing Key not found", err, NULL, NULL);
    else if (rc == KM_EINVAL)
        answer_error(ans, 400, "Could not issue a token", err, NULL, NULL);
    else
        answer_error(ans, 500, "Could not issue a token", err, NULL, NULL);
done:
    free(groups);
    json_decref(req);
}

static void
who_am_i(const struct km_user *u, struct km_api_answer *ans)
{
    json_t *g = json_array();
    for (size_t i = 0; i < u->ngroups; i++)
        json_array_append_new(g, json_string(u->groups[i]));
    answer_json(ans, 200, json_pack("{s:s, s:o}", "name", u->name, "groups", g));
}

/* ---- the hook ---- */

static const char *
header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static size_t
split_segments(const char *url, char segs[][128], size_t max, bool *too_long)
{
    size_t n = 0;
    *too_long = false;
    for (const char *p = url; *p;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t l = strcspn(p, "/");
        if (n == max || l >= 128) {
            *too_long = true;
            return n;
        }
        memcpy(segs[n], p, l);
        segs[n][l] = 0;
        n++;
        p += l;
    }
    return n;
}

bool
km_api_access(struct km_cp *cp, struct MHD_Connection *conn, const char *method,
              const char *url, const char *body, size_t body_len, struct km_api_answer *ans)
{
    ans->status = 0;
    ans->body = NULL;
    ans->content_type = NULL;
    char segs[API_TOKENS_MAX_SEGS][128];
    const char *sp[API_TOKENS_MAX_SEGS];
    bool too_long = false;
    size_t n = split_segments(url ? url : "", segs, API_TOKENS_MAX_SEGS, &too_long);
    for (size_t i = 0; i < n; i++)
        sp[i] = segs[i];
    if (n == 0 && !too_long)
        return false; /* GET / skips authentication, as Kuma's index endpoint */

    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    struct km_api_peer peer = {
        .addr = ci ? ci->client_addr : NULL,
        .host = header(conn, MHD_HTTP_HEADER_HOST),
        .forwarded = header(conn, "Forwarded"),
        .x_forwarded_for = header(conn, "X-Forwarded-For"),
        .x_real_ip = header(conn, "X-Real-IP"),
        .sec_fetch_site = header(conn, "Sec-Fetch-Site"),
        .origin = header(conn, "Origin"),
        .authorization = header(conn, MHD_HTTP_HEADER_AUTHORIZATION),
    };
    struct km_user u;
    char err[512];
    if (km_api_authenticate(cp->store, &peer, &u, err, sizeof(err))) {
        km_log_info("api", "authentication rejected: %s", err);
        answer_error(ans, 401, "Invalid authentication data", "Unauthenticated", NULL, NULL);
        return true;
    }
    bool answered = true;
    if (too_long) {
        answered = false; /* api.c answers unknown paths */
    } else if (n == 2 && strcmp(sp[0], "tokens") == 0 &&
               (strcmp(sp[1], "dataplane") == 0 || strcmp(sp[1], "user") == 0)) {
        if (strcmp(method, "POST") != 0) {
            char *d = km_xasprintf("method %s is not allowed on this path", method);
            answer_error(ans, 405, "Method not allowed", d, NULL, NULL);
            free(d);
        } else if (strcmp(sp[1], "dataplane") == 0) {
            km_api_tokens_dataplane(cp->store, &u, body, body_len, ans);
        } else {
            km_api_tokens_user(cp->store, &u, body, body_len, ans);
        }
    } else if (n == 1 && strcmp(sp[0], "who-am-i") == 0 && strcmp(method, "GET") == 0) {
        who_am_i(&u, ans);
    } else if (!km_api_access_allowed(&u, method, sp, n, err, sizeof(err))) {
        answer_error(ans, 403, "Access Denied", err, NULL, NULL);
    } else {
        answered = false;
    }
    km_user_deinit(&u);
    return answered;
}
