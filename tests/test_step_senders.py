"""Steps that only believe Knative (knative/overlays/oidc): with IMAGEREC_OIDC_* set, a step
answers a delivery only when its bearer token is one the cluster's issuer signed, for the step's
audience, not expired, to a sender the manifests name; anything else is a 401 and changes nothing.

The tokens here are shaped as Kubernetes' TokenRequest issues them (knative/eventing
pkg/auth/token_provider.go asks for one audience and an hour): RS256, a `kid` naming a key of the
issuer's JWKS, `iss`, `sub` = system:serviceaccount:<ns>:<name>, `aud` = [audience], `iat`,
`nbf`, `exp`. They are signed with an RSA key the tests make; the step reads the public half
from a JWKS file or over HTTP, as it reads the API server's /openid/v1/jwks in a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from local_http import serving
from pipeline import event_for, step_app
from test_store_results import dump, labelled
from test_store_results import upload as upload  # noqa: F401 (fixture)

from imagerec import senders
from imagerec.events import LABELLED, encode

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "serving.knative.dev/service/imagerec/store-results"
SENDER = "system:serviceaccount:imagerec:on-rejected-oidc-eventing.knative.dev-trigger"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ISSUER_KEY = new_key()
OTHER_KEY = new_key()


def jwks(*pairs: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    keys = []
    for kid, key in pairs:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": keys}


def token(
    key: rsa.RSAPrivateKey = ISSUER_KEY, kid: str = "k1", lifetime: float = 3600, **claims: Any
) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "sub": SENDER,
        "aud": [AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(("k1", ISSUER_KEY))))
    return path


@pytest.fixture
def oidc_env(keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment knative/components/oidc gives store-results."""
    monkeypatch.setenv("IMAGEREC_OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("IMAGEREC_OIDC_SENDERS", f"{SENDER} system:serviceaccount:imagerec:other")
    monkeypatch.setenv("IMAGEREC_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("IMAGEREC_OIDC_JWKS", str(keys_file))


def deliver(client, data: dict[str, Any], authorization: str | None):
    headers, body = encode(event_for(data, LABELLED))
    if authorization is not None:
        headers["Authorization"] = authorization
    return client.post("/", data=body, headers=headers)


BAD = {
    "none": None,
    "empty": "Bearer ",
    "not bearer": "Basic dXNlcjpwYXNz",
    "not a jwt": "Bearer not-a-token",
    "expired": f"Bearer {token(lifetime=-60)}",
    "wrong audience": f"Bearer {token(aud=['serving.knative.dev/service/imagerec/web'])}",
    "wrong subject": f"Bearer {token(sub='system:serviceaccount:imagerec:default')}",
    "wrong issuer": f"Bearer {token(iss='https://evil.example')}",
    "bad signature": f"Bearer {token(key=OTHER_KEY)}",
    "unknown key": f"Bearer {token(key=OTHER_KEY, kid='k2')}",
    "no subject": f"Bearer {token(sub=None)}",
    "unsigned": "Bearer "
    + jwt.encode({"iss": ISSUER, "sub": SENDER, "aud": AUDIENCE, "exp": 2**40}, None, "none"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_delivery_without_a_believable_token_is_refused_and_stores_nothing(
    case: str, configured, oidc_env, upload
) -> None:
    client = step_app("store_results").test_client()
    before = dump(configured, upload["imageId"])
    response = deliver(client, labelled(upload), BAD[case])
    assert response.status_code == 401, (case, response.get_data(as_text=True))
    assert response.get_data(as_text=True).startswith("unauthenticated:")
    assert dump(configured, upload["imageId"]) == before


def test_a_delivery_with_the_issuers_token_for_a_named_sender_is_handled(
    configured, oidc_env, upload
) -> None:
    client = step_app("store_results").test_client()
    response = deliver(client, labelled(upload), f"Bearer {token()}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert dump(configured, upload["imageId"])["status"] == "done"


def test_the_readiness_probe_needs_no_token(configured, oidc_env) -> None:
    assert step_app("store_results").test_client().get("/").status_code == 200


def test_without_the_overlay_every_sender_is_believed_as_before(configured, upload) -> None:
    assert senders.sender_check({}) is None
    client = step_app("store_results").test_client()
    assert deliver(client, labelled(upload), None).status_code == 200


@pytest.mark.parametrize(
    "env, says",
    [
        ({"IMAGEREC_OIDC_AUDIENCE": AUDIENCE}, "names no one"),
        ({"IMAGEREC_OIDC_AUDIENCE": AUDIENCE, "IMAGEREC_OIDC_SENDERS": "on-rejected"}, "not "),
    ],
)
def test_a_half_configured_check_stops_the_step(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        senders.sender_check(env)


# --- the issuer's keys over HTTP ------------------------------------------------------------------


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """Serves state["jwks"] (503 while it is None) and counts the requests."""
    state: dict[str, Any] = {"jwks": jwks(("k1", ISSUER_KEY)), "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["requests"] += 1
            body = json.dumps(state["jwks"]).encode()
            self.send_response(200 if state["jwks"] is not None else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url + "/openid/v1/jwks", state


def check_with(url: str) -> senders.SenderCheck:
    check = senders.sender_check(
        {
            "IMAGEREC_OIDC_AUDIENCE": AUDIENCE,
            "IMAGEREC_OIDC_SENDERS": SENDER,
            "IMAGEREC_OIDC_ISSUER": ISSUER,
            "IMAGEREC_OIDC_JWKS": url,
        }
    )
    assert check is not None
    return check


def test_keys_are_read_once_and_again_when_the_issuer_rotates_them(
    jwks_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = jwks_server
    check = check_with(url)
    for _ in range(3):
        assert check.sender_of(f"Bearer {token()}") == SENDER
    assert state["requests"] == 1
    # A rotation: the issuer now signs with k2. Within REFETCH_AFTER_SECONDS of the last read a
    # token naming it is put off (503: Knative retries), not refused, and the keys are not read.
    state["jwks"] = jwks(("k1", ISSUER_KEY), ("k2", OTHER_KEY))
    with pytest.raises(senders.KeysUnavailable):
        check.sender_of(f"Bearer {token(key=OTHER_KEY, kid='k2')}")
    assert state["requests"] == 1
    monkeypatch.setattr(senders, "REFETCH_AFTER_SECONDS", 0.0)
    assert check.sender_of(f"Bearer {token(key=OTHER_KEY, kid='k2')}") == SENDER
    assert state["requests"] == 2


def test_unreadable_keys_are_a_503_not_an_admission(
    jwks_server, configured, upload, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = jwks_server
    state["jwks"] = None
    monkeypatch.setenv("IMAGEREC_OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("IMAGEREC_OIDC_SENDERS", SENDER)
    monkeypatch.setenv("IMAGEREC_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("IMAGEREC_OIDC_JWKS", url)
    client = step_app("store_results").test_client()
    before = dump(configured, upload["imageId"])
    response = deliver(client, labelled(upload), f"Bearer {token()}")
    assert response.status_code == 503, response.get_data(as_text=True)
    assert dump(configured, upload["imageId"]) == before


def test_a_key_the_issuer_does_not_publish_is_refused_once_the_keys_are_read_again(
    jwks_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = jwks_server
    check = check_with(url)
    assert check.sender_of(f"Bearer {token()}") == SENDER
    monkeypatch.setattr(senders, "REFETCH_AFTER_SECONDS", 0.0)
    with pytest.raises(senders.Unauthenticated, match="does not publish"):
        check.sender_of(f"Bearer {token(key=OTHER_KEY, kid='made-up')}")
    assert state["requests"] == 2
