"""Start and stop real S3-compatible servers on 127.0.0.1 for the test session.

Three servers, each on ports picked at random, with its data and logs in a
directory of its own (never in the test output):

* ``start_seaweedfs(tmpdir)``: ``weed server`` (master + volume + filer + S3 gateway).
* ``start_rclone(tmpdir)``: ``rclone serve s3`` over a local folder.
* ``start_moto()``: moto's ``ThreadedMotoServer`` in this process.

Each returns ``(S3Server, stop)``; ``stop()`` is idempotent. The binaries come
from the directory of ``sys.executable`` first (the venv's bin), then ``PATH``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.session
from botocore.config import Config
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES  # sic: botocore's spelling

from tests.helpers import clean_env

ACCESS_KEY = "ckptsynctestaccesskey"
SECRET_KEY = "ckptsynctestsecretkey0123456789"
REGION = "us-east-1"

START_DEADLINE_S = 60.0
STOP_GRACE_S = 0.5
_PORT_ATTEMPTS = 3  # a randomly picked port can be taken by someone else before the server binds it

StopFn = Callable[[], None]


@dataclass(frozen=True)
class S3Server:
    name: str  # "seaweedfs" | "rclone" | "moto"
    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    conditional_writes: bool = True  # does PutObject honour If-None-Match: * ?

    def client(self, **config: object):
        """A boto3 S3 client for this server: path-style, one attempt, no host config files.

        Keyword arguments override the ``botocore.config.Config`` options (e.g. ``read_timeout=5``).
        """
        options: dict[str, object] = {
            "s3": {"addressing_style": "path"},
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "connect_timeout": 5,
            "read_timeout": 60,
        }
        options.update(config)
        cfg = Config(**options)  # type: ignore[arg-type]
        return _new_client(
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=cfg,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point ckptsync (and any AWS SDK) at this server and nothing else."""
        return {
            "CKPTSYNC_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def create_bucket(self, prefix: str = "b") -> str:
        """Create a new, uniquely named bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if not (3 <= len(name) <= 63) or name != name.lower() or not name[0].isalnum():
            raise ValueError(f"not a DNS-valid bucket name: {name!r}")
        self.client().create_bucket(Bucket=name)
        return name


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _new_client(**kwargs: object):
    """An S3 client from one shared boto3 session that reads no config or credentials file, no profile and no
    AWS_* variable of the host. Sharing it makes clients cheap (~4 ms instead of ~80 ms: the service model is loaded once);
    the lock because botocore sessions are not thread-safe while creating clients."""
    global _session
    with _session_lock:
        if _session is None:
            # every setting at its default: read neither AWS_* variables nor files
            no_env = {k: (v[0], None, v[2], v[3]) for k, v in BOTOCORE_DEFAUT_SESSION_VARIABLES.items()}
            bs = botocore.session.Session(session_vars=no_env)
            bs.set_config_variable("config_file", os.devnull)
            bs.set_config_variable("credentials_file", os.devnull)
            _session = boto3.session.Session(botocore_session=bs)
        return _session.client("s3", **kwargs)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- helpers


def find_binary(name: str) -> str:
    """``name`` in the directory of ``sys.executable`` (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which(name, path=str(here)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name!r} not found next to {sys.executable} nor on PATH (install the test extras)")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<no log: {e}>"
    return data[-n:].decode("utf-8", "replace")


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _popen(argv: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    # Own process group so stop() can signal the whole group; when started from the main thread, also ask the
    # kernel to SIGKILL the server if this process dies without cleaning up (pytest killed with SIGKILL).
    # SIGKILL, not SIGTERM: an orphaned weed that got SIGTERM was seen to hang on forever half shut down.
    # PDEATHSIG fires when the *thread* that forked exits, so it is only safe from the main thread.
    main = threading.current_thread() is threading.main_thread() and sys.platform.startswith("linux")
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_set_pdeathsig if main else None,
        )


def _server_env(home: Path) -> dict[str, str]:
    """Environment for a server process: no AWS or rclone settings of the host, HOME in its own folder."""
    env = clean_env({"HOME": str(home), "TMPDIR": str(home)})
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_CACHE_HOME", None)
    return env


def _once(fn: Callable[[], None]) -> StopFn:
    """``fn`` made idempotent and thread-safe, and also run at interpreter exit if nobody called it."""
    lock = threading.Lock()
    done = False

    def stop() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        atexit.unregister(stop)
        fn()

    atexit.register(stop)  # a session that dies in an odd way still ends its servers
    return stop


def _stopper(proc: subprocess.Popen, cleanup: Callable[[], None] | None = None) -> StopFn:
    def stop() -> None:
        try:
            _kill_group(proc)
        finally:
            if cleanup:
                cleanup()

    return _once(stop)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing else of the group survives it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _wait_ready(server: S3Server, proc: subprocess.Popen | None, log: Path | None, deadline_s: float | None = None) -> None:
    """Poll until a real write works: create a probe bucket, put, get and delete an object, delete the bucket."""
    if deadline_s is None:
        deadline_s = START_DEADLINE_S
    client = server.client(connect_timeout=1, read_timeout=10)
    probe = f"probe-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + deadline_s
    last: BaseException | None = None
    created = False
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with code {proc.returncode} while starting; log {log}:\n{_tail(log) if log else ''}")
        try:
            if not created:
                client.create_bucket(Bucket=probe)
                created = True
            client.put_object(Bucket=probe, Key="probe/x", Body=b"ready")
            if client.get_object(Bucket=probe, Key="probe/x")["Body"].read() != b"ready":
                raise RuntimeError("probe object read back wrong")
            client.delete_object(Bucket=probe, Key="probe/x")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} at {server.endpoint_url} not ready after {deadline_s:.0f}s (last error: {last!r}); "
                f"log {log}:\n{_tail(log) if log else ''}"
            )
        time.sleep(0.1)


