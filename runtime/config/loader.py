"""load_config(): find the definition, pick the function, parse every part into one FunctionConfig.

Env overrides: LOG_LEVEL, EXECUTION_MODE, TIMEOUT_THRESHOLD win over the file. Unknown keys are
ignored; a wrong type fails with the key path and the source named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from conveyor.config.model import (
    ENV_SOURCE,
    EXECUTION_MODES,
    ISOLATION_LEVELS,
    LOG_LEVELS,
    MAX_ARG_STRLEN,
    MINIO_SECRETS_DIR,
    PRIVATE_VARS,
    FunctionConfig,
    ReadFile,
    frozen_mapping,
)
from conveyor.config.providers import check_configured, parse_providers
from conveyor.config.script import ScriptMissing, resolve_script
from conveyor.config.settings import parse_settings
from conveyor.config.shapes import select_function
from conveyor.config.sources import find_source, image_defaults, parse_yaml, read_text_file
from conveyor.config.values import Section, Values, join, kind
from conveyor.errors import ConfigError
from conveyor.platform import Platform

log = logging.getLogger(__name__)


def load_config(
    environ: Mapping[str, str],
    platform: Platform | str,
    path: str | os.PathLike[str] | None = None,
    read_file: ReadFile | None = None,
    secrets_dir: str | Path | None = MINIO_SECRETS_DIR,
) -> FunctionConfig:
    """Find and parse the function definition. `read_file(path)` returns text or None (absent).

    Every file (the definition, the image defaults, the script, minio.default's secret files under
    `secrets_dir`) is read through `read_file`. Raises ConfigError (naming the key and the source)
    for anything unusable.
    """
    platform = Platform(platform)
    reader = read_file or read_text_file
    text, source = find_source(environ, platform, None if path is None else str(path), reader)
    doc = parse_yaml(text, source) if text is not None else {}
    loader = _Loader(source, environ, platform, reader, None if secrets_dir is None else str(secrets_dir))
    return loader.build(doc, image_defaults(environ, reader))


# Linux refuses an exec (E2BIG, "Argument list too long") when one NAME=value string is longer than
# MAX_ARG_STRLEN (32 pages: 128 KiB with its NUL), or when arguments and environment together pass
# ARG_MAX (a quarter of the stack limit: 2 MiB by default). The model's environment (what it inherits
# plus the definition's variables) may take at most half of ARG_MAX, leaving room for EVENT.


def max_environment_block() -> int:
    """Half of ARG_MAX (SC_ARG_MAX: 2 MiB under the default 8 MiB stack limit)."""
    try:
        arg_max = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        arg_max = -1
    return (arg_max if arg_max > 0 else 2 * 1024 * 1024) // 2


def _env_size(name: str, value: str) -> int:
    return len(f"{name}={value}".encode("utf-8", "surrogateescape")) + 1  # the NUL, as exec counts it


def check_environment_size(
    values: Values, parts: list[tuple[Mapping[str, str], str]], inherited: Mapping[str, str]
) -> None:
    """ConfigError naming the variable whose NAME=value is too long for exec, or naming the
    definition's variables when, with what the model inherits, they are too large: checked once,
    at load, rather than every record failing with `Argument list too long`."""
    defined: dict[str, int] = {}
    for variables, key in parts:
        for name, value in variables.items():
            size = _env_size(name, value)
            if size > MAX_ARG_STRLEN:
                raise values.fail(
                    join(key, name),
                    f"is {size} bytes as NAME=value; Linux refuses an environment string over {MAX_ARG_STRLEN} bytes",
                )
            defined[name] = size
    if not defined:
        return
    kept = sum(_env_size(k, v) for k, v in inherited.items() if k not in PRIVATE_VARS and k not in defined)
    total, bound = kept + sum(defined.values()), max_environment_block()
    if total > bound:
        raise values.fail(
            " and ".join(key for variables, key in parts if variables),
            f"take {sum(defined.values())} bytes, and the model's whole environment {total}; at most {bound} "
            "are allowed (half of Linux's ARG_MAX, the rest left to EVENT)",
        )


class _Loader:
    """Turns one parsed YAML document into a FunctionConfig; every error names key path and source."""

    def __init__(
        self, source: str, environ: Mapping[str, str], platform: Platform, reader: ReadFile, secrets_dir: str | None
    ) -> None:
        self.values = Values(source)
        self.source = source
        self.environ = environ
        self.platform = platform
        self.reader = reader
        self.secrets_dir = secrets_dir

    def build(self, doc: Any, base_conveyor: list[Section]) -> FunctionConfig:
        """The definition in `doc`; `base_conveyor` (the image's defaults) lies beneath its `conveyor:`."""
        v = self.values
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise ConfigError(f"the definition must be a YAML mapping, not {kind(doc)}", source=self.source)
        flat, paths, provider_sections, conveyor_sections = select_function(v, doc, self.environ)

        def at(key: str) -> str:
            return paths.get(key, key)

        container = v.mapping(flat.get("container"), at("container"))
        container_env = v.mapping(container.get("environment"), join(at("container"), "environment"))
        scar_key = join(at("container"), "environment.Variables")
        environment = v.variables(container_env.get("Variables"), scar_key)
        oscar_env = v.mapping(flat.get("environment"), at("environment"))
        oscar_key = join(at("environment"), "variables")
        oscar_vars = v.variables(oscar_env.get("variables"), oscar_key)
        check_environment_size(v, [(environment, scar_key), (oscar_vars, oscar_key)], self.environ)
        environment.update(oscar_vars)

        if "timeout_threshold" in container:
            threshold_value, threshold_key = container["timeout_threshold"], join(at("container"), "timeout_threshold")
        else:
            threshold_value, threshold_key = flat.get("timeout_threshold"), at("timeout_threshold")
        image_key = join(at("container"), "image") if container.get("image") is not None else at("image")
        image_value = container.get("image") if container.get("image") is not None else flat.get("image")

        batch = v.mapping(flat.get("batch"), at("batch"))
        mnp_key = join(at("batch"), "multi_node_parallel")
        mnp = v.mapping(batch.get("multi_node_parallel"), mnp_key)

        providers = parse_providers(v, provider_sections, self.reader, self.secrets_dir)
        inputs = v.io_list(flat.get("input"), at("input"))
        outputs = v.io_list(flat.get("output"), at("output"))
        conveyor, status_key = parse_settings(v, [*base_conveyor, *conveyor_sections])
        refs = [
            (spec, join(join(at(name), i), "storage_provider"))
            for name, specs in (("input", inputs), ("output", outputs))
            for i, spec in enumerate(specs)
        ]
        if conveyor.status is not None:
            refs.append((conveyor.status, status_key))
        for spec, key in refs:
            check_configured(v, spec.provider, providers, key)

        init_script = v.string(flat.get("init_script"), at("init_script"))
        config = FunctionConfig(
            name=v.string(flat.get("name"), at("name"), "conveyor") or "conveyor",
            log_level=v.choice(flat.get("log_level"), at("log_level"), "INFO", LOG_LEVELS, upper=True),
            execution_mode=v.choice(
                flat.get("execution_mode"), at("execution_mode"), "lambda", EXECUTION_MODES, upper=False
            ),
            file_stage_in=bool(v.boolean(flat.get("file_stage_in"), at("file_stage_in"), False)),
            init_script=init_script,
            image=v.string(image_value, image_key),
            timeout_threshold=v.number(threshold_value, threshold_key, 10.0) or 0.0,
            environment=frozen_mapping(environment),
            multi_node_parallel=bool(v.boolean(mnp.get("enabled"), join(mnp_key, "enabled"), False)),
            inputs=inputs,
            outputs=outputs,
            isolation_level=v.choice(
                flat.get("isolation_level"), at("isolation_level"), "SERVICE", ISOLATION_LEVELS, upper=True
            ),
            bucket_list=v.str_list(flat.get("bucket_list"), at("bucket_list")),
            providers=frozen_mapping(providers),
            conveyor=conveyor,
            source=self.source,
            secrets_dir=self.secrets_dir,
        )
        config = self.env_overrides(config)
        try:
            script, script_source = resolve_script(
                v,
                self.environ,
                self.platform,
                self.reader,
                init_script=(init_script, at("init_script")),
                oscar_script=(flat.get("script"), at("script")),
            )
        except ScriptMissing as missing:  # only the script handler needs it, and the event may bring one
            log.debug("%s", missing.error)
            return replace(config, script_error=str(missing.error))
        return replace(config, script=script, script_source=script_source)

    def env_overrides(self, config: FunctionConfig) -> FunctionConfig:
        """LOG_LEVEL, EXECUTION_MODE, TIMEOUT_THRESHOLD win over the file; errors name the variable."""
        names = ("LOG_LEVEL", "EXECUTION_MODE", "TIMEOUT_THRESHOLD")
        env = {name: value for name in names if (value := self.environ.get(name, "")).strip()}
        values = Values(ENV_SOURCE)
        changes: dict[str, Any] = {}
        if "LOG_LEVEL" in env:
            changes["log_level"] = values.choice(env["LOG_LEVEL"], "LOG_LEVEL", "INFO", LOG_LEVELS, upper=True)
        if "EXECUTION_MODE" in env:
            changes["execution_mode"] = values.choice(
                env["EXECUTION_MODE"], "EXECUTION_MODE", "lambda", EXECUTION_MODES, upper=False
            )
        if "TIMEOUT_THRESHOLD" in env:
            changes["timeout_threshold"] = values.number(env["TIMEOUT_THRESHOLD"], "TIMEOUT_THRESHOLD", 10.0)
        return replace(config, **changes) if changes else config
