/* kumactl get <plural> | <singular> NAME, and kumactl delete TYPE NAME. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/resource.h>
#include <km/ctl/cmd.h>
#include <km/ctl/table.h>

/* ---- table columns (Kuma's app/kumactl/cmd/get/table_printer.go) ---- */

size_t
km_ctl_get_columns(const char *type_name, bool mesh_scoped, const char **headers)
{
    static const char *const mesh[] = {"NAME", "mTLS", "LOCALITY", "ZONEEGRESS", "AGE"};
    static const char *const dp[] = {"MESH", "NAME", "TAGS", "ADDRESS", "AGE"};
    static const char *const scoped[] = {"MESH", "NAME", "AGE"};
    static const char *const global[] = {"NAME", "AGE"};
    const char *const *src;
    size_t n;
    if (strcmp(type_name, "Mesh") == 0) {
        src = mesh;
        n = KM_ARRAY_LEN(mesh);
    } else if (strcmp(type_name, "Dataplane") == 0 || strcmp(type_name, "ExternalService") == 0) {
        src = dp;
        n = KM_ARRAY_LEN(dp);
    } else if (mesh_scoped) {
        src = scoped;
        n = KM_ARRAY_LEN(scoped);
    } else {
        src = global;
        n = KM_ARRAY_LEN(global);
    }
    for (size_t i = 0; i < n; i++)
        headers[i] = src[i];
    return n;
}

/* A set of tag values per key, kept sorted: "k=v1,v2 k2=v". */
struct tagset {
    char **keys;
    char ***vals;
    size_t *nvals;
    size_t n;
};

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
tagset_add(struct tagset *s, const char *k, const char *v)
{
    size_t i;
    for (i = 0; i < s->n && strcmp(s->keys[i], k) != 0; i++)
        ;
    if (i == s->n) {
        s->keys = km_xrealloc(s->keys, (s->n + 1) * sizeof(*s->keys));
        s->vals = km_xrealloc(s->vals, (s->n + 1) * sizeof(*s->vals));
        s->nvals = km_xrealloc(s->nvals, (s->n + 1) * sizeof(*s->nvals));
        s->keys[i] = km_xstrdup(k);
        s->vals[i] = NULL;
        s->nvals[i] = 0;
        s->n++;
    }
    for (size_t j = 0; j < s->nvals[i]; j++) {
        if (strcmp(s->vals[i][j], v) == 0)
            return;
    }
    s->vals[i] = km_xrealloc(s->vals[i], (s->nvals[i] + 1) * sizeof(**s->vals));
    s->vals[i][s->nvals[i]++] = km_xstrdup(v);
}

static void
tagset_add_object(struct tagset *s, const json_t *tags)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)tags, k, v) {
        if (json_is_string(v))
            tagset_add(s, k, json_string_value(v));
    }
}

/* Renders and frees the set. Entries "k=v1,v2" sorted as whole strings, as Kuma does. */
static char *
tagset_take(struct tagset *s)
{
    char **items = km_xcalloc(s->n ? s->n : 1, sizeof(*items));
    for (size_t i = 0; i < s->n; i++) {
        qsort(s->vals[i], s->nvals[i], sizeof(char *), cmp_str);
        struct km_sbuf b;
        km_sbuf_init(&b);
        km_sbuf_printf(&b, "%s=", s->keys[i]);
        for (size_t j = 0; j < s->nvals[i]; j++) {
            km_sbuf_printf(&b, "%s%s", j ? "," : "", s->vals[i][j]);
            free(s->vals[i][j]);
        }
        items[i] = km_sbuf_take(&b);
        free(s->vals[i]);
        free(s->keys[i]);
    }
    qsort(items, s->n, sizeof(*items), cmp_str);
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (size_t i = 0; i < s->n; i++) {
        km_sbuf_printf(&b, "%s%s", i ? " " : "", items[i]);
        free(items[i]);
    }
    free(items);
    free(s->keys);
    free(s->vals);
    free(s->nvals);
    memset(s, 0, sizeof(*s));
    return km_sbuf_take(&b);
}

