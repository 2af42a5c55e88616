/* kumactl config view, config control-planes add|list|remove|switch, version. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/ctl/cmd.h>
#include <km/ctl/config.h>
#include <km/ctl/table.h>

int
km_ctl_cmd_config_view(struct km_ctl_ctx *x)
{
    km_ctl_print_yaml(x->out, x->config);
    fputc('\n', x->out);
    return 0;
}

/* Checks that the API server answers GET / with its version document, as Kuma's kumactl does
 * before it stores a control plane. */
static bool
check_cp(struct km_ctl_ctx *x, const json_t *cp)
{
    char err[1024];
    struct km_ctl_client *c = km_ctl_client_new(cp, x->timeout_ms, err, sizeof(err));
    if (!c) {
        km_ctl_fail(x, "%s", err);
        return false;
    }
    struct km_ctl_response r;
    bool ok = false;
    if (!km_ctl_client_do(c, "GET", "/", NULL, &r, err, sizeof(err))) {
        km_ctl_fail(x, "%s", err);
        goto out;
    }
    if (r.status != 200) {
        char *m = km_ctl_format_api_error(r.status, r.body, r.len);
        km_ctl_fail(x, "could not connect to the Control Plane API Server at %s: %s",
                    km_ctl_client_url(c), m);
        free(m);
        goto out_resp;
    }
    char perr[256];
    json_t *j = km_json_parse(r.body, r.len, perr, sizeof(perr));
    const char *product = json_string_value(json_object_get(j, "product"));
    if (!json_is_object(j)) {
        km_ctl_fail(x, "could not connect to the Control Plane API Server at %s: the answer to "
                    "GET / is not Kuma's version document", km_ctl_client_url(c));
    } else if (product && strcmp(product, "Kuma") != 0 &&
               !json_is_string(json_object_get(j, "basedOnKuma"))) {
        km_ctl_fail(x, "this CLI is for Kuma but the control plane you're connected to is %s. "
                    "Please use the CLI for your control plane", product);
    } else {
        ok = true;
    }
    json_decref(j);
out_resp:
    km_ctl_response_deinit(&r);
out:
    km_ctl_client_free(c);
    return ok;
}

static bool
valid_url(const char *u)
{
    const char *rest = NULL;
    if (strncmp(u, "http://", 7) == 0)
        rest = u + 7;
    else if (strncmp(u, "https://", 8) == 0)
        rest = u + 8;
    return rest && *rest && *rest != '/' && !strpbrk(u, " \t\r\n");
}

