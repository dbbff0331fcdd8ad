"""The relay's side of registration v2: challenge, read the response, check the proof.

``ChallengeProtocol`` owns a control connection from its first byte until the
proof is checked; only then does it hand a ``RegistrationRequest`` and its
admission place to the relay, which allocates (public listener, yamux session).
Until that point a connection costs a transport, a timer and at most
``MAX_GREETING`` buffered bytes; every refusal is one ``error: ...`` line with
its class, and the connection is closed.

Failures are counted where they happen (``relay.server.failures``): a wrong
proof against the source and the client it names (if the relay knows that
client), anything else against the source: a malformed response, no answer
within the answer timeout, a connection closed or reset before its answer. A
blocked key's proof is refused before its HMAC is computed, however many
challenges its source opened first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from yamux.ratelimit import RateLimitedLog

from ..net import peer_of
from ..wire.greeting import MAX_GREETING
from ..wire.refusal import PERMANENT, RETRY, RefusalKind, format_refusal
from ..wire.v2 import Challenge, HandshakeError, parse_response
from .admission import Admission, Refused
from .auth import Authenticator, AuthRefused
from .failures import FailureKey
from .limits import source_of
from .places import Place
from .request import RegistrationRequest

logger = logging.getLogger("relay.registration")


class ChallengeProtocol(asyncio.Protocol):
    """One control connection of a v2 relay, until its proof is checked.

    ``place``: the place it holds already (it comes from a TLS handshake); None: it takes
    one when the connection is made.
    """

    def __init__(
        self,
        *,
        auth: Authenticator | None,
        admission: Admission,
        timeout: float,
        accepted: Callable[[asyncio.Transport, RegistrationRequest, Place], None],
        log: RateLimitedLog,
        features: frozenset[str] | None = None,
        place: Place | None = None,
    ) -> None:
        self._auth = auth
        self._admission = admission
        self._timeout = timeout
        self._accepted = accepted
        self._place = place
        """This connection's admission place; on success it passes to the registration."""
        self._log = log
        self._features = features
        """What the challenge offers (None: ``relay.wire.v2.FEATURES``)."""
        self._buffer = bytearray()
        self._challenge: Challenge | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.source = "unknown"
        self._gone = False
        """The connection is lost: nothing more can be sent."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_of(transport)
        self.source = source_of(transport.get_extra_info("peername"))
        if self._place is None:
            admitted = self._admission.admit(self.source, self._aborted)
            if isinstance(admitted, Refused):
                self._refused(admitted)
                return
            self._place = admitted
        else:
            self._place.hold(self._aborted)
        self._challenge = Challenge.fresh(self._auth is not None, self._features)
        transport.write(self._challenge.line())  # type: ignore[attr-defined]
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._challenge is None:  # refused already; the connection is closing
            return
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) >= MAX_GREETING:
                self._fail(f"bad response: response line longer than {MAX_GREETING - 1} bytes")
            return
        if newline + 1 < len(self._buffer):
            self._fail("bad response: data after the response line (wait for the port line)")
            return
        line = bytes(self._buffer[:newline]).rstrip(b"\r")
        challenge = self._challenge
        try:
            response = parse_response(line, challenge)
        except HandshakeError as exc:
            self._fail(f"bad response: {exc}")
            return
        key = self._failure_key(response.name)
        blocked = self._admission.blocked(key)
        if blocked is not None:  # no HMAC for a blocked key, and no failure counted
            self._refused(blocked)
            return
        try:
            if self._auth is not None:
                proven = self._auth.check(challenge, response)
                client, authenticated, ports = proven.name, True, proven.ports
                hosts = proven.hosts
            else:
                client, authenticated, ports, hosts = response.name, False, None, frozenset()
        except AuthRefused as exc:
            self._fail(str(exc), key=key, label="auth")
            return
        assert self.transport is not None
        assert self._place is not None
        self._place.settle()
        place = self._place.hand_over()
        self._done()
        self._accepted(
            self.transport,
            RegistrationRequest(
                protocol="v2",
                client=client,
                authenticated=authenticated,
                service=response.service,
                remote_port=response.port,
                allowed_ports=ports,
                client_address=response.client_addr,
                route=response.route,
                allowed_hosts=hosts,
                sessions=response.sessions,
            ),
            place,
        )

    def eof_received(self) -> bool:
        if self._challenge is not None:
            self._fail(
                "closed the connection before answering the challenge",
                label="no-answer",
                kind=RETRY,
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        if self._challenge is not None:  # reset (or closed) by the client before its answer
            self._fail(
                f"the connection ended before the answer ({exc or 'closed'})",
                label="no-answer",
                kind=RETRY,
            )
        self._done()

    def _aborted(self, reason: str) -> None:
        """Its place was taken, or the relay is closing: drop it, not a failure of its own."""
        if self._challenge is None or self.transport is None:
            return
        self._done()
        if not self._gone:
            self.transport.write(format_refusal(reason, RETRY))
        self.transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(
            f"no answer to the challenge within {self._timeout:g} s",
            label="no-answer",
            kind=RETRY,
        )

    def _failure_key(self, name: str | None) -> FailureKey:
        """The source, and the client name if the relay has such a client (auth file)."""
        if name is not None and self._auth is not None and name in self._auth.clients:
            return (self.source, name)
        return (self.source, None)

    def _fail(
        self,
        reason: str,
        *,
        key: FailureKey | None = None,
        label: str = "bad-response",
        kind: RefusalKind = PERMANENT,
    ) -> None:
        """A failure of ``key`` (default: the source alone): counted, then refused."""
        self._admission.failed(key or (self.source, None))
        self._refused(Refused(label, reason, kind))

    def _refused(self, refused: Refused) -> None:
        """Log (rate-limited per kind of refusal), send the line unless the client is gone,
        close."""
        self._done()
        self._log.log(
            refused.level,
            refused.label,
            "refusing registration from %s: %s",
            self.peer,
            refused.reason,
        )
        assert self.transport is not None
        if not self._gone and not self.transport.is_closing():
            self.transport.write(refused.line())
        self.transport.close()

    def _done(self) -> None:
        self._challenge = None
        if self._place is not None:
            self._place.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
