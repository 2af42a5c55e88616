"""Backends for the data plane end-to-end tests and the demo (standard library only).

usage: /usr/bin/python3 dp_backends.py tcp-echo PORT
       /usr/bin/python3 dp_backends.py http PORT NAME

tcp-echo: echoes every byte on 127.0.0.1:PORT; on the client's EOF it finishes echoing and
          shuts its write side down (so a half-close must travel through the proxies).
http:     HTTP/1.1 with keep-alive on 127.0.0.1:PORT; every response carries "X-Server: NAME".
          GET  /echo          JSON {server, method, path, headers}
          POST /echo          the request body (Content-Length or chunked), same content type
          GET  /bytes?n=N     N bytes of a fixed pattern (Content-Length)
          GET  /chunked?n=N&k=K  N bytes in K chunks (Transfer-Encoding: chunked)
          GET  /slow?ms=M     answers after M milliseconds
          GET  /status?code=C an empty response with status C
          anything else       404
Prints "listening PORT" once bound. Exits on SIGTERM or when stdin is closed.
"""
import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern(n):
    out = bytearray()
    while len(out) < n:
        out += PATTERN[:n - len(out)]
    return bytes(out)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        while True:
            try:
                b = s.recv(65536)
            except OSError:
                return
            if not b:
                break
            try:
                s.sendall(b)
            except OSError:
                return
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "km-e2e"

    def log_message(self, *a):
        pass

    def _send(self, code, body=b"", ctype="application/octet-stream", extra=None):
        self.send_response(code)
        self.send_header("X-Server", self.server.name)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(16)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/echo":
            doc = {"server": self.server.name, "method": self.command, "path": self.path,
                   "headers": {k.lower(): v for k, v in self.headers.items()}}
            self._send(200, json.dumps(doc).encode(), "application/json")
        elif u.path == "/bytes":
            self._send(200, pattern(int(q.get("n", "0"))))
        elif u.path == "/chunked":
            n, k = int(q.get("n", "0")), max(1, int(q.get("k", "1")))
            body = pattern(n)
            self.send_response(200)
            self.send_header("X-Server", self.server.name)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = max(1, (n + k - 1) // k)
            for i in range(0, n, step):
                part = body[i:i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif u.path == "/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000.0)
            self._send(200, b"slow done", "text/plain")
        elif u.path == "/status":
            self._send(int(q.get("code", "200")))
        else:
            self._send(404, b"not found", "text/plain")

    do_HEAD = do_GET

    def do_POST(self):
        body = self._body()
        if urllib.parse.urlsplit(self.path).path == "/echo":
            self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")
        else:
            self._send(404, b"not found", "text/plain")

    do_PUT = do_POST


class HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    try:
        if mode == "tcp-echo":
            srv = TcpServer(("127.0.0.1", port), EchoHandler)
        elif mode == "http":
            srv = HttpServer(("127.0.0.1", port), HttpHandler)
            srv.name = sys.argv[3] if len(sys.argv) > 3 else "http"
        else:
            sys.exit("unknown mode %s" % mode)
    except OSError as e:
        print("cannot bind 127.0.0.1:%d: %s" % (port, e), flush=True)
        sys.exit(1)

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    if not os.environ.get("KM_BACKEND_IGNORE_STDIN"):
        def watch_stdin():
            try:
                sys.stdin.read()
            except (OSError, ValueError):
                pass
            stop()
        threading.Thread(target=watch_stdin, daemon=True).start()
    print("listening", port, flush=True)
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
