"""Conveyor's own `conveyor:` block (handler, timeouts, status, sizes) as ConveyorSettings.

Sections merge key by key, later ones win: the image's defaults, the document's top level, the function's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.config.model import DEFAULT_MODEL_USER, ConveyorSettings, HandlerSpec, WarmSettings, frozen_mapping
from conveyor.config.values import Section, Values, join

log = logging.getLogger(__name__)

_KNOWN = {
    "handler",
    "timeout",
    "grace_period",
    "withdraw_timeout",
    "status",
    "expected_duration",
    "lambda_max_size",
    "log_tail_bytes",
    "log_max_bytes",
    "require_output",
    "script_shell",
    "accept_any_input",
    "keep_input_folders",
    "isolate_model",
    "model_user",
    "model_host",
    "transfer_engine",
    "warm",
    "warm_idle_timeout",
    "unpack",
    "unpack_max_members",
    "unpack_max_bytes",
}
SCRIPT_SHELLS = ("sh", "shebang")
MODEL_HOSTS = ("auto", "process", "inline")
TRANSFER_ENGINES = ("obstore", "sdk")  # conveyor.storage.base.ENGINES
UNPACK_FORMATS = ("zip", "off")


def parse_settings(values: Values, sections: list[Section]) -> tuple[ConveyorSettings, str]:
    """(the settings, the key path of `status.storage_provider` for errors about it). Unknown keys warn."""
    merged: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for section, key in sections:
        for name, value in values.mapping(section, key).items():
            merged[str(name)] = value
            paths[str(name)] = join(key, str(name))

    def at(name: str) -> str:
        return paths.get(name, f"conveyor.{name}")

    for name in sorted(set(merged) - _KNOWN):
        log.warning("ignoring unknown key %s in %s", at(name), values.source)
    defaults = ConveyorSettings()
    timeout = values.number(merged.get("timeout"), at("timeout"), None)
    if timeout == 0:
        raise values.fail(at("timeout"), "must be a positive number of seconds (omit it for no timeout)")
    log_max = values.size(merged.get("log_max_bytes"), at("log_max_bytes"), defaults.log_max_bytes)
    if log_max == 0:
        raise values.fail(at("log_max_bytes"), "must be a positive size")
    status = merged.get("status")
    settings = ConveyorSettings(
        handler=_handler(values, merged.get("handler"), at("handler")),
        timeout=timeout,
        grace_period=values.number(merged.get("grace_period"), at("grace_period"), defaults.grace_period) or 0.0,
        withdraw_timeout=values.number(merged.get("withdraw_timeout"), at("withdraw_timeout"),
                                       defaults.withdraw_timeout) or 0.0,
        status=None if status is None else values.io_spec(status, at("status")),
        expected_duration=values.number(merged.get("expected_duration"), at("expected_duration"), None),
        lambda_max_size=values.size(merged.get("lambda_max_size"), at("lambda_max_size"), None),
        log_tail_bytes=values.size(merged.get("log_tail_bytes"), at("log_tail_bytes"), defaults.log_tail_bytes) or 0,
        log_max_bytes=log_max or defaults.log_max_bytes,
        require_output=values.boolean(merged.get("require_output"), at("require_output"), None),
        accept_any_input=values.boolean(merged.get("accept_any_input"), at("accept_any_input"), False) or False,
        keep_input_folders=bool(values.boolean(merged.get("keep_input_folders"), at("keep_input_folders"), False)),
        script_shell=values.choice(
            merged.get("script_shell"), at("script_shell"), defaults.script_shell, SCRIPT_SHELLS, upper=False
        ),
        isolate_model=bool(values.boolean(merged.get("isolate_model"), at("isolate_model"), False)),
        model_user=_model_user(values, merged.get("model_user"), at("model_user")),
        model_host=values.choice(merged.get("model_host"), at("model_host"), "auto", MODEL_HOSTS, upper=False),
        transfer_engine=values.choice(merged.get("transfer_engine"), at("transfer_engine"),
                                      defaults.transfer_engine, TRANSFER_ENGINES, upper=False),
        warm=_warm(values, merged.get("warm"), merged.get("warm_idle_timeout"), at),
        unpack=_unpack(values, merged.get("unpack"), at("unpack")),
        unpack_max_members=_cap(values, merged.get("unpack_max_members"), at("unpack_max_members"),
                                defaults.unpack_max_members),
        unpack_max_bytes=_cap(values, merged.get("unpack_max_bytes"), at("unpack_max_bytes"),
                              defaults.unpack_max_bytes),
    )
    return settings, join(at("status"), "storage_provider")


def _model_user(values: Values, value: Any, key: str) -> str:
    """`<user>[:<group>]`, each a name or a number; root (0) is refused: it would isolate nothing."""
    text = values.string(value, key, DEFAULT_MODEL_USER) or ""
    user, colon, group = text.strip().partition(":")
    if not user or (colon and not group) or any(c.isspace() for c in text.strip()):
        raise values.fail(key, f"must be '<user>' or '<user>:<group>' (names or numbers), not {value!r}")
    if user in ("0", "root") or group in ("0", "root"):
        raise values.fail(key, "must not be root: the model would keep every access Conveyor has")
    return text.strip()


def _unpack(values: Values, value: Any, key: str) -> str | None:
    """`unpack: zip` (archives are unpacked, each member through the model); off, false or absent: None."""
    if value is False:
        return None
    choice = values.choice(value, key, "off", UNPACK_FORMATS, upper=False)
    return None if choice == "off" else choice


def _cap(values: Values, value: Any, key: str, default: int) -> int:
    """A positive count or size (an `unpack_max_*` cap)."""
    cap = values.size(value, key, default)
    if not cap:
        raise values.fail(key, "must be a positive number")
    return cap


def _handler(values: Values, value: Any, key: str) -> HandlerSpec:
    """`handler: script` or `handler: {name: deepaas, <its options>...}`."""
    if value is None:
        return HandlerSpec()
    if isinstance(value, Mapping):
        name = values.string(value.get("name"), join(key, "name"))
        if name is None or not name.strip():
            raise values.fail(join(key, "name"), "is required (e.g. 'script', 'deepaas', 'darknet')")
        options = {str(k): v for k, v in value.items() if k != "name"}
        return HandlerSpec(name=name.strip(), options=frozen_mapping(options))
    name = values.string(value, key)
    if not name or not name.strip():
        raise values.fail(key, "must name a handler (e.g. 'script')")
    return HandlerSpec(name=name.strip())


def _warm(values: Values, warm: Any, idle: Any, at: Callable[[str], str]) -> WarmSettings:
    """`warm` and `warm_idle_timeout`: the per-pod warm daemon of OSCAR sync services (conveyor.serve)."""
    defaults = WarmSettings()
    idle_timeout = values.number(idle, at("warm_idle_timeout"), defaults.idle_timeout)
    if idle_timeout is not None and idle_timeout <= 0:
        raise values.fail(at("warm_idle_timeout"), "must be a positive number of seconds")
    return WarmSettings(enabled=bool(values.boolean(warm, at("warm"), False)),
                        idle_timeout=idle_timeout or defaults.idle_timeout)
