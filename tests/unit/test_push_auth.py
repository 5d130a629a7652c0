"""JWT verification: allow-list, required claims, key selection, channel grants."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from push_server import disconnect
from push_server.auth import AuthError, ChannelGrant, TokenVerifier, load_jwks
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import ConfigError, Settings

pytestmark = pytest.mark.unit

SETTINGS = replace(Settings.from_env({}), jwt_secret="unit-test-secret-of-sufficient-length-0123")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path


@pytest.fixture
def verifier(jwks_file: Path) -> TokenVerifier:
    return TokenVerifier.from_settings(replace(SETTINGS, jwt_public_keys_file=str(jwks_file)))


def claims(ttl_s: int = 3600, **overrides: Any) -> dict[str, Any]:
    """A valid claim set; an override of None drops that claim."""
    doc = claims_for(SETTINGS, sub="alice", channels=["aggregates.*"], ttl_s=ttl_s)
    for name, value in overrides.items():
        if value is None:
            doc.pop(name)
        else:
            doc[name] = value
    return doc


def rs256(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str | None = "k1") -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


def reason_for(verifier: TokenVerifier, token: str) -> disconnect.Disconnect:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.close


def test_accepts_a_valid_hs256_token(verifier: TokenVerifier) -> None:
    result = verifier.verify(hs256(SETTINGS, claims(ttl_s=60)))
    assert result.subject == "alice"
    assert result.grant.allows("aggregates.fixed") and not result.grant.allows("alerts")
    assert result.expires_at >= int(time.time()) + 55


def test_accepts_a_valid_rs256_token_by_kid(verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier.verify(rs256(rsa_key, claims())).subject == "alice"
    # A single key also verifies tokens without a kid.
    assert verifier.verify(rs256(rsa_key, claims(), kid=None)).subject == "alice"


def test_alg_none_is_rejected(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode(claims(), key=None, algorithm="none")
    assert reason_for(verifier, unsigned) is disconnect.BAD_TOKEN


def test_algorithm_outside_the_allow_list_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), SETTINGS.jwt_secret * 2, algorithm="HS512")
    assert reason_for(verifier, token) is disconnect.BAD_TOKEN


def test_public_key_used_as_hmac_secret_is_rejected(verifier: TokenVerifier,
                                                    rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic RS256->HS256 confusion: sign with the *public* key bytes as an HMAC secret."""
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT","kid":"k1"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signature = base64.urlsafe_b64encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    forged = (header + b"." + body + b"." + signature).decode()
    assert reason_for(verifier, forged) is disconnect.BAD_TOKEN


@pytest.mark.parametrize(("overrides", "close"), [
    ({"exp": int(time.time()) - 3600}, disconnect.TOKEN_EXPIRED),
    ({"nbf": int(time.time()) + 3600}, disconnect.BAD_TOKEN),
    ({"aud": "someone-else"}, disconnect.BAD_TOKEN),
    ({"iss": "evil"}, disconnect.BAD_TOKEN),
    ({"exp": None}, disconnect.BAD_TOKEN),
    ({"nbf": None}, disconnect.BAD_TOKEN),
    ({"aud": None}, disconnect.BAD_TOKEN),
    ({"iss": None}, disconnect.BAD_TOKEN),
    ({"sub": None}, disconnect.BAD_TOKEN),
    ({"channels": None}, disconnect.BAD_TOKEN),
    ({"channels": "alerts"}, disconnect.BAD_TOKEN),
    ({"channels": [1]}, disconnect.BAD_TOKEN),
    ({"sub": ""}, disconnect.BAD_TOKEN),
])
def test_claims_are_required_and_checked(verifier: TokenVerifier, overrides: dict[str, Any],
                                         close: disconnect.Disconnect) -> None:
    assert reason_for(verifier, hs256(SETTINGS, claims(**overrides))) is close


def test_leeway_tolerates_small_clock_skew(verifier: TokenVerifier) -> None:
    just_expired = claims(exp=int(time.time()) - 2)
    assert verifier.verify(hs256(SETTINGS, just_expired)).subject == "alice"


def test_wrong_signature_is_rejected(verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert reason_for(verifier, hs256(SETTINGS, claims(), secret="another-secret-of-enough-length!!")) \
        is disconnect.BAD_TOKEN
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason_for(verifier, rs256(other, claims())) is disconnect.BAD_TOKEN
    assert reason_for(verifier, rs256(rsa_key, claims(), kid="unknown")) is disconnect.BAD_TOKEN


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "e30.e30.", "x" * 100])
def test_garbage_is_a_bad_token(verifier: TokenVerifier, garbage: str) -> None:
    assert reason_for(verifier, garbage) is disconnect.BAD_TOKEN


def test_errors_never_contain_the_token_or_secret(verifier: TokenVerifier) -> None:
    token = hs256(SETTINGS, claims(aud="x"))
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert token not in str(info.value) and SETTINGS.jwt_secret not in str(info.value)


def test_rs256_is_off_without_keys_and_config_errors_are_loud(tmp_path: Path) -> None:
    hs_only = TokenVerifier.from_settings(SETTINGS)
    assert hs_only.algorithms == {"HS256"}
    with pytest.raises(ConfigError, match="unsupported"):
        TokenVerifier(algorithms=["HS256", "none"], audience="a", issuer="i", hmac_secret="s")
    with pytest.raises(ConfigError, match="no JWT algorithm"):
        TokenVerifier(algorithms=["RS256"], audience="a", issuer="i")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load"):
        load_jwks(bad)


def test_channel_grants() -> None:
    grant = ChannelGrant(("aggregates.*", "alerts"))
    assert grant.allows("aggregates.fixed") and grant.allows("aggregates.sliding") and grant.allows("alerts")
    assert not grant.allows("alerts.private") and not grant.allows("aggregatesX")
    assert ChannelGrant(("*",)).allows("anything")
    assert not ChannelGrant(()).allows("alerts")
