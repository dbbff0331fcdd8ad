"""What one stream has written and not yet framed: payload chunks, then perhaps our FIN.

Writes are queued, not framed, so that frames are cut only when the transport
has room and within the peer's window (flow.py); the FIN waits behind every
byte written before it.
"""

from __future__ import annotations

from collections import deque


class SendBuffer:
    __slots__ = ("chunks", "fin", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        """Payload bytes queued."""
        self.fin = False
        """Our FIN is queued behind the payload and not framed yet."""

    def append(self, data: bytes | memoryview) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def take(self, size: int, out: list[bytes | memoryview]) -> None:
        """Move the first ``size`` payload bytes to ``out``, splitting a chunk if needed."""
        self.size -= size
        chunks = self.chunks
        while size:
            chunk = chunks[0]
            n = len(chunk)
            if n <= size:
                out.append(chunks.popleft())
                size -= n
            else:
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                out.append(view[:size])
                chunks[0] = view[size:]
                size = 0

    def clear(self) -> None:
        """Drop everything (the stream was reset)."""
        self.chunks.clear()
        self.size = 0
        self.fin = False
