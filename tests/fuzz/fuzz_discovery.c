/* libFuzzer target: the protobuf decoders an xDS peer can reach.
 * The first input byte picks the message type (DiscoveryRequest, DeltaDiscoveryRequest, the
 * two responses, the resources inside their Any, Struct); the rest is unpacked with
 * km_pb_unpack() (depth, size and memory bounded), every Any inside a response is unpacked as
 * the type its URL names, and whatever decodes is packed again and must decode again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/pb.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb-c.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "google/protobuf/struct.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const targets[] = {
    &envoy__service__discovery__v3__discovery_request__descriptor,
    &envoy__service__discovery__v3__delta_discovery_request__descriptor,
    &envoy__service__discovery__v3__discovery_response__descriptor,
    &envoy__service__discovery__v3__delta_discovery_response__descriptor,
    &envoy__config__listener__v3__listener__descriptor,
    &envoy__config__route__v3__route_configuration__descriptor,
    &envoy__config__cluster__v3__cluster__descriptor,
    &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
    &envoy__extensions__transport_sockets__tls__v3__secret__descriptor,
    &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
    &envoy__extensions__filters__network__rbac__v3__rbac__descriptor,
    &google__protobuf__struct__descriptor,
};

static const ProtobufCMessageDescriptor *
by_type_url(const char *url)
{
    const char *name = km_pb_type_name(url);
    size_t i;

    for (i = 0; i < km_pb_all_messages_count; i++)
        if (strcmp(km_pb_all_messages[i]->name, name) == 0)
            return km_pb_all_messages[i];
    return NULL;
}

static void
check_any(const Google__Protobuf__Any *a)
{
    char err[256];
    const ProtobufCMessageDescriptor *d;
    ProtobufCMessage *m;

    if (!a || !a->type_url)
        return;
    d = by_type_url(a->type_url);
    if (!d)
        return;
    m = km_pb_unpack(d, a->value.data, a->value.len, err, sizeof(err));
    if (!m && err[0] == '\0') {
        fprintf(stderr, "km_pb_unpack failed without an error message\n");
        abort();
    }
    km_pb_free(m);
}

/* What decoded must encode and decode again. */
static void
repack(const ProtobufCMessage *m)
{
    char err[256];
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    ProtobufCMessage *back;

    if (!buf)
        abort();
    if (protobuf_c_message_pack(m, buf) != len) {
        fprintf(stderr, "pack wrote a different size than get_packed_size\n");
        abort();
    }
    if (len <= KM_PB_MAX_MESSAGE) {
        back = km_pb_unpack(m->descriptor, buf, len, err, sizeof(err));
        if (!back) {
            fprintf(stderr, "re-encoded %s does not decode: %s\n", m->descriptor->name, err);
            abort();
        }
        km_pb_free(back);
    }
    free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    const ProtobufCMessageDescriptor *d;
    ProtobufCMessage *m;
    size_t i;

    if (size < 1)
        return 0;
    d = targets[data[0] % (sizeof(targets) / sizeof(targets[0]))];
    m = km_pb_unpack(d, data + 1, size - 1, err, sizeof(err));
    if (!m) {
        if (err[0] == '\0') {
            fprintf(stderr, "km_pb_unpack failed without an error message\n");
            abort();
        }
        return 0;
    }
    if (d == &envoy__service__discovery__v3__discovery_response__descriptor) {
        const Envoy__Service__Discovery__V3__DiscoveryResponse *r = (const void *)m;
        for (i = 0; i < r->n_resources; i++)
            check_any(r->resources[i]);
    } else if (d == &envoy__service__discovery__v3__delta_discovery_response__descriptor) {
        const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *r = (const void *)m;
        for (i = 0; i < r->n_resources; i++)
            if (r->resources[i])
                check_any(r->resources[i]->resource);
    }
    repack(m);
    km_pb_free(m);
    return 0;
}
