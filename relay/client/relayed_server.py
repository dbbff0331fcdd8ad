"""Serve behind a relay from Python: ``asyncio.start_server`` with the listener on the relay.

An existing asyncio server runs behind the relay by changing one call::

    server = await asyncio.start_server(handle, "127.0.0.1", 8080)   # before
    server = await relay.start_server(handle, "relay.example", 7000)  # after
    print(server.public_endpoint)          # relay.example:4532
    async with server:
        await server.serve_forever()

``handle(reader, writer)`` gets one yamux stream twice (it offers the
StreamReader and StreamWriter API); ``writer.close()`` / ``write_eof()`` send
FIN and the reader still reads until the public client's EOF.

When the relay goes away (restart, network loss) the server registers again
by itself and reports the new endpoint (``on_endpoint=``, ``await
server.wait_endpoint()``); the forwarder is built on the same loop. With
``name=`` (registration v2) the relay keeps the public port for that name
(a lease), so the endpoint stays the same across reconnects and restarts.

Against a relay that runs registration v2 (docs/protocol.md), ``secret=``
answers its challenge, ``remote_port=`` asks for a port, the public client's
address becomes ``get_extra_info("peername")`` of each stream, and ``ssl=``
(an SSLContext, or True for the system CAs) or ``tls=True`` wraps the
connection in TLS. Against a seed relay (e.g. the Go one) these are not used
and a warning says so; ``require_v2=True`` refuses such a relay instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import yamux

from ..errors import (
    PermanentRefusalError,
    RegistrationError,
    RelayDisconnectedError,
    RelayError,
    RelayRefusedError,
)
from ..net import describe_os_error, format_endpoint
from ..options import RegistrationOptions
from ..options.declare import takes_options
from .client_address import read_client_address
from .reconnect import Backoff, RetryLog
from .refusals import what_to_fix
from .register import Registration, connect

logger = logging.getLogger("relay.api")

Handler = Callable[[yamux.Stream, yamux.Stream], Awaitable[None]]


class _Lane:
    """One of a server's registrations with the relay (``sessions=``) and its reconnect loop."""

    def __init__(self, index: int, backoff: Backoff) -> None:
        self.index = index
        self.backoff = backoff
        self.session: yamux.Session | None = None
        """Its current session (None before its first registration)."""
        self.refused_backoff = Backoff.after_permanent(backoff)
        """Its delays after permanent refusals (``retry_permanent``)."""
        self.task: asyncio.Task[None] | None = None
        """Its reconnect loop (the first lane's runs in the server's own task)."""


