/* kuma-dp router: virtual host selection (exact, wildcards, port stripping), route matching
 * (prefix, exact path, regex, header matchers, inversion), weighted clusters and rewrites.
 * Table driven: each case is an authority, a path, headers and the route name expected. */
#include <km/dp/router.h>

#include "test.h"

#define H(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}

static struct km_dp_weighted cl_a[] = {{"a", 1}};

/* a route whose only cluster names the case ("r1", ...) */
#define ROUTE(kind, p, ci, hdrs, nh, name)                                                        \
    {.match = kind, .path = p, .case_sensitive = !(ci), .headers = hdrs, .nheaders = nh,          \
     .clusters = (struct km_dp_weighted[]){{name, 1}}, .nclusters = 1, .total_weight = 1}

static struct km_dp_header_match hm_exact[] = {{.name = "x-user", .kind = KM_DP_HDR_EXACT,
                                                .value = "alice"}};
static struct km_dp_header_match hm_prefix_suffix[] = {
    {.name = "x-v", .kind = KM_DP_HDR_PREFIX, .value = "v1."},
    {.name = "x-v", .kind = KM_DP_HDR_SUFFIX, .value = "-beta"},
};
static struct km_dp_header_match hm_contains[] = {{.name = "user-agent",
                                                   .kind = KM_DP_HDR_CONTAINS, .value = "curl"}};
static struct km_dp_header_match hm_present[] = {{.name = "x-debug", .kind = KM_DP_HDR_PRESENT}};
static struct km_dp_header_match hm_absent[] = {{.name = "x-debug", .kind = KM_DP_HDR_PRESENT,
                                                 .invert = true}};
static struct km_dp_header_match hm_regex[] = {{.name = "x-id", .kind = KM_DP_HDR_REGEX,
                                                .value = "\\d{3}"}};
static struct km_dp_header_match hm_not_get[] = {{.name = ":method", .kind = KM_DP_HDR_EXACT,
                                                  .value = "GET", .invert = true}};

static struct km_dp_route routes_main[] = {
    ROUTE(KM_DP_MATCH_PATH, "/exact", 0, NULL, 0, "exact"),
    ROUTE(KM_DP_MATCH_PATH, "/CI", 1, NULL, 0, "exact-ci"),
    ROUTE(KM_DP_MATCH_REGEX, "/items/\\d+(/[a-z]+)?", 0, NULL, 0, "regex"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_exact, 1, "hdr-exact"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_prefix_suffix, 2, "hdr-prefix-suffix"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_contains, 1, "hdr-contains"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_regex, 1, "hdr-regex"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_present, 1, "hdr-present"),
    ROUTE(KM_DP_MATCH_PREFIX, "/h/", 0, hm_absent, 1, "hdr-absent"),
    ROUTE(KM_DP_MATCH_PREFIX, "/m", 0, hm_not_get, 1, "not-get"),
    ROUTE(KM_DP_MATCH_PREFIX, "/API", 1, NULL, 0, "api-ci"),
    ROUTE(KM_DP_MATCH_PREFIX, "/", 0, NULL, 0, "catch-all"),
};
static struct km_dp_route routes_one[] = {ROUTE(KM_DP_MATCH_PREFIX, "/", 0, NULL, 0, "one")};

static char *dom_main[] = {"main.example.com", "main.example.com:8080"};
static char *dom_suffix[] = {"*.example.com"};
static char *dom_suffix_long[] = {"*.api.example.com"};
static char *dom_prefix[] = {"internal.*"};
static char *dom_any[] = {"*"};
static char *dom_port[] = {"backend"};

