/* kumactl apply -f FILE|DIR|URL|- [--var k=v]... [--dry-run] */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/cp/resource.h>
#include <km/ctl/cmd.h>
#include <km/ctl/template.h>

/* Largest input kumactl apply reads (all files of a directory together). */
#define KM_APPLY_MAX_INPUT ((size_t)64 * 1024 * 1024)
#define KM_APPLY_MAX_FILES 10000

static char *
read_stream(FILE *f, size_t *len, char *err, size_t errlen)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > KM_APPLY_MAX_INPUT) {
            snprintf(err, errlen, "error while reading provided file: standard input is larger "
                     "than %zu MiB", KM_APPLY_MAX_INPUT >> 20);
            km_sbuf_deinit(&b);
            return NULL;
        }
        km_sbuf_add(&b, chunk, n);
    }
    if (ferror(f)) {
        snprintf(err, errlen, "error while reading provided file: standard input: %s",
                 strerror(errno));
        km_sbuf_deinit(&b);
        return NULL;
    }
    *len = b.len;
    return km_sbuf_take(&b);
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool
wanted_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".yaml") == 0 || strcasecmp(dot, ".yml") == 0 ||
                   strcasecmp(dot, ".json") == 0);
}

static char *
read_dir(const char *dir, size_t *len, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "error reading directory: %s: %s", dir, strerror(errno));
        return NULL;
    }
    char **files = NULL;
    size_t n = 0;
    char *out = NULL;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        if (!wanted_ext(de->d_name))
            continue;
        char *p = km_xasprintf("%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) == -1 || S_ISDIR(st.st_mode)) {
            free(p);
            continue;
        }
        if (n == KM_APPLY_MAX_FILES) {
            free(p);
            snprintf(err, errlen, "error reading directory: %s has more than %d files", dir,
                     KM_APPLY_MAX_FILES);
            goto out;
        }
        files = km_xrealloc(files, (n + 1) * sizeof(*files));
        files[n++] = p;
    }
    qsort(files, n, sizeof(*files), cmp_str);
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (size_t i = 0; i < n; i++) {
        size_t flen;
        char *c = km_read_file(files[i], KM_APPLY_MAX_INPUT, &flen);
        if (!c || b.len + flen + 5 > KM_APPLY_MAX_INPUT) {
            snprintf(err, errlen, "error reading file %s: %s", files[i],
                     !c && errno != EFBIG ? strerror(errno) : "input larger than 64 MiB");
            free(c);
            km_sbuf_deinit(&b);
            goto out;
        }
        if (b.len > 0)
            km_sbuf_puts(&b, "\n---\n");
        km_sbuf_add(&b, c, flen);
        free(c);
    }
    *len = b.len;
    out = km_sbuf_take(&b);
out:
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    closedir(d);
    return out;
}

static char *
read_content(const char *file, long timeout_ms, size_t *len, char *err, size_t errlen)
{
    if (strcmp(file, "-") == 0)
        return read_stream(stdin, len, err, errlen);
    if (strncmp(file, "http://", 7) == 0 || strncmp(file, "https://", 8) == 0)
        return km_ctl_fetch_url(file, timeout_ms, KM_APPLY_MAX_INPUT, len, err, errlen);
    struct stat st;
    if (stat(file, &st) == -1) {
        snprintf(err, errlen, "error while reading provided file: stat %s: %s", file,
                 strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode))
        return read_dir(file, len, err, errlen);
    char *c = km_read_file(file, KM_APPLY_MAX_INPUT, len);
    if (!c)
        snprintf(err, errlen, "error while reading provided file: %s: %s", file,
                 errno == EFBIG ? "larger than 64 MiB" : strerror(errno));
    return c;
}

/* Client-side checks before anything is sent (Kuma checks the type and the meta). Returns the
 * type or NULL after printing "resource[i]: ..." on stderr. */
static const struct km_rtype *
check_doc(struct km_ctl_ctx *x, size_t i, const json_t *doc)
{
    if (!json_is_object(doc)) {
        fprintf(x->err, "resource[%zu]: failed to parse resource: the document must be a "
                "mapping\n", i);
        return NULL;
    }
    const json_t *type = json_object_get(doc, "type");
    if (!json_is_string(type) || json_string_length(type) == 0) {
        fprintf(x->err, "resource[%zu]: failed to parse resource: type: %s\n", i,
                type ? "must be a string" : "cannot be empty");
        return NULL;
    }
    const struct km_rtype *t = km_registry_find(json_string_value(type));
    if (!t) {
        fprintf(x->err, "resource[%zu]: failed to parse resource: unknown type \"%s\"\n", i,
                json_string_value(type));
        return NULL;
    }
    if (t->read_only) {
        fprintf(x->err, "resource[%zu]: failed to parse resource: type %s is read-only\n", i,
                t->name);
        return NULL;
    }
    bool bad = false;
    const json_t *name = json_object_get(doc, "name");
    if (!json_is_string(name) || json_string_length(name) == 0) {
        fprintf(x->err, "resource[%zu]: failed to read meta: name: %s\n", i,
                name && !json_is_string(name) ? "must be a string" : "cannot be empty");
        bad = true;
    }
    if (t->scope == KM_SCOPE_MESH) {
        const json_t *mesh = json_object_get(doc, "mesh");
        if (!json_is_string(mesh) || json_string_length(mesh) == 0) {
            fprintf(x->err, "resource[%zu]: failed to read meta: mesh: %s\n", i,
                    mesh && !json_is_string(mesh) ? "must be a string" : "cannot be empty");
            bad = true;
        }
    }
    return bad ? NULL : t;
}

