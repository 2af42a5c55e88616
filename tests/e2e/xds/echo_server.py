"""gRPC echo backend (python grpcio generic handlers, no generated code).

usage: /usr/bin/python3 echo_server.py PORT NAME
Serves /echo.Echo/Echo on 127.0.0.1:PORT: EchoRequest{string message = 1} ->
EchoResponse{string message = 1; string server = 2} with server = NAME. Prints "listening PORT"
once the port is bound. Exits on SIGTERM or when stdin is closed.
"""
import signal
import sys
import threading
from concurrent import futures

import grpc

sys.path.insert(0, __import__("os").path.dirname(__file__))
import pbwire  # noqa: E402


def main():
    port, name = sys.argv[1], sys.argv[2]

    def dec(b):
        return pbwire.decode_strings(b)

    def enc(d):
        return b"".join(pbwire.f_str(k, v) for k, v in sorted(d.items()))

    def echo(req, ctx):
        return {1: req.get(1, ""), 2: name}

    h = grpc.method_handlers_generic_handler("echo.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=dec,
                                                    response_serializer=enc)})
    s = grpc.server(futures.ThreadPoolExecutor(4))
    s.add_generic_rpc_handlers((h,))
    if s.add_insecure_port("127.0.0.1:" + port) == 0:
        print("cannot bind 127.0.0.1:%s" % port, flush=True)
        sys.exit(1)
    s.start()
    signal.signal(signal.SIGTERM, lambda *a: s.stop(0))

    def watch_stdin():  # the test harness closes stdin to stop us
        try:
            sys.stdin.read()
        finally:
            s.stop(0)
    threading.Thread(target=watch_stdin, daemon=True).start()
    print("listening", port, flush=True)
    s.wait_for_termination()


if __name__ == "__main__":
    main()
