"""The stream state machine: everything that decides a stream's state lives in this file.

Theory of operation
-------------------
A stream is two things the protocol tracks separately, as hashicorp/yamux does:

* Its **lifecycle**, named as hashicorp names it: ``INIT``, then ``SYN_SENT``
  (we opened it) or ``SYN_RECEIVED`` (the peer did), ``ESTABLISHED`` once the
  open is acknowledged, ``LOCAL_CLOSE`` / ``REMOTE_CLOSE`` after the first FIN,
  ``CLOSED`` after both, ``RESET`` after an RST either way. ``CLOSED`` and
  ``RESET`` are final: the connection forgets the stream.
* Its **handshake**: an open we have not seen ACKed (it counts against the
  accept backlog and the open timeout), or a peer's open we have not accepted
  (ACK owed). It is separate because a FIN may overtake it: a peer may open,
  write and close in one burst before we accept, and we still owe the ACK.

Inputs are what we commit to the stream's outbound order and what arrives,
as in hashicorp: SYN, ACK and RST leave at once; ``SEND_FIN`` is ``close()``,
whose FIN goes out after every byte written before it, so a stream can be
``CLOSED`` while its last bytes still wait for the peer's window; the
connection forgets it once they and the FIN are out.
``StreamMachine.process(input)`` looks ``(state, input)`` up in ``LIFECYCLE``
and ``(handshake, input)`` in ``HANDSHAKE``, moves to the next states and
returns the side effects for the connection to carry out. A pair missing from
``LIFECYCLE`` is illegal and raises ``StreamStateError``; the connection
decides what that costs (data after the peer's FIN resets the stream, a
duplicate SYN ends the session). A pair missing from ``HANDSHAKE`` leaves the
handshake as it is (hashicorp ignores a stray ACK). The two tables are the
rules; at import they are folded into one dict (``_STEPS``) so that a step,
which every frame takes, costs one lookup.

``docs/stream-states.md`` prints both tables (``render_tables()``; a test keeps it current).
"""

from __future__ import annotations

from enum import Enum

from .errors import ProtocolError


class State(Enum):
    __hash__ = object.__hash__  # Enum's own hashes the name in Python: too slow per frame

    INIT = "init"
    SYN_SENT = "SYN sent"
    SYN_RECEIVED = "SYN received"
    ESTABLISHED = "established"
    LOCAL_CLOSE = "local close"
    REMOTE_CLOSE = "remote close"
    CLOSED = "closed"
    RESET = "reset"


class Handshake(Enum):
    __hash__ = object.__hash__

    NONE = "none"
    AWAITING_ACK = "awaiting ACK"
    """We sent SYN; the peer has not ACKed yet."""
    ACK_OWED = "ACK owed"
    """The peer sent SYN; we have not accepted (ACKed) yet."""


class Input(Enum):
    __hash__ = object.__hash__

    SEND_SYN = "send SYN"
    RECV_SYN = "receive SYN"
    SEND_ACK = "send ACK"
    RECV_ACK = "receive ACK"
    SEND_DATA = "send data"
    RECV_DATA = "receive data"
    SEND_FIN = "send FIN"
    RECV_FIN = "receive FIN"
    SEND_RST = "send RST"
    RECV_RST = "receive RST"


class Effect(Enum):
    """What the connection does after a step; EFFECT_DOCS says what each one means."""

    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    ENDED = "ended"
    CLOSED = "closed"
    RESET = "reset"


EFFECT_DOCS = {
    Effect.ACKNOWLEDGED: "our open was ACKed: it leaves the backlog, its open timer stops.",
    Effect.ACCEPTED: "we accept the peer's open: it leaves the backlog, the ACK goes out.",
    Effect.ENDED: "the peer's FIN: the reader sees EOF; we grant no more window.",
    Effect.CLOSED: "FIN both ways: the connection forgets the stream once its FIN is out.",
    Effect.RESET: "RST either way: the connection forgets the stream at once.",
}


class StreamStateError(ProtocolError):
    """An input the stream's state does not allow, e.g. data after the peer's FIN."""


_S, _I, _E = State, Input, Effect

