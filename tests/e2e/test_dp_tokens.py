"""Dataplane tokens end to end (dpServer.authn.dpProxy.type: dpToken, Kuma's default): kuma-dp
with its own token joins; without a token, with another Dataplane's token, or with a revoked
token it is refused at bootstrap, and a raw ADS stream without a token is refused."""
import base64
import json
import signal
import subprocess
import time

import pytest

import helpers
from helpers import api
from test_dp_agent import _online_and_acked, _template, _wait, dps  # noqa: F401 (fixture)


@pytest.fixture
def tcp(kuma_cp, free_port):
    pt = free_port()
    c = kuma_cp(env={"KUMA_DP_SERVER_PLAINTEXT_PORT": str(pt),
                     "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE": "dpToken"})
    c.plain_port = pt
    return c


def _token(cp, name, tmp_path, tags=None):
    body = {"name": name, "mesh": "default", "type": "dataplane", "validFor": "1h"}
    if tags:
        body["tags"] = tags
    st, _, raw = helpers.http_request("POST", cp.api + "/tokens/dataplane", json.dumps(body),
                                      {"Content-Type": "application/json"})
    tok = raw.decode().strip()
    assert st == 200, (st, tok)
    f = tmp_path / ("%s.token" % name)
    f.write_text(tok)
    return f, tok


def _claims(tok):
    payload = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _run(dps, cp, tmp_path, free_port, name, token_file):
    _, targs = _template(tmp_path, free_port)
    args = ["--cp-address", "http://127.0.0.1:%d" % cp.plain_port, "--dataplane-var",
            "name=" + name, "--drain-time", "500ms"] + targs
    if token_file:
        args += ["--dataplane-token-file", str(token_file)]
    return dps(args, name=name)


def test_valid_token_joins(tcp, dps, tmp_path, free_port):
    f, tok = _token(tcp, "web-1", tmp_path, {"kuma.io/service": ["web"]})
    assert _claims(tok)["Name"] == "web-1" and _claims(tok)["Mesh"] == "default"
    dp = _run(dps, tcp, tmp_path, free_port, "web-1", f)
    assert _wait(lambda: _online_and_acked(tcp, "web-1"), 15), dp.logs[-3000:]
    assert dp.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("case", ["none", "other", "revoked"])
def test_bad_token_refused(tcp, dps, tmp_path, free_port, case):
    f = None
    if case == "other":
        f, _ = _token(tcp, "someone-else", tmp_path)
    elif case == "revoked":
        f, tok = _token(tcp, "web-2", tmp_path)
        jti = _claims(tok)["jti"]
        secret = {"type": "Secret", "mesh": "default", "name": "dataplane-token-revocations-default",
                  "data": base64.b64encode(jti.encode()).decode()}
        st, body = api("PUT", tcp.api + "/meshes/default/secrets/"
                       "dataplane-token-revocations-default", secret)
        assert st in (200, 201), (st, body)
    dp = _run(dps, tcp, tmp_path, free_port, "web-2", f)
    try:
        dp.proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    assert dp.proc.returncode not in (None, 0), "kuma-dp was not refused:\n" + dp.logs[-3000:]
    expect = {"none": "Dataplane Token is required", "other": "authentication failed",
              "revoked": "revoked"}[case]
    assert expect in dp.logs, dp.logs[-3000:]
    assert not _online_and_acked(tcp, "web-2")


def test_ads_without_token_refused(tcp):
    """A stream that skips the bootstrap is checked too (gRPC C-core through python3-grpcio,
    raw DiscoveryRequest bytes: node id default.web-3, CDS)."""
    import grpc  # python3-grpcio
    api("PUT", tcp.api + "/meshes/default/dataplanes/web-3",
        {"type": "Dataplane", "mesh": "default", "name": "web-3",
         "networking": {"address": "127.0.0.1",
                        "inbound": [{"port": 9000, "tags": {"kuma.io/service": "web"}}]}})
    node = b"\x0a\x0d" + b"default.web-3"
    cds = b"type.googleapis.com/envoy.config.cluster.v3.Cluster"
    req = b"\x12" + bytes([len(node)]) + node + b"\x22" + bytes([len(cds)]) + cds
    ch = grpc.insecure_channel("127.0.0.1:%d" % tcp.plain_port)
    call = ch.stream_stream("/envoy.service.discovery.v3.AggregatedDiscoveryService/"
                            "StreamAggregatedResources",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        for _ in call(iter([req]), timeout=10):
            pass
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
    assert "no dataplane token" in e.value.details()
    ch.close()
    assert tcp.ready_status() == 200
