/* Unit tests for src/common: durations, timestamps, YAML <-> JSON, errors, buffers. */
#include <jansson.h>
#include <stdlib.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/common/yamljson.h>

#include "test.h"

KM_TEST(duration_go_syntax)
{
    int64_t ns;
    ASSERT(km_duration_parse("1h30m", false, &ns));
    ASSERT_INT_EQ(ns, 5400LL * 1000000000LL);
    ASSERT(km_duration_parse("300ms", false, &ns));
    ASSERT_INT_EQ(ns, 300000000LL);
    ASSERT(km_duration_parse("1.5s", false, &ns));
    ASSERT_INT_EQ(ns, 1500000000LL);
    ASSERT(km_duration_parse("0", false, &ns));
    ASSERT_INT_EQ(ns, 0);
    ASSERT(km_duration_parse("-2s", false, &ns));
    ASSERT_INT_EQ(ns, -2000000000LL);
    ASSERT(km_duration_parse("10us", false, &ns));
    ASSERT_INT_EQ(ns, 10000);
}

KM_TEST(duration_days_only_when_allowed)
{
    int64_t ns;
    ASSERT(!km_duration_parse("1d", false, &ns));
    ASSERT(km_duration_parse("1d", true, &ns));
    ASSERT_INT_EQ(ns, 86400LL * 1000000000LL);
    ASSERT(km_duration_parse("1y", true, &ns));
    ASSERT_INT_EQ(ns, 365LL * 86400LL * 1000000000LL);
}

KM_TEST(duration_rejects_garbage)
{
    int64_t ns;
    const char *bad[] = {"", "s", "10", "1x", "abc", "1h-", "--1s", "1e400h", "1.2.3s"};
    for (size_t i = 0; i < KM_ARRAY_LEN(bad); i++)
        if (km_duration_parse(bad[i], true, &ns))
            KM_FAIL_AT("accepted \"%s\"", bad[i]);
}

KM_TEST(time_format_and_parse_round_trip)
{
    char buf[40];
    km_time_format(0, buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "1970-01-01T00:00:00Z");
    km_time_format(1700000000123400LL, buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "2023-11-14T22:13:20.1234Z");
    int64_t us;
    ASSERT(km_time_parse(buf, &us));
    ASSERT_INT_EQ(us, 1700000000123400LL);
    ASSERT(km_time_parse("2023-11-14T23:13:20+01:00", &us));
    ASSERT_INT_EQ(us, 1700000000000000LL);
    ASSERT(!km_time_parse("2023-11-14 22:13:20", &us));
    ASSERT(!km_time_parse("2023-11-14T22:13:20Zjunk", &us));
}

KM_TEST(yaml_scalars_follow_core_schema)
{
    const char *y = "a: 1\nb: -2\nc: 1.5\nd: true\ne: null\nf: \"1\"\ng: hello\nh: ~\n"
                    "i: 0x10\nj: '  spaced'\nk: 10.0.0.1\nl: '*'\n";
    char err[256];
    json_t *v = km_yaml_load(y, strlen(y), err, sizeof(err));
    ASSERT(v != NULL);
    ASSERT_INT_EQ(json_integer_value(json_object_get(v, "a")), 1);
    ASSERT_INT_EQ(json_integer_value(json_object_get(v, "b")), -2);
    ASSERT(json_is_real(json_object_get(v, "c")));
    ASSERT(json_is_true(json_object_get(v, "d")));
    ASSERT(json_is_null(json_object_get(v, "e")));
    ASSERT_STR_EQ(json_string_value(json_object_get(v, "f")), "1");
    ASSERT_STR_EQ(json_string_value(json_object_get(v, "g")), "hello");
    ASSERT(json_is_null(json_object_get(v, "h")));
    ASSERT_INT_EQ(json_integer_value(json_object_get(v, "i")), 16);
    ASSERT_STR_EQ(json_string_value(json_object_get(v, "j")), "  spaced");
    ASSERT_STR_EQ(json_string_value(json_object_get(v, "k")), "10.0.0.1");
    ASSERT_STR_EQ(json_string_value(json_object_get(v, "l")), "*");
    json_decref(v);
}

