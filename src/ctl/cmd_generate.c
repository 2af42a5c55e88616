/* kumactl generate dataplane-token | user-token | signing-key. Tokens come from the control
 * plane (POST /tokens/dataplane, POST /tokens/user) or, with --signing-key-path and --kid, are
 * signed locally; like kumactl the token is printed without a trailing newline. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/tokens.h>
#include <km/ctl/cmd.h>

#define GEN_MAX_KEY_BYTES (64 * 1024)

/* "--valid-for" as Go's DurationVar: required, a Go duration. */
static bool
valid_for_flag(struct km_ctl_ctx *x, int64_t *secs)
{
    if (!km_ctl_args_has(&x->args, "valid-for")) {
        km_ctl_fail(x, "required flag(s) \"valid-for\" not set");
        return false;
    }
    const char *v = km_ctl_flag_str(x, "valid-for");
    int64_t ns = 0;
    if (!v || !km_duration_parse(v, false, &ns)) {
        km_ctl_fail(x, "invalid argument \"%s\" for \"--valid-for\" flag: time: invalid duration "
                    "\"%s\"", v ? v : "", v ? v : "");
        return false;
    }
    if (ns < 0) {
        km_ctl_fail(x, "invalid argument \"%s\" for \"--valid-for\" flag: must not be negative",
                    v);
        return false;
    }
    *secs = ns / 1000000000;
    return true;
}

/* "--tag k=v1,v2" as pflag's StringToString followed by kumactl's split of values on commas:
 * a value with one '=' is one pair (its value may hold commas), otherwise comma separated pairs.
 * Returns the {"k": ["v1","v2"]} object or NULL after printing an error. */
static json_t *
tags_flag(struct km_ctl_ctx *x)
{
    json_t *tags = json_object();
    for (size_t i = 0; i < x->args.nuses; i++) {
        if (strcmp(x->args.uses[i].flag->name, "tag") != 0)
            continue;
        const char *val = x->args.uses[i].value;
        size_t neq = 0;
        for (const char *p = val; *p; p++)
            neq += *p == '=';
        char *copy = km_xstrdup(val);
        char *items[64];
        size_t n = 0;
        if (neq == 1) {
            items[n++] = copy;
        } else {
            for (char *p = copy; p && n < KM_ARRAY_LEN(items);) {
                items[n++] = p;
                char *c = strchr(p, ',');
                if (c)
                    *c++ = 0;
                p = c;
            }
        }
        for (size_t j = 0; j < n; j++) {
            char *eq = strchr(items[j], '=');
            if (!eq || eq == items[j]) {
                km_ctl_fail(x, "invalid argument \"%s\" for \"--tag\" flag: %s must be formatted "
                            "as key=value", val, items[j]);
                free(copy);
                json_decref(tags);
                return NULL;
            }
            *eq = 0;
            json_t *vals = json_array();
            for (char *v = eq + 1; v;) {
                char *c = strchr(v, ',');
                if (c)
                    *c++ = 0;
                json_array_append_new(vals, json_string(v));
                v = c;
            }
            json_object_set_new(tags, items[j], vals); /* a later key replaces an earlier one */
        }
        free(copy);
    }
    return tags;
}

/* Sends a token request; prints the token or the API error. */
static int
request_token(struct km_ctl_ctx *x, const char *path, json_t *req, const char *what)
{
    struct km_ctl_client *c = km_ctl_current_client(x);
    if (!c)
        return 1;
    char *body = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
    struct km_ctl_response r;
    char err[1024];
    int rc = 1;
    if (!km_ctl_client_do(c, "POST", path, body, &r, err, sizeof(err))) {
        km_ctl_fail(x, "%s: %s", what, err);
        free(body);
        return 1;
    }
    if (r.status == 200) {
        fwrite(r.body, 1, r.len, x->out);
        rc = 0;
    } else {
        char *m = km_ctl_format_api_error(r.status, r.body, r.len);
        km_ctl_fail(x, "%s: %s", what, m);
        free(m);
    }
    km_ctl_response_deinit(&r);
    free(body);
    return rc;
}

/* --signing-key-path / --kid: both or neither. Returns 1 for offline, 0 for online, -1 error. */
static int
offline_mode(struct km_ctl_ctx *x, const char **path, const char **kid)
{
    *path = km_ctl_flag_str(x, "signing-key-path");
    *kid = km_ctl_flag_str(x, "kid");
    bool has_path = *path && (*path)[0];
    bool has_kid = *kid && (*kid)[0];
    if (has_path && !has_kid) {
        km_ctl_fail(x, "--kid is required when --signing-key-path is used");
        return -1;
    }
    if (!has_path && has_kid) {
        km_ctl_fail(x, "--kid cannot be used when --signing-key-path is used");
        return -1;
    }
    return has_path ? 1 : 0;
}

static int
sign_offline(struct km_ctl_ctx *x, const char *key_path, const char *kid, const json_t *claims,
             int64_t valid_for_s)
{
    size_t len = 0;
    char *pem = km_read_file(key_path, GEN_MAX_KEY_BYTES, &len);
    if (!pem) {
        return km_ctl_fail(x, "could not read file %s: %s", key_path,
                           errno == EFBIG ? "file too large" : strerror(errno));
    }
    char err[512];
    char *token = km_jwt_sign(claims, pem, kid, valid_for_s, 0, err, sizeof(err));
    free(pem);
    if (!token)
        return km_ctl_fail(x, "%s", err);
    fputs(token, x->out);
    free(token);
    return 0;
}

