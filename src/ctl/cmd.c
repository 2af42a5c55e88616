/* kumactl: command tree, global flags, help, configuration loading and the helpers that the
 * command implementations share. The commands live in cmd_*.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/cp/resource.h>
#include <km/ctl/cmd.h>
#include <km/ctl/config.h>

struct km_ctl_cmd {
    const char *name;
    const char *use;   /* usage line after "kumactl ...": "delete TYPE NAME" */
    const char *short_help;
    const char *example;
    const struct km_ctl_flag *flags;          /* flags of this command and its subcommands */
    const struct km_ctl_cmd *const *children; /* NULL-terminated, or NULL for a leaf */
    int (*run)(struct km_ctl_ctx *x);
    int min_args;
    int max_args; /* -1: any */
};

/* ---- flags ---- */

static const struct km_ctl_flag global_flags[] = {
    {"api-timeout", 0, KM_CTL_FLAG_STRING, "1m0s",
     "the timeout for api calls. It includes connection time, any redirects, and reading the "
     "response body. A timeout of zero means no timeout"},
    {"config-file", 0, KM_CTL_FLAG_STRING, NULL, "path to the configuration file to use"},
    {"context", 0, KM_CTL_FLAG_STRING, NULL, "context to use"},
    {"log-level", 0, KM_CTL_FLAG_STRING, "off", "log level: one of off|info|debug"},
    {"no-config", 0, KM_CTL_FLAG_BOOL, NULL,
     "if set no config file and config directory will be created"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag apply_flags[] = {
    {"dry-run", 0, KM_CTL_FLAG_BOOL, NULL,
     "Resolve variable and prints result out without actual applying"},
    {"file", 'f', KM_CTL_FLAG_STRING, NULL,
     "Path to file or directory to apply. When a directory is provided, all .yaml, .yml, and "
     ".json files are applied. Pass `-` to read from stdin"},
    {"var", 'v', KM_CTL_FLAG_MAP, NULL, "Variable to replace in configuration"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag get_flags[] = {
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", "mesh to use"},
    {"offset", 0, KM_CTL_FLAG_STRING, NULL, "the offset that indicates starting element of the "
     "resources list to retrieve"},
    {"output", 'o', KM_CTL_FLAG_STRING, "table", "output format: one of table|yaml|json"},
    {"size", 0, KM_CTL_FLAG_STRING, "0", "maximum number of elements to return"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag delete_flags[] = {
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", "mesh to use"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag inspect_flags[] = {
    {"output", 'o', KM_CTL_FLAG_STRING, "table", "output format: one of table|yaml|json"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag inspect_dp_flags[] = {
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", "mesh to use"},
    {"tag", 0, KM_CTL_FLAG_MAP, NULL,
     "filter by tag in format of key=value. You can provide many tags"},
    {"gateway", 0, KM_CTL_FLAG_BOOL, NULL, "filter gateway dataplanes"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag inspect_dp1_flags[] = {
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", "mesh to use"},
    {"type", 0, KM_CTL_FLAG_STRING, "policies",
     "inspection type: one of policies|config-dump|stats|clusters|config"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag cp_add_flags[] = {
    {"address", 0, KM_CTL_FLAG_STRING, NULL,
     "URL of the Control Plane API Server (required). Example: http://localhost:5681 or "
     "https://localhost:5682)"},
    {"auth-conf", 0, KM_CTL_FLAG_MAP, NULL,
     "authentication configuration for defined authentication type format key=value"},
    {"auth-type", 0, KM_CTL_FLAG_STRING, NULL, "authentication type (for example: \"tokens\")"},
    {"ca-cert-file", 0, KM_CTL_FLAG_STRING, NULL,
     "path to the certificate authority which will be used to verify the Control Plane "
     "certificate (kumactl stores only a reference to this file)"},
    {"client-cert-file", 0, KM_CTL_FLAG_STRING, NULL,
     "path to the certificate of a client that is authorized to use the Admin operations of the "
     "Control Plane (kumactl stores only a reference to this file)"},
    {"client-key-file", 0, KM_CTL_FLAG_STRING, NULL,
     "path to the certificate key of a client that is authorized to use the Admin operations of "
     "the Control Plane (kumactl stores only a reference to this file)"},
    {"headers", 0, KM_CTL_FLAG_MAP, NULL,
     "add these headers while communicating to control plane, format key=value"},
    {"name", 0, KM_CTL_FLAG_STRING, NULL, "reference name for the Control Plane (required)"},
    {"overwrite", 0, KM_CTL_FLAG_BOOL, NULL,
     "overwrite existing Control Plane with the same reference name"},
    {"skip-check", 0, KM_CTL_FLAG_BOOL, NULL, "skip checking if we can connect to the CP"},
    {"skip-verify", 0, KM_CTL_FLAG_BOOL, NULL, "skip CA verification"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag cp_name_flags[] = {
    {"name", 0, KM_CTL_FLAG_STRING, NULL, "reference name for the Control Plane (required)"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag version_flags[] = {
    {"detailed", 'a', KM_CTL_FLAG_BOOL, NULL, "Print detailed version"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag gen_dp_token_flags[] = {
    {"kid", 0, KM_CTL_FLAG_STRING, NULL,
     "ID of the key that is used to issue a token. Required when --signing-key-path is used."},
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", "mesh to use"},
    {"name", 0, KM_CTL_FLAG_STRING, NULL, "name of the Dataplane"},
    {"proxy-type", 0, KM_CTL_FLAG_STRING, NULL,
     "type of the Dataplane (\"dataplane\", \"ingress\")"},
    {"signing-key-path", 0, KM_CTL_FLAG_STRING, NULL,
     "path to a file that contains private signing key. When specified, control plane won't be "
     "used to issue the token."},
    {"tag", 0, KM_CTL_FLAG_MAP, NULL,
     "required tag values for dataplane (split values by comma to provide multiple values)"},
    {"type", 0, KM_CTL_FLAG_STRING, NULL, "deprecated: please use --proxy-type instead"},
    {"valid-for", 0, KM_CTL_FLAG_STRING, NULL,
     "how long the token will be valid (for example \"24h\")"},
    {"workload", 0, KM_CTL_FLAG_STRING, NULL, "required workload label value for dataplane"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag gen_user_token_flags[] = {
    {"group", 0, KM_CTL_FLAG_STRING, NULL, "group of the user (repeatable)"},
    {"kid", 0, KM_CTL_FLAG_STRING, NULL,
     "ID of the key that is used to issue a token. Required when --signing-key-path is used."},
    {"name", 0, KM_CTL_FLAG_STRING, NULL, "name of the user"},
    {"signing-key-path", 0, KM_CTL_FLAG_STRING, NULL,
     "path to a file that contains private signing key. When specified, control plane won't be "
     "used to issue the token."},
    {"valid-for", 0, KM_CTL_FLAG_STRING, NULL,
     "how long the token will be valid (for example \"24h\")"},
    {NULL, 0, 0, NULL, NULL},
};

static const struct km_ctl_flag gen_signing_key_flags[] = {
    {"format", 0, KM_CTL_FLAG_STRING, "pem-base64",
     "format of signing key. Available values :pem-base64, pem"},
    {NULL, 0, 0, NULL, NULL},
};

/* ---- command tree ---- */

static const struct km_ctl_cmd cmd_apply = {
    "apply", "apply", "Create or modify Kuma resources",
    "Apply a resource from file\n$ kumactl apply -f resource.yaml\n\n"
    "Apply a resource from stdin\n$ echo \"\ntype: Mesh\nname: demo\n\" | kumactl apply -f -\n\n"
    "Apply a resource from external URL\n$ kumactl apply -f https://example.com/resource.yaml\n\n"
    "Apply all resources from a directory\n$ kumactl apply -f resources/\n\n"
    "Apply with variables\n$ kumactl apply -f dp.yaml -v address=10.0.0.1 -v port=8080",
    apply_flags, NULL, km_ctl_cmd_apply, 0, 0};

static const struct km_ctl_cmd cmd_get = {
    "get", "get TYPE [NAME]", "Show Kuma resources",
    "List the resources of a type\n$ kumactl get meshes\n$ kumactl get dataplanes -m demo\n\n"
    "Show one resource\n$ kumactl get mesh default -o yaml",
    get_flags, NULL, km_ctl_cmd_get, 0, -1};

static const struct km_ctl_cmd cmd_delete = {
    "delete", "delete TYPE NAME", "Delete Kuma resources", NULL, delete_flags, NULL,
    km_ctl_cmd_delete, 2, 2};

static const struct km_ctl_cmd cmd_inspect_meshes = {
    "meshes", "inspect meshes", "Inspect Meshes", NULL, NULL, NULL, km_ctl_cmd_inspect_meshes, 0,
    0};
static const struct km_ctl_cmd cmd_inspect_dataplanes = {
    "dataplanes", "inspect dataplanes", "Inspect Dataplanes", NULL, inspect_dp_flags, NULL,
    km_ctl_cmd_inspect_dataplanes, 0, 0};
static const struct km_ctl_cmd cmd_inspect_dataplane = {
    "dataplane", "inspect dataplane NAME", "Inspect Dataplane", NULL, inspect_dp1_flags, NULL,
    km_ctl_cmd_inspect_dataplane, 1, 1};
static const struct km_ctl_cmd *const inspect_children[] = {
    &cmd_inspect_dataplane, &cmd_inspect_dataplanes, &cmd_inspect_meshes, NULL};
static const struct km_ctl_cmd cmd_inspect = {
    "inspect", "inspect", "Inspect Kuma resources", NULL, inspect_flags, inspect_children, NULL,
    0, 0};

static const struct km_ctl_cmd cmd_cp_add = {
    "add", "config control-planes add", "Add a Control Plane", NULL, cp_add_flags, NULL,
    km_ctl_cmd_cp_add, 0, 0};
static const struct km_ctl_cmd cmd_cp_list = {
    "list", "config control-planes list", "List Control Planes", NULL, NULL, NULL,
    km_ctl_cmd_cp_list, 0, 0};
static const struct km_ctl_cmd cmd_cp_remove = {
    "remove", "config control-planes remove", "Remove a Control Plane", NULL, cp_name_flags,
    NULL, km_ctl_cmd_cp_remove, 0, 0};
static const struct km_ctl_cmd cmd_cp_switch = {
    "switch", "config control-planes switch", "Switch active Control Plane", NULL, cp_name_flags,
    NULL, km_ctl_cmd_cp_switch, 0, 0};
static const struct km_ctl_cmd *const cp_children[] = {&cmd_cp_add, &cmd_cp_list,
                                                       &cmd_cp_remove, &cmd_cp_switch, NULL};
static const struct km_ctl_cmd cmd_cps = {
    "control-planes", "config control-planes", "Manage known Control Planes", NULL, NULL,
    cp_children, NULL, 0, 0};
static const struct km_ctl_cmd cmd_config_view = {
    "view", "config view", "Show kumactl config", NULL, NULL, NULL, km_ctl_cmd_config_view, 0, 0};
static const struct km_ctl_cmd *const config_children[] = {&cmd_cps, &cmd_config_view, NULL};
static const struct km_ctl_cmd cmd_config = {
    "config", "config", "Manage kumactl config", NULL, NULL, config_children, NULL, 0, 0};

static const struct km_ctl_cmd cmd_gen_dp_token = {
    "dataplane-token", "generate dataplane-token", "Generate Dataplane Token",
    "Generate token bound by name and mesh\n"
    "$ kumactl generate dataplane-token --mesh demo --name demo-01 --valid-for 24h\n\n"
    "Generate token bound by tag\n"
    "$ kumactl generate dataplane-token --mesh demo --tag kuma.io/service=web,web-api "
    "--valid-for 24h",
    gen_dp_token_flags, NULL, km_ctl_cmd_generate_dataplane_token, 0, 0};
static const struct km_ctl_cmd cmd_gen_user_token = {
    "user-token", "generate user-token", "Generate User Token",
    "Generate token using a control plane\n"
    "$ kumactl generate user-token --name john.doe@example.com --group users --valid-for 24h",
    gen_user_token_flags, NULL, km_ctl_cmd_generate_user_token, 0, 0};
static const struct km_ctl_cmd cmd_gen_signing_key = {
    "signing-key", "generate signing-key", "Generate signing keys",
    "$ kumactl generate signing-key --format=pem", gen_signing_key_flags, NULL,
    km_ctl_cmd_generate_signing_key, 0, 0};
static const struct km_ctl_cmd *const generate_children[] = {
    &cmd_gen_dp_token, &cmd_gen_signing_key, &cmd_gen_user_token, NULL};
static const struct km_ctl_cmd cmd_generate = {
    "generate", "generate", "Generate resources, tokens, etc", NULL, NULL, generate_children,
    NULL, 0, 0};

static const struct km_ctl_cmd cmd_version = {
    "version", "version", "Print version", NULL, version_flags, NULL, km_ctl_cmd_version, 0, 0};
static const struct km_ctl_cmd cmd_help = {
    "help", "help [command]", "Help about any command", NULL, NULL, NULL, NULL, 0, -1};

static const struct km_ctl_cmd *const root_children[] = {
    &cmd_apply, &cmd_config,  &cmd_delete,  &cmd_generate, &cmd_get,
    &cmd_help,  &cmd_inspect, &cmd_version, NULL};
static const struct km_ctl_cmd cmd_root = {
    "kumactl", "", "Management tool for Kuma", NULL, NULL, root_children, NULL, 0, 0};

/* ---- shared helpers ---- */

const char *
km_ctl_flag_str(const struct km_ctl_ctx *x, const char *name)
{
    return km_ctl_args_str(&x->args, x->tables, x->ntables, name);
}

bool
km_ctl_flag_bool(const struct km_ctl_ctx *x, const char *name)
{
    return km_ctl_args_bool(&x->args, name);
}

int
km_ctl_fail(struct km_ctl_ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("Error: ", x->err);
    vfprintf(x->err, fmt, ap);
    fputc('\n', x->err);
    va_end(ap);
    return 1;
}

bool
km_ctl_save_config(struct km_ctl_ctx *x)
{
    if (x->no_config) {
        km_ctl_fail(x, "the configuration cannot be saved: --no-config is set");
        return false;
    }
    char err[512];
    if (!km_ctl_config_save(x->config_path, x->config, err, sizeof(err))) {
        km_ctl_fail(x, "%s", err);
        return false;
    }
    return true;
}

struct km_ctl_client *
km_ctl_current_client(struct km_ctl_ctx *x)
{
    if (x->client)
        return x->client;
    const char *ctx_name = km_ctl_flag_str(x, "context");
    json_t *cp = km_ctl_config_current_cp(x->config, ctx_name);
    if (!cp) {
        if (ctx_name)
            km_ctl_fail(x, "there is no context with name \"%s\"", ctx_name);
        else
            km_ctl_fail(x, "active Control Plane is not set. Use `kumactl config control-planes "
                        "add` to add a Control Plane and make it active");
        return NULL;
    }
    char err[512];
    x->client = km_ctl_client_new(cp, x->timeout_ms, err, sizeof(err));
    if (!x->client)
        km_ctl_fail(x, "%s", err);
    return x->client;
}

json_t *
km_ctl_get_json(struct km_ctl_ctx *x, const char *path, const char *what, long *status)
{
    *status = 0;
    struct km_ctl_client *c = km_ctl_current_client(x);
    if (!c)
        return NULL;
    struct km_ctl_response r;
    char err[1024];
    if (!km_ctl_client_do(c, "GET", path, NULL, &r, err, sizeof(err))) {
        km_ctl_fail(x, "%s", err);
        return NULL;
    }
    *status = r.status;
    json_t *j = NULL;
    if (r.status >= 200 && r.status < 300) {
        char perr[256];
        j = km_json_parse(r.body, r.len, perr, sizeof(perr));
        if (!j)
            km_ctl_fail(x, "%s%sinvalid JSON from %s%s: %s", what ? what : "", what ? ": " : "",
                        km_ctl_client_url(c), path, perr);
    } else if (r.status != 404 || !what) {
        char *m = km_ctl_format_api_error(r.status, r.body, r.len);
        km_ctl_fail(x, "%s%s%s", what ? what : "", what ? ": " : "", m);
        free(m);
    }
    km_ctl_response_deinit(&r);
    return j;
}

void
km_ctl_print_json(FILE *out, const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (s) {
        fputs(s, out);
        fputc('\n', out);
        free(s);
    }
}

void
km_ctl_print_yaml(FILE *out, const json_t *v)
{
    char *s = km_yaml_dump(v);
    fputs(s, out);
    free(s);
}

/* ---- help ---- */

static void
full_name(const struct km_ctl_cmd *const *path, size_t depth, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "kumactl");
    for (size_t i = 1; i < depth && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, " %s", path[i]->name);
}

static void
print_flag_table(FILE *out, const struct km_ctl_flag *flags, const char *help_of)
{
    if (help_of)
        fprintf(out, "  -h, --help   help for %s\n", help_of);
    for (const struct km_ctl_flag *f = flags; f && f->name; f++) {
        char lhs[96];
        const char *kind = f->kind == KM_CTL_FLAG_BOOL ? ""
                           : f->kind == KM_CTL_FLAG_MAP ? " stringToString"
                                                        : " string";
        if (f->short_name)
            snprintf(lhs, sizeof(lhs), "-%c, --%s%s", f->short_name, f->name, kind);
        else
            snprintf(lhs, sizeof(lhs), "    --%s%s", f->name, kind);
        fprintf(out, "  %-32s %s", lhs, f->help);
        if (f->def && f->kind == KM_CTL_FLAG_STRING)
            fprintf(out, " (default \"%s\")", f->def);
        fputc('\n', out);
    }
}

static void
print_get_types(FILE *out)
{
    fprintf(out, "\nAvailable Types (TYPE):\n");
    for (size_t i = 0; i < km_registry_count(); i++) {
        const struct km_rtype *t = km_registry_at(i);
        if (!t->singular || !t->kumactl_plural)
            continue;
        fprintf(out, "  %-36s Show %s\n", t->kumactl_plural, t->name);
        fprintf(out, "  %-36s Show a single %s resource\n", t->singular, t->name);
    }
}

static void
print_help(FILE *out, const struct km_ctl_cmd *const *path, size_t depth)
{
    const struct km_ctl_cmd *c = path[depth - 1];
    char name[128];
    full_name(path, depth, name, sizeof(name));
    fprintf(out, "%s.\n\nUsage:\n", c->short_help);
    if (c->run || !c->children)
        fprintf(out, "  kumactl%s%s [flags]\n", c->use[0] ? " " : "", c->use);
    if (c->children)
        fprintf(out, "  %s [command]\n", name);
    if (c->example)
        fprintf(out, "\nExamples:\n%s\n", c->example);
    if (c->children) {
        fprintf(out, "\nAvailable Commands:\n");
        for (const struct km_ctl_cmd *const *ch = c->children; *ch; ch++)
            fprintf(out, "  %-15s %s\n", (*ch)->name, (*ch)->short_help);
    }
    if (c == &cmd_get || c == &cmd_delete)
        print_get_types(out);
    fprintf(out, "\nFlags:\n");
    print_flag_table(out, c->flags, c->name);
    bool inherited = false;
    for (size_t i = 0; i + 1 < depth; i++)
        inherited = inherited || path[i]->flags;
    fprintf(out, "\nGlobal Flags:\n");
    print_flag_table(out, global_flags, NULL);
    if (inherited) {
        for (size_t i = 0; i + 1 < depth; i++)
            print_flag_table(out, path[i]->flags, NULL);
    }
    if (c->children)
        fprintf(out, "\nUse \"%s [command] --help\" for more information about a command.\n",
                name);
}

/* ---- dispatch ---- */

#define KM_CTL_MAX_DEPTH 5

static const struct km_ctl_cmd *
child_named(const struct km_ctl_cmd *c, const char *name)
{
    for (const struct km_ctl_cmd *const *ch = c->children; ch && *ch; ch++) {
        if (strcmp((*ch)->name, name) == 0)
            return *ch;
    }
    return NULL;
}

/* Finds a flag in <c>, its subcommands and the tables of the path so far, to learn whether a
 * flag met before the subcommand name takes the next word as its value. */
static const struct km_ctl_flag *
subtree_flag(const struct km_ctl_cmd *c, const char *name, size_t len, char shortc)
{
    const struct km_ctl_flag *tables[1] = {c->flags};
    const struct km_ctl_flag *f = km_ctl_flag_find(tables, 1, name, len, shortc);
    for (const struct km_ctl_cmd *const *ch = c->children; !f && ch && *ch; ch++)
        f = subtree_flag(*ch, name, len, shortc);
    return f;
}

static bool
flag_takes_value(const struct km_ctl_cmd *const *path, size_t depth, const char *w)
{
    const struct km_ctl_flag *tables[KM_CTL_MAX_DEPTH + 1];
    size_t n = 0;
    tables[n++] = global_flags;
    for (size_t i = 0; i < depth; i++)
        tables[n++] = path[i]->flags;
    const struct km_ctl_flag *f = NULL;
    if (w[1] == '-') {
        const char *name = w + 2;
        if (strchr(name, '='))
            return false;
        f = km_ctl_flag_find(tables, n, name, strlen(name), 0);
        if (!f)
            f = subtree_flag(path[depth - 1], name, strlen(name), 0);
    } else {
        /* a bundle of short flags: only a value flag at its very end takes the next word */
        size_t l = strlen(w);
        if (l < 2 || strchr(w, '='))
            return false;
        for (size_t i = 1; i < l; i++) {
            f = km_ctl_flag_find(tables, n, NULL, 0, w[i]);
            if (!f)
                f = subtree_flag(path[depth - 1], NULL, 0, w[i]);
            if (f && f->kind != KM_CTL_FLAG_BOOL && i + 1 < l)
                return false; /* "-mdemo": value inline */
        }
    }
    return f && f->kind != KM_CTL_FLAG_BOOL;
}

static bool
load_config(struct km_ctl_ctx *x)
{
    const char *api_timeout = km_ctl_flag_str(x, "api-timeout");
    int64_t ns = 0;
    if (!km_duration_parse(api_timeout, false, &ns) || ns < 0) {
        km_ctl_fail(x, "invalid argument \"%s\" for \"--api-timeout\" flag: time: invalid "
                    "duration \"%s\"", api_timeout, api_timeout);
        return false;
    }
    x->timeout_ms = (long)(ns / 1000000);
    if (ns > 0 && x->timeout_ms == 0)
        x->timeout_ms = 1;
    const char *ll = km_ctl_flag_str(x, "log-level");
    if (strcmp(ll, "off") != 0 && strcmp(ll, "info") != 0 && strcmp(ll, "debug") != 0) {
        km_ctl_fail(x, "invalid log level \"%s\": one of off|info|debug", ll);
        return false;
    }
    x->no_config = km_ctl_flag_bool(x, "no-config");
    if (x->no_config) {
        x->config = km_ctl_config_default();
        return true;
    }
    const char *file = km_ctl_flag_str(x, "config-file");
    x->config_path = file && *file ? km_xstrdup(file) : km_ctl_config_default_path();
    bool missing = false;
    char err[1024];
    x->config = km_ctl_config_load(x->config_path, &missing, err, sizeof(err));
    if (x->config)
        return true;
    if (!missing) {
        km_ctl_fail(x, "%s", err);
        return false;
    }
    if (file && *file) {
        km_ctl_fail(x, "Failed to access configuration file \"%s\"", file);
        return false;
    }
    /* first use: write Kuma's default configuration, as kumactl does */
    x->config = km_ctl_config_default();
    if (!km_ctl_config_save(x->config_path, x->config, err, sizeof(err))) {
        km_ctl_fail(x, "%s", err);
        return false;
    }
    return true;
}

int
km_ctl_main(int argc, char **argv)
{
    struct km_ctl_ctx x;
    memset(&x, 0, sizeof(x));
    x.out = stdout;
    x.err = stderr;
    x.now_us = km_now_us();
    km_ctl_args_init(&x.args);

    const struct km_ctl_cmd *path[KM_CTL_MAX_DEPTH];
    size_t depth = 1;
    path[0] = &cmd_root;
    /* words left for the command once the path is known: flags and positional arguments */
    char **rest = km_xcalloc((size_t)argc + 1, sizeof(*rest));
    int nrest = 0;
    bool help_cmd = false;
    bool positional_seen = false;
    bool flags_done = false;
    int rc = 1;
    char err[512];

    for (int i = 1; i < argc; i++) {
        const char *w = argv[i];
        if (!flags_done && strcmp(w, "--") == 0) {
            flags_done = true;
            rest[nrest++] = argv[i];
            continue;
        }
        if (!flags_done && w[0] == '-' && w[1]) {
            rest[nrest++] = argv[i];
            if (flag_takes_value(path, depth, w) && i + 1 < argc)
                rest[nrest++] = argv[++i];
            continue;
        }
        const struct km_ctl_cmd *cur = path[depth - 1];
        if (!positional_seen && cur->children) {
            const struct km_ctl_cmd *ch = child_named(cur, w);
            if (ch == &cmd_help && depth == 1) {
                help_cmd = true;
                continue;
            }
            if (ch && depth < KM_CTL_MAX_DEPTH) {
                path[depth++] = ch;
                continue;
            }
            char name[128];
            full_name(path, depth, name, sizeof(name));
            fprintf(x.err, "Error: unknown command \"%s\" for \"%s\"\nRun '%s --help' for "
                    "usage.\n", w, name, name);
            goto out;
        }
        positional_seen = true;
        rest[nrest++] = argv[i];
    }

    const struct km_ctl_cmd *cmd = path[depth - 1];
    x.cmd = cmd;
    x.tables[x.ntables++] = global_flags;
    for (size_t i = 0; i < depth; i++) {
        if (path[i]->flags)
            x.tables[x.ntables++] = path[i]->flags;
    }
    if (!km_ctl_args_parse(&x.args, x.tables, x.ntables, nrest, rest, err, sizeof(err))) {
        char name[128];
        full_name(path, depth, name, sizeof(name));
        fprintf(x.err, "Error: %s\nRun '%s --help' for usage.\n", err, name);
        goto out;
    }
    if (help_cmd || x.args.help || (!cmd->run && x.args.npos == 0) ||
        (cmd == &cmd_get && x.args.npos == 0)) {
        print_help(x.out, path, depth);
        rc = 0;
        goto out;
    }
    if ((int)x.args.npos < cmd->min_args ||
        (cmd->max_args >= 0 && (int)x.args.npos > cmd->max_args)) {
        char name[128];
        full_name(path, depth, name, sizeof(name));
        if (cmd->max_args == 0)
            fprintf(x.err, "Error: unknown command \"%s\" for \"%s\"\n", x.args.pos[0], name);
        else if (cmd->min_args == cmd->max_args)
            fprintf(x.err, "Error: accepts %d arg(s), received %zu\n", cmd->min_args,
                    x.args.npos);
        else
            fprintf(x.err, "Error: accepts between %d and %d arg(s), received %zu\n",
                    cmd->min_args, cmd->max_args, x.args.npos);
        fprintf(x.err, "Run '%s --help' for usage.\n", name);
        goto out;
    }
    if (!load_config(&x))
        goto out;
    rc = cmd->run(&x);
out:
    free(rest);
    km_ctl_args_deinit(&x.args);
    km_ctl_client_free(x.client);
    json_decref(x.config);
    free(x.config_path);
    fflush(x.out);
    return rc;
}
