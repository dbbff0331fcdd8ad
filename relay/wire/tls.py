"""TLS for the control connection (and so for all relayed traffic); public ports stay TCP.

The relay presents ``cert``/``key`` and, with ``client_ca``, requires a client
certificate signed by it (mutual TLS). The forwarder verifies the relay's
certificate against the system CAs or a private CA, and its host name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import RelayError


class TLSConfigError(RelayError, ValueError):
    """A certificate, key or CA file that cannot be loaded; the message says which."""


def _load(action: str, path: str | Path, load: object, *args: object) -> None:
    try:
        load(*args)  # type: ignore[operator]
    except FileNotFoundError:
        raise TLSConfigError(f"{action} {path}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{action} {path}: {exc}") from None


def server_context(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """The relay's context: TLS 1.2+, and client certificates required if ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("cannot load the certificate/key", cert, context.load_cert_chain, str(cert), str(key))
    if client_ca is not None:
        _load("cannot load the client CA", client_ca, context.load_verify_locations, str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """The forwarder's context: verifies the relay (system CAs, or ``ca``) and its host name."""
    if ca is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks host names
        _load("cannot load the CA", ca, context.load_verify_locations, str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None or key is not None:
        if cert is None:
            raise TLSConfigError("a client key needs its certificate (--tls-cert)")
        _load(
            "cannot load the client certificate/key",
            cert,
            context.load_cert_chain,
            str(cert),
            str(key) if key is not None else None,
        )
    return context


def describe_tls_error(exc: BaseException) -> str | None:
    """A sentence for a failed TLS handshake, or None if ``exc`` is not one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the relay's TLS certificate was not accepted: {exc.verify_message} "
            f"(wrong CA, or the host name does not match the certificate?)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_REQUIRED" in reason.upper():
            return "the relay requires a client certificate (--tls-cert/--tls-key)"
        if "WRONG_VERSION_NUMBER" in reason.upper() or "RECORD_LAYER" in reason.upper():
            return f"TLS handshake failed ({reason}): does the relay speak TLS?"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, ConnectionResetError):
        return (
            "the relay closed the connection during the TLS handshake (it does so "
            "when it holds too many unfinished registrations, from this address or in "
            "all: retry later)"
        )
    return None


def describe_client_tls_error(exc: OSError, timeout: float) -> str:
    """Why a client's TLS handshake with the relay failed, for the relay's log."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its client certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason:
            return f"not TLS ({exc.reason}): a plaintext client on the TLS control port?"
        if "CERTIFICATE" in reason:
            return f"no acceptable client certificate ({exc.reason}); this relay requires one"
        return f"{exc.reason or exc}"
    if isinstance(exc, ConnectionAbortedError):
        return f"no complete TLS handshake within {timeout:g} s"
    return f"the connection ended during the handshake ({exc or type(exc).__name__})"
