/* Binding of xDS resource types to the generated protobuf descriptors. */
#include <km/common/pb.h>
#include <km/common/pbjson.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"

const ProtobufCMessageDescriptor *
km_xds_type_descriptor(int t)
{
    static const ProtobufCMessageDescriptor *const d[KM_XDS_TYPE_COUNT] = {
        [KM_XDS_LISTENER] = &envoy__config__listener__v3__listener__descriptor,
        [KM_XDS_ROUTE] = &envoy__config__route__v3__route_configuration__descriptor,
        [KM_XDS_CLUSTER] = &envoy__config__cluster__v3__cluster__descriptor,
        [KM_XDS_ENDPOINT] = &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
        [KM_XDS_SECRET] = &envoy__extensions__transport_sockets__tls__v3__secret__descriptor,
    };
    return t >= 0 && t < KM_XDS_TYPE_COUNT ? d[t] : NULL;
}

void
km_xds_register_types(void)
{
    /* Every message of our .proto files (build/gen/km_pb_registry.c, made by
     * scripts/pb-registry.sh), so any of them may appear inside an Any. */
    for (size_t i = 0; i < km_pb_all_messages_count; i++)
        km_pbjson_register(km_pb_all_messages[i]);
}
