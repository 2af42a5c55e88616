"""A long-lived proxyless gRPC client (gRPC C-core through Debian's python3-grpcio).

usage: GRPC_XDS_BOOTSTRAP=file /usr/bin/python3 pyclient_loop.py [TARGET] [MAX_SECONDS]
Calls /echo.Echo/Echo on TARGET (default xds:///echo) in a loop, one line per call on stdout:
  OK <server name>
  ERR <status code name> <details>
Stops after MAX_SECONDS (default 300) or when stdin is closed.
"""
import os
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import pbwire  # noqa: E402


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "xds:///echo"
    max_s = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
    interval = float(os.environ.get("INTERVAL", "0.05"))
    stop = threading.Event()

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    ch = grpc.insecure_channel(target)
    call = ch.unary_unary("/echo.Echo/Echo", request_serializer=lambda s: pbwire.f_str(1, s),
                          response_deserializer=pbwire.decode_strings)
    deadline = time.monotonic() + max_s
    n = 0
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            # wait_for_ready: the Python wrapper moves the ADS stream forward only while some
            # RPC polls (see docs/xds-real-clients.md)
            r = call("hi-%d" % n, timeout=2, wait_for_ready=True)
            line = "OK %s" % r.get(2, "?")
        except grpc.RpcError as e:
            line = "ERR %s %s" % (e.code().name, (e.details() or "").replace("\n", " "))
        print(line, flush=True)
        n += 1
        stop.wait(interval)
    ch.close()


if __name__ == "__main__":
    main()
