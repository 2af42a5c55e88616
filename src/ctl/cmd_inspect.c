/* kumactl inspect dataplanes | meshes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <km/common/util.h>
#include <km/cp/resource.h>
#include <km/ctl/cmd.h>
#include <km/ctl/table.h>

/* Upper bound on pages followed through "next" links. */
#define KM_INSPECT_MAX_PAGES 1000

static bool
valid_format(struct km_ctl_ctx *x, const char **format)
{
    *format = km_ctl_flag_str(x, "output");
    if (strcmp(*format, "table") == 0 || strcmp(*format, "yaml") == 0 ||
        strcmp(*format, "json") == 0)
        return true;
    km_ctl_fail(x, "unknown output format \"%s\"", *format);
    return false;
}

/* Fetches every page of list <path> (query string allowed) into one list document
 * {total, items, next: null}. NULL after printing an error; *<status> as km_ctl_get_json. */
static json_t *
get_all(struct km_ctl_ctx *x, const char *path, const char *what, long *status)
{
    json_t *all = json_pack("{s:i,s:[],s:n}", "total", 0, "items", "next");
    json_t *items = json_object_get(all, "items");
    char *offset = NULL;
    char sep = strchr(path, '?') ? '&' : '?';
    for (int page = 0; page < KM_INSPECT_MAX_PAGES; page++) {
        char *p;
        if (offset) {
            char *eo = km_ctl_escape(offset);
            p = km_xasprintf("%s%csize=1000&offset=%s", path, sep, eo);
            free(eo);
        } else {
            p = km_xasprintf("%s%csize=1000", path, sep);
        }
        json_t *j = km_ctl_get_json(x, p, what, status);
        free(p);
        free(offset);
        offset = NULL;
        if (!j) {
            json_decref(all);
            return NULL;
        }
        json_array_extend(items, json_object_get(j, "items"));
        json_t *total = json_object_get(j, "total");
        if (json_is_integer(total))
            json_object_set(all, "total", total);
        offset = km_ctl_next_offset(json_string_value(json_object_get(j, "next")));
        json_decref(j);
        if (!offset)
            break;
    }
    free(offset);
    return all;
}

/* ---- dataplanes ---- */

static const char *
str_or(const json_t *obj, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : def;
}

static bool
insight_online(const json_t *insight)
{
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(insight, "subscriptions"), i, s) {
        const json_t *ct = json_object_get(s, "connectTime");
        const json_t *dt = json_object_get(s, "disconnectTime");
        if (ct && !json_is_null(ct) && (!dt || json_is_null(dt)))
            return true;
    }
    return false;
}

const char *
km_ctl_dataplane_status(const json_t *dataplane, const json_t *insight, char **notes)
{
    bool online = insight_online(insight);
    const json_t *net = json_object_get(dataplane, "networking");
    struct km_sbuf b;
    km_sbuf_init(&b);
    const char *st;
    if (json_object_get(net, "gateway") && !json_is_null(json_object_get(net, "gateway"))) {
        *notes = km_sbuf_take(&b);
        return online ? "Online" : "Offline";
    }
    size_t ready = 0, total = 0, i;
    const json_t *in;
    json_array_foreach(json_object_get(net, "inbound"), i, in) {
        total++;
        const json_t *health = json_object_get(in, "health");
        bool not_ready = (json_is_object(health) && !json_is_true(json_object_get(health,
                                                                                 "ready"))) ||
                         strcmp(str_or(in, "state", ""), "NotReady") == 0;
        if (not_ready) {
            const json_t *port = json_object_get(in, "port");
            km_sbuf_printf(&b, "%sinbound[port=%lld,svc=%s] is not ready", b.len ? ";" : "",
                           json_is_integer(port) ? (long long)json_integer_value(port) : 0LL,
                           str_or(json_object_get(in, "tags"), "kuma.io/service", ""));
        } else {
            ready++;
        }
    }
    const json_t *l;
    json_array_foreach(json_object_get(net, "listeners"), i, l) {
        total++;
        if (strcmp(str_or(l, "state", ""), "Ready") == 0) {
            ready++;
        } else {
            const json_t *port = json_object_get(l, "port");
            km_sbuf_printf(&b, "%slistener[port=%lld,type=%s] is not ready", b.len ? ";" : "",
                           json_is_integer(port) ? (long long)json_integer_value(port) : 0LL,
                           str_or(l, "type", ""));
        }
    }
    if (!online || ready == 0)
        st = "Offline";
    else if (ready < total)
        st = "Partially degraded";
    else
        st = "Online";
    if (strcmp(st, "Online") == 0)
        b.ptr[b.len = 0] = '\0';
    *notes = km_sbuf_take(&b);
    return st;
}