char *
km_ctl_dataplane_tags(const json_t *dp)
{
    struct tagset s = {0};
    const json_t *net = json_object_get(dp, "networking");
    size_t i;
    const json_t *in;
    json_array_foreach(json_object_get(net, "inbound"), i, in)
        tagset_add_object(&s, json_object_get(in, "tags"));
    tagset_add_object(&s, json_object_get(json_object_get(net, "gateway"), "tags"));
    return tagset_take(&s);
}

static const char *
str_or(const json_t *obj, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : def;
}

static const char *
on_off(const json_t *v)
{
    return json_is_true(v) ? "on" : "off";
}

void
km_ctl_get_row(const char *type_name, bool mesh_scoped, const json_t *item, int64_t now_us,
               char **cells)
{
    char age[32];
    km_ctl_ago(json_string_value(json_object_get(item, "modificationTime")), now_us, age,
               sizeof(age));
    const char *name = str_or(item, "name", "");
    const char *mesh = str_or(item, "mesh", "");
    if (strcmp(type_name, "Mesh") == 0) {
        const json_t *mtls = json_object_get(item, "mtls");
        const char *enabled = str_or(mtls, "enabledBackend", "");
        char *m = NULL;
        if (*enabled) {
            const char *btype = "";
            size_t i;
            const json_t *b;
            json_array_foreach(json_object_get(mtls, "backends"), i, b) {
                if (strcmp(str_or(b, "name", ""), enabled) == 0)
                    btype = str_or(b, "type", "");
            }
            m = km_xasprintf("%s/%s", btype, enabled);
        } else {
            m = km_xstrdup("off");
        }
        const json_t *routing = json_object_get(item, "routing");
        cells[0] = km_xstrdup(name);
        cells[1] = m;
        cells[2] = km_xstrdup(on_off(json_object_get(routing, "localityAwareLoadBalancing")));
        cells[3] = km_xstrdup(on_off(json_object_get(routing, "zoneEgress")));
        cells[4] = km_xstrdup(age);
    } else if (strcmp(type_name, "Dataplane") == 0) {
        const json_t *net = json_object_get(item, "networking");
        const char *addr = str_or(net, "advertisedAddress", "");
        if (!*addr)
            addr = str_or(net, "address", "");
        cells[0] = km_xstrdup(mesh);
        cells[1] = km_xstrdup(name);
        cells[2] = km_ctl_dataplane_tags(item);
        cells[3] = km_xstrdup(addr);
        cells[4] = km_xstrdup(age);
    } else if (strcmp(type_name, "ExternalService") == 0) {
        struct tagset s = {0};
        tagset_add_object(&s, json_object_get(item, "tags"));
        cells[0] = km_xstrdup(mesh);
        cells[1] = km_xstrdup(name);
        cells[2] = tagset_take(&s);
        cells[3] = km_xstrdup(str_or(json_object_get(item, "networking"), "address", ""));
        cells[4] = km_xstrdup(age);
    } else if (mesh_scoped) {
        cells[0] = km_xstrdup(mesh);
        cells[1] = km_xstrdup(name);
        cells[2] = km_xstrdup(age);
    } else {
        cells[0] = km_xstrdup(name);
        cells[1] = km_xstrdup(age);
    }
}

char *
km_ctl_next_offset(const char *next)
{
    if (!next)
        return NULL;
    const char *q = strchr(next, '?');
    if (!q)
        return NULL;
    for (const char *p = q + 1; *p;) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 7 && strncmp(p, "offset=", 7) == 0)
            return km_xstrndup(p + 7, len - 7);
        if (!end)
            break;
        p = end + 1;
    }
    return NULL;
}

