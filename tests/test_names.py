"""Services by name on the relay's shared ports, with real programs end to end.

``relay server --domain tunnel.test --http-port 0 --tls-port 0`` and ``relay
forward --http|--https PORT`` (or ``--route http|tls``) processes; Python's
http.server and nginx (with certificates made by openssl for its own names) as
the services; curl with ``--resolve``, ``openssl s_client`` and haproxy (as a
PROXY protocol receiver) as the public side.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import (
    PUBLIC_CLIENT,
    make_ca,
    make_leaf,
    start_proxy_receiver,
)

from relay_support import HOST, Proc, Processes, free_port, recv_all, relay_command, wait_until

DOMAIN = "tunnel.test"
NAMES = r"Serving names under tunnel\.test: HTTP on port (\d+) \(by Host\); TLS on port (\d+)"

pytestmark = pytest.mark.e2e


def start_relay(procs: Processes, *args: str) -> tuple[Proc, int, int, int]:
    """A relay serving names under DOMAIN: (process, control port, HTTP port, TLS port)."""
    proc, control = procs.relay("--domain", DOMAIN, "--http-port", "0", "--tls-port", "0", *args)
    _, match = proc.wait_line(NAMES)
    return proc, control, int(match.group(1)), int(match.group(2))


def forward(procs: Processes, relay_port: int, *args: str) -> tuple[Proc, str]:
    """``relay forward ARGS HOST:PORT``, once it printed its URL."""
    proc = procs.start([*relay_command(), "forward", *args, f"{HOST}:{relay_port}"], "forwarder")
    _, match = proc.wait_line(r"^(https?://\S+)$", stream="stdout")
    return proc, match.group(1)


def http_server(procs: Processes, directory: Path, text: str) -> int:
    """Python's http.server serving ``text`` as its index page."""
    directory.mkdir()
    (directory / "index.html").write_text(text)
    proc = procs.start(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            HOST,
            "--directory",
            str(directory),
            "0",
        ],
        "http.server",
    )
    _, match = proc.wait_line(r"port (\d+)", stream="stdout")
    return int(match.group(1))


