"""Protocol constants from hashicorp/yamux's spec.md."""

from enum import IntEnum, IntFlag

PROTOCOL_VERSION = 0
HEADER_SIZE = 12
INITIAL_STREAM_WINDOW = 256 * 1024
"""Credit every stream starts with in each direction; grants on SYN/ACK add to it."""


class FrameType(IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    NONE = 0
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