class RelayedServer:
    """Like ``asyncio.Server``, for a listener that lives on the relay.

    Owns the registration and one handler task per relayed connection. With
    ``reconnect`` (the default) a lost relay is registered with again, with
    backoff and jitter (``relay.client.reconnect``), until ``close()``; each new
    endpoint goes to ``on_endpoint(endpoint)`` and to ``wait_endpoint()``.
    Handlers of a lost session are cancelled (their streams are gone). With
    ``reconnect=False`` the server stops when the relay is lost and
    ``close_reason`` says why. A permanent refusal (a wrong secret, a port the
    client may never have: ``RegistrationError.permanent``) stops it too, with
    one ERROR line that says what to fix, unless ``retry_permanent``: then it
    tries again from ``reconnect_max_delay`` doubling up to 5 minutes.

    ``start()`` registers once (and raises if that fails, like
    ``asyncio.start_server`` on a bad address); ``start(retry=True)`` keeps
    trying from the first attempt, as the forwarder does.

    With ``sessions=K`` (and a relay that offers it) the server keeps K
    registrations of its identity, all on one public port, each with its own
    reconnect loop (a *lane*): the relay spreads public connections over them,
    and while one is lost the others serve. The first registers alone; the
    others follow once the relay said how many it takes.
    """

    @takes_options(RegistrationOptions, others=True)
    def __init__(
        self,
        handler: Handler,
        relay_host: str,
        relay_port: int,
        options: RegistrationOptions | None = None,
        *,
        on_endpoint: Callable[[str], object] | None = None,
        config: yamux.Config | None = None,
        **keywords: Any,
    ) -> None:
        option_keywords, connection = RegistrationOptions.split(keywords)
        checked = RegistrationOptions.build(options, **option_keywords).with_files_read()
        if checked.client_address is None:  # read off each stream before the handler
            checked = dataclasses.replace(checked, client_address=True)
        self.options = checked
        """What every registration asks for (files already read)."""
        self._config = config or checked.session_config()
        """The yamux settings of every session (one window budget for all of them)."""
        self._connection = connection
        """Keywords for ``loop.create_connection`` (e.g. ``local_addr``)."""
        self._handler = handler
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.reconnect = checked.reconnect
        """Register again when the relay is lost (the forwarder's drain turns it off)."""
        self.retry_permanent = checked.retry_permanent
        self.on_endpoint = on_endpoint
        self.backoff = Backoff(checked.reconnect_delay, checked.reconnect_max_delay)
        """The first lane's; each lane backs off on its own."""
        self._lanes = [_Lane(0, self.backoff)]
        self.refusal: RegistrationError | None = None
        """The permanent refusal that stopped the server, if one did."""
        self.public_port: int | None = None
        """The public port of the current (or, while reconnecting, the last) registration."""
        self.client_address = False
        """Streams start with the public client's address (read off before the handler)."""
        self.url: str | None = None
        """A service reached by name (``route``): where public clients reach it."""
        self._host: str | None = None
        """A service reached by name: its host name on the relay's shared port."""
        self.registrations = 0
        """Successful registrations so far (1 + the reconnects)."""
        self._handlers = yamux.TaskOwner(logger)
        self._tasks = yamux.TaskOwner(logger)
        self._closing = False
        self._warned_sessions = False
        self._lost_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._endpoint_waiters: list[asyncio.Future[str]] = []

    # -------------------------------------------------------------- queries
    @property
    def session(self) -> yamux.Session | None:
        """A current session with the relay: the first open one, else the first lane's
        last (None before the first registration)."""
        sessions = self.sessions
        return sessions[0] if sessions else self._lanes[0].session

    @property
    def sessions(self) -> list[yamux.Session]:
        """Every open session with the relay (one per lane that is registered)."""
        return [
            lane.session
            for lane in self._lanes
            if lane.session is not None and not lane.session.closed
        ]

    @property
    def relay_endpoint(self) -> str:
        return format_endpoint(self.relay_host, self.relay_port)

    @property
    def public_host(self) -> str:
        """Where public clients connect: the relay's host as given, or the host name of a
        service reached by name."""
        return self._host or self.relay_host

    @property
    def public_address(self) -> tuple[str, int]:
        """``(host, port)`` where public clients connect."""
        if self.public_port is None:
            raise RuntimeError("not registered with the relay yet")
        return (self.public_host, self.public_port)

    @property
    def public_endpoint(self) -> str:
        """``host:port`` where public clients connect; the URL of a service reached by name."""
        return self.url or format_endpoint(*self.public_address)

    @property
    def close_reason(self) -> str | None:
        """Why the last session ended if not by ``close()``; None while serving or after close()."""
        if self._closing or self.is_serving():
            return None
        return self._lost_reason

    @property
    def connections(self) -> int:
        """Relayed connections whose handler is running."""
        return len(self._handlers)

    def is_serving(self) -> bool:
        return not self._closing and bool(self.sessions)

    @property
    def started(self) -> bool:
        return self._task is not None

    def __repr__(self) -> str:
        state = "serving" if self.is_serving() else "closed" if self._closing else "reconnecting"
        where = self.public_endpoint if self.public_port is not None else "unregistered"
        return f"<RelayedServer {where} {state} connections={self.connections}>"

    async def wait_endpoint(self) -> str:
        """The public endpoint once registered: now if serving, else after the next registration.

        Raises PermanentRefusalError if the server stopped on a permanent refusal,
        RelayDisconnectedError if it stops otherwise (closed, or the relay lost with
        ``reconnect=False``).
        """
        if self.is_serving():
            return self.public_endpoint
        if self._task is None or self._task.done():
            raise self._stopped_error()
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._endpoint_waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in self._endpoint_waiters:
                self._endpoint_waiters.remove(waiter)

    # ------------------------------------------------------------ lifecycle
    async def start(self, *, retry: bool = False) -> None:
        """Register and serve in the background; without ``retry`` a first failure raises."""
        if self._task is not None:
            raise RuntimeError("the server was already started")
        lane = self._lanes[0]
        first = None if retry else self._attach(lane, await self._register())
        self._task = self._tasks.spawn(self._run(first), name=f"relay-server-{self.relay_endpoint}")

    def close(self) -> None:
        """Start closing: the session ends (the relay frees the port) and handlers are cancelled."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        """Until the server stopped and every handler finished (never raises)."""
        if self._task is not None:
            await asyncio.wait([self._task])
        for lane in self._lanes:
            if lane.session is not None and not lane.session.closed:
                lane.session.close()  # closed before its task ever ran
                await lane.session.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close) or until close(); raise if it stops on its own.

        It stops on its own on a permanent refusal (PermanentRefusalError), and with
        ``reconnect=False`` when the relay is lost (RelayDisconnectedError).
        """
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        if not self._closing:
            raise self._stopped_error()

    async def __aenter__(self) -> RelayedServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # ------------------------------------------------------------- internals
    def _stopped_error(self) -> RelayError:
        """What waiting for this server raises once it stopped."""
        if self._closing:
            return RelayDisconnectedError("the server is closed")
        if self.refusal is not None:
            refusal = self.refusal
            reason = refusal.reason if isinstance(refusal, RelayRefusedError) else str(refusal)
            error = PermanentRefusalError(
                f"stopped registering with the relay at {self.relay_endpoint}: {refusal}", reason
            )
            error.__cause__ = refusal
            return error
        return RelayDisconnectedError(
            f"lost the relay at {self.relay_endpoint}: {self._lost_reason}"
        )

    @property
    def _what(self) -> str:
        service = f" {self.options.name}" if self.options.name else ""
        return f"cannot register{service} with the relay at {self.relay_endpoint}"

    async def _register(self) -> Registration:
        return await connect(
            self.relay_host, self.relay_port, self.options, self._config, self._connection
        )

    async def _run(self, first: yamux.Session | None) -> None:
        """The first lane, then the others until they stop too; everything ends here."""
        try:
            await self._maintain(self._lanes[0], first)
            while self.refusal is None and (
                running := [
                    lane.task
                    for lane in self._lanes[1:]
                    if lane.task is not None and not lane.task.done()
                ]
            ):
                await asyncio.wait(running)
        finally:
            others = [lane.task for lane in self._lanes[1:] if lane.task is not None]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others)
            await self._cancel_handlers()
            for waiter in self._endpoint_waiters:
                if not waiter.done():
                    waiter.set_exception(self._stopped_error())

    async def _maintain(self, lane: _Lane, session: yamux.Session | None) -> None:
        """One lane's reconnect loop: register, serve until the session ends, wait, again."""
        loop = asyncio.get_running_loop()
        what = self._what
        retries = RetryLog(logger, what if lane.index == 0 else f"session {lane.index + 1}: {what}")
        try:
            while True:
                if session is None:
                    try:
                        registered = await self._register()
                    except (OSError, TimeoutError) as exc:  # RegistrationError is an OSError
                        delay = self._after_failure(exc, lane, retries)
                        if delay is None:
                            return
                        await asyncio.sleep(delay)
                        continue
                    retries.recovered()
                    lane.refused_backoff.reset()
                    session = self._attach(lane, registered)
                started = loop.time()
                reason = await self._serve(session)
                session = None
                if self.sessions:
                    logger.warning(
                        "lost session %d of %d with the relay at %s: %s; the others serve %s",
                        lane.index + 1,
                        len(self._lanes),
                        self.relay_endpoint,
                        reason,
                        self.public_endpoint,
                    )
                else:
                    logger.warning(
                        "lost the relay at %s: %s; public endpoint %s is gone",
                        self.relay_endpoint,
                        reason,
                        self.public_endpoint,
                    )
                self._lost_reason = reason
                if not self.reconnect:
                    return
                if loop.time() - started >= lane.backoff.maximum:
                    lane.backoff.reset()  # a session that lived: try again quickly
                delay = lane.backoff.next_delay()
                logger.info("reconnecting to %s in %.2f s", self.relay_endpoint, delay)
                await asyncio.sleep(delay)
        finally:
            if lane.session is not None:
                lane.session.close()
                await lane.session.wait_closed()

    def _after_failure(
        self, exc: OSError | TimeoutError, lane: _Lane, retries: RetryLog
    ) -> float | None:
        """Seconds until ``lane`` tries again after a failed registration; None: stop (logged)."""
        reason = (
            str(exc)
            if isinstance(exc, RegistrationError | TimeoutError)
            else describe_os_error(exc)
        )
        permanent = exc if isinstance(exc, RegistrationError) and exc.permanent else None
        if permanent is not None and not (self.retry_permanent and self.reconnect):
            self.refusal = permanent
            self._lost_reason = reason
            logger.error(
                "%s: %s; stopped, as trying again cannot succeed: %s%s",
                self._what,
                reason,
                what_to_fix(permanent),
                "; --retry-permanent (retry_permanent=True) keeps trying" if self.reconnect else "",
            )
            return None
        if not self.reconnect:
            logger.error("%s: %s", self._what, reason)
            self._lost_reason = reason
            return None
        if permanent is not None:
            delay = lane.refused_backoff.next_delay()
            retries.refused(reason, delay)
            return delay
        delay = lane.backoff.next_delay()
        if isinstance(exc, RelayRefusedError) and exc.retry_after is not None:
            delay = max(delay, lane.backoff.spread(exc.retry_after))
        retries.failed(reason, delay)
        return delay

    def _attach(self, lane: _Lane, registration: Registration) -> yamux.Session:
        """A new registration of ``lane``; tell whoever waits for the endpoint, unless the
        others serve it already."""
        serving = self.public_port if self.sessions else None
        lane.session = registration.session
        self.public_port = registration.public_port
        self.client_address = registration.client_address
        self.url = registration.url
        self._host = registration.host
        self.registrations += 1
        self._lost_reason = None
        if lane.index == 0:
            self._add_lanes(registration.sessions)
        endpoint = self.public_endpoint
        for waiter in self._endpoint_waiters:
            if not waiter.done():
                waiter.set_result(endpoint)
        if serving == registration.public_port:
            return registration.session
        if serving is not None:
            logger.warning(
                "session %d got public port %d while the others serve %d",
                lane.index + 1,
                registration.public_port,
                serving,
            )
        if self.on_endpoint is not None:
            try:
                self.on_endpoint(endpoint)
            except Exception:
                logger.exception("on_endpoint(%r) failed", endpoint)
        return registration.session

    def _add_lanes(self, granted: int) -> None:
        """Start the lanes beyond the first once the relay said how many sessions it takes."""
        wanted = self.options.sessions
        if wanted > 1 and granted < wanted and not self._warned_sessions:
            self._warned_sessions = True
            logger.warning(
                "the relay at %s does not take several sessions of a service (an older or "
                "seed relay): registering one, not %d",
                self.relay_endpoint,
                wanted,
            )
        for index in range(len(self._lanes), min(wanted, granted)):
            lane = _Lane(index, Backoff(self.backoff.initial, self.backoff.maximum))
            self._lanes.append(lane)
            lane.task = self._tasks.spawn(
                self._maintain(lane, None), name=f"relay-server-{self.relay_endpoint}-{index + 1}"
            )

    async def _serve(self, session: yamux.Session) -> str:
        """Run handlers for the streams of ``session`` until it ends; why it ended.

        yamux's one accept loop and handler policy (close on return, reset on
        error or cancel); the handler tasks are ours to count and cancel.
        """
        # Without client addresses to read first, the handler runs as it is (no coroutine
        # in between, on every stream).
        handler = self._handle if self.client_address else self._handler
        try:
            await session.serve(handler, tasks=self._handlers, logger=logger)
        finally:
            session.close()
            await session.wait_closed()
            await self._cancel_handlers()
        reason = session.close_reason
        return str(reason) if reason is not None else "session closed"

    async def _cancel_handlers(self) -> None:
        self._handlers.cancel()
        await self._handlers.wait()

    async def _handle(self, reader: yamux.Stream, writer: yamux.Stream) -> None:
        await read_client_address(reader)
        await self._handler(reader, writer)
