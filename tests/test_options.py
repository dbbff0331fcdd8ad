"""One declaration per option (relay.options): every surface comes from it and agrees.

The click options, the RELAY_* variables, the config-file keys and the Python
keywords are derived from the dataclass fields; these tests hold each surface
against the declarations, in process (click's parser, no relay is started).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import relay
from relay.cli import cli
from relay.cli.commands import forward_command, seed_command, server_command
from relay.options import (
    Declaration,
    ForwardOptions,
    OptionError,
    Options,
    ProcessOptions,
    RegistrationOptions,
    RelayOptions,
    Service,
    SharedOptions,
    declarations,
)
from relay.options.client import RelayAddress
from relay.options.kinds import (
    ByteSize,
    Choice,
    Endpoint,
    Flag,
    Integer,
    PortRange,
    Seconds,
    Secret,
    ServiceSpec,
    Text,
)
from relay.options.kinds import (
    Path as PathKind,
)
from relay.options.server import ClusterURL

ROOT = Path(__file__).resolve().parent.parent
ROLES: list[type[Options]] = [
    SharedOptions,
    RelayOptions,
    RegistrationOptions,
    ForwardOptions,
    ProcessOptions,
]
COMMANDS = {
    RelayOptions: server_command,
    RegistrationOptions: forward_command,
    ForwardOptions: forward_command,
}


def on_command_line(cls: type[Options]) -> list[Declaration]:
    return [d for d in declarations(cls) if d.spec.cli]


def command_of(cls: type[Options]) -> click.Command:
    return seed_command if cls in (SharedOptions, ProcessOptions) else COMMANDS[cls]


# ------------------------------------------------------------------ every surface
@pytest.mark.parametrize("cls", ROLES, ids=lambda c: c.__name__)
def test_every_field_is_declared_once_with_one_flag_variable_and_key(cls: type[Options]) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    assert [d.name for d in declarations(cls)] == fields  # no field without a declaration
    command = command_of(cls)
    for declared in on_command_line(cls):
        params = [p for p in command.params if p.name == declared.name]
        assert len(params) == 1, declared.name
        (param,) = params
        assert isinstance(param, click.Option)
        assert declared.flag in param.opts
        assert param.envvar == declared.envvar == "RELAY_" + declared.name.upper()
        assert declared.key == declared.name.replace("_", "-")
    keywords = set(inspect.signature(cls).parameters)
    assert keywords == set(fields)


def test_flags_variables_and_names_are_unique_across_roles() -> None:
    params = [p for p in seed_command.params if isinstance(p, click.Option)]
    names = [p.name for p in params]
    flags = [opt for p in params for opt in (*p.opts, *p.secondary_opts)]
    envvars = [p.envvar for p in params if p.envvar]
    assert len(names) == len(set(names))
    assert len(flags) == len(set(flags))
    assert len(envvars) == len(set(envvars))
    declared = {d.name for cls in ROLES for d in on_command_line(cls)}
    assert declared <= set(names)


@pytest.mark.parametrize("cls", [RelayOptions, ForwardOptions], ids=lambda c: c.__name__)
def test_the_api_keywords_are_the_declared_options(cls: type[Options]) -> None:
    owner: Any = relay.RelayServer if cls is RelayOptions else relay.Forwarder
    parameters = inspect.signature(owner).parameters
    for declared in declarations(cls):
        assert parameters[declared.name].default == declared.default, declared.name
    registering = inspect.signature(relay.start_server).parameters
    assert {d.name for d in declarations(RegistrationOptions)} <= set(registering)


# ------------------------------------------------------------ one default, one place
def parsed(command: click.Command, args: list[str], env: dict[str, str] | None = None) -> Any:
    """The values click parses for ``args`` (the command is not run)."""
    runner = CliRunner()
    with runner.isolation(env=env):
        ctx = command.make_context(command.name, args)
    return ctx.params


@pytest.mark.parametrize("cls", ROLES, ids=lambda c: c.__name__)
def test_the_command_line_defaults_are_the_declared_ones(cls: type[Options]) -> None:
    args = ["7000"] if command_of(cls) is not forward_command else ["1", "h:2"]
    values = parsed(command_of(cls), args)
    built = cls.from_values(values)
    assert built == cls()  # the flags' defaults are the dataclass's, value for value
    for declared in on_command_line(cls):
        kind = declared.spec.kind
        if declared.default not in (None, ()) and not isinstance(kind, Flag):
            shown = kind.show(declared.default)  # what --help says is what is used
            assert kind.convert(shown, None, None) == declared.default, declared.name


def test_no_module_of_the_relay_keeps_a_default_of_its_own() -> None:
    """Defaults live in relay/options only: no DEFAULT_* constant elsewhere in relay/."""
    found = []
    for path in (ROOT / "relay").rglob("*.py"):
        if "options" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            found += [
                f"{path.relative_to(ROOT)}: {t.id}"
                for t in targets
                if isinstance(t, ast.Name) and t.id.startswith("DEFAULT")
            ]
    assert found == []


# ------------------------------------------- the same field from a variable or a file
SAMPLES: dict[type, str] = {
    Integer: "7",
    Seconds: "7.5",
    ByteSize: "512KiB",
    PortRange: "5000-5009",
    Endpoint: "127.0.0.1:9100",
    Text: "alice",
    PathKind: "/etc/relay/x",
    Secret: "a long enough secret",
    ServiceSpec: "web=8080:7202",
    ClusterURL: "redis://127.0.0.1:6379/0",
    RelayAddress: "relay.example.com:7000",
}


def sample(declared: Declaration) -> str:
    kind = declared.spec.kind
    if isinstance(kind, Choice):
        return next(w for w, v in reversed(kind.choices.items()) if v != declared.default)
    if isinstance(kind, Flag):
        return "false" if declared.default else "true"
    if isinstance(kind, Integer) and kind.maximum is not None:
        return str(min(4242, kind.maximum))
    return SAMPLES[type(kind)]


def toml_value(text: str, declared: Declaration) -> str:
    """``text`` as the config file writes it: TOML's own booleans and integers."""
    if isinstance(declared.spec.kind, Flag | Integer):
        return text
    if declared.spec.multiple:
        return f'["{text}"]'
    return f'"{text}"'


