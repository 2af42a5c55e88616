/* YAML <-> JSON (jansson) conversion with libyaml. Resources travel as JSON inside kuma-c;
 * YAML is only a surface syntax for files and for kumactl output. */
#ifndef KM_COMMON_YAMLJSON_H
#define KM_COMMON_YAMLJSON_H

#include <jansson.h>
#include <stddef.h>

/* Hard limits for hostile input: nesting depth and number of documents per stream. */
#define KM_YAML_MAX_DEPTH 64
#define KM_YAML_MAX_DOCS  10000

/* Parses every document of a YAML stream into a JSON array (one element per non-empty
 * document). Plain scalars become numbers, booleans or null by YAML 1.2 core-schema rules;
 * quoted scalars stay strings. On error returns NULL and writes "line L column C: problem"
 * into <err>. Caller owns the result. */
json_t *km_yaml_load_all(const char *buf, size_t len, char *err, size_t errlen);

/* Parses exactly one document (empty input gives an empty object). Same errors as above;
 * more than one document is an error. */
json_t *km_yaml_load(const char *buf, size_t len, char *err, size_t errlen);

/* Emits <v> as a YAML block document (no leading "---"). Caller frees. */
char *km_yaml_dump(const json_t *v);

/* Parses JSON with jansson, refusing nesting deeper than KM_YAML_MAX_DEPTH; error text names
 * line and column. Caller owns the result. */
json_t *km_json_parse(const char *buf, size_t len, char *err, size_t errlen);

#endif
