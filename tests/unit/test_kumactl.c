/* Unit tests of kumactl's pure pieces: flags, --var templating, tables and ages, the config
 * file, API error formatting, table rows of `get` and dataplane status. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/ctl/args.h>
#include <km/ctl/client.h>
#include <km/ctl/cmd.h>
#include <km/ctl/config.h>
#include <km/ctl/table.h>
#include <km/ctl/template.h>

#include "test.h"

static const struct km_ctl_flag t_global[] = {
    {"config-file", 0, KM_CTL_FLAG_STRING, NULL, ""},
    {"no-config", 0, KM_CTL_FLAG_BOOL, NULL, ""},
    {NULL, 0, 0, NULL, NULL},
};
static const struct km_ctl_flag t_cmd[] = {
    {"mesh", 'm', KM_CTL_FLAG_STRING, "default", ""},
    {"output", 'o', KM_CTL_FLAG_STRING, "table", ""},
    {"dry-run", 0, KM_CTL_FLAG_BOOL, NULL, ""},
    {"var", 'v', KM_CTL_FLAG_MAP, NULL, ""},
    {NULL, 0, 0, NULL, NULL},
};
static const struct km_ctl_flag *const t_tables[] = {t_global, t_cmd};

KM_TEST(kumactl_args_forms)
{
    char *argv[] = {"dataplanes", "--mesh", "demo", "-oyaml", "--dry-run", "x",
                    "--config-file=/c", "-v", "a=1,b=2", "--var=a=3", "--", "--not-a-flag"};
    struct km_ctl_args a;
    char err[256];
    km_ctl_args_init(&a);
    ASSERT(km_ctl_args_parse(&a, t_tables, 2, (int)KM_ARRAY_LEN(argv), argv, err, sizeof(err)));
    ASSERT_INT_EQ(a.npos, 3);
    ASSERT_STR_EQ(a.pos[0], "dataplanes");
    ASSERT_STR_EQ(a.pos[1], "x");
    ASSERT_STR_EQ(a.pos[2], "--not-a-flag");
    ASSERT_STR_EQ(km_ctl_args_str(&a, t_tables, 2, "mesh"), "demo");
    ASSERT_STR_EQ(km_ctl_args_str(&a, t_tables, 2, "output"), "yaml");
    ASSERT_STR_EQ(km_ctl_args_str(&a, t_tables, 2, "config-file"), "/c");
    ASSERT(km_ctl_args_bool(&a, "dry-run"));
    ASSERT(!km_ctl_args_bool(&a, "no-config"));
    ASSERT(!a.help);
    char **k, **v;
    long n = km_ctl_args_map(&a, "var", &k, &v, err, sizeof(err));
    ASSERT_INT_EQ(n, 2);
    ASSERT_STR_EQ(k[0], "a");
    ASSERT_STR_EQ(v[0], "3"); /* a later value replaces an earlier one */
    ASSERT_STR_EQ(k[1], "b");
    ASSERT_STR_EQ(v[1], "2");
    km_ctl_kv_free(k, v, (size_t)n);
    km_ctl_args_deinit(&a);
}