static struct km_dp_vhost vhosts[] = {
    {.name = "any", .domains = dom_any, .ndomains = 1, .routes = routes_one, .nroutes = 1},
    {.name = "prefix", .domains = dom_prefix, .ndomains = 1, .routes = routes_one,
     .nroutes = 1},
    {.name = "suffix", .domains = dom_suffix, .ndomains = 1, .routes = routes_one, .nroutes = 1},
    {.name = "suffix-long", .domains = dom_suffix_long, .ndomains = 1, .routes = routes_one,
     .nroutes = 1},
    {.name = "main", .domains = dom_main, .ndomains = 2, .routes = routes_main,
     .nroutes = KM_ARRAY_LEN(routes_main)},
    {.name = "backend", .domains = dom_port, .ndomains = 1, .routes = routes_one, .nroutes = 1},
};
static struct km_dp_route_config rc = {.name = "rc", .vhosts = vhosts,
                                       .nvhosts = KM_ARRAY_LEN(vhosts)};

static void
compile_all(void)
{
    char err[256];
    for (size_t i = 0; i < KM_ARRAY_LEN(routes_main); i++)
        if (km_dp_route_compile(&routes_main[i], err, sizeof(err)) != 0)
            KM_FAIL_AT("compile route %zu: %s", i, err);
}

static void
release_all(void)
{
    for (size_t i = 0; i < KM_ARRAY_LEN(routes_main); i++)
        km_dp_route_release(&routes_main[i]);
}

