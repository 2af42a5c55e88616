"""End-to-end tests of tokens and API server access control with a real kuma-cp and kumactl.

- kumactl generate dataplane-token / user-token / signing-key against the REST API;
- the token's signature checks out with the signing key stored in the mesh's Secret;
- requests that are not direct loopback calls are read-only, Secrets need an admin, an admin
  user token unlocks writes, a bad token is a 401.

Kuma treats every loopback address (127.0.0.0/8, ::1) as localhost, but only for direct calls:
a Host header that is not localhost, or a proxy header (X-Forwarded-For, ...) makes the request
a remote one. When the machine has a non-loopback address the tests also call the API over it.
"""

import base64
import http.client
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

import helpers


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def decode(token):
    h, c, _ = token.split(".")
    return b64url_json(h), b64url_json(c)


def request(cp, method, path, body=None, headers=None, host=None, source=None, target=None):
    """One request to the API server of <cp>. <host> overrides the Host header, <source> binds
    the client socket, <target> is the address to connect to (default 127.0.0.1).
    Returns (status, headers, parsed JSON or text)."""
    port = cp.ports["api"]
    conn = http.client.HTTPConnection(target or "127.0.0.1", port, timeout=10,
                                      source_address=(source, 0) if source else None)
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        hdrs["Content-Type"] = "application/json"
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or "%s:%d" % (target or "127.0.0.1", port))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        raw = data.encode() if isinstance(data, str) else data
        if raw is not None:
            conn.putheader("Content-Length", str(len(raw)))
        conn.endheaders(raw)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        ctype = resp.getheader("Content-Type") or ""
        parsed = json.loads(text) if "json" in ctype and text.strip() else text
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed
    finally:
        conn.close()


REMOTE = {"host": "kuma-cp.example.com"}  # not a loopback Host: a remote request, as Kuma sees it


