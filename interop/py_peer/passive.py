"""Python as the yamux server: accepts every stream and obeys its command line.

The mirror of the Go peer's passive.go; the per-stream roles it shares with the active side
are in roles.py. After the session ends it checks what it served (``check_served``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import yamux

from .checks import check_big_frames, check_keepalive, pings_during, window_overrun
from .params import BUSY_LIMIT, COMMAND_ARITY, HANDLER_GRACE, READ_CHUNK, ScenarioError
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
from .streamio import read_line, read_n, see_reset, sha, write_line

logger = logging.getLogger("interop.py_peer")


class Passive:
    """Python as yamux server: accepts every stream and obeys its command (mirror of passive.go)."""

    def __init__(self, session: yamux.Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.p = report.params
        self.loop = asyncio.get_running_loop()
        self.handlers = yamux.TaskOwner(logger)
        self.bye_seen = False
        self.checked = False
        self.ended = asyncio.Event()
        self.end_at: float | None = None
        self.busy_ends: list[float] = []

    async def run(self) -> None:
        try:
            while True:
                try:
                    stream = await self.session.accept_stream()
                except yamux.SessionClosedError:
                    break
                except yamux.NoNewStreamsError:
                    # yamux bug (see tests/test_interop.py::test_accept_after_remote_go_away):
                    # accept_stream raises once the PEER sent Go Away, although the peer
                    # may still open streams. No scenario opens any after it, so wait for
                    # the session's end instead.
                    self.report.notes["accept_after_remote_goaway"] = "NoNewStreamsError"
                    await self.session.wait_closed()
                    break
                self.handlers.spawn(self.serve(stream), name=f"py-peer-stream-{stream.id}")
        finally:
            self.end_at = self.loop.time()
            self.ended.set()
            self.session.close()
            await self.session.wait_closed()
            await self._wait_handlers()
        if not self.bye_seen and self.p.scenario != "closebusy":
            self.report.fail("the session ended without BYE on the control stream")
        if not self.checked:
            self.check_served()

    async def _wait_handlers(self) -> None:
        try:
            async with asyncio.timeout(HANDLER_GRACE):
                await self.handlers.wait()
        except TimeoutError:
            self.report.fail(
                f"{len(self.handlers)} stream handlers still running "
                f"{HANDLER_GRACE}s after the session ended"
            )
            self.handlers.cancel()
            await self.handlers.wait()

    async def serve(self, stream: yamux.Stream) -> None:
        what = f"stream {stream.id}"
        try:
            line = await read_line(stream)
            what = f"{line} stream {stream.id}"
            cmd, *args = line.split(" ") if line else [""]
            if COMMAND_ARITY.get(cmd) != len(args) or not all(a.isdigit() for a in args):
                raise ScenarioError(f"unknown command line {line!r}")
            nums = [int(a) for a in args]
            await getattr(self, "cmd_" + cmd.lower().replace("-", "_"))(stream, *nums)
        except (ScenarioError, yamux.YamuxError, ConnectionError) as exc:
            self.report.fail(f"{what}: {exc}")
            stream.reset()
            return
        except Exception as exc:
            logger.exception("%s: handler failed", what)
            self.report.fail(f"{what}: unexpected {exc!r}")
            stream.reset()
            return
        if cmd != "BYE":
            self.report.served[cmd] += 1

    # -- commands

    async def cmd_bye(self, stream: yamux.Stream) -> None:
        await self.handlers.wait()
        self.check_served()
        self.bye_seen = self.checked = True
        verdict = "BYE OK"
        if self.report.failures:
            msg = "; ".join(self.report.failures).replace("\n", " ")
            verdict = "BYE FAIL " + (msg[:200] + "..." if len(msg) > 200 else msg)
        write_line(stream, verdict)
        stream.close()

    async def cmd_echo(self, stream: yamux.Stream, n: int) -> None:
        meter = self.report.meter(n, f"ECHO stream {stream.id} echoed")
        try:
            while meter.seen < n:
                data = await stream.read(min(n - meter.seen, READ_CHUNK))
                if not data:
                    raise ScenarioError(f"echoed {meter.seen} of {n} bytes, then EOF")
                stream.write(data)
                meter.seen += len(data)
                await stream.drain()
        except (yamux.YamuxError, ConnectionError) as exc:
            raise ScenarioError(f"echoed {meter.seen} of {n} bytes: {exc!r}") from exc
        stream.close()

    async def cmd_xfer(self, stream: yamux.Stream, up: int, down: int) -> None:
        with pings_during(self.report, "xfer"):
            tx, rx = await transfer(
                stream,
                self.report,
                f"XFER stream {stream.id}",
                send=down,
                receive=up,
                salt=stream.id,
            )
        write_line(stream, f"{sha(rx)} {sha(tx)}")
        stream.close()

    async def cmd_halfclose(self, stream: yamux.Stream, n: int) -> None:
        await drainer(stream, self.report, n=n, salt=stream.id, expect_m=self.p.size)

    async def cmd_halfclose_rev(self, stream: yamux.Stream, n: int) -> None:
        await closer(stream, self.report, payload=self.p.size, n=n, salt=stream.id)

    async def cmd_expect_rst(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        await see_reset(stream)

    async def cmd_send_rst(self, stream: yamux.Stream) -> None:
        stream.reset()

    async def cmd_ping(self, stream: yamux.Stream, k: int) -> None:
        await ping_k(self.session, self.p, k, "our")
        write_line(stream, f"PINGED {k}")
        stream.close()

    async def cmd_expect_goaway(self, stream: yamux.Stream) -> None:
        self.report.notes["our_open_after_peer_goaway"] = await refused_after_goaway(
            self.session, stream, self.report
        )
        stream.close()

    async def cmd_send_goaway(self, stream: yamux.Stream) -> None:
        line = await send_goaway(self.session, stream)
        self.report.notes.update(
            peer_open_after_our_goaway=repr(line),
            syn_after_our_goaway=self.report.tap.syn_after_our_goaway,
        )
        stream.close()

    async def cmd_bigwrite(self, stream: yamux.Stream, n: int) -> None:
        write_line(stream, "READY")
        rx = hashlib.sha256()
        await read_n(stream, n, rx, self.report.meter(n, f"BIGWRITE stream {stream.id} received"))
        write_line(stream, sha(rx))
        write_line(stream, await big_write(stream, self.p, n, stream.id))
        check_big_frames(self.report, n)
        stream.close()

    def _busy_end(self) -> None:
        self.busy_ends.append(self.loop.time())

    async def cmd_hold(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        try:
            await read_until_end(stream)
        finally:
            self._busy_end()

    async def cmd_flood(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        await write_until_error(stream, self.p, stream.id)
        self._busy_end()
        if overrun := window_overrun(self.report, stream.id, ours=True):
            raise ScenarioError(f"FLOOD: {overrun}")

    async def cmd_stall(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        await self.ended.wait()
        self._busy_end()
        if overrun := window_overrun(self.report, stream.id, ours=False):
            raise ScenarioError(f"STALL: {overrun}")

    # -- verdict

    def check_served(self) -> None:
        s, p, r = self.report.served, self.p, self.report

        def need(cmd: str, n: int, exact: bool = False) -> None:
            if s[cmd] < n or (exact and s[cmd] != n):
                r.fail(f"served {s[cmd]} {cmd} streams successfully, want {n}")

        sent, recv = r.tap.sent, r.tap.recv
        sc = p.scenario
        if sc == "echo":
            need("ECHO", 1)
        elif sc == "parallel":
            need("XFER", p.streams, exact=True)
        elif sc == "bulk":
            need("XFER", 1)
        elif sc == "halfclose":
            need("HALFCLOSE", 1)
            need("HALFCLOSE-REV", 1)
        elif sc == "rst":
            need("EXPECT-RST", 1)
            need("SEND-RST", 1)
            need("ECHO", 1)
        elif sc == "ping":
            need("PING", 1)
            if recv.ping_req < p.count:
                r.fail(f"the peer sent {recv.ping_req} ping requests, want >= {p.count}")
            r.notes["peer_pings"] = recv.ping_req
        elif sc == "keepalive":
            need("XFER", 1)
            need("ECHO", 1)
            check_keepalive(r)
        elif sc == "goaway":
            need("EXPECT-GOAWAY", 1)
            need("SEND-GOAWAY", 1)
        elif sc == "bigwindow":
            need("BIGWRITE", 1)
        elif sc == "openstorm":
            need("ECHO", p.streams, exact=True)
            if sent.rst + recv.rst:
                r.fail(f"resets on the wire: sent {sent.rst}, received {recv.rst}")
        elif sc == "closebusy":
            for cmd in ("HOLD", "FLOOD", "STALL"):
                need(cmd, p.streams, exact=True)
            end = self.end_at if self.end_at is not None else self.loop.time()
            worst = max((t - end for t in self.busy_ends), default=0.0)
            if worst > BUSY_LIMIT:
                r.fail(f"busy operations ended up to {worst:.3f}s after the session ended")
            r.notes.update(
                busy_ops_ended=len(self.busy_ends), worst_after_session_end=round(worst, 3)
            )
        r.notes["served"] = ",".join(f"{k}:{v}" for k, v in sorted(s.items()))


async def run_passive(session: yamux.Session, report: Report) -> None:
    """Serve the scenario as yamux server until the session ends; then the final checks."""
    await Passive(session, report).run()