int
km_ctl_cmd_cp_add(struct km_ctl_ctx *x)
{
    const char *name = km_ctl_flag_str(x, "name");
    const char *address = km_ctl_flag_str(x, "address");
    if (!name || !address) {
        return km_ctl_fail(x, "required flag(s) %s%s%s not set", !name ? "\"name\"" : "",
                           !name && !address ? ", " : "", !address ? "\"address\"" : "");
    }
    if (!*name)
        return km_ctl_fail(x, "--name cannot be empty");
    if (!valid_url(address))
        return km_ctl_fail(x, "API Server URL is invalid: parse \"%s\": must be an absolute "
                           "http:// or https:// URL", address);
    const char *cert = km_ctl_flag_str(x, "client-cert-file");
    const char *key = km_ctl_flag_str(x, "client-key-file");
    if ((cert && *cert) != (key && *key))
        return km_ctl_fail(x, "Both --client-cert-file and --client-key-file needs to be "
                           "specified");
    const char *auth_type = km_ctl_flag_str(x, "auth-type");
    if (auth_type && *auth_type && strcmp(auth_type, "tokens") != 0)
        return km_ctl_fail(x, "authentication plugin of type \"%s\" is not found", auth_type);

    char err[512];
    char **hk = NULL, **hv = NULL, **ak = NULL, **av = NULL;
    long nh = km_ctl_args_map(&x->args, "headers", &hk, &hv, err, sizeof(err));
    if (nh < 0)
        return km_ctl_fail(x, "%s", err);
    long na = km_ctl_args_map(&x->args, "auth-conf", &ak, &av, err, sizeof(err));
    if (na < 0) {
        km_ctl_kv_free(hk, hv, (size_t)nh);
        return km_ctl_fail(x, "%s", err);
    }
    int rc = 1;
    /* keys in alphabetical order, as Kuma writes the file */
    json_t *api = json_object();
    if (na > 0) {
        json_t *ac = json_object();
        for (long i = 0; i < na; i++)
            json_object_set_new(ac, ak[i], json_string(av[i]));
        json_object_set_new(api, "authConf", ac);
    }
    if (auth_type && *auth_type) {
        if (strcmp(auth_type, "tokens") == 0 && !json_is_string(json_object_get(
                json_object_get(api, "authConf"), "token"))) {
            json_decref(api);
            rc = km_ctl_fail(x, "--auth-conf is not valid: provide token=...");
            goto out;
        }
        json_object_set_new(api, "authType", json_string(auth_type));
    }
    const char *ca = km_ctl_flag_str(x, "ca-cert-file");
    if (ca && *ca)
        json_object_set_new(api, "caCertFile", json_string(ca));
    if (cert && *cert)
        json_object_set_new(api, "clientCertFile", json_string(cert));
    if (key && *key)
        json_object_set_new(api, "clientKeyFile", json_string(key));
    if (nh > 0) {
        /* sorted by key for a stable file */
        json_t *hs = json_array();
        bool *done = km_xcalloc((size_t)nh, sizeof(*done));
        for (long n = 0; n < nh; n++) {
            long best = -1;
            for (long i = 0; i < nh; i++) {
                if (!done[i] && (best < 0 || strcmp(hk[i], hk[best]) < 0))
                    best = i;
            }
            done[best] = true;
            json_array_append_new(hs, json_pack("{s:s,s:s}", "key", hk[best], "value",
                                                hv[best]));
        }
        free(done);
        json_object_set_new(api, "headers", hs);
    }
    if (km_ctl_flag_bool(x, "skip-verify"))
        json_object_set_new(api, "skipVerify", json_true());
    json_object_set_new(api, "url", json_string(address));
    json_t *cp = json_pack("{s:{s:o},s:s}", "coordinates", "apiServer", api, "name", name);

    if (!km_ctl_flag_bool(x, "skip-check") && !check_cp(x, cp)) {
        json_decref(cp);
        goto out;
    }
    if (!km_ctl_config_add_cp(x->config, cp, km_ctl_flag_bool(x, "overwrite"))) {
        rc = km_ctl_fail(x, "Control Plane with name \"%s\" already exists. Use --overwrite to "
                         "replace an existing one.", name);
        goto out;
    }
    if (!km_ctl_save_config(x))
        goto out;
    fprintf(x->out, "added Control Plane \"%s\"\n", name);
    fprintf(x->out, "switched active Control Plane to \"%s\"\n", name);
    rc = 0;
out:
    km_ctl_kv_free(hk, hv, (size_t)nh);
    km_ctl_kv_free(ak, av, (size_t)na);
    return rc;
}

int
km_ctl_cmd_cp_list(struct km_ctl_ctx *x)
{
    const char *ctx_name = km_ctl_flag_str(x, "context");
    if (!ctx_name)
        ctx_name = json_string_value(json_object_get(x->config, "currentContext"));
    const char *active_cp = NULL;
    const json_t *ctxs = json_object_get(x->config, "contexts");
    size_t i;
    const json_t *e;
    json_array_foreach(ctxs, i, e) {
        const char *n = json_string_value(json_object_get(e, "name"));
        if (ctx_name && n && strcmp(n, ctx_name) == 0)
            active_cp = json_string_value(json_object_get(e, "controlPlane"));
    }
    struct km_ctl_table t;
    km_ctl_table_init(&t, 3);
    const char *hdr[] = {"ACTIVE", "NAME", "ADDRESS"};
    km_ctl_table_row(&t, hdr);
    json_array_foreach(json_object_get(x->config, "controlPlanes"), i, e) {
        const char *n = json_string_value(json_object_get(e, "name"));
        const char *u = json_string_value(json_object_get(
            json_object_get(json_object_get(e, "coordinates"), "apiServer"), "url"));
        const char *row[] = {active_cp && n && strcmp(active_cp, n) == 0 ? "*" : "", n, u};
        km_ctl_table_row(&t, row);
    }
    char *s = km_ctl_table_render(&t);
    fputs(s, x->out);
    free(s);
    km_ctl_table_deinit(&t);
    return 0;
}

