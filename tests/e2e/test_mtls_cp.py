"""mTLS in kuma-cp's xDS output, end to end with the real kuma-cp and a raw delta ADS client
(tests/e2e/xds/pbwire.py): enabling a builtin CA on mesh default creates the CA Secrets and
pushes the proxy's identity and the mesh CA over SDS, with TLS transport sockets on inbound
listeners and outbound clusters; the identity certificate carries Kuma's URI SANs and is
renewed at 4/5 of a short lifetime; the DataplaneInsight shows it; disabling mTLS removes the
secrets and the transport sockets."""
import base64
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "xds"))

import harness  # noqa: E402
import pbwire as pb  # noqa: E402

SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ID = "identity_cert:secret:default"
CA = "mesh_ca:secret:default"
TLS_SOCKET = b"envoy.transport_sockets.tls"


def mesh(enabled=True, expiration=None, backend="ca-1", mode=None):
    b = {"name": backend, "type": "builtin"}
    if expiration:
        b["dpCert"] = {"rotation": {"expiration": expiration}}
    if mode:
        b["mode"] = mode
    m = {"type": "Mesh", "name": "default"}
    if enabled:
        m["mtls"] = {"enabledBackend": backend, "backends": [b]}
    return m


def put_mesh(x, body):
    st, js = x.cp.put("/meshes/default", body)
    assert st in (200, 201), "PUT mesh -> %s %s" % (st, js)


def secret_pem(value, field):
    """The PEM in a packed Secret: identity (tls_certificate 2 -> certificate_chain 1) or CA
    (validation_context 4 -> trusted_ca 1); DataSource.inline_bytes is field 2."""
    d = pb.fields(value)
    outer = 2 if field == "cert" else 4
    inner = pb.fields(d[outer][-1])
    ds = pb.fields(inner[1][-1])
    return ds[2][-1].decode()


def x509_text(pem, tmp, name):
    p = Path(tmp) / name
    p.write_text(pem)
    r = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(p)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout


def x509_serial(pem, tmp, name):
    p = Path(tmp) / name
    p.write_text(pem)
    r = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(p)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def verifies(cert, ca, tmp):
    (Path(tmp) / "v-ca.pem").write_text(ca)
    (Path(tmp) / "v-cert.pem").write_text(cert)
    r = subprocess.run(["openssl", "verify", "-CAfile", str(Path(tmp) / "v-ca.pem"),
                        str(Path(tmp) / "v-cert.pem")], capture_output=True, timeout=20)
    return r.returncode == 0


class State:
    """What a delta client holds: {type: {name: value}}, updated by each response (ACKed)."""

    def __init__(self, client):
        self.c = client
        self.held = {}
        self.log = []  # (monotonic time, type, names updated, names removed)

    def pump(self, timeout):
        end = time.monotonic() + timeout
        got = False
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return got
            try:
                r = self.c.recv(left)
            except TimeoutError:
                return got
            self.c.ack(r)
            h = self.held.setdefault(r["type_url"], {})
            for res in r["resources"]:
                h[res["name"]] = res["value"]
            for n in r["removed"]:
                h.pop(n, None)
            self.log.append((time.monotonic(), r["type_url"],
                             [res["name"] for res in r["resources"]], list(r["removed"])))
            got = True

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        while True:
            if pred(self):
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.5))

    def get(self, t):
        return self.held.get(t, {})