KM_TEST(kumactl_args_defaults_and_errors)
{
    struct km_ctl_args a;
    char err[256];
    km_ctl_args_init(&a);
    char *ok[] = {"-h", "--no-config=false"};
    ASSERT(km_ctl_args_parse(&a, t_tables, 2, 2, ok, err, sizeof(err)));
    ASSERT(a.help);
    ASSERT(!km_ctl_args_bool(&a, "no-config"));
    ASSERT_STR_EQ(km_ctl_args_str(&a, t_tables, 2, "mesh"), "default");
    ASSERT(km_ctl_args_str(&a, t_tables, 2, "config-file") == NULL);
    km_ctl_args_deinit(&a);

    char *unknown[] = {"--bogus"};
    km_ctl_args_init(&a);
    ASSERT(!km_ctl_args_parse(&a, t_tables, 2, 1, unknown, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "unknown flag: --bogus");
    km_ctl_args_deinit(&a);

    char *missing[] = {"--mesh"};
    km_ctl_args_init(&a);
    ASSERT(!km_ctl_args_parse(&a, t_tables, 2, 1, missing, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "flag needs an argument: --mesh");
    km_ctl_args_deinit(&a);

    char *badbool[] = {"--dry-run=maybe"};
    km_ctl_args_init(&a);
    ASSERT(!km_ctl_args_parse(&a, t_tables, 2, 1, badbool, err, sizeof(err)));
    ASSERT_STR_CONTAINS(err, "--dry-run");
    km_ctl_args_deinit(&a);

    char *badmap[] = {"-v", "novalue"};
    km_ctl_args_init(&a);
    ASSERT(km_ctl_args_parse(&a, t_tables, 2, 2, badmap, err, sizeof(err)));
    char **k, **v;
    ASSERT_INT_EQ(km_ctl_args_map(&a, "var", &k, &v, err, sizeof(err)), -1);
    ASSERT_STR_CONTAINS(err, "key=value");
    km_ctl_args_deinit(&a);
}

static char *
render(const char *tmpl, char *const *keys, char *const *vals, size_t n, char *err)
{
    return km_ctl_template_render(tmpl, strlen(tmpl), keys, vals, n, err, 256);
}

KM_TEST(kumactl_template_vars)
{
    char *keys[] = {"address", "port", "a.b", "html"};
    char *vals[] = {"10.0.0.1", "8080", "nested", "<a&'\">"};
    char err[256];
    char *r = render("address: {{ address }}\nport: {{port}}\nx: {{a.b}}\nmissing: '{{ nope }}'\n",
                     keys, vals, 4, err);
    ASSERT_STR_EQ(r, "address: 10.0.0.1\nport: 8080\nx: nested\nmissing: ''\n");
    free(r);
    r = render("{{html}}|{{{html}}}|{{& html}}|{{! a comment }}end", keys, vals, 4, err);
    ASSERT_STR_EQ(r, "&lt;a&amp;&#39;&#34;&gt;|<a&'\">|<a&'\">|end");
    free(r);
    r = render("{{#port}}\np: {{port}}\n{{/port}}{{^nope}}no{{/nope}}{{#nope}}hidden{{/nope}}",
               keys, vals, 4, err);
    ASSERT_STR_EQ(r, "p: 8080\nno");
    free(r);
    r = render("", keys, vals, 4, err);
    ASSERT_STR_EQ(r, "");
    free(r);
}

KM_TEST(kumactl_template_errors)
{
    char err[256];
    ASSERT(render("a\n{{ open", NULL, NULL, 0, err) == NULL);
    ASSERT_STR_CONTAINS(err, "line 2: unmatched open tag");
    ASSERT(render("{{#s}}x", NULL, NULL, 0, err) == NULL);
    ASSERT_STR_CONTAINS(err, "no closing tag");
    ASSERT(render("{{/s}}", NULL, NULL, 0, err) == NULL);
    ASSERT_STR_CONTAINS(err, "unmatched close tag");
    ASSERT(render("{{ }}", NULL, NULL, 0, err) == NULL);
    ASSERT_STR_CONTAINS(err, "empty tag");
    ASSERT(render("{{> partial}}", NULL, NULL, 0, err) == NULL);
    /* deep nesting is refused, not a stack overflow */
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (int i = 0; i < 100; i++)
        km_sbuf_puts(&b, "{{#a}}");
    ASSERT(render(b.ptr, NULL, NULL, 0, err) == NULL);
    ASSERT_STR_CONTAINS(err, "nested too deeply");
    km_sbuf_deinit(&b);
}

KM_TEST(kumactl_table_format)
{
    struct km_ctl_table t;
    km_ctl_table_init(&t, 3);
    const char *h[] = {"MESH", "NAME", "AGE"};
    const char *r1[] = {"default", "dp-1", "5s"};
    const char *r2[] = {"m", "d\xc3\xa9", NULL}; /* two-byte character counts as one */
    km_ctl_table_row(&t, h);
    km_ctl_table_row(&t, r1);
    km_ctl_table_row(&t, r2);
    char *s = km_ctl_table_render(&t);
    ASSERT_STR_EQ(s, "MESH      NAME   AGE\n"
                     "default   dp-1   5s\n"
                     "m         d\xc3\xa9     \n");
    free(s);
    km_ctl_table_deinit(&t);
}

KM_TEST(kumactl_durations)
{
    char b[32];
    km_ctl_duration_short(-5, b, sizeof(b));
    ASSERT_STR_EQ(b, "never");
    km_ctl_duration_short(-1, b, sizeof(b));
    ASSERT_STR_EQ(b, "0s");
    km_ctl_duration_short(59, b, sizeof(b));
    ASSERT_STR_EQ(b, "59s");
    km_ctl_duration_short(60, b, sizeof(b));
    ASSERT_STR_EQ(b, "1m");
    km_ctl_duration_short(3 * 3600 + 5, b, sizeof(b));
    ASSERT_STR_EQ(b, "3h");
    km_ctl_duration_short(3 * 86400, b, sizeof(b));
    ASSERT_STR_EQ(b, "3d");
    km_ctl_duration_short(800LL * 86400, b, sizeof(b));
    ASSERT_STR_EQ(b, "2y");
    int64_t t0;
    ASSERT(km_time_parse("2026-01-01T00:00:00Z", &t0));
    km_ctl_ago("2026-01-01T00:00:00Z", t0 + 90LL * 1000000, b, sizeof(b));
    ASSERT_STR_EQ(b, "1m");
    km_ctl_ago(NULL, t0, b, sizeof(b));
    ASSERT_STR_EQ(b, "never");
    km_ctl_ago("garbage", t0, b, sizeof(b));
    ASSERT_STR_EQ(b, "never");
}

KM_TEST(kumactl_config_default_and_edit)
{
    json_t *cfg = km_ctl_config_default();
    json_t *cp = km_ctl_config_current_cp(cfg, NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(cp, "name")), "local");
    char *y = km_yaml_dump(cfg);
    ASSERT_STR_EQ(y, "contexts:\n- controlPlane: local\n  name: local\ncontrolPlanes:\n"
                     "- coordinates:\n    apiServer:\n      url: http://localhost:5681\n"
                     "  name: local\ncurrentContext: local\n");
    free(y);

    json_t *n = json_pack("{s:{s:{s:s}},s:s}", "coordinates", "apiServer", "url",
                          "http://cp:5681", "name", "prod");
    ASSERT(km_ctl_config_add_cp(cfg, n, false));
    ASSERT_STR_EQ(json_string_value(json_object_get(cfg, "currentContext")), "prod");
    json_t *dup = json_pack("{s:{s:{s:s}},s:s}", "coordinates", "apiServer", "url",
                            "http://other:5681", "name", "prod");
    ASSERT(!km_ctl_config_add_cp(cfg, dup, false));
    dup = json_pack("{s:{s:{s:s}},s:s}", "coordinates", "apiServer", "url", "http://other:5681",
                    "name", "prod");
    ASSERT(km_ctl_config_add_cp(cfg, dup, true));
    ASSERT_INT_EQ(json_array_size(json_object_get(cfg, "controlPlanes")), 2);
    cp = km_ctl_config_current_cp(cfg, NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_object_get(cp, "coordinates"), "apiServer"), "url")),
                  "http://other:5681");

    ASSERT(km_ctl_config_switch(cfg, "local"));
    ASSERT(!km_ctl_config_switch(cfg, "nope"));
    ASSERT(km_ctl_config_switch(cfg, "prod"));
    ASSERT(!km_ctl_config_remove_cp(cfg, "nope"));
    ASSERT(km_ctl_config_remove_cp(cfg, "prod"));
    ASSERT_STR_EQ(json_string_value(json_object_get(cfg, "currentContext")), "local");
    ASSERT(km_ctl_config_remove_cp(cfg, "local"));
    ASSERT(json_object_get(cfg, "currentContext") == NULL);
    ASSERT(km_ctl_config_current_cp(cfg, NULL) == NULL);
    json_decref(cfg);
}

