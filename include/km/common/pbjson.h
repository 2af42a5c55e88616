/* Protobuf <-> JSON for protobuf-c messages, by reflection over their descriptors.
 *
 * The xDS generators write Envoy resources as JSON (the proto3 JSON mapping that Envoy's own
 * docs and config dumps use) and this module packs them into wire bytes; kuma-dp's config dump
 * goes the other way. protobuf-c has no JSON support and Debian packages no C library that
 * does this, so it is written here: it covers the scalar types, enums by name, repeated
 * fields, oneofs, and the well-known types xDS uses (Any, Duration, wrappers, Struct, Value,
 * ListValue, Empty). Field names are accepted as written in the .proto (snake_case) or in
 * lowerCamelCase; output uses the .proto names. */
#ifndef KM_COMMON_PBJSON_H
#define KM_COMMON_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Nesting limit for both directions (Struct/Value can nest without end). */
#define KM_PBJSON_MAX_DEPTH 64

/* Makes a message type known for google.protobuf.Any ("@type"). Not thread safe: call at
 * start-up (km_pbjson_register_all registers every type of our .proto files). */
void km_pbjson_register(const ProtobufCMessageDescriptor *d);
/* Looks a registered type up by type URL ("type.googleapis.com/envoy.config.listener.v3.Listener")
 * or full name; NULL when unknown. */
const ProtobufCMessageDescriptor *km_pbjson_lookup(const char *type_url);

/* Encodes <j> (a JSON object) as message <d>; on success returns 0 and a malloc'ed buffer in
 * *out. On error returns -1 and writes "field.path: problem" into <err>. Unknown fields are
 * errors. */
int km_pbjson_encode(const ProtobufCMessageDescriptor *d, const json_t *j, uint8_t **out,
                     size_t *len, char *err, size_t errlen);

/* Encodes <j> as google.protobuf.Any of type <d>: the result's type_url is
 * "type.googleapis.com/<full name>". */
int km_pbjson_encode_any(const ProtobufCMessageDescriptor *d, const json_t *j, uint8_t **out,
                         size_t *len, char *err, size_t errlen);

/* Decodes wire bytes of message <d> into JSON (Any expanded for registered types). Returns
 * NULL with a message in <err> when the bytes are not a valid <d>. */
json_t *km_pbjson_decode(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                         char *err, size_t errlen);

/* Same, from an already unpacked message. */
json_t *km_pbjson_from_message(const ProtobufCMessage *m, char *err, size_t errlen);

#endif
