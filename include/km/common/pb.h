/* Bounded protobuf-c unpacking for bytes that come from the network.
 *
 * protobuf_c_message_unpack() has no limits of its own: it recurses once per nested message
 * (google.protobuf.Struct/Value and the RBAC Permission/Principal trees nest without end, so a
 * few megabytes of "0a 02 0a 00 ..." overflow the stack), and it allocates tens of bytes per
 * two-byte empty sub-message. km_pb_unpack() first walks the wire bytes guided by the message
 * descriptor, rejecting nesting deeper than KM_PB_MAX_DEPTH and malformed framing (naming the
 * field path where it happened), then unpacks with an allocator that fails once
 * KM_PB_MAX_ALLOC bytes are in use. The caller enforces the message size (the gRPC layer's
 * max_message_bytes, 4 MiB by default = KM_PB_MAX_MESSAGE). */
#ifndef KM_COMMON_PB_H
#define KM_COMMON_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#define KM_PB_MAX_MESSAGE (4u * 1024 * 1024) /* largest encoded message accepted */
#define KM_PB_MAX_DEPTH 64                    /* nested messages below the top one */
#define KM_PB_MAX_ALLOC (64u * 1024 * 1024)   /* heap used by one unpacked message */

/* Unpacks <len> bytes as message <d>. Returns NULL with "path: problem" in <err> (e.g.
 * "node.metadata.fields.value.struct_value: nested deeper than 64 messages") when the bytes
 * are larger than KM_PB_MAX_MESSAGE, malformed, too deep or too costly to unpack. Free the
 * result with km_pb_free(). */
ProtobufCMessage *km_pb_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *data,
                               size_t len, char *err, size_t errlen);

/* Every message type of our .proto files and of the well-known types we compile
 * (build/gen/km_pb_registry.c, generated from the protoc-c headers). */
extern const ProtobufCMessageDescriptor *const km_pb_all_messages[];
extern const size_t km_pb_all_messages_count;

/* Frees a message from km_pb_unpack() (NULL is fine). */
void km_pb_free(ProtobufCMessage *m);

/* Returns the full message name in a type URL ("type.googleapis.com/envoy.config.listener.v3.
 * Listener" -> "envoy.config.listener.v3.Listener"), i.e. the text after the last '/'. */
const char *km_pb_type_name(const char *type_url);

#endif