KM_TEST(kumactl_config_parse_errors)
{
    char err[256];
    static const struct {
        const char *doc;
        const char *want;
    } cases[] = {
        {"- a\n", "must be a mapping"},
        {"controlPlanes: 3\n", "controlPlanes: must be a list"},
        {"controlPlanes:\n- name: x\n", "controlPlanes[0].coordinates: must be an object"},
        {"controlPlanes:\n- name: x\n  coordinates:\n    apiServer: {}\n",
         "controlPlanes[0].coordinates.apiServer.url: cannot be empty"},
        {"controlPlanes:\n- name: x\n  coordinates:\n    apiServer:\n      url: http://a\n"
         "      headers: [{value: v}]\n",
         "controlPlanes[0].coordinates.apiServer.headers[0].key: cannot be empty"},
        {"contexts:\n- controlPlane: x\n", "contexts[0].name: cannot be empty"},
        {"currentContext: [1]\n", "currentContext: must be a string"},
        {"a: [\n", "line"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        json_t *c = km_ctl_config_parse(cases[i].doc, strlen(cases[i].doc), err, sizeof(err));
        if (c)
            KM_FAIL_AT("case %zu accepted", i);
        ASSERT_STR_CONTAINS(err, cases[i].want);
    }
    const char *good = "contexts:\n- controlPlane: a\n  name: a\ncontrolPlanes:\n"
                       "- coordinates:\n    apiServer:\n      url: http://a:1\n"
                       "      skipVerify: true\n  name: a\ncurrentContext: a\nextra: kept\n";
    json_t *c = km_ctl_config_parse(good, strlen(good), err, sizeof(err));
    ASSERT(c != NULL);
    ASSERT(km_ctl_config_current_cp(c, "a") != NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "extra")), "kept");
    json_decref(c);
}