LIFECYCLE: dict[tuple[State, Input], tuple[State, tuple[Effect, ...]]] = {
    (_S.INIT, _I.SEND_SYN): (_S.SYN_SENT, ()),
    (_S.INIT, _I.RECV_SYN): (_S.SYN_RECEIVED, ()),
    (_S.SYN_SENT, _I.RECV_ACK): (_S.ESTABLISHED, ()),
    (_S.SYN_SENT, _I.SEND_DATA): (_S.SYN_SENT, ()),
    (_S.SYN_SENT, _I.RECV_DATA): (_S.SYN_SENT, ()),
    (_S.SYN_SENT, _I.SEND_FIN): (_S.LOCAL_CLOSE, ()),
    (_S.SYN_SENT, _I.RECV_FIN): (_S.REMOTE_CLOSE, (_E.ENDED,)),
    (_S.SYN_SENT, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.SYN_SENT, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
    (_S.SYN_RECEIVED, _I.SEND_ACK): (_S.ESTABLISHED, ()),
    (_S.SYN_RECEIVED, _I.RECV_ACK): (_S.SYN_RECEIVED, ()),
    (_S.SYN_RECEIVED, _I.SEND_DATA): (_S.SYN_RECEIVED, ()),
    (_S.SYN_RECEIVED, _I.RECV_DATA): (_S.SYN_RECEIVED, ()),
    (_S.SYN_RECEIVED, _I.SEND_FIN): (_S.LOCAL_CLOSE, ()),
    (_S.SYN_RECEIVED, _I.RECV_FIN): (_S.REMOTE_CLOSE, (_E.ENDED,)),
    (_S.SYN_RECEIVED, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.SYN_RECEIVED, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
    (_S.ESTABLISHED, _I.SEND_ACK): (_S.ESTABLISHED, ()),
    (_S.ESTABLISHED, _I.RECV_ACK): (_S.ESTABLISHED, ()),
    (_S.ESTABLISHED, _I.SEND_DATA): (_S.ESTABLISHED, ()),
    (_S.ESTABLISHED, _I.RECV_DATA): (_S.ESTABLISHED, ()),
    (_S.ESTABLISHED, _I.SEND_FIN): (_S.LOCAL_CLOSE, ()),
    (_S.ESTABLISHED, _I.RECV_FIN): (_S.REMOTE_CLOSE, (_E.ENDED,)),
    (_S.ESTABLISHED, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.ESTABLISHED, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
    (_S.LOCAL_CLOSE, _I.SEND_ACK): (_S.LOCAL_CLOSE, ()),
    (_S.LOCAL_CLOSE, _I.RECV_ACK): (_S.LOCAL_CLOSE, ()),
    (_S.LOCAL_CLOSE, _I.RECV_DATA): (_S.LOCAL_CLOSE, ()),
    (_S.LOCAL_CLOSE, _I.RECV_FIN): (_S.CLOSED, (_E.ENDED, _E.CLOSED)),
    (_S.LOCAL_CLOSE, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.LOCAL_CLOSE, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
    (_S.REMOTE_CLOSE, _I.SEND_ACK): (_S.REMOTE_CLOSE, ()),
    (_S.REMOTE_CLOSE, _I.RECV_ACK): (_S.REMOTE_CLOSE, ()),
    (_S.REMOTE_CLOSE, _I.SEND_DATA): (_S.REMOTE_CLOSE, ()),
    (_S.REMOTE_CLOSE, _I.RECV_FIN): (_S.REMOTE_CLOSE, ()),
    (_S.REMOTE_CLOSE, _I.SEND_FIN): (_S.CLOSED, (_E.CLOSED,)),
    (_S.REMOTE_CLOSE, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.REMOTE_CLOSE, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
    (_S.CLOSED, _I.SEND_ACK): (_S.CLOSED, ()),
    (_S.CLOSED, _I.RECV_ACK): (_S.CLOSED, ()),
    (_S.CLOSED, _I.RECV_FIN): (_S.CLOSED, ()),
    (_S.CLOSED, _I.SEND_RST): (_S.RESET, (_E.RESET,)),
    (_S.CLOSED, _I.RECV_RST): (_S.RESET, (_E.RESET,)),
}
"""``(state, input) -> (next state, side effects)``; a missing pair is illegal."""

HANDSHAKE: dict[tuple[Handshake, Input], tuple[Handshake, tuple[Effect, ...]]] = {
    (Handshake.NONE, _I.SEND_SYN): (Handshake.AWAITING_ACK, ()),
    (Handshake.NONE, _I.RECV_SYN): (Handshake.ACK_OWED, ()),
    (Handshake.AWAITING_ACK, _I.RECV_ACK): (Handshake.NONE, (_E.ACKNOWLEDGED,)),
    (Handshake.ACK_OWED, _I.SEND_ACK): (Handshake.NONE, (_E.ACCEPTED,)),
}
"""``(handshake, input) -> (next handshake, side effects)``; a missing pair changes nothing."""


def _steps() -> dict[tuple[State, Handshake, Input], tuple[State, Handshake, tuple[Effect, ...]]]:
    """Both tables folded into one lookup per step, derived once at import (not a third
    source of rules): ``(state, handshake, input) -> (state, handshake, side effects)``."""
    steps = {}
    for (state, input_), (nxt, effects) in LIFECYCLE.items():
        for handshake in Handshake:
            nxt_hs, more = HANDSHAKE.get((handshake, input_), (handshake, ()))
            steps[state, handshake, input_] = (nxt, nxt_hs, more + effects)
    return steps


def _unchanged_by(input_: Input) -> frozenset[State]:
    """The states in which ``input_`` is legal and changes nothing: no next state, no
    handshake step, no side effect. Derived from the tables, like ``_STEPS``."""
    if any(step is input_ for _, step in HANDSHAKE):
        return frozenset()
    return frozenset(
        state
        for (state, step), (nxt, effects) in LIFECYCLE.items()
        if step is input_ and nxt is state and not effects
    )


_STEPS = _steps()
SENDING = _unchanged_by(Input.SEND_DATA)
"""States in which sending data is a step that changes nothing: the direct path for a
lone Data frame (Connection.frame_now) checks membership instead of stepping."""
RECEIVING = _unchanged_by(Input.RECV_DATA)
"""The same for receiving data (Connection.receive_lone_data)."""
_LOCAL_CLOSED = frozenset({State.LOCAL_CLOSE, State.CLOSED})
_REMOTE_CLOSED = frozenset({State.REMOTE_CLOSE, State.CLOSED})


class StreamMachine:
    """One stream's state; only ``process`` changes it."""

    __slots__ = ("handshake", "state")

    def __init__(self) -> None:
        self.state = State.INIT
        self.handshake = Handshake.NONE

    def process(self, input_: Input) -> tuple[Effect, ...]:
        """Apply one input; return its side effects, or raise StreamStateError if illegal."""
        try:
            self.state, self.handshake, effects = _STEPS[self.state, self.handshake, input_]
        except KeyError:
            raise StreamStateError(
                f"{input_.value} is not allowed in state {self.state.value}"
            ) from None
        return effects

    # Queries the rest of the package asks, so nobody keeps a copy of the state.
    @property
    def local_closed(self) -> bool:
        """We closed (FIN queued or sent): nothing more may be written."""
        return self.state in _LOCAL_CLOSED

    @property
    def remote_closed(self) -> bool:
        """The peer's FIN arrived: nothing more will."""
        return self.state in _REMOTE_CLOSED


def render_tables() -> str:
    """Both tables as Markdown (what docs/stream-states.md holds)."""
    lines = [
        "# Stream states",
        "",
        "Generated from `yamux/stream_state.py` (its docstring explains the machine);",
        "`tests/test_stream_state.py` fails when this file and the code disagree. Regenerate:",
        "",
        "```sh",
        "python3 -c 'import yamux.stream_state as s; print(s.render_tables(), end=\"\")' \\",
        "    > docs/stream-states.md",
        "```",
        "",
        "## Lifecycle",
        "",
        "A pair that is not listed is illegal: `process()` raises `StreamStateError`.",
        "",
        "| state | input | next state | side effects |",
        "| --- | --- | --- | --- |",
    ]
    order = {s: n for n, s in enumerate(State)}
    inputs = {i: n for n, i in enumerate(Input)}
    for (state, input_), (nxt, effects) in sorted(
        LIFECYCLE.items(), key=lambda kv: (order[kv[0][0]], inputs[kv[0][1]])
    ):
        lines.append(
            f"| {state.value} | {input_.value} | {nxt.value} | "
            f"{', '.join(e.value for e in effects) or '-'} |"
        )
    lines += [
        "",
        "## Handshake",
        "",
        "A pair that is not listed leaves the handshake as it is.",
        "",
        "| handshake | input | next handshake | side effects |",
        "| --- | --- | --- | --- |",
    ]
    for (hs, input_), (nxt_hs, effects) in HANDSHAKE.items():
        lines.append(
            f"| {hs.value} | {input_.value} | {nxt_hs.value} | "
            f"{', '.join(e.value for e in effects) or '-'} |"
        )
    lines += ["", "## Side effects", ""]
    lines += [f"- **{e.value}**: {EFFECT_DOCS[e]}" for e in Effect]
    return "\n".join(lines) + "\n"