@pytest.mark.parametrize(
    "declared",
    [d for cls in (RelayOptions, ForwardOptions, ProcessOptions) for d in on_command_line(cls)],
    ids=lambda d: d.name,
)
def test_a_variable_and_a_config_key_reach_the_same_field(
    declared: Declaration, tmp_path: Path
) -> None:
    relay_side = declared.name in {d.name for d in declarations(RelayOptions)}
    command = server_command if relay_side else forward_command
    args = ["7000"] if relay_side else ["1", "h:2"]
    text = sample(declared)
    from_env = parsed(command, args, env={declared.envvar: text})[declared.name]
    config = tmp_path / "relay.toml"
    common = {d.name for cls in (SharedOptions, ProcessOptions) for d in declarations(cls)}
    section = "" if declared.name in common else "[server]\n" if relay_side else "[forward]\n"
    config.write_text(f"{section}{declared.key} = {toml_value(text, declared)}\n")
    from_file = parsed(command, ["--config", str(config), *args])[declared.name]
    if isinstance(declared.spec.kind, Flag):
        flag = [declared.flag if text == "true" else f"--no-{declared.flag[2:]}"]
    else:
        flag = [f"{declared.flag}={text}"]
    from_flag = parsed(command, [*flag, *args])[declared.name]
    assert from_env == from_file == from_flag
    assert from_env != declared.default


