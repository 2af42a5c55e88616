/* Golden files of the xDS generator tests (see xds_golden.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>

#include "test.h"
#include "xds_golden.h"

char *
xg_golden_path(const char *name, const char *suffix)
{
    const char *dir = getenv("KM_GOLDEN_DIR");
    if (dir)
        return km_xasprintf("%s/xds/%s%s", dir, name, suffix);
    if (getenv("KM_TEST_DATA"))
        return km_xasprintf("%s/../../golden/xds/%s%s", km_test_data_dir(), name, suffix);
    return km_xasprintf("tests/golden/xds/%s%s", name, suffix);
}

json_t *
xg_generate(const struct km_mesh_view *view, const struct km_xds_proxy_id *proxy)
{
    struct km_xds_resources res;
    json_t *doc = json_object();

    km_xds_generate(view, proxy, &res);
    for (int t = 0; t < KM_XDS_TYPE_COUNT; t++) {
        ASSERT(json_is_object(res.by_type[t]));
        json_object_set(doc, km_xds_type_short[t], res.by_type[t]);
    }
    km_xds_resources_deinit(&res);
    return doc;
}

char *
xg_dump(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));
    char *r = km_xasprintf("%s\n", s);
    free(s);
    return r;
}

/* Prints the first differing line and fails. */
static void
golden_mismatch(const char *path, const char *want, const char *got)
{
    size_t line = 1;
    const char *w = want, *g = got;

    while (*w && *g) {
        const char *we = strchr(w, '\n'), *ge = strchr(g, '\n');
        size_t wl = we ? (size_t)(we - w) : strlen(w), gl = ge ? (size_t)(ge - g) : strlen(g);
        if (wl != gl || memcmp(w, g, wl) != 0)
            break;
        w += wl + (we ? 1 : 0);
        g += gl + (ge ? 1 : 0);
        line++;
    }
    fprintf(stderr, "%s: generated output differs from the golden file at line %zu\n", path,
            line);
    fprintf(stderr, "  golden:    %.*s\n", (int)strcspn(w, "\n"), *w ? w : "(end of file)");
    fprintf(stderr, "  generated: %.*s\n", (int)strcspn(g, "\n"), *g ? g : "(end of output)");
    fprintf(stderr, "  rerun with UPDATE_GOLDEN=1 to accept the new output\n");
    exit(1);
}

void
xg_check_golden(const char *name, const char *got)
{
    char *path = xg_golden_path(name, ".golden.json");
    const char *upd = getenv("UPDATE_GOLDEN");

    if (upd && upd[0] && strcmp(upd, "0") != 0) {
        FILE *f = fopen(path, "w");
        ASSERT(f != NULL);
        ASSERT(fputs(got, f) >= 0);
        ASSERT(fclose(f) == 0);
        fprintf(stderr, "updated %s\n", path);
    } else {
        char *want = km_read_file(path, 16u << 20, NULL);
        if (want == NULL)
            KM_FAIL_AT("%s: %s (create it with UPDATE_GOLDEN=1)", path, strerror(errno));
        if (strcmp(want, got) != 0)
            golden_mismatch(path, want, got);
        free(want);
    }
    free(path);
}