int
km_ctl_cmd_cp_remove(struct km_ctl_ctx *x)
{
    const char *name = km_ctl_flag_str(x, "name");
    if (!name)
        return km_ctl_fail(x, "required flag(s) \"name\" not set");
    if (!km_ctl_config_remove_cp(x->config, name))
        return km_ctl_fail(x, "there is no Control Plane with name \"%s\"", name);
    if (!km_ctl_save_config(x))
        return 1;
    fprintf(x->out, "removed Control Plane \"%s\"\n", name);
    json_t *cp = km_ctl_config_current_cp(x->config, NULL);
    const char *cpn = json_string_value(json_object_get(cp, "name"));
    if (cpn)
        fprintf(x->out, "switched active Control Plane to \"%s\"\n", cpn);
    else
        fprintf(x->out, "there is no active Control Plane left. Use `kumactl config "
                "control-planes add` to add a Control Plane and make it active\n");
    return 0;
}

int
km_ctl_cmd_cp_switch(struct km_ctl_ctx *x)
{
    const char *name = km_ctl_flag_str(x, "name");
    if (!name)
        return km_ctl_fail(x, "required flag(s) \"name\" not set");
    if (!km_ctl_config_switch(x->config, name))
        return km_ctl_fail(x, "there is no Control Plane with name \"%s\"", name);
    if (!km_ctl_save_config(x))
        return 1;
    fprintf(x->out, "switched active Control Plane to \"%s\"\n", name);
    return 0;
}

int
km_ctl_cmd_version(struct km_ctl_ctx *x)
{
    bool detailed = km_ctl_flag_bool(x, "detailed");
    if (detailed)
        fprintf(x->out, "Product:       Kuma\nVersion:       %s\nImplementation: kuma-c %s\n",
                KM_KUMA_VERSION, KM_VERSION);
    else
        fprintf(x->out, "Client: Kuma %s\n", KM_KUMA_VERSION);
    struct km_ctl_client *c = NULL;
    json_t *cp = km_ctl_config_current_cp(x->config, km_ctl_flag_str(x, "context"));
    char err[1024] = "active Control Plane is not set";
    if (cp)
        c = x->client = km_ctl_client_new(cp, x->timeout_ms, err, sizeof(err));
    struct km_ctl_response r;
    json_t *j = NULL;
    if (c && km_ctl_client_do(c, "GET", "/", NULL, &r, err, sizeof(err))) {
        char perr[256];
        if (r.status == 200)
            j = km_json_parse(r.body, r.len, perr, sizeof(perr));
        if (!json_is_object(j))
            snprintf(err, sizeof(err), "unexpected answer (%ld) to GET /", r.status);
        km_ctl_response_deinit(&r);
    }
    if (json_is_object(j)) {
        if (detailed) {
            char *s = json_dumps(j, JSON_INDENT(3) | JSON_PRESERVE_ORDER);
            fprintf(x->out, "Server: %s\n", s ? s : "");
            free(s);
        } else {
            const char *p = json_string_value(json_object_get(j, "product"));
            const char *v = json_string_value(json_object_get(j, "version"));
            fprintf(x->out, "Server: %s %s\n", p ? p : "", v ? v : "");
        }
    } else {
        fprintf(x->err, "Unable to connect to control plane: %s\n", err);
    }
    json_decref(j);
    return 0;
}
