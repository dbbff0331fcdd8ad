"""One scenario end to end: listen, start a family's peer, run our half, take both verdicts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import traceback
from dataclasses import dataclass, field
from typing import Any

import yamux

from .. import families, harness
from .active import run_active
from .params import ROLES, Params, ScenarioError
from .passive import run_passive
from .report import Report
from .tap import WireTap


class PeerListener:
    """Listens on 127.0.0.1:0 for the Go peer's one connection; it becomes a yamux session."""

    def __init__(self, *, client: bool, config: yamux.Config, tap: WireTap) -> None:
        self._client = client
        self._config = config
        self._tap = tap
        self._server: asyncio.Server | None = None
        self.accepted: asyncio.Future[yamux.Session] | None = None
        self.extra_connections = 0
        self._taken = False

    @property
    def addr(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def _protocol(self) -> asyncio.Protocol:
        if self._taken:
            self.extra_connections += 1
            return _Refuse()
        self._taken = True
        assert self._server is not None
        # One connection only; not closed right here: the transport being built attaches to it.
        asyncio.get_running_loop().call_soon(self._server.close)
        return _Attach(self)

    def attach(self, transport: asyncio.Transport) -> None:
        """The Go peer's connection: a yamux session from its first byte, through the tap."""
        assert self.accepted is not None
        if self.accepted.done():  # the scenario was over before the peer connected
            transport.abort()
            return
        session = yamux.Session.attach(
            self._tap.wrap(transport), client=self._client, config=self._config
        )
        self.accepted.set_result(session)

    async def __aenter__(self) -> PeerListener:
        loop = asyncio.get_running_loop()
        self.accepted = loop.create_future()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self.accepted is not None
        self._server.close()
        if self.accepted.done() and not self.accepted.cancelled():
            self.accepted.result().close()
            await self.accepted.result().wait_closed()
        else:
            self.accepted.cancel()
        await self._server.wait_closed()


class _Attach(asyncio.Protocol):
    def __init__(self, listener: PeerListener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.attach(transport)  # type: ignore[arg-type]


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


@dataclass
class Outcome:
    """Both verdicts of one scenario x role, and what a failure report needs."""

    params: Params
    py_role: str
    report: Report
    family: str = "go"
    """The peer's yamux family (interop/families.py); ``go_*`` fields hold its peer's output."""
    go: harness.Finished | None = None
    go_error: str | None = None
    """The harness's own failure (timeout, ...), with whatever Go printed."""
    py_error: BaseException | None = None
    py_traceback: str = ""
    wall_s: float = 0.0
    go_args: list[str] = field(default_factory=list)

    @property
    def go_role(self) -> str:
        return "server" if self.py_role == "client" else "client"

    @property
    def go_ok(self) -> bool:
        prefix = f"OK {self.params.scenario} {self.go_role} "
        return (
            self.go is not None
            and self.go.returncode == 0
            and self.go.ok_line is not None
            and self.go.ok_line.startswith(prefix)
        )

    @property
    def py_ok(self) -> bool:
        return self.py_error is None and not self.report.failures

    @property
    def ok(self) -> bool:
        return self.go_ok and self.py_ok

    def go_detail(self, key: str) -> str | None:
        """A ``key=value`` of Go's OK line (Go quotes values with spaces: %q)."""
        line = self.go.ok_line if self.go is not None else None
        try:
            parts = shlex.split(line or "")
        except ValueError:
            parts = (line or "").split()
        for part in parts:
            k, sep, v = part.partition("=")
            if sep and k == key:
                return v
        return None

    def describe(self) -> str:
        p = self.params
        knobs = {k: v for k, v in dataclasses.asdict(p).items() if k != "scenario"}
        out = [
            f"=== scenario {p.scenario}: python yamux {self.py_role} vs {self.family} yamux-peer "
            f"-role {self.go_role}  ({'OK' if self.ok else 'FAILED'}, {self.wall_s:.2f}s)",
            f"knobs: {knobs}",
            f"{self.family} peer command: yamux-peer {' '.join(self.go_args)}",
            f"verdicts: go={'ok' if self.go_ok else 'FAILED'} "
            f"python={'ok' if self.py_ok else 'FAILED'}",
        ]
        if self.py_error is not None:
            out.append(f"python exception: {self.py_error!r}")
        out.append(self.report.describe())
        if self.go is not None:
            out += [
                f"go exit code {self.go.returncode}; OK line: {self.go.ok_line!r}",
                "--- go stdout",
                self.go.stdout.rstrip(),
                "--- go stderr (tail)",
                self.go.stderr[-6000:].rstrip(),
            ]
        if self.go_error:
            out += ["--- go harness error", self.go_error.rstrip()]
        if self.py_traceback:
            out += ["--- python traceback", self.py_traceback.rstrip()]
        return "\n".join(out)


async def run_against_go(scenario: str, py_role: str, **overrides: Any) -> Outcome:
    """:func:`run_against` the Go peer (hashicorp/yamux)."""
    return await run_against("go", scenario, py_role, **overrides)


async def run_against(family: str, scenario: str, py_role: str, **overrides: Any) -> Outcome:
    """Run one scenario: Python in ``py_role`` ("client" = active) against ``family``'s peer.

    Never raises for a scenario failure: look at ``Outcome.ok`` and ``describe()``.
    The peer (container or process) is removed before this returns, whatever happened.
    """
    if py_role not in ROLES:
        raise ValueError(f"py_role must be one of {ROLES}")
    fam = families.family(family)
    params = Params.for_scenario(scenario, **overrides)
    report = Report(scenario, py_role, params)
    outcome = Outcome(params, py_role, report, family)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with PeerListener(
        client=py_role == "client", config=params.config(), tap=report.tap
    ) as listener:
        assert listener.accepted is not None
        go = await asyncio.to_thread(
            fam.start_peer, outcome.go_role, listener.addr, scenario, **params.go_knobs()
        )
        outcome.go_args = list(go.args)
        go_exit = asyncio.ensure_future(go.await_exit(within=params.timeout + 30))
        try:
            first: set[asyncio.Future[Any]] = {listener.accepted, go_exit}
            await asyncio.wait(first, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if not listener.accepted.done():
                raise ScenarioError(
                    f"the {family} peer did not connect"
                    + (" (it exited)" if go_exit.done() else " within 60s")
                )
            session = report.session = listener.accepted.result()
            side = run_active if py_role == "client" else run_passive
            async with asyncio.timeout(params.timeout + 10):
                await side(session, report)
        except Exception as exc:  # reported in the outcome
            outcome.py_error = exc
            outcome.py_traceback = traceback.format_exc()
        finally:
            if listener.accepted.done() and not listener.accepted.cancelled():
                listener.accepted.result().close()
                await listener.accepted.result().wait_closed()
            try:
                outcome.go = await asyncio.wait_for(asyncio.shield(go_exit), 30)
            except harness.HarnessError as exc:
                outcome.go_error = str(exc)
            except TimeoutError:
                outcome.go_error = f"{family} peer did not exit within 30s after our session ended"
            finally:
                if not go_exit.done():
                    await asyncio.to_thread(go.close)
                    with contextlib.suppress(BaseException):
                        await go_exit
                await asyncio.to_thread(go.close)
            if outcome.go is None and outcome.go_error is not None:
                out, err = go.output()
                outcome.go = harness.Finished(-1, out, err)
            if listener.extra_connections:
                report.fail(f"{listener.extra_connections} unexpected extra connections")
    outcome.wall_s = loop.time() - t0
    return outcome
