"""One minimal valid Universal resource per type (written for these tests, Kuma's formats).

example(type_name, mesh, name) returns a fresh dict; mesh is ignored for global types."""

import copy

SVC_ALL = [{"match": {"kuma.io/service": "*"}}]
SVC_BACKEND = [{"match": {"kuma.io/service": "backend"}}]
MESH_REF = {"kind": "Mesh"}
# A self-signed test CA made for these tests (EC P-256, no private key kept).
E2E_CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBejCCAR+gAwIBAgIUDJoHxEj86jN0GUxu4Rw80XhoJqowCgYIKoZIzj0EAwIw\n"
    "ETEPMA0GA1UECgwGZTJlIENBMCAXDTI2MTEyNzEyNTQ1NVoYDzIxMjYxMTAzMTI1\n"
    "NDU1WjARMQ8wDQYDVQQKDAZlMmUgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n"
    "AAQ2vjeOJUJLEutVThGsm8U+NjushxWal2npNE9P8gwyF+OlvPdPmQ/SgyvHbGMZ\n"
    "i8IJ3YMshTWgf6C8mbJZ1xW4o1MwUTAdBgNVHQ4EFgQUATBP/KjmrXl+Y8OI5qXk\n"
    "WXmwo5kwHwYDVR0jBBgwFoAUATBP/KjmrXl+Y8OI5qXkWXmwo5kwDwYDVR0TAQH/\n"
    "BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAs4Yf/WydLtb4cdqCy5B9P3Y778YO\n"
    "cc+t178vBWQA8aECIQCCkOBcvBVmI/ks5/CQgwE5Pw/0y1QvfQD6/9EQN1eGQw==\n"
    "-----END CERTIFICATE-----\n"
)

