/* The Envoy resource types kuma-cp serves, bound to our generated protobuf descriptors. */
#ifndef KM_CP_XDS_TYPES_H
#define KM_CP_XDS_TYPES_H

#include <protobuf-c/protobuf-c.h>

/* Descriptor of resource type <t> (enum km_xds_type in xds_gen.h). */
const ProtobufCMessageDescriptor *km_xds_type_descriptor(int t);

/* Registers every message that may appear inside a google.protobuf.Any (filters, protocol
 * options, TLS contexts, the resource types) with km_pbjson. Idempotent; call at start-up
 * before any thread uses pbjson. */
void km_xds_register_types(void);

#endif