KM_TEST(router_vhost_selection)
{
    static const struct {
        const char *authority, *vhost;
    } cases[] = {
        {"main.example.com", "main"},
        {"MAIN.Example.COM", "main"},          /* case-insensitive */
        {"main.example.com:8080", "main"},     /* exact with port */
        {"main.example.com:9090", "main"},     /* port stripped after nothing matched */
        {"x.example.com", "suffix"},
        {"a.b.api.example.com", "suffix-long"}, /* the longest suffix wins */
        {".example.com", "any"},               /* '*' stands for at least one character */
        {"internal.svc", "prefix"},
        {"internal.example.com", "suffix"},    /* suffix wildcards before prefix wildcards */
        {"backend:80", "backend"},
        {"[::1]:80", "any"},
        {"other", "any"},
        {"", "any"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        const struct km_dp_vhost *vh = km_dp_vhost_match(&rc, cases[i].authority);
        if (!vh || strcmp(vh->name, cases[i].vhost) != 0)
            KM_FAIL_AT("authority \"%s\": vhost %s, want %s", cases[i].authority,
                       vh ? vh->name : "(none)", cases[i].vhost);
    }
    /* no "*" vhost: nothing */
    struct km_dp_route_config rc2 = {.vhosts = vhosts + 4, .nvhosts = 1};
    ASSERT(km_dp_vhost_match(&rc2, "other") == NULL);
    ASSERT(km_dp_vhost_match(&rc2, "main.example.com") == vhosts + 4);
    ASSERT(km_dp_vhost_match(NULL, "x") == NULL);
}

KM_TEST(router_route_matching)
{
    compile_all();
    static const struct {
        const char *path;
        struct km_http1_header h[3];
        size_t nh;
        const char *want;
    } cases[] = {
        {"/exact", {{0}}, 0, "exact"},
        {"/exact?q=1", {{0}}, 0, "exact"},     /* exact path ignores the query */
        {"/exact/", {{0}}, 0, "catch-all"},
        {"/EXACT", {{0}}, 0, "catch-all"},     /* case sensitive by default */
        {"/ci", {{0}}, 0, "exact-ci"},
        {"/items/42", {{0}}, 0, "regex"},
        {"/items/42/abc?x=y", {{0}}, 0, "regex"},
        {"/items/42/ABC", {{0}}, 0, "catch-all"}, /* full match only */
        {"/x/items/42", {{0}}, 0, "catch-all"},
        {"/items/4a", {{0}}, 0, "catch-all"},
        {"/h/1", {H("X-User", "alice")}, 1, "hdr-exact"},
        {"/h/1", {H("x-user", "alice2")}, 1, "hdr-absent"},
        {"/h/1", {H("x-v", "v1.2-beta")}, 1, "hdr-prefix-suffix"},
        {"/h/1", {H("x-v", "v1.2")}, 1, "hdr-absent"},
        {"/h/1", {H("x-v", "v1."), H("x-v", "x-beta")}, 2, "hdr-prefix-suffix"}, /* joined */
        {"/h/1", {H("User-Agent", "curl/8.0")}, 1, "hdr-contains"},
        {"/h/1", {H("x-id", "123")}, 1, "hdr-regex"},
        {"/h/1", {H("x-id", "1234"), H("x-debug", "")}, 2, "hdr-present"},
        {"/h/1", {{0}}, 0, "hdr-absent"},
        {"/m", {H(":method", "GET")}, 1, "catch-all"},
        {"/m", {H(":method", "POST")}, 1, "not-get"},
        {"/m", {{0}}, 0, "not-get"},           /* missing header, inverted: matches */
        {"/api/v1", {{0}}, 0, "api-ci"},
        {"/Api", {{0}}, 0, "api-ci"},
        {"/ap", {{0}}, 0, "catch-all"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        const struct km_dp_route *r =
            km_dp_route_match(&rc, "main.example.com", cases[i].path, cases[i].h, cases[i].nh);
        const char *got = r ? r->clusters[0].cluster : "(none)";
        if (strcmp(got, cases[i].want) != 0)
            KM_FAIL_AT("case %zu %s: route %s, want %s", i, cases[i].path, got, cases[i].want);
    }
    /* a virtual host whose routes all miss: no route (404) */
    struct km_dp_route only[] = {ROUTE(KM_DP_MATCH_PATH, "/x", 0, NULL, 0, "x")};
    struct km_dp_vhost vh = {.name = "v", .domains = dom_any, .ndomains = 1, .routes = only,
                             .nroutes = 1};
    struct km_dp_route_config rc3 = {.vhosts = &vh, .nvhosts = 1};
    ASSERT(km_dp_route_match(&rc3, "h", "/y", NULL, 0) == NULL);
    ASSERT(km_dp_route_match(&rc3, "h", "/x", NULL, 0) == &only[0]);
    ASSERT(km_dp_vhost_route_match(&vh, "/x", NULL, 0) == &only[0]);
    release_all();
}

KM_TEST(router_regex_compile_errors_and_translation)
{
    static const struct {
        const char *re, *yes, *no;
    } ok[] = {
        {"/v\\d+/(?:a|b)", "/v12/a", "/v/a"},
        {"(?i)/Users/[^/]+", "/users/bob", "/users/"},
        {"/a.*?b", "/axxb", "/axx"},
        {"[\\w-]+\\.txt", "my-file_1.txt", "my file.txt"},
        {"[[:digit:]]{2}\\s\\S", "12 x", "12  "},
        {"/lit\\.\\*", "/lit.*", "/litx*"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(ok); i++) {
        struct km_dp_route r = {.match = KM_DP_MATCH_REGEX, .path = (char *)ok[i].re};
        char err[256] = "";
        if (km_dp_route_compile(&r, err, sizeof(err)) != 0)
            KM_FAIL_AT("%s: %s", ok[i].re, err);
        struct km_dp_vhost vh = {.routes = &r, .nroutes = 1};
        if (km_dp_vhost_route_match(&vh, ok[i].yes, NULL, 0) != &r)
            KM_FAIL_AT("%s should match %s", ok[i].re, ok[i].yes);
        if (km_dp_vhost_route_match(&vh, ok[i].no, NULL, 0) != NULL)
            KM_FAIL_AT("%s should not match %s", ok[i].re, ok[i].no);
        km_dp_route_release(&r);
        ASSERT(r.regex == NULL);
    }
    static const struct {
        const char *re, *err;
    } bad[] = {
        {"(unclosed", "match.safe_regex.regex: invalid regex"},
        {"(?P<name>x)", "unsupported group syntax"},
        {"\\bword", "unsupported escape \\b"},
        {"trailing\\", "trailing backslash"},
        {"[\\d\\D]", "inside brackets"},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(bad); i++) {
        struct km_dp_route r = {.match = KM_DP_MATCH_REGEX, .path = (char *)bad[i].re};
        char err[256] = "";
        ASSERT_INT_EQ(km_dp_route_compile(&r, err, sizeof(err)), KM_EINVAL);
        ASSERT_STR_CONTAINS(err, bad[i].err);
        ASSERT(r.regex == NULL);
    }
    /* header regex errors name the header matcher; nothing stays allocated */
    struct km_dp_header_match hm[] = {{.name = "a", .kind = KM_DP_HDR_REGEX, .value = "a+"},
                                      {.name = "b", .kind = KM_DP_HDR_REGEX, .value = "("}};
    struct km_dp_route r = {.match = KM_DP_MATCH_REGEX, .path = "/x", .headers = hm,
                            .nheaders = 2};
    char err[256];
    ASSERT_INT_EQ(km_dp_route_compile(&r, err, sizeof(err)), KM_EINVAL);
    ASSERT_STR_CONTAINS(err, "match.headers[1].string_match.safe_regex.regex");
    ASSERT(r.regex == NULL && hm[0].regex == NULL);
}

KM_TEST(router_weighted_clusters)
{
    struct km_dp_weighted w[] = {{"a", 10}, {"b", 0}, {"c", 30}};
    struct km_dp_route r = {.clusters = w, .nclusters = 3, .total_weight = 40};
    size_t counts[3] = {0};
    uint64_t x = 88172645463325252ull;
    for (int k = 0; k < 100000; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const struct km_dp_weighted *p = km_dp_route_pick_cluster(&r, x);
        counts[p - w]++;
    }
    ASSERT_INT_EQ(counts[1], 0);
    ASSERT(counts[0] > 24250 && counts[0] < 25750);
    ASSERT(counts[2] > 74250 && counts[2] < 75750);
    /* boundaries */
    ASSERT(km_dp_route_pick_cluster(&r, 9) == &w[0]);
    ASSERT(km_dp_route_pick_cluster(&r, 10) == &w[2]);
    ASSERT(km_dp_route_pick_cluster(&r, 39) == &w[2]);
    struct km_dp_weighted z[] = {{"z", 0}, {"y", 0}};
    struct km_dp_route rz = {.clusters = z, .nclusters = 2};
    ASSERT(km_dp_route_pick_cluster(&rz, 5) == &z[0]);
    struct km_dp_route none = {0};
    ASSERT(km_dp_route_pick_cluster(&none, 5) == NULL);
    (void)cl_a;
}

KM_TEST(router_prefix_rewrite)
{
    char out[64];
    struct km_dp_route r = {.match = KM_DP_MATCH_PREFIX, .path = "/api/", .prefix_rewrite = "/"};
    const char *p = "/api/users?id=1";
    ASSERT_INT_EQ(km_dp_route_rewrite_path(&r, p, strlen(p), out, sizeof(out)), 11);
    ASSERT_STR_EQ(out, "/users?id=1");
    r.prefix_rewrite = "/v2/";
    km_dp_route_rewrite_path(&r, p, strlen(p), out, sizeof(out));
    ASSERT_STR_EQ(out, "/v2/users?id=1");
    struct km_dp_route e = {.match = KM_DP_MATCH_PATH, .path = "/old", .prefix_rewrite = "/new"};
    p = "/old?x";
    km_dp_route_rewrite_path(&e, p, strlen(p), out, sizeof(out));
    ASSERT_STR_EQ(out, "/new?x");
    ASSERT_INT_EQ(km_dp_route_rewrite_path(&e, p, strlen(p), out, 6), KM_ELIMIT);
    e.prefix_rewrite = NULL;
    ASSERT_INT_EQ(km_dp_route_rewrite_path(&e, p, strlen(p), out, sizeof(out)), 0);
}