def external_ip():
    """A non-loopback IPv4 address of this machine, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None


class Kumactl:
    def __init__(self, home, api):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.binary = helpers.binary("kumactl").resolve()
        if not os.access(self.binary, os.X_OK):
            pytest.fail("%s is missing: build it first" % self.binary, pytrace=False)
        self("config", "control-planes", "add", "--name", "e2e", "--address", api, check=0)

    def __call__(self, *args, check=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        r = subprocess.run([str(self.binary)] + [str(a) for a in args], env=env,
                           cwd=str(self.home), capture_output=True, text=True, timeout=30)
        if check is not None:
            assert r.returncode == check, "kumactl %s -> %d\nstdout:\n%s\nstderr:\n%s" % (
                " ".join(map(str, args)), r.returncode, r.stdout, r.stderr)
        return r


@pytest.fixture
def cp(kuma_cp):
    return kuma_cp()


@pytest.fixture
def ctl(cp, tmp_path):
    return Kumactl(tmp_path / "home", cp.api)


def signing_key_pem(cp, mesh="default", serial=1):
    st, _, body = request(cp, "GET", "/meshes/%s/secrets/dataplane-token-signing-key-%s-%d"
                          % (mesh, mesh, serial))
    assert st == 200, body
    return base64.b64decode(body["data"])


def test_generate_dataplane_token(cp, ctl):
    r = ctl("generate", "dataplane-token", "--name", "dp-1", "--mesh", "default",
            "--tag", "kuma.io/service=web,web-api", "--tag", "team=a", "--proxy-type",
            "dataplane", "--valid-for", "24h", check=0)
    token = r.stdout
    assert not token.endswith("\n")  # kumactl prints the bare token
    header, claims = decode(token)
    assert header == {"alg": "RS256", "kid": "1", "typ": "JWT"}
    assert claims["Name"] == "dp-1"
    assert claims["Mesh"] == "default"
    assert claims["Tags"] == {"kuma.io/service": ["web", "web-api"], "team": ["a"]}
    assert claims["Type"] == "dataplane"
    assert claims["exp"] - claims["iat"] == 24 * 3600 + 5
    assert len(claims["jti"]) == 36

    # the signature checks out with the key kept in the mesh's Secret (independent check)
    crypto = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    pem = signing_key_pem(cp)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = crypto.load_pem_private_key(pem, password=None)
    assert key.key_size == 2048
    h, c, s = token.split(".")
    sig = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    key.public_key().verify(sig, ("%s.%s" % (h, c)).encode(), padding.PKCS1v15(),
                            hashes.SHA256())


def test_generate_dataplane_token_errors(cp, ctl):
    r = ctl("generate", "dataplane-token", "--name", "dp-1", check=1)
    assert 'required flag(s) "valid-for" not set' in r.stderr
    r = ctl("generate", "dataplane-token", "--mesh", "nope", "--valid-for", "1h", check=1)
    assert "Signing Key not found" in r.stderr
    assert "dataplane-token-signing-key-nope-1" in r.stderr
    r = ctl("generate", "dataplane-token", "--proxy-type", "sidecar", "--valid-for", "1h",
            check=1)
    assert "sidecar is not a valid proxy type" in r.stderr
    r = ctl("generate", "dataplane-token", "--valid-for", "soon", check=1)
    assert 'invalid duration "soon"' in r.stderr


def test_generate_user_token_and_signing_key(cp, ctl, tmp_path):
    r = ctl("generate", "user-token", "--name", "john", "--group", "team-a,team-b",
            "--group", "ops", "--valid-for", "1h", check=0)
    _, claims = decode(r.stdout)
    assert claims["Name"] == "john"
    assert claims["Groups"] == ["team-a", "team-b", "ops"]
    st, _, me = request(cp, "GET", "/who-am-i",
                        headers={"Authorization": "Bearer " + r.stdout}, **REMOTE)
    assert st == 200
    assert me == {"name": "john", "groups": ["team-a", "team-b", "ops",
                                             "mesh-system:authenticated"]}

    r = ctl("generate", "signing-key", "--format", "pem", check=0)
    assert r.stdout.startswith("-----BEGIN RSA PRIVATE KEY-----")
    r = ctl("generate", "signing-key", check=0)  # pem-base64 by default
    assert base64.b64decode(r.stdout).startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    ctl("generate", "signing-key", "--format", "der", check=1)

    # offline issuing with a key file; the key, stored as user-token-signing-key-2, makes the
    # token valid for the control plane
    key = tmp_path / "key.pem"
    key.write_text(ctl("generate", "signing-key", "--format", "pem", check=0).stdout)
    r = ctl("generate", "user-token", "--name", "offline", "--group", "mesh-system:admin",
            "--valid-for", "1h", "--signing-key-path", key, "--kid", "2", check=0)
    token = r.stdout
    assert decode(token)[0]["kid"] == "2"
    st, _, body = request(cp, "GET", "/who-am-i", headers={"Authorization": "Bearer " + token},
                          **REMOTE)
    assert st == 401, body
    st, _, body = request(cp, "PUT", "/global-secrets/user-token-signing-key-2",
                          {"type": "GlobalSecret", "name": "user-token-signing-key-2",
                           "data": base64.b64encode(key.read_bytes()).decode()})
    assert st == 201, body
    st, _, me = request(cp, "GET", "/who-am-i", headers={"Authorization": "Bearer " + token},
                        **REMOTE)
    assert st == 200 and me["name"] == "offline"
    ctl("generate", "user-token", "--name", "x", "--valid-for", "1h", "--kid", "2", check=1)


def remote_checks(cp, admin_token, **where):
    mesh = {"type": "Mesh", "name": "remote-mesh"}
    # anonymous: reads work, writes and secrets are refused
    st, _, body = request(cp, "GET", "/meshes", **where)
    assert st == 200, body
    st, _, me = request(cp, "GET", "/who-am-i", **where)
    assert me == {"name": "mesh-system:anonymous", "groups": ["mesh-system:unauthenticated"]}
    st, _, body = request(cp, "PUT", "/meshes/remote-mesh", mesh, **where)
    assert st == 403, body
    assert body["title"] == "Access Denied"
    assert body["type"] == "/std-errors"
    st, _, body = request(cp, "DELETE", "/meshes/default", **where)
    assert st == 403, body
    st, _, body = request(cp, "GET", "/meshes/default/secrets", **where)
    assert st == 403, body
    assert body["detail"] == ('user "mesh-system:anonymous/mesh-system:unauthenticated" cannot '
                              'access the resource of type "Secret"')
    st, _, body = request(cp, "GET", "/global-secrets/admin-user-token", **where)
    assert st == 403, body
    st, _, body = request(cp, "POST", "/tokens/dataplane", {"mesh": "default"}, **where)
    assert st == 403, body
    assert "cannot access generate dataplane token" in body["detail"]
    st, _, body = request(cp, "POST", "/tokens/user", {"name": "x", "validFor": "1h"}, **where)
    assert st == 403, body
    # GET / needs no authentication at all, even with a bad token
    st, _, body = request(cp, "GET", "/", headers={"Authorization": "Bearer bad"}, **where)
    assert st == 200, body

    # an invalid token: 401 on every other path
    st, _, body = request(cp, "GET", "/meshes", headers={"Authorization": "Bearer x.y.z"},
                          **where)
    assert st == 401, body
    assert body["title"] == "Invalid authentication data"
    assert body["detail"] == "Unauthenticated"

    # the admin token unlocks writes and secrets
    auth = {"Authorization": "Bearer " + admin_token}
    st, _, body = request(cp, "PUT", "/meshes/remote-mesh", mesh, headers=auth, **where)
    assert st == 201, body
    st, _, body = request(cp, "GET", "/meshes/default/secrets", headers=auth, **where)
    assert st == 200, body
    st, _, body = request(cp, "DELETE", "/meshes/remote-mesh", headers=auth, **where)
    assert st == 200, body
    st, hdrs, token = request(cp, "POST", "/tokens/dataplane",
                              {"mesh": "default", "name": "dp-9", "validFor": "1h"},
                              headers=auth, **where)
    assert st == 200, token
    assert hdrs["content-type"] == "text/plain"
    assert decode(token)[1]["Name"] == "dp-9"

    # a non-admin user token: authenticated but still read-only
    st, _, user_token = request(cp, "POST", "/tokens/user",
                                {"name": "dev", "groups": ["devs"], "validFor": "1h"})
    assert st == 200
    dev = {"Authorization": "Bearer " + user_token}
    st, _, body = request(cp, "GET", "/meshes", headers=dev, **where)
    assert st == 200
    st, _, body = request(cp, "PUT", "/meshes/remote-mesh", mesh, headers=dev, **where)
    assert st == 403
    assert 'user "dev/devs,mesh-system:authenticated"' in body["detail"]


def admin_token(cp):
    """The admin user token from GlobalSecret admin-user-token (read from localhost), or one
    issued through the API when the control plane does not bootstrap it (yet)."""
    st, _, body = request(cp, "GET", "/global-secrets/admin-user-token")
    if st == 200:
        return base64.b64decode(body["data"]).decode()
    st, _, token = request(cp, "POST", "/tokens/user",
                           {"name": "admin", "groups": ["mesh-system:admin"], "validFor": "1h"})
    assert st == 200, token
    return token


def test_remote_requests_by_host_header(cp):
    remote_checks(cp, admin_token(cp), **REMOTE)


def test_remote_requests_with_proxy_header(cp):
    st, _, me = request(cp, "GET", "/who-am-i", headers={"X-Forwarded-For": "203.0.113.9"})
    assert me["name"] == "mesh-system:anonymous"
    st, _, body = request(cp, "PUT", "/meshes/m2", {"type": "Mesh", "name": "m2"},
                          headers={"X-Forwarded-For": "203.0.113.9"})
    assert st == 403, body
    # a browser page of another origin on this machine
    st, _, body = request(cp, "PUT", "/meshes/m2", {"type": "Mesh", "name": "m2"},
                          headers={"Origin": "http://evil.example.com"})
    assert st == 403, body


def test_localhost_is_admin(cp):
    st, _, me = request(cp, "GET", "/who-am-i")
    assert me == {"name": "mesh-system:admin",
                  "groups": ["mesh-system:admin", "mesh-system:authenticated"]}
    st, _, me = request(cp, "GET", "/who-am-i", host="localhost")
    assert me["name"] == "mesh-system:admin"
    # every 127/8 address is loopback for Kuma (Go's IP.IsLoopback)
    st, _, me = request(cp, "GET", "/who-am-i", source="127.0.0.2")
    assert me["name"] == "mesh-system:admin"
    # localhost ignores the token altogether, as Kuma's (the user is already set)
    st, _, me = request(cp, "GET", "/who-am-i", headers={"Authorization": "Bearer bad"})
    assert st == 200 and me["name"] == "mesh-system:admin"


def test_remote_requests_over_external_address(kuma_cp):
    ip = external_ip()
    if not ip:
        pytest.skip("this machine has no non-loopback IPv4 address")
    cp = kuma_cp(env={"KUMA_API_SERVER_HTTP_INTERFACE": "0.0.0.0"})
    remote_checks(cp, admin_token(cp), target=ip)
    # even with a Host of localhost a non-loopback peer is not admin
    st, _, me = request(cp, "GET", "/who-am-i", target=ip, host="localhost")
    assert me["name"] == "mesh-system:anonymous"
