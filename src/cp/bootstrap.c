/* POST /bootstrap: what kuma-dp (or any Envoy-style proxy) asks for before it opens its ADS
 * stream. The request names the mesh and proxy and may carry the Dataplane itself (Universal
 * self-registration); the answer is an Envoy v3 bootstrap whose ADS cluster points back at
 * this control plane. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/yamljson.h>
#include <km/cp/bootstrap.h>

static const char *
jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int
km_bootstrap_parse(const json_t *req, struct km_bootstrap_request *out, struct km_errs *errs)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(req)) {
        km_errs_add(errs, "", "the request body must be a JSON object");
        return -1;
    }
    out->mesh = jstr(req, "mesh");
    out->name = jstr(req, "name");
    out->proxy_type = jstr(req, "proxyType");
    out->token = jstr(req, "dataplaneToken");
    out->host = jstr(req, "host");
    if (!out->proxy_type || !*out->proxy_type)
        out->proxy_type = "dataplane";
    if (strcmp(out->proxy_type, "dataplane") != 0 && strcmp(out->proxy_type, "ingress") != 0 &&
        strcmp(out->proxy_type, "egress") != 0)
        km_errs_add(errs, "proxyType", "must be one of dataplane, ingress, egress");
    if (!out->mesh || !*out->mesh)
        out->mesh = "default";
    const char *res = jstr(req, "dataplaneResource");
    if (res && *res) {
        char perr[256];
        json_t *doc = km_yaml_load(res, strlen(res), perr, sizeof(perr));
        if (!doc) {
            km_errs_add(errs, "dataplaneResource", "cannot be parsed: %s", perr);
            return -1;
        }
        out->dataplane = km_resource_decode(doc, km_registry_find("Dataplane"), errs);
        json_decref(doc);
        if (!out->dataplane)
            return -1;
        if (!out->name || !*out->name)
            out->name = out->dataplane->name;
        if (strcmp(out->dataplane->name, out->name) != 0)
            km_errs_add(errs, "dataplaneResource.name", "must be the same as name (\"%s\")",
                        out->name);
        if (out->dataplane->mesh[0] && strcmp(out->dataplane->mesh, out->mesh) != 0)
            km_errs_add(errs, "dataplaneResource.mesh", "must be the same as mesh (\"%s\")",
                        out->mesh);
        free(out->dataplane->mesh);
        out->dataplane->mesh = km_xstrdup(out->mesh);
        km_validate_meta(out->dataplane, errs);
        km_resource_validate(out->dataplane, errs);
    }
    if (!out->name || !*out->name)
        km_errs_add(errs, "name", "must be set (or given inside dataplaneResource)");
    return km_errs_any(errs) ? -1 : 0;
}

void
km_bootstrap_request_deinit(struct km_bootstrap_request *r)
{
    km_resource_free(r->dataplane);
    r->dataplane = NULL;
}

/* The local service name Envoy reports as node.cluster: the first inbound's service. */
static const char *
node_cluster(const struct km_resource *dp)
{
    if (!dp)
        return "";
    json_t *inb = json_object_get(json_object_get(dp->spec, "networking"), "inbound");
    json_t *tags = json_object_get(json_array_get(inb, 0), "tags");
    const char *svc = jstr(tags, "kuma.io/service");
    return svc ? svc : "";
}

json_t *
km_bootstrap_build(const struct km_bootstrap_request *req, const struct km_bootstrap_params *p)
{
    const char *host = req->host && *req->host ? req->host : p->default_host;
    char *node_id = km_xasprintf("%s.%s", req->mesh, req->name);
    json_t *tls = NULL;
    if (p->ca_pem) {
        tls = json_pack(
            "{s:s, s:{s:s, s:s, s:{s:{s:{s:s}}}}}", "name", "envoy.transport_sockets.tls",
            "typed_config", "@type",
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni", host, "common_tls_context", "validation_context", "trusted_ca", "inline_string",
            p->ca_pem);
    }
    json_t *ads_cluster = json_pack(
        "{s:s, s:s, s:s, s:{s:s, s:[{s:[{s:{s:{s:{s:s, s:i}}}}]}]}, s:{s:{s:s, s:{s:{}}}}}",
        "name", "ads_cluster", "type", "STRICT_DNS", "connect_timeout", "1s", "load_assignment",
        "cluster_name", "ads_cluster", "endpoints", "lb_endpoints", "endpoint", "address",
        "socket_address", "address", host, "port_value", p->port,
        "typed_extension_protocol_options",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "@type",
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config", "http2_protocol_options");
    if (tls)
        json_object_set_new(ads_cluster, "transport_socket", tls);
    json_t *meta = json_object();
    if (req->dataplane) {
        json_t *enc = km_resource_encode(req->dataplane);
        json_object_set_new(meta, "dataplane.resource", json_string(""));
        char *text = json_dumps(enc, JSON_COMPACT);
        json_object_set_new(meta, "dataplane.resource", json_string(text));
        free(text);
        json_decref(enc);
    }
    json_object_set_new(meta, "dataplane.proxyType", json_string(req->proxy_type));
    json_t *bootstrap = json_pack(
        "{s:{s:s, s:s, s:o}, s:{s:{s:{s:s, s:i}}}, s:{s:{s:s, s:s, s:[{s:{s:s}}], s:b}, "
        "s:{s:{}, s:s}, s:{s:{}, s:s}}, s:{s:[o]}}",
        "node", "id", node_id, "cluster", node_cluster(req->dataplane), "metadata", meta,
        "admin", "address", "socket_address", "address", "127.0.0.1", "port_value",
        p->admin_port, "dynamic_resources", "ads_config", "api_type",
        p->delta ? "DELTA_GRPC" : "GRPC", "transport_api_version", "V3", "grpc_services",
        "envoy_grpc", "cluster_name", "ads_cluster", "set_node_on_first_message_only", 1,
        "lds_config", "ads", "resource_api_version", "V3", "cds_config", "ads",
        "resource_api_version", "V3", "static_resources", "clusters", ads_cluster);
    free(node_id);
    const char *address = NULL;
    if (req->dataplane)
        address = jstr(json_object_get(req->dataplane->spec, "networking"), "address");
    json_t *sidecar = json_pack("{s:{s:s, s:b}, s:{s:[]}}", "networking", "address",
                                address ? address : "", "isUsingTransparentProxy", 0, "metrics",
                                "aggregate");
    return json_pack("{s:o, s:o}", "bootstrap", bootstrap, "kumaSidecarConfiguration", sidecar);
}
