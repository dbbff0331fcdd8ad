"""Routing by name, sans-IO: the Host of a request head, the SNI of a ClientHello, the route
line and the ``route=`` option of registration v2 (relay/wire/http_head.py, client_hello.py,
route.py, v2.py).

The ClientHellos are real ones, made by Python's ssl module (OpenSSL) for a server name
(``routing_support.client_hello``).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from routing_support import client_hello, records

from relay.errors import RegistrationError
from relay.wire.client_hello import (
    ALERT_DECODE_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    MAX_CLIENT_HELLO,
    ClientHelloError,
    ServerNameReader,
    alert_record,
)
from relay.wire.hostname import normal_host
from relay.wire.http_head import MAX_HEAD, HeadError, HostReader, error_response
from relay.wire.route import parse_route_line, route_line, url
from relay.wire.v2 import Challenge, HandshakeError, parse_response, response_line

Outcome = tuple[str, object]


HELLO = client_hello("Blog.Tunnel.Example.com")


def outcome(reader: HostReader | ServerNameReader, pieces: list[bytes]) -> Outcome:
    """What the reader says after ``pieces``: the name, more, or its error's answer."""
    try:
        for piece in pieces:
            name = reader.feed(piece)
            if name is not None:
                return ("name", name)
    except HeadError as exc:
        return ("error", exc.status)
    except ClientHelloError as exc:
        return ("error", exc.alert)
    return ("more", None)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: Blog.Tunnel.Example.com:8080\r\n\r\n",
            "blog.tunnel.example.com",
        ),
        (b"\r\nGET / HTTP/1.0\nUser-Agent: x\nhost:shop.example.\n\nbody", "shop.example"),
        (b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", "a.example"),
        (b"POST /x HTTP/1.1\r\nHost:\t b.example \r\nContent-Length: 3\r\n\r\nabc", "b.example"),
    ],
)
def test_the_host_of_a_head(head: bytes, expected: str) -> None:
    assert outcome(HostReader(), [head]) == ("name", expected)


@pytest.mark.parametrize(
    ("head", "status", "says"),
    [
        (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400, "no Host header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folded"),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 400, "address, not a name"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "host name"),
        (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, "empty"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "not HTTP/1.x"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 400, "not an HTTP request line"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "malformed header line"),
    ],
)
def test_heads_that_cannot_be_routed(head: bytes, status: int, says: str) -> None:
    with pytest.raises(HeadError, match=says) as info:
        HostReader().feed(head)
    assert info.value.status == status


def test_a_head_over_16_kib_is_431_even_in_small_pieces() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\nCookie: " + b"x" * MAX_HEAD + b"\r\n\r\n"
    assert outcome(HostReader(), [head[i : i + 100] for i in range(0, len(head), 100)]) == (
        "error",
        431,
    )
    exact = b"GET / HTTP/1.1\r\nHost: a.example\r\n"
    exact += b"X: " + b"y" * (MAX_HEAD - len(exact) - 7) + b"\r\n\r\n"
    assert len(exact) == MAX_HEAD
    assert HostReader().feed(exact) == "a.example"
    assert outcome(HostReader(), [exact[:-1] + b"x\n"]) == ("error", 431)


def test_a_partial_head_asks_for_more() -> None:
    reader = HostReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: a.exa") is None
    assert reader.feed(b"mple\r\n") is None
    assert reader.feed(b"\r\n") == "a.example"
    assert reader.feed(b"more requests on the connection") == "a.example"


HEADS = st.lists(
    st.sampled_from(
        [
            b"GET / HTTP/1.1\r\n",
            b"GET http://t.example/ HTTP/1.1\r\n",
            b"Host: a.example\r\n",
            b"Host: b.example:81\n",
            b"X: y\r\n",
            b"\r\n",
            b"\n",
            b" folded\r\n",
            b"\x00\xff",
            b"x" * 5000,
        ]
    ),
    max_size=12,
).map(b"".join)


@given(HEADS | st.binary(max_size=600), st.lists(st.integers(0, 20000), max_size=8))
def test_any_split_of_a_head_gives_the_same_answer(data: bytes, cuts: list[int]) -> None:
    whole = outcome(HostReader(), [data])
    assert outcome(HostReader(), split(data, cuts)) == whole
    assert outcome(HostReader(), [bytes([b]) for b in data[:3000]] + [data[3000:]]) == whole


@given(st.binary(max_size=2000))
def test_garbage_raises_only_head_errors(data: bytes) -> None:
    kind, value = outcome(HostReader(), [data])  # any other exception fails the test
    assert kind != "error" or value in (400, 431)