KM_TEST(yaml_multi_document_stream)
{
    const char *y = "type: Mesh\nname: a\n---\n---\ntype: Mesh\nname: b\n...\n";
    char err[256];
    json_t *v = km_yaml_load_all(y, strlen(y), err, sizeof(err));
    ASSERT(v != NULL);
    ASSERT_INT_EQ(json_array_size(v), 2);
    ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(v, 1), "name")), "b");
    json_decref(v);
    /* km_yaml_load refuses several documents */
    json_t *one = km_yaml_load(y, strlen(y), err, sizeof(err));
    ASSERT(one == NULL);
    ASSERT_STR_CONTAINS(err, "expected one YAML document");
}

KM_TEST(yaml_errors_name_line_and_column)
{
    char err[256];
    const char *bad = "a: 1\nb: [1, 2\nc: 3\n";
    ASSERT(km_yaml_load(bad, strlen(bad), err, sizeof(err)) == NULL);
    ASSERT_STR_CONTAINS(err, "line ");
    const char *dup = "a: 1\na: 2\n";
    ASSERT(km_yaml_load(dup, strlen(dup), err, sizeof(err)) == NULL);
    ASSERT_STR_CONTAINS(err, "line 2 column 1: mapping key \"a\" already defined");
    const char *alias = "a: &x 1\nb: *x\n";
    ASSERT(km_yaml_load(alias, strlen(alias), err, sizeof(err)) == NULL);
    ASSERT_STR_CONTAINS(err, "aliases");
}

KM_TEST(yaml_depth_limit)
{
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (int i = 0; i < KM_YAML_MAX_DEPTH + 5; i++)
        km_sbuf_puts(&b, "[");
    char err[256];
    ASSERT(km_yaml_load(b.ptr, b.len, err, sizeof(err)) == NULL);
    ASSERT_STR_CONTAINS(err, "nesting deeper");
    ASSERT(km_json_parse(b.ptr, b.len, err, sizeof(err)) == NULL);
    km_sbuf_deinit(&b);
}

KM_TEST(yaml_dump_quotes_ambiguous_strings)
{
    json_t *v = json_pack("{s:s, s:s, s:s, s:i, s:b, s:[s]}", "a", "true", "b", "123", "c",
                          "plain text", "d", 5, "e", 1, "f", "x");
    char *y = km_yaml_dump(v);
    ASSERT_STR_CONTAINS(y, "a: 'true'");
    ASSERT_STR_CONTAINS(y, "b: '123'");
    ASSERT_STR_CONTAINS(y, "c: plain text");
    ASSERT_STR_CONTAINS(y, "d: 5");
    ASSERT_STR_CONTAINS(y, "e: true");
    char err[256];
    json_t *back = km_yaml_load(y, strlen(y), err, sizeof(err));
    ASSERT(back != NULL);
    ASSERT(json_equal(back, v));
    json_decref(back);
    json_decref(v);
    free(y);
}

KM_TEST(json_parse_reports_position)
{
    char err[256];
    const char *bad = "{\"a\": 1,,}";
    ASSERT(km_json_parse(bad, strlen(bad), err, sizeof(err)) == NULL);
    ASSERT_STR_CONTAINS(err, "line 1 column");
    const char *dup = "{\"a\": 1, \"a\": 2}";
    ASSERT(km_json_parse(dup, strlen(dup), err, sizeof(err)) == NULL);
}

KM_TEST(errs_collect_and_join)
{
    struct km_errs e;
    km_errs_init(&e);
    km_errs_add(&e, "spec.from[0]", "must have %d item", 1);
    km_errs_add(&e, "", "whole document");
    ASSERT_INT_EQ(e.n, 2);
    char *j = km_errs_join(&e);
    ASSERT_STR_EQ(j, "spec.from[0]: must have 1 item; whole document");
    free(j);
    km_errs_deinit(&e);
    char *p = km_path_key("", "spec");
    char *q = km_path_key(p, "from");
    char *r = km_path_idx(q, 3);
    ASSERT_STR_EQ(r, "spec.from[3]");
    free(p);
    free(q);
    free(r);
}
