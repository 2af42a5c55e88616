/* Golden files of the xDS generator tests (test_xds_gen.c, test_xds_mtls.c):
 * tests/golden/xds/<case>.input.json and <case>.golden.json; UPDATE_GOLDEN=1 rewrites them. */
#ifndef KM_TEST_XDS_GOLDEN_H
#define KM_TEST_XDS_GOLDEN_H

#include <jansson.h>

#include <km/cp/xds_gen.h>

/* Path of <name><suffix>: $KM_GOLDEN_DIR/xds, else next to $KM_TEST_DATA (tests/unit/data ->
 * tests/golden), else tests/golden/xds from the source tree root. Caller frees. */
char *xg_golden_path(const char *name, const char *suffix);
/* The generated resources as one document {"lds": {...}, "rds": ..., ...}. Caller owns it. */
json_t *xg_generate(const struct km_mesh_view *view, const struct km_xds_proxy_id *proxy);
/* <j> as indented JSON text with a final newline. Caller frees. */
char *xg_dump(const json_t *j);
/* Compares <got> with <name>.golden.json and fails at the first differing line; with
 * UPDATE_GOLDEN=1 writes <got> there instead. */
void xg_check_golden(const char *name, const char *got);

#endif
