/* libFuzzer target: YAML and JSON text -> JSON values -> YAML -> JSON again.
 * Checks that parsing never crashes and that what km_yaml_dump writes reads back equal. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/yamljson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    json_t *j = km_json_parse((const char *)data, size, err, sizeof(err));
    json_decref(j);
    json_t *docs = km_yaml_load_all((const char *)data, size, err, sizeof(err));
    if (!docs)
        return 0;
    size_t i;
    json_t *doc;
    json_array_foreach(docs, i, doc)
    {
        char *y = km_yaml_dump(doc);
        json_t *back = km_yaml_load(y, strlen(y), err, sizeof(err));
        if (!back || !json_equal(back, doc)) {
            fprintf(stderr, "round trip changed the document:\n%s\n", y);
            abort();
        }
        json_decref(back);
        free(y);
    }
    json_decref(docs);
    return 0;
}

#include "replay.h"
