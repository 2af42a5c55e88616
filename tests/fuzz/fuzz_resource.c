/* Fuzz target: bytes -> YAML stream (or JSON) -> km_resource_decode -> validate (meta, request,
 * type) -> warnings -> encode -> decode again. Must never crash or leak.
 * libFuzzer: clang -fsanitize=fuzzer,address ... ; corpus replay with any compiler:
 * -DKM_FUZZ_REPLAY and run `fuzz_resource FILE...`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/cp/resource.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
one_doc(const json_t *doc)
{
    const char *tname = json_string_value(json_object_get(doc, "type"));
    const struct km_rtype *expect = km_registry_find(tname);
    struct km_errs e;
    struct km_resource *r, *again, *dup;
    json_t *enc, *warn;

    for (int pass = 0; pass < 2; pass++) {
        km_errs_init(&e);
        r = km_resource_decode(doc, pass ? expect : NULL, &e);
        if (r) {
            km_validate_request(r, tname, "default", "x", &e);
            km_resource_validate(r, &e);
            warn = km_resource_warnings(r);
            json_decref(warn);
            free(km_resource_kri(r));
            dup = km_resource_dup(r);
            enc = km_resource_encode(dup);
            again = km_resource_decode(enc, r->type, &e);
            km_resource_free(again);
            json_decref(enc);
            km_resource_free(dup);
            km_resource_free(r);
        }
        free(km_errs_join(&e));
        km_errs_deinit(&e);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    json_t *docs, *doc;
    size_t i;

    if (size > 1 << 20)
        return 0;
    docs = km_yaml_load_all((const char *)data, size, err, sizeof(err));
    if (docs) {
        json_array_foreach (docs, i, doc)
            one_doc(doc);
        json_decref(docs);
    }
    doc = km_json_parse((const char *)data, size, err, sizeof(err));
    if (doc) {
        one_doc(doc);
        json_decref(doc);
    }
    return 0;
}

#include "replay.h"