static void
print_table(struct km_ctl_ctx *x, const struct km_rtype *t, const json_t *items, const char *next)
{
    const char *headers[5];
    bool scoped = t->scope == KM_SCOPE_MESH;
    size_t n = km_ctl_get_columns(t->name, scoped, headers);
    struct km_ctl_table tab;
    km_ctl_table_init(&tab, n);
    km_ctl_table_row(&tab, headers);
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item) {
        char *cells[5] = {0};
        km_ctl_get_row(t->name, scoped, item, x->now_us, cells);
        km_ctl_table_row(&tab, (const char *const *)cells);
        for (size_t c = 0; c < n; c++)
            free(cells[c]);
    }
    char *s = km_ctl_table_render(&tab);
    fputs(s, x->out);
    free(s);
    km_ctl_table_deinit(&tab);
    char *off = km_ctl_next_offset(next);
    if (off) {
        fprintf(x->out, "\nRerun command with --offset=%s argument to retrieve more resources\n",
                off);
        free(off);
    }
}

static bool
is_list_arg(const struct km_rtype *t, const char *arg)
{
    if (t->singular && strcmp(arg, t->singular) == 0)
        return false;
    return (t->kumactl_plural && strcmp(arg, t->kumactl_plural) == 0) ||
           strcmp(arg, t->plural) == 0 || (t->alt_plural && strcmp(arg, t->alt_plural) == 0);
}

static char *
collection_path(const struct km_rtype *t, const char *mesh)
{
    if (t->scope == KM_SCOPE_MESH) {
        char *em = km_ctl_escape(mesh);
        char *p = km_xasprintf("/meshes/%s/%s", em, t->plural);
        free(em);
        return p;
    }
    return km_xasprintf("/%s", t->plural);
}

