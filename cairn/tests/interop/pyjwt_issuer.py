"""An independent token issuer for Cairn's interoperability test.

Generates an RSA key with `cryptography`, serves its JWKS on loopback, mints
tokens with PyJWT and prints one JSON line: the issuer, the JWKS URL and the
tokens. Then serves until killed.
"""

import http.server
import json
import sys
import threading
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
public_jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
public_jwk.update({"kid": "pyjwt-1", "alg": "RS256", "use": "sig"})
jwks = json.dumps({"keys": [public_jwk]}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/jwks":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(jwks)))
        self.end_headers()
        self.wfile.write(jwks)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
port = server.server_address[1]
issuer = f"http://127.0.0.1:{port}/realms/acme-ext"
now = int(time.time())


def mint(**overrides):
    claims = {
        "iss": issuer,
        "sub": "pyjwt-user",
        "aud": ["account", "cairn"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "preferred_username": "ext-ada",
        "realm_access": {"roles": ["operator"]},
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "pyjwt-1"})


tokens = {
    "valid": mint(),
    "expired": mint(exp=now - 600, iat=now - 1200, nbf=now - 1200),
    "wrong_audience": mint(aud="billing"),
    "wrong_tenant": mint(tenant="globex"),
    "viewer": mint(realm_access={"roles": ["viewer"]}),
}
threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({"issuer": issuer, "jwks": f"http://127.0.0.1:{port}/jwks", "tokens": tokens}))
sys.stdout.flush()
threading.Event().wait()
