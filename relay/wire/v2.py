"""Registration v2: the challenge line and the response line (sans-IO; see docs/protocol.md).

A relay that needs more than the seed protocol speaks first, with a line that
can never be a port line and that a seed client shows as a refusal::

    error: v2 needed: this relay requires registration v2 (upgrade the client); relay/2 \
nonce=<64 hex> auth=required features=client-addr,service,sessions

The client answers with one line; ``proof`` is last and covers everything before it::

    relay/2 name=alice service=redis port=5000 client-addr=1 proof=<64 hex>

and the relay replies as in the seed protocol: a port line (then yamux) or
``error: <reason>``. The nonce is fresh for every connection, so a recorded
response is worthless on any other connection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from ..errors import RegistrationError, RelayRefusedError
from .greeting import ERROR_PREFIX, MAX_GREETING
from .route import ROUTE_KINDS, RouteKind, feature

VERSION = 2
"""The registration version this code speaks (the seed protocol is version 1)."""
VERSION_TOKEN = b"relay/%d" % VERSION
CHALLENGE_TEXT = b"error: v2 needed: this relay requires registration v2 (upgrade the client); "
"""The human part of the challenge: what a seed client shows. Its first 16 bytes
(``error: v2 needed``) are all the Go seed forwarder prints of a long line."""
HMAC_LABEL = b"relay registration v2\n"
"""Domain separation: the secret signs nothing else with this prefix."""
NONCE_BYTES = 32
FEATURE_CLIENT_ADDR = "client-addr"
FEATURE_SERVICE = "service"
"""``service=`` in the response: one client's services are identities (leases) of their own."""
FEATURE_SESSIONS = "sessions"
"""``sessions=K`` in the response: K registrations of one identity share its public port."""
FEATURES = (FEATURE_CLIENT_ADDR, FEATURE_SERVICE, FEATURE_SESSIONS)
"""What every v2 relay offers; one with ``--domain`` adds ``route-http`` / ``route-tls``
(``relay.wire.route``)."""
MAX_SESSIONS = 16
"""The most sessions one identity may ask for (``sessions=``)."""
AUTH_FAILED = "auth failed"
"""Every refusal of a proof starts with this, so clients can tell it from others."""
NEEDS_NAME = "this relay needs a client name (name=)"
"""The refusal of a proof without ``name=`` by a relay with an auth file."""

_HEX64 = re.compile(rb"[0-9a-f]{64}")
_KEY = re.compile(rb"[a-z][a-z0-9-]{0,31}")
_VALUE = re.compile(rb"[A-Za-z0-9._:@/+,-]{0,128}")
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
"""A client name: what may appear in ``name=`` (and as an auth-file table key)."""