/* protojson writes uint64 counters as strings */
static unsigned long long
counter(const json_t *v)
{
    if (json_is_integer(v))
        return (unsigned long long)json_integer_value(v);
    if (json_is_string(v))
        return strtoull(json_string_value(v), NULL, 10);
    return 0;
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
date_cell(const char *ts, char *buf, size_t len)
{
    int64_t us;
    if (!ts || !km_time_parse(ts, &us)) {
        snprintf(buf, len, "-");
        return;
    }
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    if (!localtime_r(&secs, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, len, "-");
}

static void
dataplane_row(const json_t *item, int64_t now_us, struct km_ctl_table *tab)
{
    const json_t *dp = json_object_get(item, "dataplane");
    const json_t *ins = json_object_get(item, "dataplaneInsight");
    const json_t *subs = json_object_get(ins, "subscriptions");
    const json_t *last = json_array_size(subs) ? json_array_get(subs, json_array_size(subs) - 1)
                                               : NULL;
    unsigned long long sent = 0, rejected = 0;
    size_t i;
    const json_t *s;
    json_array_foreach(subs, i, s) {
        const json_t *tot = json_object_get(json_object_get(s, "status"), "total");
        sent += counter(json_object_get(tot, "responsesSent"));
        rejected += counter(json_object_get(tot, "responsesRejected"));
    }
    char *notes = NULL;
    const char *status = km_ctl_dataplane_status(dp, ins, &notes);
    char connected[32], updated[32], regen[32], expiration[40], nsent[32], nrej[32], nregen[32];
    km_ctl_ago(json_string_value(json_object_get(last, "connectTime")), now_us, connected,
               sizeof(connected));
    km_ctl_ago(json_string_value(json_object_get(json_object_get(last, "status"),
                                                 "lastUpdateTime")),
               now_us, updated, sizeof(updated));
    const json_t *mtls = json_object_get(ins, "mTLS");
    km_ctl_ago(json_string_value(json_object_get(mtls, "lastCertificateRegeneration")), now_us,
               regen, sizeof(regen));
    date_cell(json_string_value(json_object_get(mtls, "certificateExpirationTime")), expiration,
              sizeof(expiration));
    snprintf(nsent, sizeof(nsent), "%llu", sent);
    snprintf(nrej, sizeof(nrej), "%llu", rejected);
    snprintf(nregen, sizeof(nregen), "%llu",
             counter(json_object_get(mtls, "certificateRegenerations")));
    const char *backend = json_is_object(mtls) ? str_or(mtls, "issuedBackend", "") : "-";
    struct km_sbuf sup;
    km_sbuf_init(&sup);
    const json_t *v;
    json_array_foreach(json_object_get(mtls, "supportedBackends"), i, v)
        km_sbuf_printf(&sup, "%s%s", i ? "," : "", json_is_string(v) ? json_string_value(v) : "");
    const json_t *ver = json_object_get(last, "version");
    const char *kdp = str_or(json_object_get(ver, "kumaDp"), "version", "");
    const char *envoy = str_or(json_object_get(ver, "envoy"), "version", "");
    const json_t *deps = json_object_get(ver, "dependencies");
    size_t ndeps = json_is_object(deps) ? json_object_size(deps) : 0;
    char **dl = km_xcalloc(ndeps ? ndeps : 1, sizeof(*dl));
    size_t nd = 0;
    const char *k;
    json_object_foreach((json_t *)deps, k, v)
        dl[nd++] = km_xasprintf("%s: %s", k, json_is_string(v) ? json_string_value(v) : "");
    qsort(dl, nd, sizeof(*dl), cmp_str);
    struct km_sbuf depb;
    km_sbuf_init(&depb);
    for (i = 0; i < nd; i++) {
        km_sbuf_printf(&depb, "%s%s", i ? ", " : "", dl[i]);
        free(dl[i]);
    }
    free(dl);
    if (depb.len == 0)
        km_sbuf_puts(&depb, "-");
    char *tags = km_ctl_dataplane_tags(dp);
    const char *row[] = {str_or(item, "mesh", ""), str_or(item, "name", ""), tags, status,
                         connected, updated, nsent, nrej, regen, expiration, nregen, backend,
                         sup.ptr, kdp, envoy, depb.ptr, notes};
    km_ctl_table_row(tab, row);
    free(tags);
    free(notes);
    km_sbuf_deinit(&sup);
    km_sbuf_deinit(&depb);
}

int
km_ctl_cmd_inspect_dataplanes(struct km_ctl_ctx *x)
{
    const char *format;
    if (!valid_format(x, &format))
        return 1;
    char err[512];
    char **tk = NULL, **tv = NULL;
    long nt = km_ctl_args_map(&x->args, "tag", &tk, &tv, err, sizeof(err));
    if (nt < 0)
        return km_ctl_fail(x, "%s", err);
    const char *mesh = km_ctl_flag_str(x, "mesh");
    char *em = km_ctl_escape(mesh);
    struct km_sbuf p;
    km_sbuf_init(&p);
    km_sbuf_printf(&p, "/meshes/%s/dataplanes+insights", em);
    free(em);
    char sep = '?';
    for (long i = 0; i < nt; i++) {
        char *kv = km_xasprintf("%s:%s", tk[i], tv[i]);
        char *e = km_ctl_escape(kv);
        km_sbuf_printf(&p, "%ctag=%s", sep, e);
        sep = '&';
        free(e);
        free(kv);
    }
    km_ctl_kv_free(tk, tv, (size_t)nt);
    if (km_ctl_flag_bool(x, "gateway"))
        km_sbuf_printf(&p, "%cgateway=true", sep);
    long status;
    json_t *all = get_all(x, p.ptr, "failed to list dataplanes", &status);
    km_sbuf_deinit(&p);
    if (!all) {
        if (status == 404)
            return km_ctl_fail(x, "failed to list dataplanes: mesh \"%s\" not found", mesh);
        return 1;
    }
    if (strcmp(format, "table") == 0) {
        static const char *const headers[] = {
            "MESH", "NAME", "TAGS", "STATUS", "LAST CONNECTED AGO", "LAST UPDATED AGO",
            "TOTAL UPDATES", "TOTAL ERRORS", "CERT REGENERATED AGO", "CERT EXPIRATION",
            "CERT REGENERATIONS", "CERT BACKEND", "SUPPORTED CERT BACKENDS", "KUMA-DP VERSION",
            "ENVOY VERSION", "DEPENDENCIES VERSIONS", "NOTES"};
        struct km_ctl_table tab;
        km_ctl_table_init(&tab, KM_ARRAY_LEN(headers));
        km_ctl_table_row(&tab, headers);
        size_t i;
        const json_t *item;
        json_array_foreach(json_object_get(all, "items"), i, item)
            dataplane_row(item, x->now_us, &tab);
        char *s = km_ctl_table_render(&tab);
        fputs(s, x->out);
        free(s);
        km_ctl_table_deinit(&tab);
    } else if (strcmp(format, "yaml") == 0) {
        km_ctl_print_yaml(x->out, all);
    } else {
        km_ctl_print_json(x->out, all);
    }
    json_decref(all);
    return 0;
}

/* ---- meshes ---- */

/* Policy columns of Kuma's `inspect meshes` table, by type name. */
static const char *const mesh_policy_types[] = {
    "TrafficPermission", "TrafficRoute", "CircuitBreaker", "HealthCheck",  "FaultInjection",
    "ExternalService",   "TrafficTrace", "TrafficLog",     "ProxyTemplate", "RateLimit"};

/* Builds the insight of mesh <name> on the client, for servers that do not compute mesh
 * insights (yet): counts of dataplanes (online from their insights) and of the policy types of
 * the table. NULL after printing an error. */
static json_t *
compute_mesh_insight(struct km_ctl_ctx *x, const char *name)
{
    long status;
    char *em = km_ctl_escape(name);
    char *p = km_xasprintf("/meshes/%s/dataplanes+insights", em);
    json_t *dps = get_all(x, p, "failed to list dataplanes", &status);
    free(p);
    if (!dps) {
        free(em);
        return NULL;
    }
    long online = 0, degraded = 0, total = 0;
    size_t k;
    const json_t *d;
    json_array_foreach(json_object_get(dps, "items"), k, d) {
        char *notes;
        const char *st = km_ctl_dataplane_status(json_object_get(d, "dataplane"),
                                                 json_object_get(d, "dataplaneInsight"), &notes);
        free(notes);
        total++;
        online += strcmp(st, "Online") == 0;
        degraded += strcmp(st, "Partially degraded") == 0;
    }
    json_decref(dps);
    json_t *policies = json_object();
    for (size_t t = 0; t < KM_ARRAY_LEN(mesh_policy_types); t++) {
        const struct km_rtype *rt = km_registry_find(mesh_policy_types[t]);
        if (!rt)
            continue;
        char *lp = km_xasprintf("/meshes/%s/%s?size=1", em, rt->plural);
        json_t *l = km_ctl_get_json(x, lp, "failed to count policies", &status);
        free(lp);
        if (!l && status != 404) {
            json_decref(policies);
            free(em);
            return NULL;
        }
        json_t *tot = json_object_get(l, "total");
        json_object_set_new(policies, rt->name,
                            json_pack("{s:I}", "total",
                                      json_is_integer(tot) ? json_integer_value(tot) : 0));
        json_decref(l);
    }
    free(em);
    return json_pack("{s:s,s:s,s:{s:I,s:I,s:I,s:I},s:o}", "type", "MeshInsight", "name", name,
                     "dataplanes", "total", (json_int_t)total, "online", (json_int_t)online,
                     "offline", (json_int_t)(total - online - degraded), "partiallyDegraded",
                     (json_int_t)degraded, "policies", policies);
}

/* One insight per mesh: the server's /mesh-insights where it has one, computed otherwise. */
static json_t *
mesh_insights(struct km_ctl_ctx *x)
{
    long status;
    json_t *meshes = get_all(x, "/meshes", "failed to list meshes", &status);
    if (!meshes)
        return NULL;
    json_t *server = get_all(x, "/mesh-insights", "failed to list mesh insights", &status);
    if (!server && status != 404) {
        json_decref(meshes);
        return NULL;
    }
    json_t *out = json_pack("{s:I,s:[],s:n}", "total",
                            (json_int_t)json_array_size(json_object_get(meshes, "items")),
                            "items", "next");
    size_t i;
    const json_t *m;
    json_array_foreach(json_object_get(meshes, "items"), i, m) {
        const char *name = str_or(m, "name", "");
        json_t *found = NULL;
        size_t k;
        json_t *in;
        json_array_foreach(json_object_get(server, "items"), k, in) {
            if (strcmp(str_or(in, "name", ""), name) == 0)
                found = json_incref(in);
        }
        if (!found)
            found = compute_mesh_insight(x, name);
        if (!found) {
            json_decref(out);
            out = NULL;
            break;
        }
        json_array_append_new(json_object_get(out, "items"), found);
    }
    json_decref(server);
    json_decref(meshes);
    return out;
}

int
km_ctl_cmd_inspect_meshes(struct km_ctl_ctx *x)
{
    const char *format;
    if (!valid_format(x, &format))
        return 1;
    json_t *all = mesh_insights(x);
    if (!all)
        return 1;
    if (strcmp(format, "table") == 0) {
        static const char *const headers[] = {
            "MESH",           "DATAPLANES",       "TRAFFIC PERMISSIONS", "TRAFFIC ROUTES",
            "CIRCUIT BREAKERS", "HEALTH CHECKS",  "FAULT INJECTIONS",    "EXTERNAL SERVICES",
            "TRAFFIC TRACES", "TRAFFIC LOGS",     "PROXY TEMPLATES",     "RATE LIMITS"};
        struct km_ctl_table tab;
        km_ctl_table_init(&tab, KM_ARRAY_LEN(headers));
        km_ctl_table_row(&tab, headers);
        size_t i;
        const json_t *item;
        json_array_foreach(json_object_get(all, "items"), i, item) {
            char cells[KM_ARRAY_LEN(mesh_policy_types) + 1][48];
            const json_t *dps = json_object_get(item, "dataplanes");
            snprintf(cells[0], sizeof(cells[0]), "%llu/%llu",
                     counter(json_object_get(dps, "online")),
                     counter(json_object_get(dps, "total")));
            const json_t *pol = json_object_get(item, "policies");
            for (size_t t = 0; t < KM_ARRAY_LEN(mesh_policy_types); t++)
                snprintf(cells[t + 1], sizeof(cells[t + 1]), "%llu",
                         counter(json_object_get(json_object_get(pol, mesh_policy_types[t]),
                                                 "total")));
            const char *row[KM_ARRAY_LEN(headers)];
            row[0] = str_or(item, "name", "");
            for (size_t c = 1; c < KM_ARRAY_LEN(headers); c++)
                row[c] = cells[c - 1];
            km_ctl_table_row(&tab, row);
        }
        char *s = km_ctl_table_render(&tab);
        fputs(s, x->out);
        free(s);
        km_ctl_table_deinit(&tab);
    } else if (strcmp(format, "yaml") == 0) {
        km_ctl_print_yaml(x->out, all);
    } else {
        km_ctl_print_json(x->out, all);
    }
    json_decref(all);
    return 0;
}

/* ---- dataplane NAME --type policies ---- */

/* "INBOUND 10.0.0.1:8080:80(web)", "SERVICE backend", "DATAPLANE" (Kuma's attachment names). */
static char *
attachment_str(const json_t *item)
{
    const char *type = str_or(item, "type", "");
    char *up = km_xstrdup(type), *s;

    for (char *p = up; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    if (strcmp(type, "dataplane") == 0)
        return up;
    if (strcmp(type, "service") == 0)
        s = km_xasprintf("%s %s", up, str_or(item, "name", ""));
    else
        s = km_xasprintf("%s %s(%s)", up, str_or(item, "name", ""), str_or(item, "service", ""));
    free(up);
    return s;
}

int
km_ctl_cmd_inspect_dataplane(struct km_ctl_ctx *x)
{
    const char *type = km_ctl_flag_str(x, "type");
    const char *mesh = km_ctl_flag_str(x, "mesh");
    char *em, *en, *path;
    json_t *j;
    long status;
    size_t i;
    const json_t *item;

    if (x->args.npos != 1)
        return km_ctl_fail(x, "accepts 1 arg(s), received %zu", x->args.npos);
    if (strcmp(type, "policies") != 0) {
        if (strcmp(type, "config-dump") == 0 || strcmp(type, "stats") == 0 ||
            strcmp(type, "clusters") == 0 || strcmp(type, "config") == 0)
            return km_ctl_fail(x, "inspection type \"%s\" is not supported yet", type);
        return km_ctl_fail(x, "invalid inspection type");
    }
    em = km_ctl_escape(mesh);
    en = km_ctl_escape(x->args.pos[0]);
    path = km_xasprintf("/meshes/%s/dataplanes/%s/policies", em, en);
    free(em);
    free(en);
    j = km_ctl_get_json(x, path, NULL, &status);
    free(path);
    if (!j)
        return 1;
    /* Kuma's template: the attachment, then each policy type and the names under it */
    json_array_foreach(json_object_get(j, "items"), i, item) {
        const char *typ;
        const json_t *list;
        char *att = attachment_str(item);
        fprintf(x->out, "%s:\n", att);
        free(att);
        json_object_foreach((json_t *)json_object_get(item, "matchedPolicies"), typ, list) {
            size_t k;
            const json_t *p;
            fprintf(x->out, "  %s\n    ", typ);
            json_array_foreach(list, k, p)
                fprintf(x->out, "%s\n", str_or(p, "name", ""));
        }
        fputs("\n", x->out);
    }
    json_decref(j);
    return 0;
}
