/* Unit tests for src/common/pb.c: bounded unpacking of protobuf from the network. */
#include <stdlib.h>
#include <string.h>

#include <km/common/pb.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "google/protobuf/struct.pb-c.h"

#include "test.h"

/* Appends a length-delimited field to <buf> at <*len>. */
static void
put_ld(uint8_t *buf, size_t *len, unsigned tag, const uint8_t *val, size_t vlen)
{
    uint8_t tmp[16];
    size_t n = 0, v = vlen;

    tmp[n++] = (uint8_t)((tag << 3) | 2);
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    memmove(buf + n, val, vlen);
    memcpy(buf, tmp, n);
    *len = n + vlen;
}

/* Struct nested <depth> times through fields{key:"k", value{struct_value: ...}}. */
static uint8_t *
deep_struct(unsigned depth, size_t *out_len)
{
    size_t cap = (size_t)depth * 32 + 64, len = 0, i;
    uint8_t *s = calloc(1, cap), *v = calloc(1, cap), *e = calloc(1, cap);

    for (i = 0; i < depth; i++) {
        size_t vl, el;
        put_ld(v, &vl, 5, s, len);         /* Value.struct_value */
        e[0] = 0x0a;                       /* FieldsEntry.key = "k" */
        e[1] = 1;
        e[2] = 'k';
        put_ld(e + 3, &el, 2, v, vl);      /* FieldsEntry.value */
        put_ld(s, &len, 1, e, el + 3);     /* Struct.fields */
    }
    free(v);
    free(e);
    *out_len = len;
    return s;
}

KM_TEST(pb_unpack_discovery_request)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest q =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    char *names[] = {"echo"};
    uint8_t buf[256];
    char err[256];

    node.id = "default.echo-1";
    q.node = &node;
    q.type_url = "type.googleapis.com/envoy.config.listener.v3.Listener";
    q.n_resource_names = 1;
    q.resource_names = names;
    size_t len = protobuf_c_message_pack(&q.base, buf);
    Envoy__Service__Discovery__V3__DiscoveryRequest *back = (void *)km_pb_unpack(
        &envoy__service__discovery__v3__discovery_request__descriptor, buf, len, err, sizeof(err));
    ASSERT(back != NULL);
    ASSERT_STR_EQ(back->node->id, "default.echo-1");
    ASSERT_STR_EQ(back->resource_names[0], "echo");
    ASSERT_STR_EQ(km_pb_type_name(back->type_url), "envoy.config.listener.v3.Listener");
    km_pb_free(&back->base);
}

KM_TEST(pb_unpack_rejects_deep_nesting_with_path)
{
    char err[512];
    size_t len;
    uint8_t *b = deep_struct(KM_PB_MAX_DEPTH, &len);
    ProtobufCMessage *m = km_pb_unpack(&google__protobuf__struct__descriptor, b, len, err,
                                       sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "fields.value.struct_value.(59 more).struct_value.fields.value: ");
    ASSERT_STR_CONTAINS(err, "nested deeper than 64 messages");
    free(b);

    /* 21 Struct levels = 63 nested messages: accepted. */
    b = deep_struct(21, &len);
    m = km_pb_unpack(&google__protobuf__struct__descriptor, b, len, err, sizeof(err));
    ASSERT(m != NULL);
    km_pb_free(m);
    free(b);

    /* Thousands of levels would overflow the stack inside protobuf-c: refused up front. */
    b = deep_struct(5000, &len);
    m = km_pb_unpack(&google__protobuf__struct__descriptor, b, len, err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "nested deeper than 64 messages");
    free(b);
}

KM_TEST(pb_unpack_limits_size_and_memory)
{
    char err[256];
    size_t len = KM_PB_MAX_MESSAGE + 1;
    uint8_t *b = calloc(1, len);
    ProtobufCMessage *m = km_pb_unpack(&envoy__service__discovery__v3__discovery_request__descriptor,
                                       b, len, err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "larger than the limit of 4194304 bytes");
    free(b);

    /* Two million empty CircuitBreakers.thresholds (2 wire bytes each) inside one
     * Cluster.circuit_breakers would cost far more memory than wire bytes. */
    len = KM_PB_MAX_MESSAGE - 16;
    b = calloc(1, len);
    size_t inner = len - 6, i;
    b[0] = 0x52; /* field 10 (circuit_breakers), length-delimited */
    b[1] = (uint8_t)(0x80 | (inner & 0x7f));
    b[2] = (uint8_t)(0x80 | ((inner >> 7) & 0x7f));
    b[3] = (uint8_t)(0x80 | ((inner >> 14) & 0x7f));
    b[4] = (uint8_t)((inner >> 21) & 0x7f);
    for (i = 0; i + 1 < inner; i += 2) {
        b[5 + i] = 0x0a; /* thresholds, empty */
        b[6 + i] = 0x00;
    }
    m = km_pb_unpack(&envoy__config__cluster__v3__cluster__descriptor, b, 5 + (inner & ~(size_t)1),
                     err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "needs more than");
    free(b);
}

KM_TEST(pb_unpack_malformed_names_the_field)
{
    char err[256];
    /* DiscoveryRequest.node (2) says 10 bytes, only 2 follow. */
    const uint8_t bad[] = {0x12, 0x0a, 0x0a, 0x00};
    ProtobufCMessage *m = km_pb_unpack(&envoy__service__discovery__v3__discovery_request__descriptor,
                                       bad, sizeof(bad), err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "runs past the end");
    /* node.id with the wrong wire type: caught by protobuf-c. */
    const uint8_t wt[] = {0x12, 0x02, 0x08, 0x01};
    m = km_pb_unpack(&envoy__service__discovery__v3__discovery_request__descriptor, wt, sizeof(wt),
                     err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "invalid envoy.service.discovery.v3.DiscoveryRequest");
    /* A group (wire type 3) in node. */
    const uint8_t grp[] = {0x12, 0x01, 0x0b};
    m = km_pb_unpack(&envoy__service__discovery__v3__discovery_request__descriptor, grp,
                     sizeof(grp), err, sizeof(err));
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "node: unsupported wire type 3");
}

KM_TEST(pb_registry_lists_every_message)
{
    size_t i;
    int found = 0;
    for (i = 0; i < km_pb_all_messages_count; i++)
        if (strcmp(km_pb_all_messages[i]->name, "envoy.config.listener.v3.Listener") == 0 ||
            strcmp(km_pb_all_messages[i]->name, "google.protobuf.Struct") == 0)
            found++;
    ASSERT_INT_EQ(found, 2);
}
