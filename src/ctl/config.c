/* kumactl configuration file: load, check, save, edit (see include/km/ctl/config.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/ctl/config.h>

json_t *
km_ctl_config_default(void)
{
    return json_pack("{s:[{s:s,s:s}],s:[{s:{s:{s:s}},s:s}],s:s}", "contexts", "controlPlane",
                     "local", "name", "local", "controlPlanes", "coordinates", "apiServer", "url",
                     "http://localhost:5681", "name", "local", "currentContext", "local");
}

char *
km_ctl_config_default_path(void)
{
    const char *home = getenv("HOME");
    return km_xasprintf("%s/.kumactl/config", home && *home ? home : ".");
}

static bool
want_string(const json_t *obj, const char *key, bool required, const char *path, char *err,
            size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) {
            snprintf(err, errlen, "%s.%s: cannot be empty", path, key);
            return false;
        }
        return true;
    }
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s.%s: must be a string", path, key);
        return false;
    }
    if (required && json_string_length(v) == 0) {
        snprintf(err, errlen, "%s.%s: cannot be empty", path, key);
        return false;
    }
    return true;
}

static bool
check_cp(const json_t *cp, const char *path, char *err, size_t errlen)
{
    char sub[160];
    if (!json_is_object(cp)) {
        snprintf(err, errlen, "%s: must be an object", path);
        return false;
    }
    if (!want_string(cp, "name", true, path, err, errlen))
        return false;
    const json_t *co = json_object_get(cp, "coordinates");
    snprintf(sub, sizeof(sub), "%s.coordinates", path);
    if (!json_is_object(co)) {
        snprintf(err, errlen, "%s: must be an object", sub);
        return false;
    }
    const json_t *api = json_object_get(co, "apiServer");
    snprintf(sub, sizeof(sub), "%s.coordinates.apiServer", path);
    if (!json_is_object(api)) {
        snprintf(err, errlen, "%s: must be an object", sub);
        return false;
    }
    if (!want_string(api, "url", true, sub, err, errlen))
        return false;
    static const char *const strs[] = {"caCertFile", "clientCertFile", "clientKeyFile",
                                       "authType"};
    for (size_t i = 0; i < KM_ARRAY_LEN(strs); i++) {
        if (!want_string(api, strs[i], false, sub, err, errlen))
            return false;
    }
    const json_t *sv = json_object_get(api, "skipVerify");
    if (sv && !json_is_boolean(sv) && !json_is_null(sv)) {
        snprintf(err, errlen, "%s.skipVerify: must be a boolean", sub);
        return false;
    }
    const json_t *hs = json_object_get(api, "headers");
    if (hs && !json_is_null(hs)) {
        if (!json_is_array(hs)) {
            snprintf(err, errlen, "%s.headers: must be a list", sub);
            return false;
        }
        size_t i;
        const json_t *h;
        json_array_foreach(hs, i, h) {
            char hp[200];
            snprintf(hp, sizeof(hp), "%s.headers[%zu]", sub, i);
            if (!json_is_object(h)) {
                snprintf(err, errlen, "%s: must be an object", hp);
                return false;
            }
            if (!want_string(h, "key", true, hp, err, errlen) ||
                !want_string(h, "value", false, hp, err, errlen))
                return false;
        }
    }
    const json_t *ac = json_object_get(api, "authConf");
    if (ac && !json_is_null(ac)) {
        if (!json_is_object(ac)) {
            snprintf(err, errlen, "%s.authConf: must be an object", sub);
            return false;
        }
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)ac, k, v) {
            if (!json_is_string(v)) {
                snprintf(err, errlen, "%s.authConf.%s: must be a string", sub, k);
                return false;
            }
        }
    }
    return true;
}

json_t *
km_ctl_config_parse(const char *buf, size_t len, char *err, size_t errlen)
{
    json_t *cfg = km_yaml_load(buf, len, err, errlen);
    if (!cfg)
        return NULL;
    if (!json_is_object(cfg)) {
        snprintf(err, errlen, "the configuration must be a mapping");
        goto fail;
    }
    json_t *l = json_object_get(cfg, "controlPlanes");
    if (l && !json_is_null(l)) {
        if (!json_is_array(l)) {
            snprintf(err, errlen, "controlPlanes: must be a list");
            goto fail;
        }
        size_t i;
        json_t *cp;
        json_array_foreach(l, i, cp) {
            char path[64];
            snprintf(path, sizeof(path), "controlPlanes[%zu]", i);
            if (!check_cp(cp, path, err, errlen))
                goto fail;
        }
    }
    l = json_object_get(cfg, "contexts");
    if (l && !json_is_null(l)) {
        if (!json_is_array(l)) {
            snprintf(err, errlen, "contexts: must be a list");
            goto fail;
        }
        size_t i;
        json_t *c;
        json_array_foreach(l, i, c) {
            char path[64];
            snprintf(path, sizeof(path), "contexts[%zu]", i);
            if (!json_is_object(c)) {
                snprintf(err, errlen, "%s: must be an object", path);
                goto fail;
            }
            if (!want_string(c, "name", true, path, err, errlen) ||
                !want_string(c, "controlPlane", false, path, err, errlen))
                goto fail;
        }
    }
    if (!want_string(cfg, "currentContext", false, "config", err, errlen)) {
        snprintf(err, errlen, "currentContext: must be a string");
        goto fail;
    }
    return cfg;
fail:
    json_decref(cfg);
    return NULL;
}

json_t *
km_ctl_config_load(const char *path, bool *missing, char *err, size_t errlen)
{
    *missing = false;
    size_t len;
    char *buf = km_read_file(path, KM_CTL_CONFIG_MAX, &len);
    if (!buf) {
        if (errno == ENOENT) {
            *missing = true;
            return NULL;
        }
        snprintf(err, errlen, "Failed to read configuration from file \"%s\": %s", path,
                 errno == EFBIG ? "larger than 1 MiB" : strerror(errno));
        return NULL;
    }
    char perr[512];
    json_t *cfg = km_ctl_config_parse(buf, len, perr, sizeof(perr));
    free(buf);
    if (!cfg)
        snprintf(err, errlen, "Failed to parse configuration from file \"%s\": %s", path, perr);
    return cfg;
}

static bool
mkdir_parents(const char *dir, char *err, size_t errlen)
{
    char *d = km_xstrdup(dir);
    for (char *p = d + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(d, 0755) == -1 && errno != EEXIST) {
            snprintf(err, errlen, "Failed to create a directory \"%s\": %s", d, strerror(errno));
            free(d);
            return false;
        }
        *p = '/';
    }
    if (mkdir(d, 0755) == -1 && errno != EEXIST) {
        snprintf(err, errlen, "Failed to create a directory \"%s\": %s", d, strerror(errno));
        free(d);
        return false;
    }
    free(d);
    return true;
}

bool
km_ctl_config_save(const char *path, const json_t *cfg, char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        char *dir = km_xstrndup(path, (size_t)(slash - path));
        bool ok = mkdir_parents(dir, err, errlen);
        free(dir);
        if (!ok)
            return false;
    }
    char *yaml = km_yaml_dump(cfg);
    /* write to a temporary file, then rename, so a failure never leaves half a config */
    char *tmp = km_xasprintf("%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    bool ok = false;
    if (!f) {
        snprintf(err, errlen, "Failed to write configuration into file \"%s\": %s", path,
                 strerror(errno));
        goto out;
    }
    if (fchmod(fileno(f), 0600) == -1 || fputs(yaml, f) == EOF) {
        snprintf(err, errlen, "Failed to write configuration into file \"%s\": %s", path,
                 strerror(errno));
        fclose(f);
        unlink(tmp);
        goto out;
    }
    if (fclose(f) == EOF || rename(tmp, path) == -1) {
        snprintf(err, errlen, "Failed to write configuration into file \"%s\": %s", path,
                 strerror(errno));
        unlink(tmp);
        goto out;
    }
    ok = true;
out:
    free(tmp);
    free(yaml);
    return ok;
}

