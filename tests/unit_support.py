"""Run a program the way a systemd unit of deploy/ runs it (this module holds no tests).

No systemd runs on the test machines, so the parts of a unit that decide whether the
relay works as installed are done by hand, as systemd does them: ``DynamicUser=`` (an
unprivileged user, here ``nobody``), ``ProtectSystem=strict`` (the whole tree read-only
in a mount namespace of its own, except the state directory), ``WorkingDirectory``
``/``, a clean environment with the unit's ``Environment=`` lines, ``StateDirectory=``
(created, owned by the user, ``$STATE_DIRECTORY``), ``LoadCredential=`` (copied to a
directory only the user can read, ``$CREDENTIALS_DIRECTORY``) and ``Type=notify``
(``$NOTIFY_SOCKET``). Needs root (mount namespaces, setpriv).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay_support import Proc, Processes

SERVICE_USER = "nobody"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_root() -> None:
    if os.geteuid() != 0:
        message = "running a unit's sandbox needs root (mount namespace, setpriv)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Unit:
    """The [Service] settings of a unit file that these tests carry out."""

    exec_start: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, Path] = field(default_factory=dict)
    state_directory: str | None = None
    settings: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Unit:
        settings: dict[str, list[str]] = {}
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section == "Service":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
        environment = dict(
            item.split("=", 1)
            for value in settings.get("Environment", [])
            for item in shlex.split(value)
        )
        credentials = {
            name: Path(source)
            for name, _, source in (
                value.partition(":") for value in settings.get("LoadCredential", [])
            )
        }
        (exec_start,) = settings["ExecStart"]
        (state,) = settings.get("StateDirectory", [None])
        return cls(shlex.split(exec_start), environment, credentials, state, settings)


@dataclass
class Sandbox:
    """Where one unit's run keeps its state, credentials and notify socket (under ``root``,
    which ``nobody`` can traverse)."""

    root: Path
    name: str

    def __post_init__(self) -> None:
        self.state_base = self.root / "var" / "lib"
        self.credentials = self.root / "run" / "credentials" / f"{self.name}.service"
        self.notify_path = self.root / "run" / f"{self.name}.notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path.parent.mkdir(parents=True, exist_ok=True)
        self.notify.bind(str(self.notify_path))
        os.chmod(self.notify_path, 0o777)
        self.notify.settimeout(30)

    def close(self) -> None:
        self.notify.close()

    def messages(self, timeout: float = 30) -> dict[str, str]:
        """The next sd_notify datagram as a dict (READY, STATUS, ...)."""
        self.notify.settimeout(timeout)
        data = self.notify.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())


def start_unit(procs: Processes, unit: Unit, sandbox: Sandbox, name: str) -> Proc:
    """Start ``unit``'s ExecStart as systemd would (see the module docstring)."""
    user = pwd.getpwnam(SERVICE_USER)
    env = {
        "PATH": SYSTEMD_PATH,
        "LANG": "C.UTF-8",
        "NOTIFY_SOCKET": str(sandbox.notify_path),
        **{
            key: value.replace("%S", str(sandbox.state_base))
            for key, value in unit.environment.items()
        },
    }
    binds = []
    if unit.state_directory is not None:
        state = sandbox.state_base / unit.state_directory
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, user.pw_uid, user.pw_gid)
        state.chmod(0o700)
        env["STATE_DIRECTORY"] = str(state)
        binds.append(state)
    if unit.credentials:
        sandbox.credentials.mkdir(parents=True, exist_ok=True)
        for credential, source in unit.credentials.items():
            copy = sandbox.credentials / credential
            shutil.copyfile(source, copy)
            os.chown(copy, user.pw_uid, user.pw_gid)
            copy.chmod(0o400)
        os.chown(sandbox.credentials, user.pw_uid, user.pw_gid)
        sandbox.credentials.chmod(0o500)
        env["CREDENTIALS_DIRECTORY"] = str(sandbox.credentials)
    # The state directory stays writable (a mount of its own), everything else is
    # remounted read-only; then, from /, the service's user and environment.
    script = " && ".join(
        [
            *(f"mount --bind {shlex.quote(str(b))} {shlex.quote(str(b))}" for b in binds),
            "mount -o remount,bind,ro /",
            "cd /",
            "exec setpriv --reuid={} --regid={} --clear-groups env -i {} {}".format(
                user.pw_uid,
                user.pw_gid,
                " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()),
                " ".join(shlex.quote(arg) for arg in unit.exec_start),
            ),
        ]
    )
    return procs.start(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], name)