def curl(
    host: str, port: int, *args: str, scheme: str = "http"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            f"{host}:{port}:{HOST}",
            *args,
            f"{scheme}://{host}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_two_names_on_one_http_port_reach_two_services(procs: Processes, tmp_path: Path) -> None:
    require_program("curl")
    relay, control, http_port, _ = start_relay(procs)
    blog = http_server(procs, tmp_path / "blog", "the blog\n")
    shop = http_server(procs, tmp_path / "shop", "the shop\n")
    _, blog_url = forward(procs, control, "--name", "blog", "--http", str(blog))
    _, shop_url = forward(procs, control, "--service", f"shop=http:{shop}")
    assert blog_url == f"http://blog.{DOMAIN}:{http_port}/"
    assert shop_url == f"http://shop.{DOMAIN}:{http_port}/"

    for name, text in [("blog", "the blog\n"), ("shop", "the shop\n"), ("BLOG", "the blog\n")]:
        got = curl(f"{name}.{DOMAIN}", http_port)
        assert (got.returncode, got.stdout) == (0, text), got.stderr

    unknown = curl(f"nope.{DOMAIN}", http_port, "-i")
    assert unknown.stdout.startswith("HTTP/1.1 404 Not Found\n"), unknown
    assert f"no service is registered as nope.{DOMAIN}" in unknown.stdout
    assert f"relay at {DOMAIN}" in unknown.stdout
    assert "SimpleHTTP" not in unknown.stdout  # the relay answers, not a service
    with socket.create_connection((HOST, http_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    relay.wait_line(r"HTTP port: refusing a connection from .*: the request has no Host header")


NGINX_TLS_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{servers}
}}
"""
NGINX_TLS_SERVER = """\
    server {{
        listen {host}:{port} ssl;
        server_name {name};
        ssl_certificate {dir}/{label}.pem;
        ssl_certificate_key {dir}/{label}.key;
        location / {{ return 200 "service {label} over TLS\\n"; }}
    }}
"""


def nginx_tls(procs: Processes, directory: Path, labels: list[str]) -> dict[str, int]:
    """One nginx with a TLS server per label, each with its own certificate for
    LABEL.DOMAIN from a test CA made here; the port of each."""
    require_program("openssl")
    make_ca(directory, "ca")
    ports = {label: free_port() for label in labels}
    for label in labels:
        name = f"{label}.{DOMAIN}"
        make_leaf(
            directory, label, "ca", f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"
        )
    servers = "".join(
        NGINX_TLS_SERVER.format(
            host=HOST, port=port, name=f"{label}.{DOMAIN}", dir=directory, label=label
        )
        for label, port in ports.items()
    )
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_TLS_CONF.format(dir=directory, servers=servers))
    proc = procs.start(
        [require_program("nginx"), "-p", str(directory), "-e", "stderr", "-c", str(conf)], "nginx"
    )

    def listening() -> bool:
        assert proc.popen.poll() is None, proc.describe()
        try:
            for port in ports.values():
                socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, 15, interval=0.05, message="nginx listening")
    return ports


def s_client(port: int, name: str, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"{HOST}:{port}",
            "-servername",
            name,
            "-CAfile",
            str(ca),
            "-verify_return_error",
            "-verify_hostname",
            name,
            "-ign_eof",
        ],
        input=f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_two_names_on_one_tls_port_reach_two_services_by_sni(
    procs: Processes, tmp_path: Path
) -> None:
    require_program("curl")
    ports = nginx_tls(procs, tmp_path, ["a", "b"])
    relay, control, _, tls_port = start_relay(procs)
    urls = [
        forward(procs, control, "--name", "a", "--https", str(ports["a"]))[1],
        forward(procs, control, "--name", "b", "--route", "tls", str(ports["b"]))[1],
    ]
    assert urls == [f"https://a.{DOMAIN}:{tls_port}/", f"https://b.{DOMAIN}:{tls_port}/"]
    ca = tmp_path / "ca.pem"

    for label in ports:
        # Each service's own certificate, verified for its name: the relay did not touch TLS.
        got = curl(f"{label}.{DOMAIN}", tls_port, "--cacert", str(ca), scheme="https")
        assert (got.returncode, got.stdout) == (0, f"service {label} over TLS\n"), got.stderr
        said = s_client(tls_port, f"{label}.{DOMAIN}", ca)
        assert f"subject=CN = {label}" in said.stdout, said.stdout + said.stderr
        assert "Verification: OK" in said.stdout
        assert f"service {label} over TLS" in said.stdout

    unknown = s_client(tls_port, f"nope.{DOMAIN}", ca)
    assert unknown.returncode != 0
    assert "alert number 112" in unknown.stderr, unknown.stderr
    assert "unrecognized name" in unknown.stderr
    relay.wait_line(
        rf"TLS port: refusing a connection from .*: no service is registered as nope\.{DOMAIN}"
    )


def test_the_client_address_reaches_a_routed_service(procs: Processes, tmp_path: Path) -> None:
    _, receiver = start_proxy_receiver(procs, "haproxy", require_program("haproxy"), tmp_path)
    _, control, http_port, _ = start_relay(procs)
    forward(
        procs, control, "--name", "who", "--route", "http", "--proxy-protocol", "v2", str(receiver)
    )
    with socket.create_connection(
        (HOST, http_port), timeout=10, source_address=(PUBLIC_CLIENT, 0)
    ) as sock:
        source = "{} {}".format(*sock.getsockname()[:2])
        sock.sendall(f"GET / HTTP/1.1\r\nHost: who.{DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        said = recv_all(sock).decode().rsplit("\r\n\r\n", 1)[-1].strip()
    assert said == source
    assert said.startswith(PUBLIC_CLIENT + " ")


def test_names_configured_by_environment_and_config_files(procs: Processes, tmp_path: Path) -> None:
    """``RELAY_DOMAIN``/``RELAY_HTTP_PORT``, ``tls-port`` in [server], ``route`` in a
    [[forward.services]] table: the same relay and forwarder as by flags."""
    require_program("curl")
    web = http_server(procs, tmp_path / "web", "configured\n")
    relay_config = tmp_path / "relay.toml"
    relay_config.write_text(f'[server]\nbind = "{HOST}"\ntls-port = 0\nport = {free_port()}\n')
    relay = procs.start(
        [*relay_command(), "server", "--config", str(relay_config)],
        "relay",
        env={"RELAY_DOMAIN": DOMAIN, "RELAY_HTTP_PORT": "0"},
    )
    _, match = relay.wait_line(NAMES)
    http_port = int(match.group(1))
    control = int(relay.wait_line(r"Serving relay requests on port (\d+)")[1].group(1))
    forward_config = tmp_path / "forward.toml"
    forward_config.write_text(
        f'[forward]\nrelay = "{HOST}:{control}"\n'
        f'[[forward.services]]\nname = "site"\nroute = "http"\nlocal-port = {web}\n'
    )
    forwarder = procs.start(
        [*relay_command(), "forward", "--config", str(forward_config)], "forwarder"
    )
    _, url = forwarder.wait_line(r"^(https?://\S+)$", stream="stdout")
    assert url.group(1) == f"http://site.{DOMAIN}:{http_port}/"
    got = curl(f"site.{DOMAIN}", http_port)
    assert (got.returncode, got.stdout) == (0, "configured\n"), got.stderr


def test_the_shared_port_out_of_file_descriptors_pauses_and_recovers(procs: Processes) -> None:
    """The shared port accepts as every port of the relay does: when accept() fails (here
    RLIMIT_NOFILE 64 and 100 connections that name nothing yet) it says so once and
    pauses, and answers again once descriptors are free."""
    relay = procs.start(
        [
            "sh",
            "-c",
            'ulimit -n 64 && exec "$@"',
            "sh",
            *relay_command(),
            "--bind",
            HOST,
            "--event-loop",
            "asyncio",
            "--domain",
            DOMAIN,
            "--http-port",
            "0",
            str(free_port()),
        ],
        "relay",
    )
    _, match = relay.wait_line(r"Serving names under tunnel\.test: HTTP on port (\d+)")
    http_port = int(match.group(1))
    silent = [socket.create_connection((HOST, http_port), timeout=10) for _ in range(100)]
    try:
        relay.wait_line(
            r"ERROR relay\.accept: cannot accept on the shared HTTP port: Too many open files "
            r"\(EMFILE\); not accepting there for 0\.1 s at a time"
        )
    finally:
        for sock in silent:
            sock.close()
    with socket.create_connection((HOST, http_port), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: nobody.{DOMAIN}\r\n\r\n".encode())
        assert recv_all(sock).startswith(b"HTTP/1.1 404 ")
    assert relay.alive()
    relay.wait_line(r"accepting on the shared HTTP port again: \d+ failed tries")
    assert relay.stderr_text.count("relay.accept") == 2  # one episode, two lines
