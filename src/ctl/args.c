/* Command-line flags in the manner of Go's pflag (see include/km/ctl/args.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/ctl/args.h>

void
km_ctl_args_init(struct km_ctl_args *a)
{
    memset(a, 0, sizeof(*a));
}

void
km_ctl_args_deinit(struct km_ctl_args *a)
{
    for (size_t i = 0; i < a->nuses; i++)
        free(a->uses[i].value);
    free(a->uses);
    for (size_t i = 0; i < a->npos; i++)
        free(a->pos[i]);
    free(a->pos);
    memset(a, 0, sizeof(*a));
}

bool
km_ctl_parse_bool(const char *s, bool *out)
{
    static const char *const t[] = {"1", "t", "T", "true", "TRUE", "True"};
    static const char *const f[] = {"0", "f", "F", "false", "FALSE", "False"};
    for (size_t i = 0; i < KM_ARRAY_LEN(t); i++) {
        if (strcmp(s, t[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(s, f[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

const struct km_ctl_flag *
km_ctl_flag_find(const struct km_ctl_flag *const *tables, size_t ntables, const char *name,
                 size_t len, char shortc)
{
    /* later tables (deeper commands) win over earlier ones */
    for (size_t t = ntables; t-- > 0;) {
        for (const struct km_ctl_flag *f = tables[t]; f && f->name; f++) {
            if (len == 0) {
                if (f->short_name && f->short_name == shortc)
                    return f;
            } else if (strlen(f->name) == len && memcmp(f->name, name, len) == 0) {
                return f;
            }
        }
    }
    return NULL;
}

static void
add_use(struct km_ctl_args *a, const struct km_ctl_flag *f, const char *value)
{
    a->uses = km_xrealloc(a->uses, (a->nuses + 1) * sizeof(*a->uses));
    a->uses[a->nuses].flag = f;
    a->uses[a->nuses].value = km_xstrdup(value);
    a->nuses++;
}

static void
add_pos(struct km_ctl_args *a, const char *s)
{
    a->pos = km_xrealloc(a->pos, (a->npos + 1) * sizeof(*a->pos));
    a->pos[a->npos++] = km_xstrdup(s);
}

/* Stores flag <f> with inline value <inl> (NULL: none), taking the next word when the flag
 * needs a value. Advances *<i> past what it used. */
static bool
take_flag(struct km_ctl_args *a, const struct km_ctl_flag *f, const char *shown, const char *inl,
          int argc, char **argv, int *i, char *err, size_t errlen)
{
    if (f->kind == KM_CTL_FLAG_BOOL) {
        bool b = true;
        if (inl && !km_ctl_parse_bool(inl, &b)) {
            snprintf(err, errlen, "invalid argument \"%s\" for \"%s\" flag: must be true or false",
                     inl, shown);
            return false;
        }
        add_use(a, f, b ? "true" : "false");
        return true;
    }
    if (!inl) {
        if (*i + 1 >= argc) {
            snprintf(err, errlen, "flag needs an argument: %s", shown);
            return false;
        }
        inl = argv[++*i];
    }
    add_use(a, f, inl);
    return true;
}