class AuthenticationError(RelayRefusedError):
    """The relay refused our proof: wrong or missing secret, or an unknown client name.

    ``sent=False``: refused here, before answering (no secret for a relay that requires
    one). Permanent unless the relay's line says ``retry``.
    """

    def __init__(
        self,
        reason: str,
        *,
        sent: bool = True,
        permanent: bool = True,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(reason, permanent=permanent, retry_after=retry_after)
        self.args = (f"the relay refused our secret: {reason}" if sent else reason,)


class SeedRelayError(RegistrationError):
    """The relay sent a port line, not a challenge, and this client requires registration v2.

    Without TLS someone between us and the relay could strip a challenge this way
    (2.8 of docs/protocol.md); by default a client falls back to the seed protocol.
    Permanent: that relay will send its port line again.
    """

    permanent = True

    def __init__(self) -> None:
        super().__init__(
            "the relay did not offer registration v2 (it sent a port line: the seed "
            "protocol, without authentication), and this client requires v2 (--require-v2, "
            "RELAY_REQUIRE_V2, require_v2=True): is it the right relay, started with --secret "
            "or --protocol v2? Without TLS, someone in between may have removed its challenge"
        )


class HandshakeError(RegistrationError):
    """A v2 line that breaks the rules of docs/protocol.md; ``str()`` is the reason sent back."""


class VersionError(HandshakeError):
    """The relay accepts only response versions this client does not speak (permanent)."""

    permanent = True


@dataclass(frozen=True, slots=True)
class Challenge:
    """What the relay offers: a nonce, whether a proof is required, the optional features."""

    nonce: bytes
    """64 lowercase hex digits, ASCII."""
    auth_required: bool
    features: frozenset[str] = frozenset(FEATURES)
    accepts: frozenset[int] = frozenset({VERSION})
    version: int = VERSION

    @classmethod
    def fresh(cls, auth_required: bool, features: frozenset[str] | None = None) -> Challenge:
        nonce = secrets.token_hex(NONCE_BYTES).encode("ascii")
        return cls(nonce, auth_required, frozenset(FEATURES) if features is None else features)

    def line(self) -> bytes:
        features = ",".join(sorted(self.features)) or "-"
        return CHALLENGE_TEXT + b"relay/%d nonce=%s auth=%s features=%s\n" % (
            self.version,
            self.nonce,
            b"required" if self.auth_required else b"none",
            features.encode("ascii"),
        )


@dataclass(frozen=True, slots=True)
class Response:
    """What a client asks for; ``name`` is unauthenticated until the relay checked the proof."""

    name: str | None = None
    service: str | None = None
    port: int | None = None
    client_addr: bool = False
    route: RouteKind | None = None
    """Reach the service by name on the relay's shared port of this kind."""
    sessions: int = 1
    """How many sessions of this identity share its port (``sessions=``; 1: just this one)."""
    proof: bytes | None = None
    """64 lowercase hex digits, or None when the relay asked for no proof."""
    signed: bytes = field(default=b"", compare=False)
    """The bytes the proof covers: the line up to (not including) `` proof=``."""


def sign(secret: bytes, nonce: bytes, signed: bytes) -> bytes:
    """The proof: HMAC-SHA256(secret, label || nonce || LF || signed part), lowercase hex."""
    mac = hmac.new(secret, HMAC_LABEL + nonce + b"\n" + signed, hashlib.sha256)
    return mac.hexdigest().encode("ascii")


def proof_matches(secret: bytes, nonce: bytes, response: Response) -> bool:
    """Constant-time check of ``response.proof`` against ``secret``."""
    if response.proof is None:
        return False
    return hmac.compare_digest(sign(secret, nonce, response.signed), response.proof)


def is_challenge(line: bytes) -> bool:
    """Is this greeting line (no newline) a v2 challenge rather than a refusal?"""
    return line.startswith(ERROR_PREFIX) and any(
        token.startswith(b"relay/") for token in line.split(b" ")
    )


def parse_challenge(line: bytes) -> Challenge:
    """The challenge of a greeting line (no newline); HandshakeError if we cannot answer it."""
    tokens = line.split(b" ")
    start = next(i for i, token in enumerate(tokens) if token.startswith(b"relay/"))
    version_text = tokens[start][len(b"relay/") :]
    if not version_text.isdigit():
        raise HandshakeError(f"malformed challenge version {tokens[start]!r}")
    fields = _fields(tokens[start + 1 :], "challenge")
    accepts_text = fields.get("accept", version_text.decode())
    try:
        accepts = frozenset(int(v) for v in accepts_text.split(","))
    except ValueError:
        raise HandshakeError(f"malformed accept={accepts_text!r} in the challenge") from None
    if VERSION not in accepts:
        raise VersionError(
            f"the relay requires registration version {accepts_text}; this client speaks "
            f"version {VERSION} (upgrade the client)"
        )
    nonce = fields.get("nonce", "").encode("ascii")
    if not _HEX64.fullmatch(nonce):
        raise HandshakeError("the challenge has no valid nonce (64 lowercase hex digits)")
    auth = fields.get("auth", "required")
    features = fields.get("features", "-")
    return Challenge(
        nonce=nonce,
        auth_required=auth != "none",
        features=frozenset(f for f in features.split(",") if f and f != "-"),
        accepts=accepts,
        version=int(version_text),
    )


def response_line(
    challenge: Challenge,
    *,
    secret: bytes | None,
    name: str | None = None,
    service: str | None = None,
    port: int | None = None,
    route: RouteKind | None = None,
    client_addr: bool = False,
    sessions: int = 1,
) -> bytes:
    """The client's answer to ``challenge`` (with its newline); ``sessions`` above 1 only
    if the challenge offers it, with a ``name``."""
    parts = [VERSION_TOKEN]
    for key, value in ((b"name", name), (b"service", service)):
        if value is not None:
            if not NAME.fullmatch(value):
                raise ValueError(f"{key.decode()} {value!r}: use 1-64 of A-Z a-z 0-9 . _ @ -")
            parts.append(key + b"=" + value.encode("ascii"))
    if port is not None:
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1-65535, got {port}")
        parts.append(b"port=%d" % port)
    if route is not None:
        parts.append(b"route=" + route.encode("ascii"))
    if client_addr:
        parts.append(b"client-addr=1")
    if sessions != 1:
        if not 2 <= sessions <= MAX_SESSIONS or name is None:
            raise ValueError(f"sessions must be 1-{MAX_SESSIONS}, and above 1 only with a name")
        parts.append(b"sessions=%d" % sessions)
    signed = b" ".join(parts)
    if secret is not None:
        return signed + b" proof=" + sign(secret, challenge.nonce, signed) + b"\n"
    return signed + b"\n"


def parse_response(line: bytes, challenge: Challenge) -> Response:
    """The relay's view of a response line (no newline); HandshakeError if malformed."""
    if len(line) >= MAX_GREETING:
        raise HandshakeError(f"response line longer than {MAX_GREETING - 1} bytes")
    tokens = line.split(b" ")
    if tokens[0] != b"relay/%d" % challenge.version:
        shown = tokens[0][:16].decode("ascii", "replace")
        raise HandshakeError(
            f"expected a response starting with relay/{challenge.version}, got {shown!r}"
        )
    proof: bytes | None = None
    signed = line
    if tokens[-1].startswith(b"proof="):
        proof = tokens[-1][len(b"proof=") :]
        if not _HEX64.fullmatch(proof):
            raise HandshakeError("proof= must be 64 lowercase hex digits")
        tokens = tokens[:-1]
        signed = b" ".join(tokens)
    fields = _fields(tokens[1:], "response")
    for key in fields:
        if key not in (
            "name",
            "port",
            "route",
            FEATURE_CLIENT_ADDR,
            FEATURE_SERVICE,
            FEATURE_SESSIONS,
        ):
            raise HandshakeError(f"unknown option {key!r}")
    name, service = fields.get("name"), fields.get(FEATURE_SERVICE)
    for key, value in (("name", name), (FEATURE_SERVICE, service)):
        if value is not None and not NAME.fullmatch(value):
            raise HandshakeError(f"{key}= must be 1-64 of A-Z a-z 0-9 . _ @ -")
    if service is not None:
        if FEATURE_SERVICE not in challenge.features:
            raise HandshakeError("service was not offered")
        if name is None:
            raise HandshakeError("service= needs name= (it names one of that client's services)")
    port: int | None = None
    if "port" in fields:
        text = fields["port"]
        if not (text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
            raise HandshakeError(f"port={text!r} is not a port number (1-65535)")
        port = int(text)
    route = _route(fields.get("route"), challenge, name, port)
    sessions = _sessions(fields.get(FEATURE_SESSIONS), name, challenge)
    if route is not None and sessions != 1:
        raise HandshakeError("route= and sessions= exclude each other (sessions share a port)")
    client_addr = fields.get(FEATURE_CLIENT_ADDR, "0")
    if client_addr not in ("0", "1"):
        raise HandshakeError("client-addr= must be 0 or 1")
    if client_addr == "1" and FEATURE_CLIENT_ADDR not in challenge.features:
        raise HandshakeError("client-addr was not offered")
    return Response(
        name=name,
        service=service,
        port=port,
        client_addr=client_addr == "1",
        route=route,
        sessions=sessions,
        proof=proof,
        signed=signed,
    )


def _route(
    value: str | None, challenge: Challenge, name: str | None, port: int | None
) -> RouteKind | None:
    """The checked ``route=`` of a response."""
    if value is None:
        return None
    kind = next((kind for kind in ROUTE_KINDS if kind == value), None)
    if kind is None:
        raise HandshakeError(f"route= must be one of {', '.join(ROUTE_KINDS)}")
    if feature(kind) not in challenge.features:
        raise HandshakeError(f"{feature(kind)} was not offered")
    if name is None:
        raise HandshakeError("route= needs name= (the service's name on the relay's domain)")
    if port is not None:
        raise HandshakeError("route= and port= exclude each other (a routed service has no port)")
    return kind


def _sessions(text: str | None, name: str | None, challenge: Challenge) -> int:
    """The ``sessions=`` of a response: 1 when absent."""
    if text is None:
        return 1
    if FEATURE_SESSIONS not in challenge.features:
        raise HandshakeError("sessions was not offered")
    if not (text.isdigit() and len(text) <= 2 and 1 <= int(text) <= MAX_SESSIONS):
        raise HandshakeError(f"sessions={text[:8]!r} must be 1-{MAX_SESSIONS}")
    if name is None:
        raise HandshakeError("sessions= needs name= (the sessions share that identity's port)")
    return int(text)


def _fields(tokens: list[bytes], what: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition(b"=")
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            shown = token[:32].decode("ascii", "replace")
            raise HandshakeError(f"malformed field {shown!r} in the {what} (want key=value)")
        text = key.decode("ascii")
        if text in fields:
            raise HandshakeError(f"field {text!r} twice in the {what}")
        fields[text] = value.decode("ascii")
    return fields