static char *
resource_path(const struct km_rtype *t, const char *mesh, const char *name)
{
    char *en = km_ctl_escape(name);
    char *p;
    if (t->scope == KM_SCOPE_MESH) {
        char *em = km_ctl_escape(mesh);
        p = km_xasprintf("/meshes/%s/%s/%s", em, t->plural, en);
        free(em);
    } else {
        p = km_xasprintf("/%s/%s", t->plural, en);
    }
    free(en);
    return p;
}

static int
upsert(struct km_ctl_ctx *x, const struct km_rtype *t, const json_t *doc)
{
    const char *name = json_string_value(json_object_get(doc, "name"));
    const char *mesh = t->scope == KM_SCOPE_MESH
                           ? json_string_value(json_object_get(doc, "mesh"))
                           : "";
    struct km_ctl_client *c = km_ctl_current_client(x);
    if (!c)
        return 1;
    char *path = resource_path(t, mesh, name);
    char *body = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    struct km_ctl_response r;
    char err[1024];
    int rc = 1;
    if (!km_ctl_client_do(c, "PUT", path, body, &r, err, sizeof(err))) {
        km_ctl_fail(x, "resource type=\"%s\" mesh=\"%s\" name=\"%s\": failed server side: %s",
                    t->name, mesh, name, err);
        goto out;
    }
    if (r.status != 200 && r.status != 201) {
        char *m = km_ctl_format_api_error(r.status, r.body, r.len);
        km_ctl_fail(x, "resource type=\"%s\" mesh=\"%s\" name=\"%s\": failed server side: %s",
                    t->name, mesh, name, m);
        free(m);
        km_ctl_response_deinit(&r);
        goto out;
    }
    fprintf(x->out, "resource type=\"%s\" mesh=\"%s\" name=\"%s\" %s\n", t->name, mesh, name,
            r.status == 201 ? "Created" : "Updated");
    if (r.len > 0) {
        char perr[64];
        json_t *j = km_json_parse(r.body, r.len, perr, sizeof(perr));
        size_t i;
        json_t *w;
        json_array_foreach(json_object_get(j, "warnings"), i, w) {
            if (json_is_string(w))
                fprintf(x->err, "Warning: %s\n", json_string_value(w));
        }
        json_decref(j);
    }
    km_ctl_response_deinit(&r);
    rc = 0;
out:
    free(body);
    free(path);
    return rc;
}

int
km_ctl_cmd_apply(struct km_ctl_ctx *x)
{
    const char *file = km_ctl_flag_str(x, "file");
    if (!file || !*file)
        return km_ctl_fail(x, "required flag(s) \"file\" not set");
    char err[1024];
    char **keys = NULL, **vals = NULL;
    long nvars = km_ctl_args_map(&x->args, "var", &keys, &vals, err, sizeof(err));
    if (nvars < 0)
        return km_ctl_fail(x, "%s", err);
    int rc = 1;
    json_t *docs = NULL;
    size_t len = 0;
    char *content = read_content(file, x->timeout_ms > 0 ? x->timeout_ms : 10000, &len, err,
                                 sizeof(err));
    if (!content) {
        km_ctl_fail(x, "%s", err);
        goto out;
    }
    if (len == 0) {
        km_ctl_fail(x, "no resource(s) passed to apply");
        goto out;
    }
    if (nvars > 0) {
        char *r = km_ctl_template_render(content, len, keys, vals, (size_t)nvars, err,
                                         sizeof(err));
        if (!r) {
            km_ctl_fail(x, "failed to render the template: %s", err);
            goto out;
        }
        free(content);
        content = r;
        len = strlen(r);
    }
    docs = km_yaml_load_all(content, len, err, sizeof(err));
    if (!docs) {
        km_ctl_fail(x, "failed to parse resources: %s", err);
        goto out;
    }
    if (json_array_size(docs) == 0) {
        km_ctl_fail(x, "no resource(s) passed to apply");
        goto out;
    }
    const struct km_rtype **types = km_xcalloc(json_array_size(docs), sizeof(*types));
    bool bad = false;
    size_t i;
    json_t *doc;
    json_array_foreach(docs, i, doc) {
        types[i] = check_doc(x, i, doc);
        bad = bad || !types[i];
    }
    if (bad) {
        km_ctl_fail(x, "failed to validate some resources");
        free(types);
        goto out;
    }
    if (km_ctl_flag_bool(x, "dry-run")) {
        json_array_foreach(docs, i, doc) {
            if (i > 0)
                fputs("---\n", x->out);
            km_ctl_print_yaml(x->out, doc);
        }
        rc = 0;
    } else {
        rc = 0;
        json_array_foreach(docs, i, doc) {
            if (upsert(x, types[i], doc) != 0) {
                rc = 1;
                break;
            }
        }
    }
    free(types);
out:
    json_decref(docs);
    free(content);
    km_ctl_kv_free(keys, vals, nvars > 0 ? (size_t)nvars : 0);
    return rc;
}
