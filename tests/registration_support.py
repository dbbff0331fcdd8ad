"""Helpers for the registration v2 tests (this module holds no tests).

Real parts only: certificates made by ``openssl`` at test time, the listening
sockets of a real process read from ``/proc``, nginx and haproxy as PROXY
protocol receivers.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from relay_support import HOST, Proc, Processes, free_port, wait_until

PUBLIC_CLIENT = "127.0.0.5"
"""A loopback source other than 127.0.0.1, so the public client's address is recognisable."""


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (its socket inodes in /proc/PID/net/tcp*)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def connect_from(address: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to HOST:port whose source address is ``address``."""
    return socket.create_connection((HOST, port), timeout=timeout, source_address=(address, 0))


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Bytes up to and including the first newline (or all until EOF)."""
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing we use: verifying against it must fail."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    """A CA certificate and key, NAME.pem and NAME.key in ``directory``."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )


def make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    """A certificate signed by the CA ``ca`` with these X.509 ``extensions`` (NAME.pem, .key)."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, another CA."""
    make_ca(directory, "test-ca")
    make_ca(directory, "other-ca")
    make_leaf(
        directory,
        "server",
        "test-ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    make_leaf(directory, "client", "test-ca", "extendedKeyUsage=clientAuth\n")
    return Certificates(
        ca=directory / "test-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


NGINX_CONF = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen {host}:{port} proxy_protocol;
        return "$proxy_protocol_addr $proxy_protocol_port\\n";
    }}
}}
"""
"""nginx's stream module answers each connection with the client address of its PROXY header."""

HAPROXY_CONF = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind {host}:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port]\\n"
"""
"""haproxy answers every HTTP request with the source address it took from the PROXY header."""


def start_proxy_receiver(
    procs: Processes, kind: str, program: str, directory: Path
) -> tuple[Proc, int]:
    """nginx or haproxy listening with PROXY protocol on a free port, once it accepts."""
    port = free_port()
    if kind == "nginx":
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, host=HOST, port=port))
        proc = procs.start(
            [program, "-p", str(directory), "-e", "stderr", "-c", str(conf)], "nginx"
        )
    else:
        conf = directory / "haproxy.cfg"
        conf.write_text(HAPROXY_CONF.format(host=HOST, port=port))
        proc = procs.start([program, "-db", "-f", str(conf)], "haproxy")

    def accepting() -> bool:
        assert proc.popen.poll() is None, proc.describe()
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepting, 15, interval=0.05, message=f"{kind} listening on {port}")
    return proc, port


def ask_proxy_receiver(kind: str, port: int) -> tuple[str, str]:
    """Connect from PUBLIC_CLIENT; return (what the receiver says the client is, our source)."""
    with connect_from(PUBLIC_CLIENT, port) as sock:
        source = "{} {}".format(*sock.getsockname()[:2])
        if kind == "haproxy":
            sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(4096):
            data += chunk
    text = data.decode("ascii", "replace")
    return text.rsplit("\r\n\r\n", 1)[-1].strip(), source