_EXAMPLES = {
    # global-scoped
    "Mesh": {},
    "GlobalSecret": {"data": "c2VjcmV0"},
    "Zone": {"enabled": True},
    "ZoneIngress": {"networking": {"address": "10.9.0.1", "port": 10001,
                                   "advertisedAddress": "192.0.2.1", "advertisedPort": 10001}},
    "ZoneEgress": {"networking": {"address": "10.9.0.2", "port": 10002}},
    "HostnameGenerator": {"spec": {"selector": {"meshService": {"matchLabels": {"e2e": "x"}}},
                                   "template": "{{ .DisplayName }}.e2e.mesh"}},
    # mesh-scoped, legacy
    "Dataplane": {"networking": {"address": "10.0.0.1",
                                 "inbound": [{"port": 8080,
                                              "tags": {"kuma.io/service": "web",
                                                       "kuma.io/protocol": "http"}}]}},
    "Secret": {"data": "c2VjcmV0"},
    "ExternalService": {"networking": {"address": "example.com:443"},
                        "tags": {"kuma.io/service": "example"}},
    "TrafficPermission": {"sources": SVC_ALL, "destinations": SVC_ALL},
    "TrafficRoute": {"sources": SVC_ALL, "destinations": SVC_ALL,
                     "conf": {"destination": {"kuma.io/service": "*"}}},
    "TrafficLog": {"sources": SVC_ALL, "destinations": SVC_ALL},
    "TrafficTrace": {"selectors": SVC_ALL},
    "HealthCheck": {"sources": SVC_ALL, "destinations": SVC_BACKEND,
                    "conf": {"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3,
                             "healthyThreshold": 1}},
    "CircuitBreaker": {"sources": SVC_ALL, "destinations": SVC_BACKEND,
                       "conf": {"detectors": {"totalErrors": {"consecutive": 20}}}},
    "FaultInjection": {"sources": [{"match": {"kuma.io/service": "*",
                                              "kuma.io/protocol": "http"}}],
                       "destinations": [{"match": {"kuma.io/service": "backend",
                                                   "kuma.io/protocol": "http"}}],
                       "conf": {"delay": {"percentage": 50, "value": "5s"}}},
    "Retry": {"sources": SVC_ALL, "destinations": SVC_BACKEND,
              "conf": {"http": {"numRetries": 5}}},
    "Timeout": {"sources": SVC_ALL, "destinations": SVC_BACKEND,
                "conf": {"connectTimeout": "5s"}},
    "RateLimit": {"sources": SVC_ALL, "destinations": SVC_BACKEND,
                  "conf": {"http": {"requests": 5, "interval": "10s"}}},
    # mesh-scoped, targetRef policies
    "MeshTrafficPermission": {"spec": {"targetRef": MESH_REF,
                                       "from": [{"targetRef": MESH_REF,
                                                 "default": {"action": "Allow"}}]}},
    "MeshHTTPRoute": {"spec": {"targetRef": MESH_REF, "to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                   "default": {"backendRefs": [{"kind": "MeshService", "name": "backend",
                                                "weight": 100}]}}]}]}},
    "MeshTCPRoute": {"spec": {"targetRef": MESH_REF, "to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "backend"}]}}]}]}},
    "MeshTimeout": {"spec": {"targetRef": MESH_REF,
                             "to": [{"targetRef": MESH_REF,
                                     "default": {"connectionTimeout": "5s",
                                                 "idleTimeout": "1h"}}]}},
    "MeshRetry": {"spec": {"targetRef": MESH_REF,
                           "to": [{"targetRef": MESH_REF,
                                   "default": {"tcp": {"maxConnectAttempt": 3}}}]}},
    "MeshCircuitBreaker": {"spec": {"targetRef": MESH_REF,
                                    "to": [{"targetRef": MESH_REF,
                                            "default": {"connectionLimits":
                                                        {"maxConnections": 100}}}]}},
    "MeshHealthCheck": {"spec": {"targetRef": MESH_REF,
                                 "to": [{"targetRef": MESH_REF,
                                         "default": {"interval": "10s", "timeout": "2s",
                                                     "unhealthyThreshold": 3,
                                                     "healthyThreshold": 1, "tcp": {}}}]}},
    "MeshFaultInjection": {"spec": {"targetRef": MESH_REF,
                                    "from": [{"targetRef": MESH_REF,
                                              "default": {"http": [{"abort": {
                                                  "httpStatus": 500,
                                                  "percentage": 50}}]}}]}},
    "MeshRateLimit": {"spec": {"targetRef": MESH_REF,
                               "from": [{"targetRef": MESH_REF,
                                         "default": {"local": {"tcp": {"connectionRate": {
                                             "num": 5, "interval": "10s"}}}}}]}},
    "MeshAccessLog": {"spec": {"targetRef": MESH_REF,
                               "from": [{"targetRef": MESH_REF,
                                         "default": {"backends": [{"type": "File", "file": {
                                             "path": "/tmp/e2e-access.log"}}]}}]}},
    "MeshTrace": {"spec": {"targetRef": MESH_REF,
                           "default": {"backends": [{"type": "Zipkin", "zipkin": {
                               "url": "http://zipkin.local:9411/api/v2/spans"}}]}}},
    "MeshLoadBalancingStrategy": {"spec": {"targetRef": MESH_REF,
                                           "to": [{"targetRef": MESH_REF,
                                                   "default": {"loadBalancer": {
                                                       "type": "RoundRobin"}}}]}},
    "ProxyTemplate": {"selectors": SVC_ALL, "conf": {"imports": ["default-proxy"]}},
    "VirtualOutbound": {"selectors": SVC_ALL,
                        "conf": {"host": "{{.svc}}.e2e.mesh", "port": "8080",
                                 "parameters": [{"name": "svc",
                                                 "tagKey": "kuma.io/service"}]}},
    "MeshGateway": {"selectors": [{"match": {"kuma.io/service": "edge"}}],
                    "conf": {"listeners": [{"port": 8080, "protocol": "HTTP"}]}},
    "MeshGatewayRoute": {"selectors": [{"match": {"kuma.io/service": "edge"}}],
                         "conf": {"http": {"rules": [{
                             "matches": [{"path": {"match": "PREFIX", "value": "/"}}],
                             "backends": [{"destination": {"kuma.io/service": "backend"}}]}]}}},
    "MeshProxyPatch": {"spec": {"targetRef": MESH_REF, "default": {"appendModifications": [
        {"cluster": {"operation": "Patch", "match": {"name": "backend"},
                     "value": "connectTimeout: 7s"}}]}}},
    "MeshMetric": {"spec": {"targetRef": MESH_REF, "default": {"backends": [
        {"type": "Prometheus", "prometheus": {"port": 5670, "path": "/metrics"}}]}}},
    "MeshTLS": {"spec": {"targetRef": MESH_REF,
                         "from": [{"targetRef": MESH_REF, "default": {"mode": "Permissive"}}]}},
    "MeshPassthrough": {"spec": {"targetRef": MESH_REF, "default": {"passthroughMode": "All"}}},
    # mesh-scoped, services and identity (added for Kuma's REST cases)
    "MeshService": {"spec": {"selector": {"dataplaneTags": {"app": "web"}},
                             "ports": [{"port": 80, "targetPort": 8080,
                                        "appProtocol": "http"}]}},
    "MeshExternalService": {"spec": {"match": {"type": "HostnameGenerator", "port": 443,
                                               "protocol": "tcp"},
                                     "endpoints": [{"address": "example.com", "port": 443}]}},
    "MeshMultiZoneService": {"spec": {"selector": {"meshService": {"matchLabels":
                                                                   {"app": "web"}}},
                                      "ports": [{"port": 80, "appProtocol": "http"}]}},
    "Workload": {"spec": {}},
    "MeshIdentity": {"spec": {"selector": {"dataplane": {"matchLabels": {"app": "web"}}},
                              "spiffeID": {"trustDomain": "e2e.example",
                                           "path": "/workload/{{ .Workload }}"},
                              "provider": {"type": "Bundled", "bundled": {
                                  "meshTrustCreation": "Enabled",
                                  "insecureAllowSelfSigned": True,
                                  "certificateParameters": {"expiry": "24h"},
                                  "autogenerate": {"enabled": True}}}}},
    "MeshZoneAddress": {"spec": {"address": "192.0.2.10", "port": 10001}},
    "MeshOpenTelemetryBackend": {"spec": {"endpoint": {"address": "otel.e2e", "port": 4317},
                                          "protocol": "grpc"}},
    "MeshTrust": {"spec": {"trustDomain": "e2e.example", "caBundles": [
        {"type": "Pem", "pem": {"value": E2E_CA_PEM}}]}},
}

GLOBAL = {"Mesh", "GlobalSecret", "Zone", "ZoneIngress", "ZoneEgress", "HostnameGenerator"}


def known_types():
    return sorted(_EXAMPLES)


def example(type_name, mesh="default", name=None):
    body = {"type": type_name, "name": name or "e2e-" + type_name.lower()}
    if type_name not in GLOBAL:
        body["mesh"] = mesh
    body.update(copy.deepcopy(_EXAMPLES[type_name]))
    return body
