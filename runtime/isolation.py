"""Who the model runs as, and what it can reach of Conveyor's secrets.

By default the model runs as Conveyor's own user, with Conveyor's environment minus the private
variables (conveyor.config.model.PRIVATE_VARS): it sees the platform's credentials on purpose
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN of the Lambda or Batch role,
OSCAR_SERVICE_TOKEN ...), because scripts that call AWS or OSCAR themselves need them, as under
faas-supervisor. It does not get the definition (FUNCTION_CONFIG, FDL), whose storage providers
may hold keys inline, and conveyor.sealing keeps those out of Conveyor's environment block. But
a model under the same uid can still read the files Conveyor read them from (the definition file,
the minio.default secret files) and, where ptrace is allowed, Conveyor's memory.

`conveyor: isolate_model: true` closes that: every model process starts as `model_user`
(default 65534:65534, nobody:nogroup, no supplementary groups), so /proc/<Conveyor's pid>/* is
closed to it, and its input, output and work folders are handed to that user. Before the first
record:
- Conveyor must be able to switch users: root, or CAP_SETUID, CAP_SETGID and CAP_CHOWN;
- every file that holds a credential Conveyor read (the minio.default secret files, the
  definition file when a provider's keys came from it) must be unreadable by the model's user:
  one that Conveyor owns is made readable by its owner alone (logged); any other (a Kubernetes
  secret mounted with defaultMode 0644) is an error: mount it with defaultMode 0400.
Anything that does not hold is a ConfigError (78) for every record: the model never runs
unisolated when isolation was asked for. Under AWS Lambda the function runs unprivileged, so
isolate_model always fails there; the images run as uid 1000 and need `--user 0` for it.

Isolated are the processes started through Invocation.run_child (the script and darknet
handlers, deepaas in its cli and predict modes) and the model host (conveyor.modelhost: DEEPaaS
warm, Darknet's OpenCV backend), which starts as `model_user` too. A model loaded into Conveyor's
own process (`model_host: inline`) is not, and isolate_model does not make it so.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from conveyor.config import FunctionConfig
from conveyor.config.model import MINIO_SECRET_FILES
from conveyor.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "conveyor.isolate_model"
USER_KEY = "conveyor.model_user"
# Capability numbers (linux/capability.h): what switching users and handing folders over take.
CAP_CHOWN, CAP_SETGID, CAP_SETUID = 0, 6, 7
NEEDED_CAPS = {"CAP_CHOWN": CAP_CHOWN, "CAP_SETGID": CAP_SETGID, "CAP_SETUID": CAP_SETUID}


@dataclass(frozen=True)
class ModelUser:
    """The uid and gid every model process runs as (no supplementary groups)."""

    uid: int
    gid: int

    def hand_over(self, *folders: Path) -> None:
        """Make the model's own folders (input, output, work) belong to it."""
        for folder in folders:
            os.chown(folder, self.uid, self.gid)


def model_user(config: FunctionConfig, status_path: str = "/proc/self/status") -> ModelUser | None:
    """None when the model runs as Conveyor's user; else who it runs as, once the checks of the
    module docstring hold. Raises ConfigError (78) otherwise."""
    settings = config.conveyor
    if not settings.isolate_model:
        return None
    user = resolve_user(settings.model_user)
    missing = [name for name, cap in NEEDED_CAPS.items() if not has_capability(cap, status_path)]
    if missing:
        raise ConfigError(
            f"cannot run the model as {user.uid}:{user.gid}: Conveyor runs as uid {os.geteuid()} without "
            f"{', '.join(missing)}. Run Conveyor as root (e.g. docker run --user 0), or leave isolate_model unset",
            key=KEY,
        )
    if user.uid == os.geteuid():
        raise ConfigError(f"the model would run as Conveyor's own uid {user.uid}: nothing isolated", key=USER_KEY)
    for path in credential_files(config):
        _close_to(user, path)
    return user


def resolve_user(spec: str) -> ModelUser:
    """`<user>[:<group>]` (names or numbers) -> uid and gid; a user alone takes its own group
    (numbers: the same number). ConfigError naming the key when a name is unknown."""
    user_text, _, group_text = spec.partition(":")
    try:
        if user_text.isdigit():
            uid, default_gid = int(user_text), int(user_text)
        else:
            entry = pwd.getpwnam(user_text)
            uid, default_gid = entry.pw_uid, entry.pw_gid
        if not group_text:
            gid = default_gid
        elif group_text.isdigit():
            gid = int(group_text)
        else:
            gid = grp.getgrnam(group_text).gr_gid
    except KeyError:
        raise ConfigError(f"{spec!r}: no such user or group in this image", key=USER_KEY) from None
    if uid == 0 or gid == 0:
        raise ConfigError(f"{spec!r} is root: the model would keep every access Conveyor has", key=USER_KEY)
    return ModelUser(uid, gid)


def has_capability(cap: int, status_path: str = "/proc/self/status") -> bool:
    """Is capability number `cap` in this process's effective set? (uid 0 without it: no)"""
    try:
        with open(status_path) as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0  # no procfs: trust the uid


def credential_files(config: FunctionConfig) -> list[Path]:
    """The files Conveyor read a credential from: minio.default's secret files, and the definition
    file when a provider's keys, token or password came from it."""
    found: list[Path] = []
    for provider in config.providers.values():
        source = provider.credentials_source or ""
        if config.secrets_dir and source == f"{config.secrets_dir}/minio.default":
            found.extend(Path(source) / name for name in MINIO_SECRET_FILES)
        elif source.startswith(f"{config.source}: ") and os.path.isfile(config.source):
            found.append(Path(config.source))
    return sorted(set(found))


def can_read(path: Path, user: ModelUser) -> bool:
    """Could `user` (no supplementary groups) open `path` for reading, by the mode bits of the file
    and of every folder on its way? (ACLs are not looked at.)"""
    try:
        target = Path(os.path.realpath(path))
        info = target.stat()
    except OSError:
        return False
    if not _allowed(info, user, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return False
    for folder in target.parents:
        try:
            if not _allowed(folder.stat(), user, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return False
        except OSError:
            return False
    return True


def _allowed(info: os.stat_result, user: ModelUser, owner: int, group: int, other: int) -> bool:
    if info.st_uid == user.uid:
        return bool(info.st_mode & owner)
    if info.st_gid == user.gid:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def _close_to(user: ModelUser, path: Path) -> None:
    """Make `path` unreadable by the model's user, or raise ConfigError saying why it cannot be."""
    if not can_read(path, user):
        return
    real = Path(os.path.realpath(path))
    info = real.stat()
    if info.st_uid == os.geteuid():
        try:
            os.chmod(real, stat.S_IMODE(info.st_mode) & ~(stat.S_IRWXG | stat.S_IRWXO))
        except OSError as exc:
            log.debug("cannot chmod %s: %s", real, exc.strerror)
        else:
            if not can_read(path, user):
                log.warning("%s holds a credential: made it readable by its owner alone (%s)", path, KEY)
                return
    raise ConfigError(
        f"{path} holds a credential and the model's user {user.uid}:{user.gid} could read it "
        f"(mode {stat.filemode(info.st_mode)}, owner {info.st_uid}:{info.st_gid}); make it readable by its owner "
        "alone (a Kubernetes secret: defaultMode 0400), or leave isolate_model unset",
        key=KEY,
    )
