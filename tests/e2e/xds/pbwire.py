"""Minimal protobuf wire format and raw ADS clients for the xDS end-to-end tests.

No generated code: messages are built and read field by field (field numbers from Envoy's
envoy/service/discovery/v3/discovery.proto, as in proto/), and gRPC streams carry raw bytes
(python grpcio with identity serializers), so a test can also send bytes that are not valid
protobuf at all.
"""
import queue
import threading

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ADS_DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


# ---- encoding ----

def varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(field, n):
    return varint(field << 3) + varint(n)


def f_bytes(field, b):
    """A length-delimited field; always written, even when empty (presence of a message)."""
    return varint((field << 3) | 2) + varint(len(b)) + b


def f_str(field, s):
    return f_bytes(field, s.encode("utf-8") if isinstance(s, str) else s)


def f_opt_str(field, s):
    """A proto3 string field: omitted when empty."""
    return f_str(field, s) if s else b""


# ---- decoding ----

class DecodeError(ValueError):
    pass


def _read_varint(b, i):
    n = shift = 0
    while True:
        if i >= len(b):
            raise DecodeError("truncated varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i
        if shift > 63:
            raise DecodeError("varint too long")


def parse(b):
    """[(field, wire type, value)], value an int (varint/fixed) or bytes (length-delimited)."""
    out, i = [], 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(b, i)
        elif wt == 1:
            v, i = int.from_bytes(b[i:i + 8], "little"), i + 8
        elif wt == 5:
            v, i = int.from_bytes(b[i:i + 4], "little"), i + 4
        elif wt == 2:
            ln, i = _read_varint(b, i)
            if i + ln > len(b):
                raise DecodeError("truncated field %d" % field)
            v, i = bytes(b[i:i + ln]), i + ln
        else:
            raise DecodeError("wire type %d" % wt)
        if i > len(b):
            raise DecodeError("truncated")
        out.append((field, wt, v))
    return out


def fields(b):
    """{field: [values]}"""
    d = {}
    for f, _, v in parse(b):
        d.setdefault(f, []).append(v)
    return d


def first_str(d, field, default=""):
    v = d.get(field)
    return v[-1].decode("utf-8") if v else default


def decode_strings(b):
    """{field: str} of the length-delimited fields of a flat message (EchoRequest/Response)."""
    return {f: v.decode("utf-8", "replace") for f, wt, v in parse(b) if wt == 2}


# ---- xDS messages ----

def node(node_id, cluster="test", user_agent="kuma-c-e2e raw"):
    # Node: id = 1, cluster = 2, locality = 4, user_agent_name = 6
    return f_str(1, node_id) + f_str(2, cluster) + f_bytes(4, b"") + f_str(6, user_agent)


def status(code, message):
    # google.rpc.Status: code = 1, message = 2
    return f_varint(1, code) + f_str(2, message)


def discovery_request(type_url, names=(), version="", nonce="", node_id=None, error=None):
    # DiscoveryRequest: version_info 1, node 2, resource_names 3, type_url 4, response_nonce 5,
    # error_detail 6
    b = f_opt_str(1, version)
    if node_id is not None:
        b += f_bytes(2, node(node_id))
    for n in names:
        b += f_str(3, n)
    b += f_str(4, type_url) + f_opt_str(5, nonce)
    if error is not None:
        b += f_bytes(6, status(*error))
    return b


def delta_request(type_url, subscribe=(), unsubscribe=(), nonce="", node_id=None, initial=None,
                  error=None):
    # DeltaDiscoveryRequest: node 1, type_url 2, subscribe 3, unsubscribe 4,
    # initial_resource_versions 5 (map entry: key 1, value 2), response_nonce 6, error_detail 7
    b = b""
    if node_id is not None:
        b += f_bytes(1, node(node_id))
    b += f_str(2, type_url)
    for n in subscribe:
        b += f_str(3, n)
    for n in unsubscribe:
        b += f_str(4, n)
    for k, v in (initial or {}).items():
        b += f_bytes(5, f_str(1, k) + f_str(2, v))
    b += f_opt_str(6, nonce)
    if error is not None:
        b += f_bytes(7, status(*error))
    return b


def resource_name(value):
    """Name of a Listener / RouteConfiguration / Cluster (name = 1) or a ClusterLoadAssignment
    (cluster_name = 1)."""
    return first_str(fields(value), 1)


def parse_any(b):
    d = fields(b)
    return first_str(d, 1), (d.get(2) or [b""])[-1]


def parse_discovery_response(b):
    # DiscoveryResponse: version_info 1, resources 2 (Any), type_url 4, nonce 5
    d = fields(b)
    res = []
    for a in d.get(2, []):
        t, v = parse_any(a)
        res.append({"type_url": t, "value": v, "name": resource_name(v)})
    return {"version": first_str(d, 1), "type_url": first_str(d, 4), "nonce": first_str(d, 5),
            "resources": res}


def parse_delta_response(b):
    # DeltaDiscoveryResponse: system_version_info 1, resources 2 (Resource: version 1,
    # resource 2 (Any), name 3), type_url 4, nonce 5, removed_resources 6
    d = fields(b)
    res = []
    for r in d.get(2, []):
        rd = fields(r)
        t, v = parse_any((rd.get(2) or [b""])[-1])
        res.append({"name": first_str(rd, 3), "version": first_str(rd, 1), "type_url": t,
                    "value": v})
    return {"version": first_str(d, 1), "type_url": first_str(d, 4), "nonce": first_str(d, 5),
            "resources": res, "removed": [x.decode() for x in d.get(6, [])]}


# ---- raw gRPC streams ----

class StreamEnded(Exception):
    pass


class RawStream:
    """A bidirectional gRPC stream of raw bytes (python grpcio, identity serializers).
    send(bytes); recv(timeout) -> bytes; end(timeout) -> (status code name, details)."""

    def __init__(self, target, method=ADS_SOTW, timeout=60.0, options=None):
        import grpc
        self._grpc = grpc
        self.channel = grpc.insecure_channel(target, options=options or [])
        self._out = queue.Queue()
        self._in = queue.Queue()
        self.code = None
        self.details = None
        self._done = threading.Event()
        mc = self.channel.stream_stream(method)
        self.call = mc(iter(self._out.get, None), timeout=timeout)
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    def _reader(self):
        try:
            for m in self.call:
                self._in.put(m)
            self.code, self.details = "OK", ""
        except self._grpc.RpcError as e:
            self.code, self.details = e.code().name, e.details() or ""
        finally:
            self._done.set()
            self._in.put(None)

    def send(self, b):
        self._out.put(b)

    def recv(self, timeout=10.0):
        try:
            m = self._in.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message within %.1f s" % timeout) from None
        if m is None:
            self._in.put(None)
            raise StreamEnded("%s: %s" % (self.code, self.details))
        return m

    def try_recv(self, timeout):
        """A message, or None when nothing arrives within <timeout>."""
        try:
            return self.recv(timeout)
        except TimeoutError:
            return None

    def end(self, timeout=10.0):
        """Waits for the end of the stream; (code name, details), (None, None) on timeout."""
        self._done.wait(timeout)
        return self.code, self.details

    @property
    def ended(self):
        return self._done.is_set()

    def close(self):
        self._out.put(None)
        try:
            self.call.cancel()
        except Exception:  # noqa: BLE001
            pass
        self.channel.close()


class SotwClient:
    """A scripted state-of-the-world ADS client: subscribe(type, names) -> response dict,
    acked automatically unless ack=False."""

    def __init__(self, target, node_id, timeout=60.0):
        self.s = RawStream(target, ADS_SOTW, timeout)
        self.node_id = node_id
        self.sent_node = False
        self.last = {}

    def _node(self):
        if self.sent_node:
            return None
        self.sent_node = True
        return self.node_id

    def request(self, type_url, names=(), version="", nonce="", error=None):
        self.s.send(discovery_request(type_url, names, version, nonce, self._node(), error))

    def recv(self, timeout=10.0):
        r = parse_discovery_response(self.s.recv(timeout))
        self.last[r["type_url"]] = r
        return r

    def recv_type(self, type_url, timeout=10.0):
        import time
        end = time.monotonic() + timeout
        while True:
            r = self.recv(max(0.01, end - time.monotonic()))
            if r["type_url"] == type_url:
                return r

    def ack(self, r, names=()):
        self.request(r["type_url"], names, r["version"], r["nonce"])

    def subscribe(self, type_url, names=(), ack=True, timeout=10.0):
        self.request(type_url, names)
        r = self.recv_type(type_url, timeout)
        if ack:
            self.ack(r, names)
        return r

    def close(self):
        self.s.close()


class DeltaClient:
    def __init__(self, target, node_id, timeout=60.0):
        self.s = RawStream(target, ADS_DELTA, timeout)
        self.node_id = node_id
        self.sent_node = False

    def request(self, type_url, subscribe=(), unsubscribe=(), nonce="", initial=None,
                error=None):
        nid = None if self.sent_node else self.node_id
        self.sent_node = True
        self.s.send(delta_request(type_url, subscribe, unsubscribe, nonce, nid, initial, error))

    def recv(self, timeout=10.0):
        return parse_delta_response(self.s.recv(timeout))

    def ack(self, r):
        self.request(r["type_url"], nonce=r["nonce"])

    def close(self):
        self.s.close()
