"""Interoperability of our gRPC server (src/common/grpc_server.c) with an independent client:
gRPC C-core through Debian's python3-grpcio, over h2c (prior knowledge) and TLS.

The server is tests/tools/grpc_echo_server.c built as <build>/grpc_echo_server.
"""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("KM_BUILD_DIR", REPO / "build" / "release"))
SERVER = Path(os.environ.get("KM_ECHO_SERVER", BUILD / "grpc_echo_server"))


@pytest.fixture(params=["h2c", "tls"])
def echo_channel(request):
    assert SERVER.exists(), "%s is not built (make VARIANT=release all)" % SERVER
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(SERVER), "--keepalive-ms", "200"]
        cert = Path(tmp) / "cert.pem"
        if request.param == "tls":
            args += ["--tls", str(cert)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("PORT "), line
            target = "127.0.0.1:%d" % int(line.split()[1])
            if request.param == "tls":
                creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
                channel = grpc.secure_channel(target, creds)
            else:
                channel = grpc.insecure_channel(target)
            with channel:
                yield channel
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0


def test_bidi_stream_echo(echo_channel):
    call = echo_channel.stream_stream("/test.Echo/Echo")
    msgs = [("message %d " % i).encode() * (i % 50 + 1) for i in range(300)]
    got = list(call(iter(msgs), timeout=10))
    assert got == msgs


def test_unary_echo_and_large_message(echo_channel):
    call = echo_channel.unary_unary("/test.Echo/Echo")
    assert call(b"hello", timeout=10) == b"hello"
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    assert call(big, timeout=20) == big


def test_message_over_the_server_limit(echo_channel):
    call = echo_channel.unary_unary("/test.Echo/Echo")
    with pytest.raises(grpc.RpcError) as e:
        call(b"x" * (4 * 1024 * 1024 + 1), timeout=20)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_status_and_message_from_trailers(echo_channel):
    call = echo_channel.unary_unary("/test.Echo/Fail")
    with pytest.raises(grpc.RpcError) as e:
        call("3:spec.networking.address: bad value 100% \u00fc".encode(), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "spec.networking.address: bad value 100% \u00fc"


def test_unknown_method(echo_channel):
    call = echo_channel.unary_unary("/test.Echo/Missing")
    with pytest.raises(grpc.RpcError) as e:
        call(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_keepalive_pings_are_answered(echo_channel):
    """The server pings every 200 ms when idle; an idle client stays connected."""
    import time
    call = echo_channel.unary_unary("/test.Echo/Echo")
    assert call(b"a", timeout=10) == b"a"
    time.sleep(1.5)
    assert call(b"b", timeout=10) == b"b"
