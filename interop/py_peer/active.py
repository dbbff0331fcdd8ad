"""Python as the yamux client: opens the streams, drives each scenario and verifies it.

The mirror of the Go peer's active.go; the per-stream roles it shares with the passive side
are in roles.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable

import yamux

from .checks import check_big_frames, check_keepalive, pings_during, window_overrun
from .params import BUSY_LIMIT, ScenarioError
from .report import Report
from .roles import (
    big_write,
    closer,
    drainer,
    ping_k,
    read_until_end,
    refused_after_goaway,
    send_goaway,
    transfer,
    write_until_error,
)
from .streamio import expect_line, finish, read_line, read_n, see_reset, sha, write_line


class Active:
    """Drives one scenario over ``session`` and records what it saw in ``report``."""

    def __init__(self, session: yamux.Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.p = report.params

    async def open(self, cmd: str = "") -> yamux.Stream:
        try:
            stream = await self.session.open_stream()
        except yamux.YamuxError as exc:
            raise ScenarioError(f"open stream for {cmd!r}: {exc!r}") from exc
        if cmd:
            write_line(stream, cmd)
        return stream

    async def run(self) -> None:
        ctl = None if self.p.scenario == "closebusy" else await self.open()
        await getattr(self, "sc_" + self.p.scenario)()
        if ctl is None:
            return
        write_line(ctl, "BYE")
        try:
            verdict = await read_line(ctl)
        except ScenarioError as exc:
            raise ScenarioError(f"control stream: waiting for the answer to BYE: {exc}") from exc
        self.report.notes["peer_verdict"] = repr(verdict)
        if verdict != "BYE OK":
            raise ScenarioError(f"the passive side reports: {verdict!r}")
        await finish(ctl)

    async def gather(self, what: str, jobs: list[Awaitable[None]]) -> None:
        """Run the streams at once; up to 10 failures go in the report."""
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for exc in errors[:10]:
            self.report.fail(f"{what}: {exc}")
        if errors:
            raise ScenarioError(f"{len(errors)} of {len(jobs)} {what} streams failed")

    # -- building blocks

    async def echo(self, n: int, salt: int) -> None:
        stream = await self.open(f"ECHO {n}")
        what = f"ECHO stream {stream.id}"
        try:
            tx, rx = await transfer(stream, self.report, what, send=n, receive=n, salt=salt)
            if sha(tx) != sha(rx):
                raise ScenarioError(f"echoed bytes differ: sent {sha(tx)}, got back {sha(rx)}")
            await finish(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    async def xfer(self, up: int, down: int, salt: int) -> None:
        stream = await self.open(f"XFER {up} {down}")
        what = f"XFER stream {stream.id} (up {up}, down {down})"
        try:
            tx, rx = await transfer(stream, self.report, what, send=up, receive=down, salt=salt)
            line = await read_line(stream)
            want = f"{sha(tx)} {sha(rx)}"
            if line != want:
                raise ScenarioError(f"digest line {line!r}, want {want!r} (<their rx> <their tx>)")
            await finish(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    # -- scenarios

    async def sc_echo(self) -> None:
        self.report.notes["bytes"] = self.p.size
        await self.echo(self.p.size, 0)

    async def sc_parallel(self) -> None:
        rng = random.Random(self.p.seed)
        jobs = [
            (rng.randint(0, self.p.size), rng.randint(0, self.p.size))
            for _ in range(self.p.streams)
        ]
        self.report.notes.update(streams=len(jobs), bytes_both_ways=sum(u + d for u, d in jobs))
        await self.gather("XFER", [self.xfer(up, down, i) for i, (up, down) in enumerate(jobs)])

    async def sc_bulk(self) -> None:
        self.report.notes.update(up=self.p.size, down=self.p.down)
        await self.xfer(self.p.size, self.p.down, 0)

    async def sc_halfclose(self) -> None:
        n = self.p.size
        await closer(await self.open(f"HALFCLOSE {n}"), self.report, payload=n, n=n, salt=1)
        await drainer(await self.open(f"HALFCLOSE-REV {n}"), self.report, n=n, salt=2, expect_m=n)
        self.report.notes.update(closer_sent=n, drainer_sent=n)

    async def sc_rst(self) -> None:
        stream = await self.open("EXPECT-RST")
        await expect_line(stream, "READY")
        stream.reset()
        stream = await self.open("SEND-RST")
        try:
            await see_reset(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"SEND-RST stream {stream.id}: {exc}") from exc
        await self.echo(self.p.size, 3)
        self.report.notes.update(reset_sent=1, reset_seen=1)

    async def sc_ping(self) -> None:
        k = self.p.count
        stream = await self.open(f"PING {k}")
        worst = await ping_k(self.session, self.p, k, "our")
        await expect_line(stream, f"PINGED {k}")
        await finish(stream)
        if self.report.tap.recv.ping_req < k:
            raise ScenarioError(f"peer sent {self.report.tap.recv.ping_req} pings, want >= {k}")
        self.report.notes.update(pings=k, max_rtt_us=round(worst * 1e6))

    async def sc_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pings_during(self.report, "xfer"):
            await self.xfer(self.p.size, self.p.down, 0)
        self.report.notes["xfer_s"] = round(loop.time() - t0, 3)
        await asyncio.sleep(self.p.idle)
        await self.echo(1024, 1)
        if self.session.closed:
            raise ScenarioError(f"session ended: {self.session.close_reason!r}")
        check_keepalive(self.report)

    async def sc_goaway(self) -> None:
        s1 = await self.open()
        s2 = await self.open()
        # S1: we send Go Away; the passive side's next open must fail.
        write_line(s1, "EXPECT-GOAWAY")
        try:
            result = await send_goaway(self.session, s1)
        except ScenarioError as exc:
            raise ScenarioError(f"S1 (EXPECT-GOAWAY): {exc}") from exc
        await finish(s1)
        syn_after = self.report.tap.syn_after_our_goaway
        # S2: the passive side sends Go Away; our next open must fail.
        write_line(s2, "SEND-GOAWAY")
        try:
            how = await refused_after_goaway(self.session, s2, self.report)
        except ScenarioError as exc:
            raise ScenarioError(f"S2 (SEND-GOAWAY): {exc}") from exc
        await finish(s2)
        self.report.notes.update(
            peer_open_after_our_goaway=repr(result), our_open=how, syn_after_our_goaway=syn_after
        )

    async def sc_bigwindow(self) -> None:
        n = self.p.size
        stream = await self.open(f"BIGWRITE {n}")
        what = f"BIGWRITE stream {stream.id} (n {n}, window {self.p.window})"
        try:
            await expect_line(stream, "READY")
            await expect_line(stream, await big_write(stream, self.p, n, 0))
            rx = hashlib.sha256()
            await read_n(stream, n, rx, self.report.meter(n, f"{what} received"))
            await expect_line(stream, sha(rx))
            await finish(stream)
        except (ScenarioError, yamux.YamuxError) as exc:
            raise ScenarioError(f"{what}: {exc}") from exc
        check_big_frames(self.report, n)

    async def sc_openstorm(self) -> None:
        n = self.p.streams
        await self.gather("ECHO", [self.echo(self.p.size, i) for i in range(n)])
        sent, recv = self.report.tap.sent, self.report.tap.recv
        if sent.rst + recv.rst:
            raise ScenarioError(f"resets on the wire: sent {sent.rst}, received {recv.rst}")
        self.report.notes.update(streams=n, backlog=self.p.backlog)

    async def sc_closebusy(self) -> None:
        loop = asyncio.get_running_loop()
        kinds: dict[str, list[yamux.Stream]] = {"HOLD": [], "FLOOD": [], "STALL": []}
        for _ in range(self.p.streams):
            for cmd, streams in kinds.items():
                stream = await self.open(cmd)
                await expect_line(stream, "READY")
                streams.append(stream)

        async def timed(coro: Awaitable[str]) -> tuple[str, float]:
            result = await coro
            return result, loop.time()

        pending = [asyncio.ensure_future(timed(read_until_end(s))) for s in kinds["HOLD"]]
        pending += [
            asyncio.ensure_future(timed(write_until_error(s, self.p, 5))) for s in kinds["STALL"]
        ]
        try:
            await asyncio.sleep(0.5)  # FLOOD and STALL exhaust their windows
            closed_at = loop.time()
            self.session.close()
            await self.session.wait_closed()
            async with asyncio.timeout(BUSY_LIMIT):
                results = await asyncio.gather(*pending)
        except TimeoutError:
            hung = sum(not t.done() for t in pending)
            raise ScenarioError(
                f"{hung} of our {len(pending)} pending reads/writes still hang "
                f"{BUSY_LIMIT}s after closing the session"
            ) from None
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        overruns = [window_overrun(self.report, s.id, ours=True) for s in kinds["STALL"]]
        overruns += [window_overrun(self.report, s.id, ours=False) for s in kinds["FLOOD"]]
        for overrun in filter(None, overruns):
            self.report.fail(f"closebusy: {overrun}")
        self.report.notes.update(
            busy_streams=3 * self.p.streams,
            pending_ops_ended=len(results),
            within_s=round(max(t for _, t in results) - closed_at, 3),
            outcomes=",".join(sorted(set(r for r, _ in results))),
        )


async def run_active(session: yamux.Session, report: Report) -> None:
    """Drive the scenario as yamux client, then close the session (after BYE)."""
    try:
        await Active(session, report).run()
    finally:
        session.close()
        await session.wait_closed()
