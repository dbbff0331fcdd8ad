"""Secrets of at least 128 bits, estimated from length and characters, and ``relay gen-secret``.

The estimate (``relay.options.secret``) must refuse the weak secrets people
type and pass the random ones the docs tell them to make: ``openssl rand
-hex 16`` exactly reaches 128 bits, so it must never lose a bit.
"""

from __future__ import annotations

import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import require_program

import relay
from relay.options import OptionError, RegistrationOptions
from relay.options.secret import MIN_SECRET_BITS, SecretError, check_secret, estimate_bits
from relay.server.auth import AuthConfigError, parse_auth_clients
from relay_support import relay_command

HEX = "0123456789abcdef"


@pytest.mark.parametrize(
    ("secret", "bits"),
    [
        ("password", 37.6),  # 8 lowercase letters
        ("passwordpassword", 42.3),  # the repeat counts once
        ("deadbeef", 32),  # hex: 4 bits a digit
        ("0123456789abcdef0123456789abcdef", 32),  # counting, then a repeat
        ("a" * 64, 4),  # a hex digit, again and again
        ("Password" + "0" * 40, 53.6),
        ("abcdefghijklmnopqrstuvwxyz0123456789", 10.3),
        ("f" * 31 + "0", 8),
        (b"\x00" * 32, 8),  # bytes that are no text: 8 bits each
    ],
)
def test_weak_secrets_are_estimated_low(secret: str | bytes, bits: float) -> None:
    assert estimate_bits(secret) == pytest.approx(bits, abs=0.1)
    with pytest.raises(SecretError, match=r"too weak: .* make one with `relay gen-secret`"):
        check_secret(secret)


def test_sixteen_random_bytes_in_hex_are_128_bits() -> None:
    """A random one is refused only if it holds a run or repeat of 8 digits: about one in
    three million."""
    for _ in range(200):
        assert estimate_bits(secrets.token_hex(16)) == MIN_SECRET_BITS


def test_openssl_rand_hex_16_passes_and_base64_of_32_bytes_too() -> None:
    openssl = require_program("openssl")
    for args in (["-hex", "16"], ["-hex", "32"], ["-base64", "32"]):
        for _ in range(20):
            made = subprocess.run(
                [openssl, "rand", *args], capture_output=True, text=True, check=True
            ).stdout.strip()
            assert estimate_bits(made) >= MIN_SECRET_BITS, made
    random_bytes = bytes.fromhex("8f3ac91e07d45b62e0917fa3c6d8245b")  # no text: 8 bits a byte
    assert estimate_bits(random_bytes) == MIN_SECRET_BITS


def test_weak_secrets_are_refused_everywhere_with_the_way_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"^secret: too weak: about 38 bits"):
        relay.RelayServer(secret="password")
    with pytest.raises(OptionError, match=r"^secret: too weak"):
        RegistrationOptions(secret="passwordpassword")
    weak = tmp_path / "weak.secret"
    weak.write_text("deadbeefdeadbeef\n")
    with pytest.raises(OptionError, match=r"^secret_file: secret file .*: too weak: about 36"):
        relay.RelayServer(secret_file=str(weak))
    with pytest.raises(OptionError, match=r"secret file .*: too weak"):
        RegistrationOptions(secret_file=str(weak)).with_secret_read()
    with pytest.raises(AuthConfigError, match=r"clients\.bob\.secret: too weak"):
        parse_auth_clients({"bob": {"secret": "bob's secret"}})


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*relay_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_gen_secret_prints_256_bits_and_writes_a_private_file(tmp_path: Path) -> None:
    printed = run("gen-secret")
    assert printed.returncode == 0
    secret = printed.stdout.strip()
    assert len(secret) == 64
    assert set(secret) <= set(HEX)
    assert estimate_bits(secret) == 256
    assert run("gen-secret").stdout.strip() != secret
    written = run("gen-secret", "--output", "relay.secret", cwd=tmp_path)
    assert written.returncode == 0
    assert written.stdout == ""
    path = tmp_path / "relay.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert len(content.strip()) == 64
    assert relay.RelayServer(secret_file=str(path)).options.secret == content.strip().encode()
    again = run("gen-secret", "--output", str(path))
    assert again.returncode == 1
    assert "exists: a secret file is never overwritten" in again.stderr
    assert path.read_text() == content


def test_a_weak_secret_on_the_command_line_is_a_usage_error() -> None:
    done = run("forward", "--secret", "password", "6379", "127.0.0.1:7000")
    assert done.returncode == 2
    assert "too weak: about 38 bits" in done.stderr
    assert "relay gen-secret" in done.stderr
    assert "password" not in done.stderr
