"""The relay's side of registration v2: challenge, read the response, check the proof.

``ChallengeProtocol`` owns a control connection from its first byte until the
proof is checked; only then does it hand a ``RegistrationRequest`` and its
admission slot to the relay, which allocates (public listener, yamux session).
Until that point a connection costs a transport, a timer and at most
``MAX_GREETING`` buffered bytes; every refusal is ``error: <reason>`` and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from yamux.ratelimit import RateLimitedLog

from ..net import peer_of
from ..wire.greeting import MAX_GREETING, error_line
from ..wire.v2 import Challenge, HandshakeError, parse_response
from .admission import Admission, Refusal
from .auth import Authenticator, AuthRefused
from .limits import Slot, source_of
from .request import RegistrationRequest

logger = logging.getLogger("relay.registration")


class ChallengeProtocol(asyncio.Protocol):
    """One control connection of a v2 relay, until its proof is checked."""

    def __init__(
        self,
        *,
        auth: Authenticator | None,
        admission: Admission,
        timeout: float,
        accepted: Callable[[asyncio.Transport, RegistrationRequest, Slot], None],
        log: RateLimitedLog,
    ) -> None:
        self._auth = auth
        self._admission = admission
        self._timeout = timeout
        self._accepted = accepted
        self._slot: Slot | None = None
        """This connection's admission slot; on success it passes to the registration."""
        self._log = log
        self._buffer = bytearray()
        self._challenge: Challenge | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_of(transport)
        source = source_of(transport.get_extra_info("peername"))
        wait = self._admission.failures.blocked_for(source)
        if wait > 0:
            self._refuse(
                f"too many failed registrations from {source}; retry in {wait:.0f} s",
                key="blocked",
                level=logging.DEBUG,
            )
            return
        admitted = self._admission.admit(source)
        if isinstance(admitted, Refusal):
            self._refuse(admitted.reason, key="busy")
            return
        self._slot = admitted
        self._admission.pending.add(self)
        self._challenge = Challenge.fresh(auth_required=self._auth is not None)
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
            if self._auth is not None:
                proven = self._auth.check(challenge, response)
                client, authenticated, ports = proven.name, True, proven.ports
            else:
                client, authenticated, ports = response.name, False, None
        except (HandshakeError, AuthRefused) as exc:
            if isinstance(exc, AuthRefused):
                self._fail(str(exc), key="auth")
            else:
                self._fail(f"bad response: {exc}")
            return
        assert self.transport is not None
        assert self._slot is not None
        slot = self._slot.hand_over()
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
                sessions=response.sessions,
            ),
            slot,
        )

    def eof_received(self) -> bool:
        if self._challenge is not None:
            self._fail(
                "closed the connection before answering the challenge", send=False, key="no-answer"
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def abort(self) -> None:
        """Drop the connection (relay shutting down)."""
        self._done()
        if self.transport is not None:
            self.transport.abort()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"no answer to the challenge within {self._timeout:g} s", key="no-answer")

    def _fail(self, reason: str, *, send: bool = True, key: str = "bad-response") -> None:
        """A failure of this source: counted for its block (``FailureLimiter``), then refused."""
        assert self.transport is not None
        source = source_of(self.transport.get_extra_info("peername"))
        count = self._admission.failed(source)
        limiter = self._admission.failures
        if count == limiter.limit:
            self._log.log(
                logging.WARNING,
                "blocking",
                "%s: %d failed registrations within %g s; refusing it for a while",
                source,
                count,
                limiter.window,
            )
        self._refuse(reason, send=send, key=key)

    def _refuse(
        self, reason: str, *, send: bool = True, key: str, level: int = logging.WARNING
    ) -> None:
        """Log (rate-limited per kind of refusal), send ``error: reason``, close."""
        self._done()
        self._log.log(level, key, "refusing registration from %s: %s", self.peer, reason)
        assert self.transport is not None
        if send:
            self.transport.write(error_line(reason))
        self.transport.close()

    def _done(self) -> None:
        self._challenge = None
        self._admission.pending.discard(self)
        if self._slot is not None:
            self._slot.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