def test_the_error_page_names_the_relay_and_escapes() -> None:
    answer = error_response(404, "no service is registered as <a>", "tunnel.example.com")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert b"&lt;a&gt;" in body
    assert b"relay at tunnel.example.com" in body


# --------------------------------------------------------------------- TLS


@pytest.mark.parametrize("size", [MAX_CLIENT_HELLO, 300, 40, 1])
def test_the_server_name_of_a_real_client_hello_in_any_records(size: int) -> None:
    assert outcome(ServerNameReader(), [records(HELLO, size)]) == (
        "name",
        "blog.tunnel.example.com",
    )


def test_a_client_hello_without_sni_is_an_unrecognized_name() -> None:
    with pytest.raises(ClientHelloError, match="no SNI") as info:
        ServerNameReader().feed(client_hello(None))
    assert info.value.alert == ALERT_UNRECOGNIZED_NAME


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x02\x00\x00\x05hello",
        b"\x16\x03\x01\x00\x00",
        b"\x16\x03\x01\x40\x01",
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",
        b"\x15\x03\x03\x00\x02\x02\x28",
    ],
)
def test_what_is_not_a_client_hello_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(ClientHelloError) as info:
        ServerNameReader().feed(data)
    assert info.value.alert == ALERT_DECODE_ERROR


def test_the_alert_record() -> None:
    assert alert_record(ALERT_UNRECOGNIZED_NAME) == b"\x15\x03\x03\x00\x02\x02\x70"


@given(st.integers(1, 400), st.lists(st.integers(0, 5000), max_size=10))
def test_any_records_and_reads_of_a_client_hello_give_its_name(size: int, cuts: list[int]) -> None:
    data = records(HELLO, size)
    assert outcome(ServerNameReader(), split(data, cuts)) == ("name", "blog.tunnel.example.com")


@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=6))
def test_any_split_of_garbage_gives_the_same_answer(data: bytes, cuts: list[int]) -> None:
    whole = outcome(ServerNameReader(), [data])
    assert outcome(ServerNameReader(), split(data, cuts)) == whole


@given(st.integers(0, len(HELLO) - 1), st.integers(0, 255), st.integers(0, len(HELLO)))
def test_a_mutated_client_hello_raises_only_its_errors(at: int, byte: int, cut: int) -> None:
    data = HELLO[:at] + bytes([byte]) + HELLO[at + 1 :]
    whole = outcome(ServerNameReader(), [data])
    assert whole[0] in ("name", "error", "more")
    assert outcome(ServerNameReader(), [data[:cut], data[cut:]]) == whole
    truncated = outcome(ServerNameReader(), [HELLO[:cut]])
    assert truncated in (("more", None), ("name", "blog.tunnel.example.com"))


# ------------------------------------------------------ names and the wire


def test_host_names_have_one_spelling() -> None:
    assert normal_host("Blog.Example.COM.") == "blog.example.com"
    for bad in ("", "a..b", "a b", "é.example", "x" * 64 + ".example", "a." * 130):
        with pytest.raises(ValueError, match="host name"):
            normal_host(bad)


def test_the_route_line_and_the_url() -> None:
    assert route_line(80, "blog.tunnel.example.com") == b"80 blog.tunnel.example.com\n"
    assert parse_route_line(b"443 a.example") == (443, "a.example")
    for bad in (b"80", b"error: x", b"80  a", b"99999 a.example", b"80 A.example"):
        with pytest.raises(RegistrationError):
            parse_route_line(bad)
    assert url("http", "blog.example", 80) == "http://blog.example/"
    assert url("tls", "blog.example", 443) == "https://blog.example/"
    assert url("http", "blog.example", 8080) == "http://blog.example:8080/"


def test_route_is_an_option_of_the_response_when_offered() -> None:
    offered = Challenge.fresh(False, frozenset({"route-http", "service"}))
    line = response_line(offered, secret=None, name="blog", route="http")
    assert line == b"relay/2 name=blog route=http\n"
    assert parse_response(line[:-1], offered).route == "http"
    not_offered = Challenge.fresh(False)
    for response, says in [
        (b"relay/2 name=blog route=tls", "route-tls was not offered"),
        (b"relay/2 route=http", "needs name="),
        (b"relay/2 name=blog port=80 route=http", "exclude each other"),
        (b"relay/2 name=blog route=ftp", "must be one of http, tls"),
    ]:
        with pytest.raises(HandshakeError, match=says):
            parse_response(response, offered)
    with pytest.raises(HandshakeError, match="not offered"):
        parse_response(b"relay/2 name=blog route=http", not_offered)
    assert b"route" not in not_offered.line()