bool
km_ctl_args_parse(struct km_ctl_args *a, const struct km_ctl_flag *const *tables, size_t ntables,
                  int argc, char **argv, char *err, size_t errlen)
{
    bool flags_done = false;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        if (flags_done || w[0] != '-' || strcmp(w, "-") == 0) {
            add_pos(a, w);
            continue;
        }
        if (strcmp(w, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (w[1] == '-') {
            const char *name = w + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            if (len == 4 && memcmp(name, "help", 4) == 0) {
                a->help = true;
                continue;
            }
            const struct km_ctl_flag *f = km_ctl_flag_find(tables, ntables, name, len, 0);
            if (!f) {
                snprintf(err, errlen, "unknown flag: --%.*s", (int)len, name);
                return false;
            }
            char shown[128];
            snprintf(shown, sizeof(shown), "--%s", f->name);
            if (!take_flag(a, f, shown, eq ? eq + 1 : NULL, argc, argv, &i, err, errlen))
                return false;
            continue;
        }
        /* one or more short flags: -m demo, -mdemo, -m=demo, -h */
        for (const char *p = w + 1; *p; p++) {
            if (*p == 'h') {
                a->help = true;
                continue;
            }
            const struct km_ctl_flag *f = km_ctl_flag_find(tables, ntables, NULL, 0, *p);
            if (!f) {
                snprintf(err, errlen, "unknown shorthand flag: '%c' in %s", *p, w);
                return false;
            }
            char shown[8];
            snprintf(shown, sizeof(shown), "-%c", *p);
            if (f->kind == KM_CTL_FLAG_BOOL) {
                const char *inl = p[1] == '=' ? p + 2 : NULL;
                if (!take_flag(a, f, shown, inl, argc, argv, &i, err, errlen))
                    return false;
                if (inl)
                    break;
                continue;
            }
            const char *inl = NULL;
            if (p[1] == '=')
                inl = p + 2;
            else if (p[1])
                inl = p + 1;
            if (!take_flag(a, f, shown, inl, argc, argv, &i, err, errlen))
                return false;
            break;
        }
    }
    return true;
}

static const struct km_ctl_flag_use *
last_use(const struct km_ctl_args *a, const char *name)
{
    for (size_t i = a->nuses; i-- > 0;) {
        if (strcmp(a->uses[i].flag->name, name) == 0)
            return &a->uses[i];
    }
    return NULL;
}

const char *
km_ctl_args_str(const struct km_ctl_args *a, const struct km_ctl_flag *const *tables,
                size_t ntables, const char *name)
{
    const struct km_ctl_flag_use *u = last_use(a, name);
    if (u)
        return u->value;
    const struct km_ctl_flag *f = km_ctl_flag_find(tables, ntables, name, strlen(name), 0);
    return f ? f->def : NULL;
}

bool
km_ctl_args_has(const struct km_ctl_args *a, const char *name)
{
    return last_use(a, name) != NULL;
}

bool
km_ctl_args_bool(const struct km_ctl_args *a, const char *name)
{
    const struct km_ctl_flag_use *u = last_use(a, name);
    return u && strcmp(u->value, "true") == 0;
}

void
km_ctl_kv_free(char **keys, char **vals, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
}

long
km_ctl_args_map(const struct km_ctl_args *a, const char *name, char ***keys, char ***vals,
                char *err, size_t errlen)
{
    char **k = NULL, **v = NULL;
    size_t n = 0;
    for (size_t i = 0; i < a->nuses; i++) {
        if (strcmp(a->uses[i].flag->name, name) != 0)
            continue;
        const char *s = a->uses[i].value;
        while (*s) {
            const char *end = strchr(s, ',');
            size_t len = end ? (size_t)(end - s) : strlen(s);
            const char *eq = memchr(s, '=', len);
            if (!eq || eq == s) {
                snprintf(err, errlen, "invalid argument \"%s\" for \"--%s\" flag: %.*s must be "
                         "formatted as key=value", a->uses[i].value, name, (int)len, s);
                km_ctl_kv_free(k, v, n);
                return -1;
            }
            char *key = km_xstrndup(s, (size_t)(eq - s));
            char *val = km_xstrndup(eq + 1, len - (size_t)(eq - s) - 1);
            size_t j;
            for (j = 0; j < n && strcmp(k[j], key) != 0; j++)
                ;
            if (j < n) {
                free(key);
                free(v[j]);
                v[j] = val;
            } else {
                k = km_xrealloc(k, (n + 1) * sizeof(*k));
                v = km_xrealloc(v, (n + 1) * sizeof(*v));
                k[n] = key;
                v[n] = val;
                n++;
            }
            s += len;
            if (*s == ',')
                s++;
        }
    }
    *keys = k;
    *vals = v;
    return (long)n;
}