def _fresh_dir(base: Path) -> Path:
    """A new folder ``base/runN`` (a tmpdir may be reused, and each attempt gets its own)."""
    for n in range(1, 10_000):
        d = base / f"run{n}"
        try:
            d.mkdir(parents=True)
        except FileExistsError:
            continue
        return d
    raise RuntimeError(f"no free run folder under {base}")


def _address_in_use(log: Path) -> bool:
    text = _tail(log, 20000)
    return "address already in use" in text


#: What starting a server process needs, given its own fresh folder: the command line, the server it will be, and
#: what to remove once it is stopped (or None).
Launch = Callable[[Path], tuple[list[str], S3Server, Callable[[], None] | None]]


def _start_process(base: Path, log_name: str, launch: Launch) -> tuple[S3Server, StopFn]:
    """Start a server process in a fresh folder under ``base`` and wait until it serves; on ports picked at random,
    another process may take one first: then start again on new ports, up to ``_PORT_ATTEMPTS`` times."""
    last_error: Exception | None = None
    for _ in range(_PORT_ATTEMPTS):
        d = _fresh_dir(base)
        log = d / log_name
        argv, server, cleanup = launch(d)
        proc = _popen(argv, log, d, _server_env(d))
        stop = _stopper(proc, cleanup)
        try:
            _wait_ready(server, proc, log)
            return server, stop
        except Exception as e:
            stop()
            last_error = e
            if not _address_in_use(log):
                raise
    raise RuntimeError(f"{server.name} failed to start {_PORT_ATTEMPTS} times: {last_error}")


# --------------------------------------------------------------------------- seaweedfs


