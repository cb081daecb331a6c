"""One options builder behind the CLI, the Python API and Syncer; golden output of list, status and config.

Golden files live in tests/golden/; ``CKPTSYNC_UPDATE_GOLDEN=1`` rewrites them from the current output
(then review the diff).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import sys
import termios
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import ckptsync
from ckptsync import format as fmt
from ckptsync.cli import main as cli_main
from ckptsync.options import SETTINGS, WATCH_TIMINGS
from ckptsync.repository import Repository
from ckptsync.status import InFlight, LastCommit, Status
from ckptsync.store import LocalStore
from tests.helpers import clean_env, run_cli, run_python, start_cli, tree, use_env

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
HOSTS = ("node-0", "node-1", "node-2")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CKPTSYNC_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path} (CKPTSYNC_UPDATE_GOLDEN=1 rewrites it)"


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    """The CLI in this process, with nothing of this machine's AWS, ckptsync or SageMaker settings."""
    unset = {k: None for k in os.environ if k.startswith(("AWS_", "CKPTSYNC_", "SM_"))}
    return CliRunner().invoke(cli_main, list(args), env={**unset, **(env or {})}, catch_exceptions=False)


# ---------------------------------------------------------------- run --host restores that host's part


@pytest.mark.parametrize("backend", ["file", "seaweedfs"])
def test_run_with_host_and_hosts_restores_that_hosts_part(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """``run --host node-1 --hosts ...`` restores node-1's files of a multi-host checkpoint, not this machine's."""
    server = None
    if backend == "file":
        (tmp_path / "remote").mkdir()
        remote, s3 = f"file://{tmp_path / 'remote'}", ckptsync.S3Options()
    else:
        server = request.getfixturevalue("seaweedfs")
        remote, s3 = f"s3://{server.create_bucket()}/job", ckptsync.S3Options(endpoint_url=server.endpoint_url)
        use_env(request.getfixturevalue("monkeypatch"), server=server)  # credentials for the pushes in this process
    for host in HOSTS:
        d = tmp_path / host / "step_200"
        d.mkdir(parents=True)
        (d / f"__{host[-1]}_0.distcp").write_bytes(os.urandom(5000))
        (d / "ckptsync.json").write_text('{"step": 200}')
        ckptsync.push(tmp_path / host, remote, ckptsync.Options(s3=s3, host=host, hosts=HOSTS, workers=2))
    out = tmp_path / "job"
    listing = tmp_path / "seen.json"
    script = "import json, os, sys; json.dump(sorted(os.listdir(sys.argv[1])), open(sys.argv[2], 'w'))"
    p = run_cli(
        "run",
        *("--host", "node-1", "--hosts", ",".join(HOSTS), "--restore", "latest"),
        *("--dir", str(out), "--remote", remote, "--state-dir", str(tmp_path / "state")),
        *("--", sys.executable, "-c", script, str(out / "step_200"), str(listing)),
        server=server,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(listing.read_text()) == ["__1_0.distcp", "ckptsync.json"], "the command must start on node-1's part"
    assert tree(out / "step_200") == tree(tmp_path / "node-1" / "step_200")


def test_run_with_a_host_outside_hosts_fails_before_the_command(tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    marker = tmp_path / "ran"
    p = run_cli(
        "run",
        *("--host", "node-9", "--hosts", ",".join(HOSTS), "--dir", str(tmp_path / "job"), "--remote", f"file://{tmp_path / 'remote'}"),
        *("--state-dir", str(tmp_path / "state"), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"),
    )
    assert p.returncode == 2 and "node-9" in p.stderr and "not among the job's hosts" in p.stderr
    assert not marker.exists()


def test_run_gives_its_command_the_environment_without_the_blas_setting_ckptsync_made_for_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ckptsync starts numpy's OpenBLAS with one thread (it makes no BLAS call); the trainer it runs keeps its
    own threads, and a value the user set reaches both."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)  # set in this process by importing ckptsync.cli
    (tmp_path / "remote").mkdir()
    probe = "import os; print('BLAS=' + os.environ.get('OPENBLAS_NUM_THREADS', 'unset'))"
    args = ["run", "--dir", str(tmp_path / "job"), "--remote", f"file://{tmp_path / 'remote'}", "--state-dir", str(tmp_path / "s")]
    p = run_cli(*args, "--", sys.executable, "-c", probe)
    assert p.returncode == 0 and "BLAS=unset" in p.stdout, p.stderr
    p = run_cli(*args, "--", sys.executable, "-c", probe, env={"OPENBLAS_NUM_THREADS": "3"})
    assert p.returncode == 0 and "BLAS=3" in p.stdout, p.stderr
    inside = run_python("-c", "import ckptsync.cli, os; print(os.environ['OPENBLAS_NUM_THREADS'])")
    assert inside.stdout.strip() == "1"


# ---------------------------------------------------------------- Syncer takes every option of watch


def _sample(name: str, tmp: Path) -> tuple[str, Any]:
    """A flag's text and a Python value for it, both different from the default."""
    samples: dict[str, tuple[str, Any]] = {
        "remote": ("file:///tmp/remote", "file:///tmp/remote"),
        "dir": ("/tmp/ckpts", "/tmp/ckpts"),
        "state_dir": ("/tmp/state", Path("/tmp/state")),
        "metrics_addr": ("127.0.0.1:9", "127.0.0.1:9"),
        "endpoint_url": ("http://127.0.0.1:9", "http://127.0.0.1:9"),
        "region": ("eu-west-3", "eu-west-3"),
        "profile": ("p1", "p1"),
        "sse": ("aws:kms", "aws:kms"),
        "sse_kms_key_id": ("k1", "k1"),
        "expected_bucket_owner": ("123456789012", "123456789012"),
        "checksum": ("when_required", "when_required"),
        "hash": ("sha256", "sha256"),
        "workers": ("7", 7),
        "max_memory": ("64M", 64 << 20),
        "bwlimit": ("10M", "10M"),
        "nice": ("3", 3),
        "retries": ("9", 9),
        "retry_budget": ("30", 30.0),
        "host": ("node-1", "node-1"),
        "hosts": ("node-0,node-1", ["node-0", "node-1"]),
        "keep_last": ("4", 4),
        "keep_best": ("2", 2),
        "keep_every": ("1000", 1000),
        "grace": ("30m", timedelta(minutes=30)),
        "metric": ("eval_loss", "eval_loss"),
        "mode": ("max", "max"),
        "settle": ("3.5", 3.5),
        "drain_timeout": ("42", 42),
        "poll_interval": ("0.5", 0.5),
        "imds_endpoint": ("http://127.0.0.1:1", "http://127.0.0.1:1"),
        "spot_interval": ("2", 2),
        "config": (str(tmp / "empty.toml"), tmp / "empty.toml"),
    }
    if SETTINGS[name].flag:
        return "", True
    return samples[name]


def test_syncer_accepts_every_option_of_watch_with_the_same_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = cli_main.commands["watch"]
    names = [p.name for p in watch.params if p.name in SETTINGS and p.name not in ("log_level", "log_format")]
    assert len(names) > 30
    captured: dict[str, Any] = {}

    def fake_open(cls: type, folder: Path, remote: str, options: Any, watch: Any, **kw: Any) -> Any:
        captured.update(folder=folder, remote=remote, options=options, watch=watch, state_dir=kw.get("state_dir"))
        raise SystemExit(0)

    from ckptsync.daemon import Daemon

    monkeypatch.setattr(Daemon, "open", classmethod(fake_open))
    (tmp_path / "empty.toml").write_text("")
    argv = []
    for n in names:
        flag, _ = _sample(n, tmp_path)
        argv += [SETTINGS[n].option] + ([flag] if flag else [])
    result = invoke("watch", *argv)
    assert result.exit_code == 0, result.output
    syncer = ckptsync.Syncer(
        _sample("dir", tmp_path)[1],
        _sample("remote", tmp_path)[1],
        **{n: _sample(n, tmp_path)[1] for n in names if n not in ("dir", "remote")},
        tick=0.5,
    )
    assert syncer.options == captured["options"]
    assert syncer.watch == captured["watch"].__class__(**{**captured["watch"].__dict__, "tick": 0.5})
    assert (syncer.dir, syncer.remote, syncer.state_dir) == (captured["folder"], captured["remote"], captured["state_dir"])
    # and every value differs from the default, so each one really went through
    defaults = ckptsync.Syncer(_sample("dir", tmp_path)[1], _sample("remote", tmp_path)[1])
    for field in ("workers", "max_memory", "bwlimit", "nice", "retry", "host", "hosts", "s3", "hash_algorithm"):
        assert getattr(syncer.options, field) != getattr(defaults.options, field), field
    assert syncer.options.bwlimit == 10 << 20 and syncer.options.nice == 3 and syncer.options.retry.attempts == 9
    assert syncer.options.retry.max_seconds == 30.0


def test_syncer_refuses_an_unknown_option_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ckptsync.UsageError, match="unknown Syncer option.*settel"):
        ckptsync.Syncer(tmp_path, f"file://{tmp_path}", settel=3)
    assert set(WATCH_TIMINGS) <= {"tick", "status_interval", "rescan_interval", "retry_initial", "retry_max"}


def test_python_api_reads_the_environment_like_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("CKPTSYNC_", "SM_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-7")
    monkeypatch.setenv("CKPTSYNC_WORKERS", "5")
    opts = ckptsync.api.default_options()
    assert (opts.host, opts.workers) == ("algo-7", 5)
    monkeypatch.setenv("CKPTSYNC_WORKERS", "zero")
    with pytest.raises(ckptsync.UsageError, match=r"--workers \(from env CKPTSYNC_WORKERS\): 'zero' is not a whole number"):
        ckptsync.api.default_options()


def test_a_bad_value_is_one_line_naming_its_source(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[push]\nmax-memory = 'lots'\n")
    p = run_cli("push", "--dir", str(tmp_path), "--remote", f"file://{tmp_path}", env={"CKPTSYNC_CONFIG": str(cfg)})
    assert p.returncode == 2
    assert (
        p.stderr.splitlines()[0]
        == f"ckptsync: error: invalid value for --max-memory (from config file {cfg}): 'lots' is not a size (examples: 256M, 1G, 1048576)"
    )


# ---------------------------------------------------------------- golden output


def _manifest(
    name: str, step: int | None, created: datetime, host: str = "h1", hosts: tuple[str, ...] = (), **metrics: float
) -> fmt.Manifest:
    chunk = fmt.ChunkRef(f"{step or 0:064x}", 3 << 20, 1 << 20, "zstd")
    files = (fmt.FileEntry("model.safetensors", 3 << 20, 0o644, "ab" * 32, (chunk,)),)
    commit = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{host}-{(step or 0):016x}"
    return fmt.Manifest(name, "dir", step, metrics, created, host, commit, files, "ckptsync/0.1.0", hosts=hosts)


@pytest.fixture
def listed_remote(tmp_path: Path) -> str:
    root = tmp_path / "remote"
    root.mkdir()
    repo = Repository(LocalStore(root))
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    repo.commit(_manifest("checkpoint-100", 100, t0, eval_loss=0.53, accuracy=0.71))
    repo.commit(_manifest("checkpoint-200", 200, t0 + timedelta(minutes=20), eval_loss=0.41, accuracy=0.78))
    repo.commit(_manifest("last.ckpt", None, t0 + timedelta(minutes=25)))
    repo.commit(_manifest("step_300", 300, t0 + timedelta(minutes=40), host="node-0", hosts=("node-0", "node-1")))
    return f"file://{root}"


def test_list_output_is_as_golden(listed_remote: str) -> None:
    result = invoke("list", "--remote", listed_remote)
    assert result.exit_code == 0
    check_golden("list.txt", result.output)
    by_metric = invoke("list", "--remote", listed_remote, "--sort", "eval_loss")
    check_golden("list-sort-eval_loss.txt", by_metric.output)
    as_json = invoke("list", "--remote", listed_remote, "--json")
    check_golden("list.json", as_json.output)


def _status(**changes: Any) -> Status:
    base = Status(
        pid=1,  # always running
        state="watching",
        folder="/opt/ml/checkpoints",
        remote="s3://bucket/run-42",
        watcher="native",
        updated="2026-12-01T08:41:02.000000Z",
        uptime_seconds=2462.0,
        queue=["checkpoint-400"],
        pending={"checkpoint-500": "settling", "tmp": "waiting for trainer_state.json"},
        in_flight=InFlight("checkpoint-450", 3 << 20, 12 << 20),
        last_commit=LastCommit("checkpoint-300", "20261201T084001000000Z-h1-0000000000000001", "2026-12-01T08:40:01.000000Z", 300),
        committed=3,
        bytes_uploaded=123 << 20,
        bytes_raw=456 << 20,
        failures=1,
        errors=["2026-12-01T08:30:00.000000Z checkpoint-250: 503 SlowDown"],
        lag_seconds=12.5,
    )
    return Status(**{**base.__dict__, **changes})


def test_status_output_is_as_golden(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "status.json").write_text(json.dumps(_status().to_json()))
    text = invoke("status", "--state-dir", str(state))
    assert text.exit_code == 0
    check_golden("status.txt", text.output)
    as_json = invoke("status", "--state-dir", str(state), "--json")
    assert json.loads(as_json.output) == {**_status().to_json(), "running": True}
    (state / "status.json").write_text(json.dumps(_status(state="stopped", in_flight=None, queue=[], pending={}, errors=[]).to_json()))
    check_golden("status-stopped.txt", invoke("status", "--state-dir", str(state)).output)


def test_status_without_a_daemon_exits_3(tmp_path: Path) -> None:
    result = invoke("status", "--state-dir", str(tmp_path / "nothing"))
    assert result.exit_code == 3 and "no daemon status found" in result.output


def test_config_output_is_as_golden(tmp_path: Path) -> None:
    cfg = tmp_path / "ckptsync.toml"
    cfg.write_text('remote = "s3://bucket/run-42"\nsettle = 15\n[watch]\nkeep-last = 3\n[prune]\ngrace = "30m"\n')
    env = {
        "HOME": str(tmp_path),
        "CKPTSYNC_CONFIG": str(cfg),
        "CKPTSYNC_DRAIN_TIMEOUT": "80",
        "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": '["algo-1", "algo-2"]',
        "SM_NUM_CPUS": "4",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456",
        "AWS_SECRET_ACCESS_KEY": "very-secret-value-123",
    }
    result = invoke("config", "--region", "eu-west-1", "--poll", env=env)
    assert result.exit_code == 0, result.output
    assert "very-secret-value-123" not in result.output and "AKIAEXAMPLEKEY123456" not in result.output
    check_golden("config.txt", result.output.replace(str(tmp_path), "<tmp>"))
    doc = json.loads(invoke("config", "--json", env=env).output)
    assert doc["keep-last"] == {"value": "3", "source": f"config file {cfg}"}
    assert doc["grace"] == {"value": "1800s", "source": f"config file {cfg}"}  # every table applies in 'config'
    assert doc["workers"] == {"value": "8", "source": "SageMaker SM_NUM_CPUS"}
    assert doc["hosts"] == {"value": "algo-1,algo-2", "source": "SageMaker SM_HOSTS"}


def test_helper_environment_drops_this_machines_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTSYNC_REMOTE", "s3://elsewhere")
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-9")
    env = clean_env({"X": "1"})
    assert "CKPTSYNC_REMOTE" not in env and "SM_CURRENT_HOST" not in env and env["X"] == "1"


def test_python_prune_keeps_what_the_rules_keep_and_refuses_no_rules(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    src = tmp_path / "ckpts"
    for step in (1, 2, 3):
        d = src / f"step-{step}"
        d.mkdir(parents=True)
        (d / "w.bin").write_bytes(os.urandom(1000))
        ckptsync.mark(d, step=step, metrics={"eval_loss": {1: 0.1, 2: 0.5, 3: 0.4}[step]})
    ckptsync.push(src, f"file://{remote}")
    with pytest.raises(ckptsync.UsageError, match="no retention rule"):
        ckptsync.prune(f"file://{remote}", ckptsync.Retention())
    report = ckptsync.prune(f"file://{remote}", ckptsync.Retention(keep_last=1, metric="eval_loss"), grace=timedelta(0))
    assert report.deleted == ["step-2"] and sorted(report.kept) == ["step-1", "step-3"]  # the newest and the best
    assert sorted(c.name for c in ckptsync.list_checkpoints(f"file://{remote}")) == ["step-1", "step-3"]


def test_python_api_takes_the_config_files_table_of_its_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("CKPTSYNC_", "SM_")):
            monkeypatch.delenv(k)
    cfg = tmp_path / "ckptsync.toml"
    cfg.write_text("workers = 3\n[push]\nworkers = 5\n")
    monkeypatch.setenv("CKPTSYNC_CONFIG", str(cfg))
    assert ckptsync.api.default_options("push").workers == 5
    assert ckptsync.api.default_options("restore").workers == 3


# ---------------------------------------------------------------- the command line's surface


def test_latest_and_best_together_are_a_usage_error(tmp_path: Path) -> None:
    """restore and export refuse --latest with --best (exit 2, one line and a hint) instead of taking the last one."""
    remote = tmp_path / "remote"
    remote.mkdir()
    for args in (("restore", "--dir", str(tmp_path / "out")), ("export", "--to", str(tmp_path / "model"))):
        result = invoke(*args, "--remote", f"file://{remote}", "--latest", "--best", "--metric", "eval_loss")
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [
            "ckptsync: error: --latest and --best cannot be combined",
            "ckptsync: hint: pass one of them (--latest is the default)",
        ]
    assert sorted(os.listdir(tmp_path)) == ["remote"]


#: Metavars click makes up from a type: they say nothing of what the value is.
GENERIC_METAVARS = {"TEXT", "INTEGER", "INTEGER RANGE", "FLOAT", "FLOAT RANGE", "PATH", "FILENAME", "BOOLEAN", "UUID"}


def test_help_of_every_command_names_every_options_value_meaningfully() -> None:
    """Every option taking a value shows what it is (SIZE, DURATION, SECONDS, REGION...): no internal name
    starting with '_', no click type name such as TEXT or INTEGER RANGE."""
    odd = {}
    for command in sorted(cli_main.commands):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        options = re.findall(r"(?m)^  (?:-\w, )?(--[\w-]+(?: / --[\w-]+)?)(?: (\S+(?: RANGE)?))?(?:  |$)", result.output)
        assert len(options) > 3, result.output
        odd.update({f"{command} {o}": m for o, m in options if m.startswith("_") or m in GENERIC_METAVARS})
    assert odd == {}


def test_push_on_a_terminal_clears_the_progress_bar_before_each_log_line(tmp_path: Path) -> None:
    """On a terminal each log line, the final 'committed' and 'push done' ones included, starts where the bar
    was cleared, never after it on the same line."""
    src = tmp_path / "src" / "checkpoint-1"
    src.mkdir(parents=True)
    (src / "w.bin").write_bytes(os.urandom(100_000))
    (tmp_path / "remote").mkdir()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a bar needs columns to draw in
    try:
        child = start_cli(
            "push", "--dir", str(src.parent), "--remote", f"file://{tmp_path / 'remote'}", stdin=slave, stdout=slave, stderr=slave
        )
    finally:
        os.close(slave)
    try:
        out = b""
        while select.select([master], [], [], 60)[0]:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child ended and the terminal is closed
                break
            if not data:
                break
            out += data
        assert child.wait(60) == 0, out
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
            child.wait()
    text = out.decode()
    assert re.search(r"checkpoint-1: +\d+%\|", text), "no progress bar was drawn"
    shown = {line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n") if " INFO " in line}  # what the terminal shows
    for what in ("committed checkpoint-1:", "push done:"):
        [line] = [s for s in shown if what in s]
        assert re.match(rf"\d\d:\d\d:\d\d INFO {what}", line), repr(line)