/* Array <key> of <cfg>, created when missing. */
static json_t *
list_of(json_t *cfg, const char *key)
{
    json_t *l = json_object_get(cfg, key);
    if (!json_is_array(l)) {
        l = json_array();
        json_object_set_new(cfg, key, l);
    }
    return l;
}

static long
index_by_name(const json_t *l, const char *name)
{
    size_t i;
    const json_t *e;
    json_array_foreach(l, i, e) {
        const char *n = json_string_value(json_object_get(e, "name"));
        if (n && strcmp(n, name) == 0)
            return (long)i;
    }
    return -1;
}

bool
km_ctl_config_add_cp(json_t *cfg, json_t *cp, bool overwrite)
{
    const char *name = json_string_value(json_object_get(cp, "name"));
    json_t *cps = list_of(cfg, "controlPlanes");
    json_t *ctxs = list_of(cfg, "contexts");
    if (!name) {
        json_decref(cp);
        return false;
    }
    long i = index_by_name(cps, name);
    long j = index_by_name(ctxs, name);
    if ((i >= 0 || j >= 0) && !overwrite) {
        json_decref(cp);
        return false;
    }
    json_t *ctx = json_pack("{s:s,s:s}", "controlPlane", name, "name", name);
    /* the context takes the name before <cp> (which owns <name>) may be released */
    if (j >= 0)
        json_array_set_new(ctxs, (size_t)j, ctx);
    else
        json_array_append_new(ctxs, ctx);
    json_object_set_new(cfg, "currentContext", json_string(name));
    if (i >= 0)
        json_array_set_new(cps, (size_t)i, cp);
    else
        json_array_append_new(cps, cp);
    return true;
}