def start_seaweedfs(tmpdir: str | os.PathLike[str]) -> tuple[S3Server, StopFn]:
    """``weed server`` with the S3 gateway, all on 127.0.0.1; data and log under ``tmpdir``."""
    weed = find_binary("weed")
    base = Path(tmpdir)
    base.mkdir(parents=True, exist_ok=True)
    identities = base / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )

    def launch(d: Path) -> tuple[list[str], S3Server, Callable[[], None]]:
        data = d / "data"
        data.mkdir()
        m, mg, v, vg, f, fg, s3, s3g = free_ports(8)
        argv = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={m}",
            f"-master.port.grpc={mg}",
            "-master.telemetry=false",  # no calls home
            "-master.volumeSizeLimitMB=64",
            "-master.peers=none",  # single-master mode: no raft bootstrap wait (~1.7 s)
            f"-volume.port={v}",
            f"-volume.port.grpc={vg}",
            "-volume.max=0",  # 0: as many volumes as the disk holds (the default 8 runs out after a few buckets)
            "-volume.preStopSeconds=0",  # default 10 s delay on SIGTERM
            f"-filer.port={f}",
            f"-filer.port.grpc={fg}",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3g}",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",  # default would listen on fixed port 8181
            "-s3.port.lance=0",  # default would listen on fixed port 9101
            "-s3.autoCreateBucket=false",  # behave like S3: PUT into a missing bucket is NoSuchBucket
            "-s3.allowDeleteBucketNotEmpty=false",  # behave like S3: BucketNotEmpty
        ]
        # weed reads master.toml from its working directory: grow one volume per bucket (collection) instead of 7
        (d / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
        # weed also makes unix sockets /tmp/seaweedfs-<kind>-grpc-<port>.sock that no flag moves; remove ours at stop.
        socks = [Path(f"/tmp/seaweedfs-{k}-grpc-{p}.sock") for k, p in (("master", mg), ("volume", vg), ("filer", fg), ("s3", s3g))]

        def cleanup() -> None:
            for p in socks:
                with contextlib.suppress(OSError):
                    p.unlink()

        return argv, S3Server(name="seaweedfs", endpoint_url=f"http://127.0.0.1:{s3}", conditional_writes=True), cleanup

    return _start_process(base, "weed.log", launch)


# --------------------------------------------------------------------------- rclone


def start_rclone(tmpdir: str | os.PathLike[str]) -> tuple[S3Server, StopFn]:
    """``rclone serve s3`` over a local folder under ``tmpdir``; each top-level folder is a bucket."""
    rclone = find_binary("rclone")
    base = Path(tmpdir)
    base.mkdir(parents=True, exist_ok=True)

    def launch(d: Path) -> tuple[list[str], S3Server, None]:
        root = d / "root"
        root.mkdir()
        (d / "cache").mkdir()
        (port,) = free_ports(1)
        argv = [
            rclone,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--config",
            os.devnull,
            "--cache-dir",
            str(d / "cache"),
            "--temp-dir",
            str(d),
            "--vfs-cache-mode",
            "off",
            "--ask-password=false",
            "--log-level",
            "NOTICE",
            str(root),
        ]
        return argv, S3Server(name="rclone", endpoint_url=f"http://127.0.0.1:{port}", conditional_writes=False), None

    return _start_process(base, "rclone.log", launch)


# --------------------------------------------------------------------------- moto


def start_moto() -> tuple[S3Server, StopFn]:
    """moto's threaded server in this process, on a port the OS picks while binding (no race).

    It shares moto's in-process backends with ``mock_aws()``: entering or leaving a ``mock_aws()`` anywhere in
    the process wipes this server's buckets (and while one is active both see the same buckets), so a bucket on
    this server must not outlive a test. Error responses are built with a default botocore session of this
    process, so e.g. an ``AWS_PROFILE`` naming a missing profile turns them into HTTP 500.
    """
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO to stderr unless its logger has a level; keep warnings and errors.
    wl = logging.getLogger("werkzeug")
    if wl.level == logging.NOTSET:
        wl.setLevel(logging.WARNING)
    # port=0: bound atomically by werkzeug (ThreadedMotoServer.start() would hang forever if its bind failed)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    _, port = srv.get_host_and_port()
    stop = _once(srv.stop)
    server = S3Server(name="moto", endpoint_url=f"http://127.0.0.1:{port}", conditional_writes=True)
    try:
        _wait_ready(server, None, None, deadline_s=20)
    except Exception:
        stop()
        raise
    return server, stop