int
km_ctl_cmd_generate_dataplane_token(struct km_ctl_ctx *x)
{
    int64_t valid_for_s = 0;
    if (!valid_for_flag(x, &valid_for_s))
        return 1;
    const char *key_path, *kid;
    int mode = offline_mode(x, &key_path, &kid);
    if (mode < 0)
        return 1;
    json_t *tags = tags_flag(x);
    if (!tags)
        return 1;
    const char *name = km_ctl_flag_str(x, "name");
    const char *mesh = km_ctl_flag_str(x, "mesh");
    const char *type = km_ctl_flag_str(x, "proxy-type");
    if (!km_ctl_args_has(&x->args, "proxy-type") && km_ctl_args_has(&x->args, "type"))
        type = km_ctl_flag_str(x, "type");
    const char *workload = km_ctl_flag_str(x, "workload");
    int rc;
    if (mode == 1) {
        json_t *c = json_pack("{s:s, s:s, s:O, s:s, s:s}", "Name", name ? name : "", "Mesh",
                              mesh ? mesh : "default", "Tags", tags, "Type", type ? type : "",
                              "Workload", workload ? workload : "");
        rc = sign_offline(x, key_path, kid, c, valid_for_s);
        json_decref(c);
    } else if (valid_for_s == 0) {
        rc = km_ctl_fail(x, "failed to generate a dataplane token: You must set a token validFor "
                         "value");
    } else {
        char vf[32];
        snprintf(vf, sizeof(vf), "%llds", (long long)valid_for_s);
        json_t *req = json_pack("{s:s, s:s, s:O, s:s, s:s, s:s}", "name", name ? name : "",
                                "mesh", mesh ? mesh : "default", "tags", tags, "type",
                                type ? type : "", "workload", workload ? workload : "",
                                "validFor", vf);
        rc = request_token(x, "/tokens/dataplane", req, "failed to generate a dataplane token");
        json_decref(req);
    }
    json_decref(tags);
    return rc;
}

int
km_ctl_cmd_generate_user_token(struct km_ctl_ctx *x)
{
    if (!km_ctl_args_has(&x->args, "name"))
        return km_ctl_fail(x, "required flag(s) \"name\" not set");
    int64_t valid_for_s = 0;
    if (!valid_for_flag(x, &valid_for_s))
        return 1;
    const char *key_path, *kid;
    int mode = offline_mode(x, &key_path, &kid);
    if (mode < 0)
        return 1;
    /* --group is a string slice: repeatable, each value split on commas */
    json_t *groups = json_null();
    for (size_t i = 0; i < x->args.nuses; i++) {
        if (strcmp(x->args.uses[i].flag->name, "group") != 0)
            continue;
        if (json_is_null(groups))
            groups = json_array();
        char *copy = km_xstrdup(x->args.uses[i].value);
        for (char *v = copy; v;) {
            char *c = strchr(v, ',');
            if (c)
                *c++ = 0;
            json_array_append_new(groups, json_string(v));
            v = c;
        }
        free(copy);
    }
    const char *name = km_ctl_flag_str(x, "name");
    int rc;
    if (mode == 1) {
        json_t *c = json_pack("{s:s, s:O}", "Name", name ? name : "", "Groups", groups);
        rc = sign_offline(x, key_path, kid, c, valid_for_s);
        json_decref(c);
    } else {
        char vf[32];
        snprintf(vf, sizeof(vf), "%llds", (long long)valid_for_s);
        json_t *req = json_pack("{s:s, s:O, s:s}", "name", name ? name : "", "groups", groups,
                                "validFor", vf);
        rc = request_token(x, "/tokens/user", req, "failed to generate a user token");
        json_decref(req);
    }
    json_decref(groups);
    return rc;
}

int
km_ctl_cmd_generate_signing_key(struct km_ctl_ctx *x)
{
    const char *format = km_ctl_flag_str(x, "format");
    if (!format || (strcmp(format, "pem") != 0 && strcmp(format, "pem-base64") != 0))
        return km_ctl_fail(x, "invalid format");
    char err[512];
    char *pem = km_tokens_new_signing_key_pem(err, sizeof(err));
    if (!pem)
        return km_ctl_fail(x, "could not generate signing key: %s", err);
    if (strcmp(format, "pem") == 0) {
        fputs(pem, x->out);
    } else {
        /* standard base64 of the PEM, one line, as Go's base64.StdEncoding */
        static const char tbl[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const unsigned char *d = (const unsigned char *)pem;
        size_t n = strlen(pem);
        for (size_t i = 0; i < n; i += 3) {
            unsigned v = (unsigned)d[i] << 16;
            if (i + 1 < n)
                v |= (unsigned)d[i + 1] << 8;
            if (i + 2 < n)
                v |= d[i + 2];
            char q[4] = {tbl[v >> 18 & 63], tbl[v >> 12 & 63],
                         i + 1 < n ? tbl[v >> 6 & 63] : '=', i + 2 < n ? tbl[v & 63] : '='};
            fwrite(q, 1, 4, x->out);
        }
    }
    free(pem);
    return 0;
}
