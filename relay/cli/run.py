"""Running a relay or forwarder until a signal: event loop, logging, metrics, drain, sd_notify."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click

from ..client.forwarder import Forwarder
from ..net import format_endpoint
from ..ops import drain, logs, sdnotify
from ..options import ProcessOptions, RelayOptions, Service
from ..server.interface import Relay
from ..store.state_dir import StateDirError
from ..workers.supervisor import STOP_GRACE, Supervisor
from .build import (
    build_forwarder,
    build_server,
    check_worker_options,
    process_options,
    relay_options,
)

logger = logging.getLogger("relay.cli")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop to run on: uvloop if asked for, or with ``auto`` when it is installed.

    uvloop (the ``fast`` extra) makes the transports cheaper; the relay is
    correct on either loop (the test suite runs both).
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise click.UsageError(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop, or install "
                "relay with its fast extra: pip install '.[fast]')"
            ) from None
        return None
    return uvloop.new_event_loop


def run_server(ctx: click.Context, port: int, values: Mapping[str, Any]) -> NoReturn:
    process = process_options(ctx, values)
    options = relay_options(ctx, values)
    loop_factory = event_loop_factory(process.event_loop)
    if options.workers > 1:
        run_workers(ctx, port, options, process, loop_factory)
    server = build_server(ctx, port, options)
    setup_logging(process)
    raise_fd_limit()
    ctx.exit(
        drain.run_until_signal(
            lambda: _serve_relay(server, port, process.metrics),
            loop_factory,
            drain=drain.relay_drain(server),
            drain_timeout=process.drain_timeout,
            on_drain=lambda: sdnotify.stopping("draining"),
        )
    )


def run_workers(
    ctx: click.Context,
    port: int,
    options: RelayOptions,
    process: ProcessOptions,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> NoReturn:
    """``relay server --workers N`` (N > 1): a supervisor of N relay processes."""
    check_worker_options(ctx, port, options)
    supervisor = Supervisor(port, options, process, uvloop=loop_factory is not None)
    logs.setup(process.level, process.log_format, connection_log=process.connection_log, worker=0)
    raise_fd_limit()
    ctx.exit(
        drain.run_until_signal(
            lambda: _supervise(supervisor, process.metrics),
            loop_factory,
            # Each worker drains for up to --drain-timeout, then closes what is left.
            drain=drain.Drain(supervisor.drain, supervisor.wait_idle),
            drain_timeout=process.drain_timeout and process.drain_timeout + STOP_GRACE,
            on_drain=lambda: sdnotify.stopping("draining"),
        )
    )


async def _supervise(supervisor: Supervisor, metrics_address: tuple[str, int] | None) -> int:
    from ..ops import http
    from ..workers.aggregate import WorkersCollector, workers_status

    try:
        async with http.exposed(
            metrics_address,
            WorkersCollector(supervisor),
            lambda: workers_status(supervisor),
            supervisor.readiness,
            refresh=supervisor.refresh,
        ):
            return await supervisor.run()
    except OSError as exc:
        logger.error(
            "cannot serve metrics on %s: %s",
            format_endpoint(*metrics_address or ("?", 0)),
            exc.strerror or exc,
        )
        return 1


def run_forward(
    ctx: click.Context,
    host: str,
    port: int,
    services: Sequence[Service],
    values: Mapping[str, Any],
) -> NoReturn:
    process = process_options(ctx, values)
    forwarder = build_forwarder(ctx, host, port, services, values)
    loop_factory = event_loop_factory(process.event_loop)
    setup_logging(process)
    raise_fd_limit()
    ctx.exit(
        drain.run_until_signal(
            lambda: _run_forwarder(forwarder, process.metrics),
            loop_factory,
            drain=drain.forwarder_drain(forwarder),
            drain_timeout=process.drain_timeout,
            on_drain=lambda: sdnotify.stopping("draining"),
        )
    )


async def _run_forwarder(forwarder: Forwarder, metrics_address: tuple[str, int] | None) -> int:
    from ..ops import http, metrics

    async with http.exposed(
        metrics_address,
        metrics.ForwarderCollector(forwarder),
        lambda: metrics.forwarder_status(forwarder),
        forwarder.readiness,
    ):
        return await forwarder.run()


def setup_logging(process: ProcessOptions) -> None:
    logs.setup(process.level, process.log_format, connection_log=process.connection_log)


def raise_fd_limit() -> None:
    """Every connection is a file descriptor (two on a forwarder): take all the system
    allows (the soft RLIMIT_NOFILE up to the hard one) and say how many that is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        logger.info("file descriptors: at most %d (ulimit -n)", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning(
            "file descriptors: at most %d; cannot raise it to the hard limit %d: %s",
            soft,
            hard,
            exc,
        )
        return
    logger.info("file descriptors: at most %d (the hard limit; the soft one was %d)", hard, soft)


async def _serve_relay(server: Relay, port: int, metrics_address: tuple[str, int] | None) -> int:
    from ..ops import http, metrics

    try:
        await server.start()
    except StateDirError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("cannot listen on port %d: %s", port, exc.strerror or exc)
        return 1
    try:
        async with http.exposed(
            metrics_address,
            metrics.RelayCollector(server),
            lambda: metrics.relay_status(server),
            server.readiness,
        ):
            sdnotify.ready(f"serving relay requests on port {server.port}")
            await server.serve_forever()
    except OSError as exc:
        logger.error(
            "cannot serve metrics on %s: %s",
            format_endpoint(*metrics_address or ("?", 0)),
            exc.strerror or exc,
        )
        return 1
    finally:
        server.close()
        await server.wait_closed()
    return 0