def test_mtls_builtin_ca_secrets_rotation_and_disable(xds, free_port, tmp_path):
    x = xds()
    # the proxy: an inbound of service "web" and an outbound to "backend"
    x.put_dp("backend-1", port=free_port(), service="backend", protocol="http")
    web = harness.echo_dataplane("web-1", free_port(), service="web", protocol="http")
    web["networking"]["inbound"][0]["tags"]["version"] = "v1"
    web["networking"]["outbound"] = [{"port": free_port(), "tags": {"kuma.io/service": "backend"}}]
    x.put_dp("web-1", body=web)

    c = pb.DeltaClient(x.target(), "default.web-1")
    s = State(c)
    try:
        c.request(pb.LDS)
        c.request(pb.CDS)
        c.request(SDS, subscribe=(ID, CA))
        assert s.wait(lambda s: s.get(pb.LDS) and s.get(pb.CDS), 10), s.log
        # no mTLS yet: no secrets, plaintext
        s.pump(0.5)
        assert not s.get(SDS), s.log
        assert all(TLS_SOCKET not in v for v in s.get(pb.LDS).values())
        assert all(TLS_SOCKET not in v for v in s.get(pb.CDS).values())

        # enable mTLS (builtin CA, 10 s certificates)
        t_on = time.monotonic()
        put_mesh(x, mesh(expiration="10s"))
        assert s.wait(lambda s: ID in s.get(SDS) and CA in s.get(SDS), 10), \
            (s.log, x.cp.logs[-3000:])
        on_after = time.monotonic() - t_on
        assert on_after < 5, "secrets took %.1f s" % on_after
        assert s.wait(lambda s: TLS_SOCKET in s.get(pb.CDS).get("backend", b"") and
                      any(n.startswith("inbound:") and TLS_SOCKET in v
                          for n, v in s.get(pb.LDS).items()), 5), s.log
        assert b"backend{mesh=default}" in s.get(pb.CDS)["backend"]  # SNI
        assert b"spiffe://default/backend" in s.get(pb.CDS)["backend"]

        # the identity certificate: Kuma's URI SANs, signed by the mesh CA
        cert = secret_pem(s.get(SDS)[ID], "cert")
        text = x509_text(cert, tmp_path, "id1.pem")
        assert "URI:spiffe://default/web" in text, text
        assert "URI:kuma://kuma.io/service/web" in text, text
        assert "URI:kuma://version/v1" in text, text
        assert "TLS Web Server Authentication" in text and \
            "TLS Web Client Authentication" in text, text
        ca_pem = secret_pem(s.get(SDS)[CA], "ca")
        ca_text = x509_text(ca_pem, tmp_path, "ca.pem")
        assert "CA:TRUE" in ca_text and "URI:spiffe://default" in ca_text, ca_text
        r = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
                            str(tmp_path / "id1.pem")], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr

        # the CA is a Secret of the mesh, as Kuma stores it
        st, js = x.cp.get("/meshes/default/secrets/default.ca-builtin-cert-ca-1")
        assert st == 200, (st, js)
        assert base64.b64decode(js["data"]).decode() == ca_pem
        st, js = x.cp.get("/meshes/default/secrets/default.ca-builtin-key-ca-1")
        assert st == 200, (st, js)

        # DataplaneInsight.mTLS
        ins = harness.wait_for(lambda: (lambda i: i if i and i.get("mTLS") else None)(
            x.insight("web-1")), 5)
        assert ins, x.insight("web-1")
        m = ins["mTLS"]
        assert m["issuedBackend"] == "ca-1" and m["supportedBackends"] == ["ca-1"], m
        assert m["certificateRegenerations"] >= 1, m
        assert m["certificateExpirationTime"] and m["lastCertificateRegeneration"], m

        # rotation: 10 s certificates are renewed after 8 s; only SDS is pushed
        serial1 = x509_serial(cert, tmp_path, "s1.pem")
        n_log = len(s.log)
        t_rot = time.monotonic()
        assert s.wait(lambda s: x509_serial(secret_pem(s.get(SDS)[ID], "cert"), tmp_path,
                                            "s2.pem") != serial1, 14), s.log[n_log:]
        took = time.monotonic() - t_rot
        assert took < 12, "rotation took %.1f s" % took
        after = s.log[n_log:]
        assert all(t == SDS for _, t, _, _ in after), after
        assert all(names == [ID] for _, t, names, _ in after if names), after
        regs = harness.wait_for(
            lambda: (x.insight("web-1") or {}).get("mTLS", {}).get("certificateRegenerations", 0)
            >= 2, 5)
        assert regs, x.insight("web-1")

        # disable mTLS: the secrets go (delta removed_resources), so do the TLS sockets
        n_log = len(s.log)
        put_mesh(x, mesh(enabled=False))
        assert s.wait(lambda s: not s.get(SDS), 10), s.log[n_log:]
        removed = {n for _, t, _, rem in s.log[n_log:] if t == SDS for n in rem}
        assert removed == {ID, CA}, s.log[n_log:]
        assert s.wait(lambda s: all(TLS_SOCKET not in v for v in s.get(pb.LDS).values()) and
                      all(TLS_SOCKET not in v for v in s.get(pb.CDS).values()), 5), s.log
    finally:
        c.close()
    assert x.cp.running()


def test_mtls_permissive_and_backend_switch(xds, free_port, tmp_path):
    x = xds()
    x.put_dp("api-1", port=free_port(), service="api", protocol="tcp")
    put_mesh(x, mesh(mode="PERMISSIVE"))
    c = pb.DeltaClient(x.target(), "default.api-1")
    s = State(c)
    try:
        c.request(pb.LDS)
        c.request(SDS, subscribe=(ID, CA))
        assert s.wait(lambda s: ID in s.get(SDS) and CA in s.get(SDS) and s.get(pb.LDS), 10), \
            s.log
        inbound = [v for n, v in s.get(pb.LDS).items() if n.startswith("inbound:")]
        assert inbound and b"envoy.filters.listener.tls_inspector" in inbound[0]
        assert b"raw_buffer" in inbound[0] and TLS_SOCKET in inbound[0]
        ca1 = secret_pem(s.get(SDS)[CA], "ca")

        # switching to another builtin backend: a new root, a new identity from it
        n_log = len(s.log)
        put_mesh(x, mesh(backend="ca-2"))
        assert s.wait(lambda s: secret_pem(s.get(SDS)[CA], "ca") != ca1, 10), s.log[n_log:]
        ca2 = secret_pem(s.get(SDS)[CA], "ca")
        assert s.wait(lambda s: verifies(secret_pem(s.get(SDS)[ID], "cert"), ca2, tmp_path), 5), \
            s.log[n_log:]
        assert not verifies(secret_pem(s.get(SDS)[ID], "cert"), ca1, tmp_path)
        st, _ = x.cp.get("/meshes/default/secrets/default.ca-builtin-cert-ca-2")
        assert st == 200
        ins = harness.wait_for(lambda: (x.insight("api-1") or {}).get("mTLS", {}).get(
            "issuedBackend") == "ca-2", 5)
        assert ins, x.insight("api-1")
        # STRICT now: no plaintext chain
        assert s.wait(lambda s: all(b"raw_buffer" not in v for n, v in s.get(pb.LDS).items()
                                    if n.startswith("inbound:")), 5), s.log
    finally:
        c.close()
    assert x.cp.running()
