"""Which deliveries a step believes: with knative/overlays/oidc, only those carrying a token the
cluster issued, for this step's audience, to a sender the manifests name.

A step is a Knative Service, and Serving checks no tokens: any pod that reaches the networking
layer's internal gateway can POST to it (docs/knative.md §14). With Eventing's OIDC on, every
delivery to a Destination that names an `audience` carries `Authorization: Bearer <JWT>`
(knative/eventing pkg/kncloudevents/event_dispatcher.go `createRequest`): a Kubernetes
service-account token (TokenRequest, pkg/auth/token_provider.go) whose `aud` is that audience and
whose `sub` is `system:serviceaccount:<namespace>:<name>` of the sending object's OIDC service
account (pkg/auth/serviceaccount.go `GetOIDCServiceAccountNameForResource`: the Trigger's for
what the broker filter sends, the Subscription's for what a channel dispatcher sends). This
module checks that token the way the API server's own authenticator would: signature against
the issuer's published keys, issuer, audience, expiry, and then the subject against the list.

Configuration (the overlay sets it on each step; without IMAGEREC_OIDC_AUDIENCE every sender is
believed, as before):
    IMAGEREC_OIDC_AUDIENCE  the audience the manifests give this step's Destinations
    IMAGEREC_OIDC_SENDERS   the subjects that may call it, separated by spaces
    IMAGEREC_OIDC_ISSUER    the cluster's service-account issuer (default: kubeadm's and kind's)
    IMAGEREC_OIDC_JWKS      where its public keys are: a URL (default: the API server's
                            /openid/v1/jwks) or a file holding the JWKS
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
import requests

log = logging.getLogger("imagerec.senders")

# Every service account may read the issuer's keys from the API server: Kubernetes binds
# ClusterRole system:service-account-issuer-discovery to group system:serviceaccounts
# (kubernetes plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go). A step reads them with
# the token and CA its pod is given.
CLUSTER_JWKS = "https://kubernetes.default.svc/openid/v1/jwks"
POD_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# A token naming a key the step does not hold makes it read the keys again (the issuer rotated
# them), but not more often than this, so that made-up key ids cannot flood the API server.
# Within that time such a token gets a 503, not a 401: a real delivery signed with a brand-new
# key is then retried by Knative instead of dead-lettered.
REFETCH_AFTER_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
CLOCK_SKEW_SECONDS = 10
SENDER_PREFIX = "system:serviceaccount:"


class Unauthenticated(Exception):
    """No token, or one this step must not believe: 401, nothing read or written."""


class KeysUnavailable(Exception):
    """The issuer's keys could not be read: worth retrying later (503)."""


class IssuerKeys:
    """The issuer's public keys by key id, read on first use and again for an unknown key id."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, key_id: str | None) -> jwt.PyJWK:
        with self._lock:
            stale = self._fetched_at is None or (
                key_id not in self._keys
                and time.monotonic() - self._fetched_at >= REFETCH_AFTER_SECONDS
            )
            if stale:
                self._keys = self._fetch()
                self._fetched_at = time.monotonic()
            if key_id is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            if key_id in self._keys:
                return self._keys[key_id]
            if stale:
                raise Unauthenticated(f"signed with a key the issuer does not publish: {key_id!r}")
            raise KeysUnavailable(f"key {key_id!r} is not among the keys read lately")

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        try:
            document = json.loads(self._read())
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (
            OSError,
            ValueError,
            AttributeError,
            requests.RequestException,
            jwt.PyJWTError,
        ) as e:
            raise KeysUnavailable(f"cannot read the issuer's keys from {self.source}: {e}") from e
        return {k.key_id or "": k for k in keys if k.public_key_use in (None, "sig")}

    def _read(self) -> str:
        if "://" not in self.source:
            return Path(self.source).read_text()
        headers, verify = {}, True
        token, ca = POD_SERVICE_ACCOUNT / "token", POD_SERVICE_ACCOUNT / "ca.crt"
        if token.is_file():  # re-read each time: the kubelet renews it
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        if ca.is_file():
            verify = str(ca)
        response = requests.get(
            self.source, headers=headers, verify=verify, timeout=FETCH_TIMEOUT_SECONDS
        )
        response.raise_for_status()
        return response.text


@dataclass(frozen=True)
class SenderCheck:
    audience: str
    issuer: str
    senders: frozenset[str]
    keys: IssuerKeys

    def sender_of(self, authorization: str | None) -> str:
        """The subject of the request's token, if the step may believe it; else Unauthenticated."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("no bearer token")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.key(header.get("kid"))
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as e:
            raise Unauthenticated(f"token refused: {e}") from None
        if claims["sub"] not in self.senders:
            raise Unauthenticated(f"sender {claims['sub']} is not one of this step's")
        return claims["sub"]


def sender_check(env: Mapping[str, str] | None = None) -> SenderCheck | None:
    """The check IMAGEREC_OIDC_* configure, or None when IMAGEREC_OIDC_AUDIENCE is unset."""
    env = os.environ if env is None else env
    audience = env.get("IMAGEREC_OIDC_AUDIENCE", "").strip()
    if not audience:
        return None
    senders = frozenset(env.get("IMAGEREC_OIDC_SENDERS", "").split())
    if not senders:
        raise ValueError("IMAGEREC_OIDC_AUDIENCE is set but IMAGEREC_OIDC_SENDERS names no one")
    strange = sorted(s for s in senders if not s.startswith(SENDER_PREFIX))
    if strange:
        raise ValueError(f"IMAGEREC_OIDC_SENDERS: not {SENDER_PREFIX}<ns>:<name>: {strange}")
    return SenderCheck(
        audience=audience,
        issuer=env.get("IMAGEREC_OIDC_ISSUER", "").strip() or DEFAULT_ISSUER,
        senders=senders,
        keys=IssuerKeys(env.get("IMAGEREC_OIDC_JWKS", "").strip() or CLUSTER_JWKS),
    )