KM_TEST(kumactl_config_save_load_roundtrip)
{
    char dir[] = "/tmp/km-kumactl-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char *path = km_xasprintf("%s/sub/dir/config", dir);
    json_t *cfg = km_ctl_config_default();
    char err[512];
    ASSERT(km_ctl_config_save(path, cfg, err, sizeof(err)));
    bool missing = true;
    json_t *back = km_ctl_config_load(path, &missing, err, sizeof(err));
    ASSERT(back != NULL);
    ASSERT(!missing);
    ASSERT(json_equal(cfg, back));
    json_decref(back);
    char *nothere = km_xasprintf("%s/none", dir);
    ASSERT(km_ctl_config_load(nothere, &missing, err, sizeof(err)) == NULL);
    ASSERT(missing);
    json_decref(cfg);
    char *cmd = km_xasprintf("rm -rf '%s'", dir);
    ASSERT_INT_EQ(system(cmd), 0);
    free(cmd);
    free(nothere);
    free(path);
}

KM_TEST(kumactl_api_error_format)
{
    const char *body =
        "{\"type\":\"/std-errors\",\"status\":400,\"title\":\"Could not process a resource\","
        "\"detail\":\"Resource is not valid\",\"invalid_parameters\":[{\"field\":"
        "\"networking.inbound[0].tags\",\"reason\":\"tag has to exist\"}]}";
    char *m = km_ctl_format_api_error(400, body, strlen(body));
    ASSERT_STR_EQ(m, "Could not process a resource (Resource is not valid)\n"
                     "* networking.inbound[0].tags: tag has to exist");
    free(m);
    const char *old = "{\"title\":\"T\",\"details\":\"D\",\"causes\":[{\"field\":\"f\","
                      "\"message\":\"m\"}]}";
    m = km_ctl_format_api_error(400, old, strlen(old));
    ASSERT_STR_EQ(m, "T (D)\n* f: m");
    free(m);
    m = km_ctl_format_api_error(502, "bad gateway\n", 12);
    ASSERT_STR_EQ(m, "(502): bad gateway");
    free(m);
}

