"""The registering side's asyncio protocol, until the relay gives it a public port.

A seed relay sends its port line at once; a v2 relay first challenges, this
side answers (``relay.wire.v2``), and the port line follows (for a service
reached by name, the route line: the shared port and the host name,
``relay.wire.route``). On the line's newline the transport becomes a yamux
server session at once, so no byte slips between the two protocols. The relay
is the yamux client, the registered side the yamux server.
"""

from __future__ import annotations

import asyncio
import logging

import yamux

from ..errors import RegistrationError, RelayClosedError, RelayRefusedError
from ..options import RegistrationOptions
from ..wire.greeting import (
    ERROR_PREFIX,
    MAX_GREETING,
    excerpt,
    parse_greeting,
    plausible_prefix,
)
from ..wire.refusal import parse_refusal
from ..wire.route import RouteKind, feature, parse_route_line, plausible_route_prefix
from ..wire.v2 import (
    AUTH_FAILED,
    FEATURE_CLIENT_ADDR,
    FEATURE_SERVICE,
    FEATURE_SESSIONS,
    NEEDS_NAME,
    AuthenticationError,
    HandshakeError,
    SeedRelayError,
    is_challenge,
    parse_challenge,
    response_line,
)

logger = logging.getLogger("relay.handshake")


def refused(line: bytes) -> RelayRefusedError:
    """The exception for an ``error: ...`` line that is not a challenge: its reason, and
    whether it is permanent (its class, or for an older relay's line, an auth failure)."""
    refusal = parse_refusal(line)
    error = AuthenticationError if refusal.reason.startswith(AUTH_FAILED) else RelayRefusedError
    return error(refusal.reason, permanent=refusal.permanent, retry_after=refusal.retry_after)


class RegisteringProtocol(asyncio.Protocol):
    """Takes a seed relay's port line, or answers a v2 challenge and then takes it.

    ``result`` resolves to ``(session, public_port)``, or fails with a
    RegistrationError (and the connection is closed). After that, ``version`` is
    2 if a challenge was answered (1 for a seed relay), ``client_address``
    says whether every stream starts with a PROXY v2 header, ``sessions`` how many
    sessions of our identity may share the port, and ``route`` and ``host`` where a
    service reached by name is (None: it has a port of its own).
    """

    def __init__(self, config: yamux.Config, options: RegistrationOptions) -> None:
        self._config = config
        self.options = options
        """Checked, with the secret file already read (``with_files_read``)."""
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.result: asyncio.Future[tuple[yamux.Session, int]] = (
            asyncio.get_running_loop().create_future()
        )
        self.version = 1
        self.client_address = False
        self.route: RouteKind | None = None
        self.host: str | None = None
        self.sessions = 1
        """Sessions of our identity the relay lets share the port (``sessions=``, if offered)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            return
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            plausible = plausible_route_prefix if self.route is not None else plausible_prefix
            if len(self._buffer) >= MAX_GREETING or not plausible(bytes(self._buffer)):
                self._fail(
                    RegistrationError(
                        f"expected a port line (decimal digits and a newline), got "
                        f"{excerpt(self._buffer)}; is this a relay?"
                    )
                )
            return
        line = bytes(self._buffer[:newline])
        rest = bytes(self._buffer[newline + 1 :])
        self._buffer.clear()
        self._line_received(line, rest)

    def _line_received(self, line: bytes, rest: bytes) -> None:
        if self.version == 1 and is_challenge(line):
            self._answer(line, rest)
            return
        if line.startswith(ERROR_PREFIX):
            error = refused(line)
            if NEEDS_NAME in error.reason and self.options.client_name is None:
                error = AuthenticationError(
                    f"{error.reason}: give our name in its auth file with --client-name "
                    f"(RELAY_CLIENT_NAME, client_name=)",
                    permanent=True,
                )
            self._fail(error)
            return
        if self.version == 1 and self.options.require_v2:
            self._fail(SeedRelayError())
            return
        if self.version == 1 and self._v2_only():
            logger.warning(
                "the relay speaks the seed protocol (it sent its port line without a "
                "challenge): %s not used (they need a relay with --protocol v2 or "
                "--state-dir)",
                ", ".join(self._v2_only()),
            )
        try:
            if self.route is None:
                port = parse_greeting(line)
            else:
                port, self.host = parse_route_line(line)
        except RegistrationError as exc:
            self._fail(exc)
            return
        assert self.transport is not None
        session = yamux.Session.attach(
            self.transport, client=False, config=self._config, initial_data=rest
        )
        self.result.set_result((session, port))

    def _v2_only(self) -> list[str]:
        """What a seed relay cannot honour (the client address is best effort: not listed)."""
        options = self.options
        wanted = [
            ("a secret", options.secret is not None),
            ("a client name", options.wire_name is not None),
            (f"port {options.remote_port}", options.remote_port is not None),
            (f"a name on the relay's domain (route {options.route})", options.route is not None),
        ]
        return [what for what, on in wanted if on]

    def _answer(self, line: bytes, rest: bytes) -> None:
        options = self.options
        if rest:
            self._fail(HandshakeError("the relay sent data after its challenge"))
            return
        try:
            challenge = parse_challenge(line)
        except HandshakeError as exc:
            self._fail(exc)
            return
        if challenge.auth_required and options.secret is None:
            self._fail(
                AuthenticationError(
                    "this relay requires a secret and none is configured (--secret, "
                    "RELAY_SECRET or secret=)",
                    sent=False,
                )
            )
            return
        client_addr = bool(options.client_address) and FEATURE_CLIENT_ADDR in challenge.features
        service = options.wire_service if FEATURE_SERVICE in challenge.features else None
        if options.wire_service is not None and service is None:
            logger.warning(
                "the relay does not offer per-service identities (an older relay): service "
                "%s shares the lease of client %s",
                options.wire_service,
                options.wire_name,
            )
        sessions = options.sessions if FEATURE_SESSIONS in challenge.features else 1
        route = (
            options.route
            if options.route and feature(options.route) in challenge.features
            else None
        )
        if options.route is not None and route is None:
            logger.warning(
                "the relay does not serve names on a shared %s port (it offers no %s: no "
                "--domain, or an older relay): service %s gets a port of its own",
                options.route,
                feature(options.route),
                options.name or options.wire_name,
            )
        self.version = 2
        self.client_address = client_addr
        self.route = route
        self.sessions = sessions
        secret = options.secret if challenge.auth_required else None
        assert self.transport is not None
        self.transport.write(
            response_line(
                challenge,
                secret=secret.encode("utf-8") if isinstance(secret, str) else secret,
                name=options.wire_name,
                service=service,
                port=options.remote_port,
                route=route,
                client_addr=client_addr,
                sessions=sessions,
            )
        )

    def eof_received(self) -> bool:
        self._fail(
            RelayClosedError(
                "the relay closed the connection before sending a port line"
                + (f" (it sent {excerpt(self._buffer)})" if self._buffer else "")
            )
        )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(RelayClosedError(f"connection to the relay lost before the port line{reason}"))

    def _fail(self, error: RegistrationError) -> None:
        if not self.result.done():
            self.result.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """Drop the connection, and the session if one was attached (e.g. on a timeout)."""
        if self.transport is not None:
            self.transport.abort()
        if not self.result.done():
            self.result.cancel()