int
km_ctl_cmd_get(struct km_ctl_ctx *x)
{
    const char *arg = x->args.pos[0];
    const struct km_rtype *t = km_registry_by_cli(arg);
    if (!t)
        return km_ctl_fail(x, "unknown command \"%s\" for \"kumactl get\"", arg);
    const char *format = km_ctl_flag_str(x, "output");
    if (strcmp(format, "table") != 0 && strcmp(format, "yaml") != 0 &&
        strcmp(format, "json") != 0)
        return km_ctl_fail(x, "unknown output format \"%s\"", format);
    const char *mesh = km_ctl_flag_str(x, "mesh");
    bool list = is_list_arg(t, arg);
    if (list && x->args.npos != 1)
        return km_ctl_fail(x, "unknown command \"%s\" for \"kumactl get %s\"", x->args.pos[1],
                           arg);
    if (!list && x->args.npos != 2)
        return km_ctl_fail(x, "accepts 1 arg(s), received %zu", x->args.npos - 1);

    char *base = collection_path(t, mesh);
    json_t *j = NULL;
    long status;
    int rc = 1;
    if (list) {
        const char *size = km_ctl_flag_str(x, "size");
        const char *offset = km_ctl_flag_str(x, "offset");
        char *end;
        long sz = strtol(size, &end, 10);
        if (!*size || *end || sz < 0) {
            rc = km_ctl_fail(x, "invalid argument \"%s\" for \"--size\" flag: must be a "
                             "non-negative integer", size);
            goto out;
        }
        struct km_sbuf p;
        km_sbuf_init(&p);
        km_sbuf_puts(&p, base);
        char sep = '?';
        if (sz > 0) {
            km_sbuf_printf(&p, "%csize=%ld", sep, sz);
            sep = '&';
        }
        if (offset && *offset) {
            char *eo = km_ctl_escape(offset);
            km_sbuf_printf(&p, "%coffset=%s", sep, eo);
            free(eo);
        }
        char what[160];
        snprintf(what, sizeof(what), "failed to list %s", t->name);
        j = km_ctl_get_json(x, p.ptr, what, &status);
        km_sbuf_deinit(&p);
        if (!j) {
            if (status == 404) {
                /* a list answers 404 when the mesh does not exist */
                rc = km_ctl_fail(x, "failed to list %s: mesh \"%s\" not found", t->name, mesh);
            }
            goto out;
        }
        if (strcmp(format, "table") == 0)
            print_table(x, t, json_object_get(j, "items"),
                        json_string_value(json_object_get(j, "next")));
        else if (strcmp(format, "yaml") == 0)
            km_ctl_print_yaml(x->out, j);
        else
            km_ctl_print_json(x->out, j);
        rc = 0;
    } else {
        const char *name = x->args.pos[1];
        char *en = km_ctl_escape(name);
        char *p = km_xasprintf("%s/%s", base, en);
        free(en);
        char what[300];
        snprintf(what, sizeof(what), "failed to get %s%s%s", name,
                 t->scope == KM_SCOPE_MESH ? " in mesh " : "",
                 t->scope == KM_SCOPE_MESH ? mesh : "");
        j = km_ctl_get_json(x, p, what, &status);
        free(p);
        if (!j) {
            if (status == 404) {
                if (t->scope == KM_SCOPE_MESH)
                    rc = km_ctl_fail(x, "No resources found in %s mesh", mesh);
                else
                    rc = km_ctl_fail(x, "No resources found");
            }
            goto out;
        }
        if (strcmp(format, "table") == 0) {
            json_t *items = json_array();
            json_array_append(items, j);
            print_table(x, t, items, NULL);
            json_decref(items);
        } else if (strcmp(format, "yaml") == 0) {
            km_ctl_print_yaml(x->out, j);
        } else {
            km_ctl_print_json(x->out, j);
        }
        rc = 0;
    }
out:
    json_decref(j);
    free(base);
    return rc;
}

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int
km_ctl_cmd_delete(struct km_ctl_ctx *x)
{
    const char *arg = x->args.pos[0];
    const char *name = x->args.pos[1];
    const struct km_rtype *t = km_registry_by_cli(arg);
    if (!t) {
        const char **names = km_xcalloc(km_registry_count() + 1, sizeof(*names));
        size_t n = 0;
        for (size_t i = 0; i < km_registry_count(); i++) {
            const struct km_rtype *r = km_registry_at(i);
            if (r->singular)
                names[n++] = r->singular;
        }
        qsort(names, n, sizeof(*names), cmp_cstr);
        struct km_sbuf b;
        km_sbuf_init(&b);
        for (size_t i = 0; i < n; i++)
            km_sbuf_printf(&b, "%s%s", i ? ", " : "", names[i]);
        free(names);
        km_ctl_fail(x, "unknown TYPE: %s. Allowed values: %s", arg, b.ptr);
        km_sbuf_deinit(&b);
        return 1;
    }
    if (t->read_only)
        return km_ctl_fail(x, "TYPE: %s is readOnly, can't use it for write action", arg);
    struct km_ctl_client *c = km_ctl_current_client(x);
    if (!c)
        return 1;
    const char *mesh = km_ctl_flag_str(x, "mesh");
    char *base = collection_path(t, mesh);
    char *en = km_ctl_escape(name);
    char *path = km_xasprintf("%s/%s", base, en);
    free(en);
    free(base);
    struct km_ctl_response r;
    char err[1024];
    int rc = 1;
    if (!km_ctl_client_do(c, "DELETE", path, NULL, &r, err, sizeof(err))) {
        km_ctl_fail(x, "failed to delete %s with the name \"%s\": %s", t->name, name, err);
    } else {
        if (r.status == 404) {
            km_ctl_fail(x, "there is no %s with name \"%s\"", t->name, name);
        } else if (r.status < 200 || r.status >= 300) {
            char *m = km_ctl_format_api_error(r.status, r.body, r.len);
            km_ctl_fail(x, "failed to delete %s with the name \"%s\": %s", t->name, name, m);
            free(m);
        } else {
            fprintf(x->out, "deleted %s \"%s\"\n", t->name, name);
            rc = 0;
        }
        km_ctl_response_deinit(&r);
    }
    free(path);
    return rc;
}