KM_TEST(kumactl_get_rows)
{
    const char *h[5];
    ASSERT_INT_EQ(km_ctl_get_columns("Mesh", false, h), 5);
    ASSERT_STR_EQ(h[1], "mTLS");
    ASSERT_INT_EQ(km_ctl_get_columns("Dataplane", true, h), 5);
    ASSERT_STR_EQ(h[2], "TAGS");
    ASSERT_INT_EQ(km_ctl_get_columns("MeshTimeout", true, h), 3);
    ASSERT_INT_EQ(km_ctl_get_columns("Zone", false, h), 2);

    char perr[128];
    const char *mesh = "{\"type\":\"Mesh\",\"name\":\"demo\",\"mtls\":{\"enabledBackend\":\"ca-1\","
                       "\"backends\":[{\"name\":\"ca-1\",\"type\":\"builtin\"}]},"
                       "\"routing\":{\"zoneEgress\":true}}";
    json_t *j = km_json_parse(mesh, strlen(mesh), perr, sizeof(perr));
    char *cells[5] = {0};
    km_ctl_get_row("Mesh", false, j, 0, cells);
    ASSERT_STR_EQ(cells[0], "demo");
    ASSERT_STR_EQ(cells[1], "builtin/ca-1");
    ASSERT_STR_EQ(cells[2], "off");
    ASSERT_STR_EQ(cells[3], "on");
    ASSERT_STR_EQ(cells[4], "never"); /* no modificationTime */
    for (int i = 0; i < 5; i++)
        free(cells[i]);
    json_decref(j);

    const char *dp = "{\"type\":\"Dataplane\",\"mesh\":\"m\",\"name\":\"d\",\"networking\":{"
                     "\"address\":\"10.0.0.1\",\"advertisedAddress\":\"1.2.3.4\",\"inbound\":["
                     "{\"port\":1,\"tags\":{\"kuma.io/service\":\"web\",\"version\":\"v2\"}},"
                     "{\"port\":2,\"tags\":{\"kuma.io/service\":\"api\",\"version\":\"v2\"}}]}}";
    j = km_json_parse(dp, strlen(dp), perr, sizeof(perr));
    km_ctl_get_row("Dataplane", true, j, 0, cells);
    ASSERT_STR_EQ(cells[2], "kuma.io/service=api,web version=v2");
    ASSERT_STR_EQ(cells[3], "1.2.3.4");
    for (int i = 0; i < 5; i++)
        free(cells[i]);
    json_decref(j);
}

KM_TEST(kumactl_dataplane_status)
{
    char perr[128];
    const char *dp = "{\"networking\":{\"inbound\":[{\"port\":1,\"tags\":{\"kuma.io/service\":"
                     "\"a\"}},{\"port\":2,\"state\":\"NotReady\",\"tags\":{\"kuma.io/service\":"
                     "\"b\"}}]}}";
    const char *on = "{\"subscriptions\":[{\"connectTime\":\"2026-01-01T00:00:00Z\"}]}";
    const char *off = "{\"subscriptions\":[{\"connectTime\":\"2026-01-01T00:00:00Z\","
                      "\"disconnectTime\":\"2026-01-01T00:01:00Z\"}]}";
    json_t *d = km_json_parse(dp, strlen(dp), perr, sizeof(perr));
    json_t *i_on = km_json_parse(on, strlen(on), perr, sizeof(perr));
    json_t *i_off = km_json_parse(off, strlen(off), perr, sizeof(perr));
    char *notes;
    ASSERT_STR_EQ(km_ctl_dataplane_status(d, i_on, &notes), "Partially degraded");
    ASSERT_STR_EQ(notes, "inbound[port=2,svc=b] is not ready");
    free(notes);
    ASSERT_STR_EQ(km_ctl_dataplane_status(d, i_off, &notes), "Offline");
    free(notes);
    ASSERT_STR_EQ(km_ctl_dataplane_status(d, NULL, &notes), "Offline");
    free(notes);
    json_decref(d);
    json_decref(i_on);
    json_decref(i_off);
}

KM_TEST(kumactl_next_offset_and_escape)
{
    char *o = km_ctl_next_offset("http://h:1/meshes?offset=100&size=100");
    ASSERT_STR_EQ(o, "100");
    free(o);
    o = km_ctl_next_offset("http://h:1/meshes?size=2&offset=abc");
    ASSERT_STR_EQ(o, "abc");
    free(o);
    ASSERT(km_ctl_next_offset(NULL) == NULL);
    ASSERT(km_ctl_next_offset("http://h/meshes?size=2") == NULL);
    char *e = km_ctl_escape("a b/c?d");
    ASSERT_STR_EQ(e, "a%20b%2Fc%3Fd");
    free(e);
}
