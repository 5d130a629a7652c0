"""JWT verification for push connections (pyjwt), with an explicit algorithm allow-list.

Why it is written this way:

* The algorithm comes from the allow-list *and* picks the key: an HS256 token is only ever checked
  against the HMAC secret and an RS256 token only against the RSA public keys, so a token cannot
  choose a weaker algorithm (``alg: none``) or confuse a public key for an HMAC secret.
* ``exp``, ``nbf``, ``aud``, ``iss``, ``sub`` and ``channels`` are all required; a token that omits
  one is rejected rather than treated as unlimited.
* Tokens and secrets never reach a log line or an error message: errors name the failed check only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from push_server import disconnect
from push_server.disconnect import Disconnect
from streaming_analytics.settings import ConfigError, Settings

log = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS: Final = frozenset({"HS256", "RS256"})
REQUIRED_CLAIMS: Final = ("exp", "nbf", "aud", "iss", "sub", "channels")
MAX_CHANNEL_GRANTS: Final = 64


class AuthError(Exception):
    """A token was refused; ``close`` is the close code the connection gets."""

    def __init__(self, close: Disconnect, detail: str) -> None:
        super().__init__(detail)
        self.close = close
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChannelGrant:
    """The ``channels`` claim: exact names, ``prefix.*`` wildcards, or ``*`` for every channel."""

    patterns: tuple[str, ...]

    def allows(self, channel: str) -> bool:
        for pattern in self.patterns:
            if pattern in ("*", channel):
                return True
            if pattern.endswith(".*") and channel.startswith(pattern[:-1]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Claims:
    """What the server uses from a verified token."""

    subject: str
    expires_at: int
    grant: ChannelGrant


class TokenVerifier:
    """Verifies client tokens; construct once per process (keys are parsed at start-up)."""

    def __init__(self, *, algorithms: Iterable[str], audience: str, issuer: str,
                 hmac_secret: str = "", rsa_keys: Mapping[str, Any] | None = None,
                 leeway_s: int = 0) -> None:
        algs = frozenset(algorithms)
        unknown = algs - SUPPORTED_ALGORITHMS
        if unknown:
            raise ConfigError(f"unsupported JWT algorithm(s) {sorted(unknown)}; "
                              f"supported: {sorted(SUPPORTED_ALGORITHMS)}")
        self._rsa_keys = dict(rsa_keys or {})
        # An algorithm without a key is switched off rather than left to fail on every token.
        if "HS256" in algs and not hmac_secret:
            algs -= {"HS256"}
        if "RS256" in algs and not self._rsa_keys:
            algs -= {"RS256"}
        if not algs:
            raise ConfigError("no JWT algorithm has a key: set SA_JWT_SECRET or SA_JWT_PUBLIC_KEYS_FILE")
        self.algorithms = algs
        self._secret = hmac_secret
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier the running server uses."""
        rsa_keys = load_jwks(settings.jwt_public_keys_file) if settings.jwt_public_keys_file else {}
        return cls(algorithms=settings.jwt_algorithms, audience=settings.jwt_audience,
                   issuer=settings.jwt_issuer, hmac_secret=settings.jwt_secret, rsa_keys=rsa_keys,
                   leeway_s=settings.jwt_leeway_s)

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token or raise :class:`AuthError`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(disconnect.BAD_TOKEN, "token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError(disconnect.BAD_TOKEN, "token algorithm not allowed")
        key = self._secret if alg == "HS256" else self._rsa_key(header.get("kid"))
        try:
            payload = jwt.decode(
                token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                leeway=self._leeway, options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(disconnect.TOKEN_EXPIRED, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(disconnect.BAD_TOKEN, "token not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(disconnect.BAD_TOKEN, "token audience mismatch") from None
        except jwt.InvalidIssuerError:
            raise AuthError(disconnect.BAD_TOKEN, "token issuer mismatch") from None
        except jwt.InvalidSignatureError:
            raise AuthError(disconnect.BAD_TOKEN, "token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(disconnect.BAD_TOKEN, f"token lacks claim {exc.claim!r}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(disconnect.BAD_TOKEN, f"token invalid ({type(exc).__name__})") from None
        return _claims(payload)

    def _rsa_key(self, kid: object) -> Any:
        if isinstance(kid, str) and kid in self._rsa_keys:
            return self._rsa_keys[kid]
        if kid is None and len(self._rsa_keys) == 1:
            return next(iter(self._rsa_keys.values()))
        raise AuthError(disconnect.BAD_TOKEN, "token key id unknown")


def _claims(payload: Mapping[str, Any]) -> Claims:
    subject = payload["sub"]
    if not isinstance(subject, str) or not subject or len(subject) > 256:
        raise AuthError(disconnect.BAD_TOKEN, "claim 'sub' must be a non-empty string")
    channels = payload["channels"]
    if (not isinstance(channels, list) or len(channels) > MAX_CHANNEL_GRANTS
            or not all(isinstance(c, str) and c for c in channels)):
        raise AuthError(disconnect.BAD_TOKEN, "claim 'channels' must be a list of channel names")
    exp = payload["exp"]
    if type(exp) is not int:  # pyjwt also accepts floats; the protocol reports whole seconds
        exp = int(exp)
    return Claims(subject=subject, expires_at=exp, grant=ChannelGrant(patterns=tuple(channels)))


def load_jwks(path: str | Path) -> dict[str, Any]:
    """RSA public keys by ``kid`` from a JWKS-style file (``{"keys": [{"kty": "RSA", ...}]}``)."""
    try:
        document = json.loads(Path(path).read_text())
        jwk_set = jwt.PyJWKSet.from_dict(document)
    except (OSError, ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
        raise ConfigError(f"cannot load JWT public keys from {path}: {exc}") from None
    keys: dict[str, Any] = {}
    for index, jwk in enumerate(jwk_set.keys):
        if jwk.key_type != "RSA":
            log.warning("ignoring non-RSA key #%d in %s", index, path)
            continue
        key = jwk.key
        if hasattr(key, "private_numbers"):  # a private JWK: keep only the public half in memory
            log.warning("key #%d in %s is a private key; using its public part", index, path)
            key = key.public_key()
        keys[jwk.key_id or f"#{index}"] = key
    if not keys:
        raise ConfigError(f"{path} holds no RSA public key")
    return keys