# ------------------------------------------------ errors name the option as written
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: relay.RelayServer(max_sessions=0), "max_sessions=0: must be at least 1"),
        (
            lambda: relay.RelayServer(port_range=(6000, 5000)),
            "port_range=(6000, 5000): LOW must not be greater than HIGH",
        ),
        (
            lambda: relay.RelayServer(max_stream_window=1024),
            "max_stream_window=1024: must be at least 256KiB",
        ),
        (lambda: relay.RelayServer(protocol="yamux"), "protocol='yamux': must be one of 'seed'"),
        (
            lambda: relay.RelayServer(tls_client_ca="ca.pem"),
            "tls_client_ca: tls_key and tls_client_ca need tls_cert",
        ),
        (
            lambda: relay.Forwarder("h", 1, 6379, reconnect_delay=5, reconnect_max_delay=1),
            "reconnect_max_delay=1: must not be less than reconnect_delay (5)",
        ),
        (
            lambda: relay.Forwarder("h", 1, 6379, 8080, name="web"),
            "name: name, remote_port and route apply to a single service",
        ),
        (lambda: RegistrationOptions(remote_port=0), "remote_port=0: must be a port number"),
        (lambda: RegistrationOptions(name="a b"), "name='a b': may only contain letters"),
        (lambda: RegistrationOptions(connect_timeout=True), "connect_timeout=True: must be a"),
        (lambda: ForwardOptions(proxy_protocol=3), "proxy_protocol=3: must be one of 1, 2"),
    ],
)
def test_api_errors_name_the_keyword(build: Any, message: str) -> None:
    with pytest.raises(OptionError) as info:
        build()
    assert str(info.value).startswith(message)


def test_a_secret_is_never_shown() -> None:
    with pytest.raises(
        OptionError,
        match=r"^secret: too weak: about 24 bits .* at least 128: make one with `relay gen-secret`",
    ):
        relay.RelayServer(secret="short")
    options = RegistrationOptions(secret="a long enough secret")
    assert "long enough" not in repr(options)


async def test_register_checks_its_keywords_before_connecting() -> None:
    with pytest.raises(OptionError, match=r"^remote_port=70000: must be a port number"):
        await relay.register("127.0.0.1", 1, remote_port=70000)
    with pytest.raises(TypeError, match="unknown option"):
        relay.RelayServer(max_session=3)


def test_a_secret_file_is_read_once_by_its_owner(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a long enough secret\n")
    server = relay.RelayServer(secret_file=str(secret))
    assert server.options.secret == b"a long enough secret"
    assert server.protocol == "v2"  # a secret implies registration v2
    with pytest.raises(OptionError, match=r"^secret_file: cannot read secret file"):
        relay.RelayServer(secret_file=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (
            ["forward", "--reconnect-max-delay", "1", "1", "h:2"],
            {"RELAY_RECONNECT_DELAY": "5"},
            "",
            "Invalid value for '--reconnect-max-delay': 1: must not be less than "
            "--reconnect-delay (5)",
        ),
        (
            ["forward", "1", "h:2"],
            {"RELAY_RECONNECT_MAX_DELAY": "1", "RELAY_RECONNECT_DELAY": "5"},
            "",
            "Invalid value for '--reconnect-max-delay' (env var RELAY_RECONNECT_MAX_DELAY): 1:",
        ),
        (
            ["server", "7000"],
            {},
            '[server]\nsecret = "a long enough secret"\nauth-file = "clients.toml"\n',
            "'--auth-file' (in {config}): give a shared secret (--secret, --secret-file) or "
            "named clients (--auth-file, [[server.clients]]), not both",
        ),
        (
            ["server", "--protocol", "notify", "--state-dir", "x", "7000"],
            {},
            "",
            "Invalid value for '--protocol': 'notify': the notify protocol has no "
            "authentication, TLS or leases: drop --secret,",
        ),
    ],
)
def test_cli_errors_found_together_name_the_flag_and_its_source(
    args: list[str], env: dict[str, str], config: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "relay.toml"
    if config:
        path.write_text(config)
        args = [args[0], "--config", str(path), *args[1:]]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert expected.format(config=path) in " ".join(result.output.split())


def test_service_values_are_one_type_everywhere() -> None:
    options = ForwardOptions.from_values(parsed(forward_command, ["--service", "a=1:2", "h:3"]))
    assert options.service == (Service(1, None, "a", 2),)
    assert relay.Service is Service