bool
km_ctl_config_remove_cp(json_t *cfg, const char *name)
{
    json_t *cps = list_of(cfg, "controlPlanes");
    long i = index_by_name(cps, name);
    if (i < 0)
        return false;
    char *victim = km_xstrdup(name);
    json_array_remove(cps, (size_t)i);
    json_t *ctxs = list_of(cfg, "contexts");
    const char *cur = json_string_value(json_object_get(cfg, "currentContext"));
    bool lost_current = false;
    for (size_t k = json_array_size(ctxs); k-- > 0;) {
        json_t *c = json_array_get(ctxs, k);
        const char *cpn = json_string_value(json_object_get(c, "controlPlane"));
        if (cpn && strcmp(cpn, victim) == 0) {
            const char *cn = json_string_value(json_object_get(c, "name"));
            if (cur && cn && strcmp(cur, cn) == 0)
                lost_current = true;
            json_array_remove(ctxs, k);
        }
    }
    if (lost_current) {
        json_t *first = json_array_get(ctxs, 0);
        const char *fn = first ? json_string_value(json_object_get(first, "name")) : NULL;
        if (fn)
            json_object_set_new(cfg, "currentContext", json_string(fn));
        else
            json_object_del(cfg, "currentContext");
    }
    free(victim);
    return true;
}

bool
km_ctl_config_switch(json_t *cfg, const char *name)
{
    json_t *ctxs = json_object_get(cfg, "contexts");
    if (!json_is_array(ctxs) || index_by_name(ctxs, name) < 0)
        return false;
    json_object_set_new(cfg, "currentContext", json_string(name));
    return true;
}

json_t *
km_ctl_config_current_cp(const json_t *cfg, const char *ctx_name)
{
    if (!ctx_name)
        ctx_name = json_string_value(json_object_get(cfg, "currentContext"));
    if (!ctx_name)
        return NULL;
    json_t *ctxs = json_object_get(cfg, "contexts");
    long i = json_is_array(ctxs) ? index_by_name(ctxs, ctx_name) : -1;
    if (i < 0)
        return NULL;
    const char *cpn =
        json_string_value(json_object_get(json_array_get(ctxs, (size_t)i), "controlPlane"));
    json_t *cps = json_object_get(cfg, "controlPlanes");
    long j = cpn && json_is_array(cps) ? index_by_name(cps, cpn) : -1;
    return j < 0 ? NULL : json_array_get(cps, (size_t)j);
}
