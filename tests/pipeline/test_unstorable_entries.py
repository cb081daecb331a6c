"""A checkpoint is committed with every entry it holds, or not at all and push names the entry and why.

Entries the format cannot carry (names not valid UTF-8 or holding a control or format character or a
backslash), links that dangle, loop or leave the watched folder, unreadable folders and files, and FIFOs
never make a silent partial commit; one such checkpoint never stops the others; a link leaving --dir is
followed only with --follow-symlinks.

As root, whom chmod 000 does not stop, the CLI runs in a child where opening or listing a path named
``unreadable*`` fails with EACCES, as it does for any other user after chmod 000.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import ckptsync
from ckptsync.checkpoint import list_entries, scan_entry
from ckptsync.errors import UnstorableEntry
from ckptsync.options import Options
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.store import LocalStore
from tests.faults import scenarios
from tests.helpers import run_python, tree

pytestmark = pytest.mark.timeout(120)

OPTIONS = Options(host="h1", workers=1)

#: ``python -c`` running the CLI; as root, paths named ``unreadable*`` cannot be opened or listed (EACCES).
_CLI_WITH_UNREADABLE = """
import errno, os, sys

if os.geteuid() == 0:
    def deny(call):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)) and os.path.basename(os.fsdecode(path)).startswith("unreadable"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return call(path, *args, **kwargs)
        return wrapped
    os.open, os.scandir = deny(os.open), deny(os.scandir)

from ckptsync.cli import main
main()
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ckptsync ARGS...`` in a child (see the module docstring for root)."""
    return run_python("-c", _CLI_WITH_UNREADABLE, *args)


def committed(remote: str) -> set[str]:
    return {c.name for c in ckptsync.list_checkpoints(remote, OPTIONS)}


def remote_bytes(remote: str) -> bytes:
    """Every object of a file:// remote, concatenated: to look for bytes that must not have been stored."""
    root = Path(remote[len("file://") :])
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def error_line(stderr: str, start: str) -> str | None:
    return next((line for line in stderr.splitlines() if line.startswith(f"ckptsync: error: {start}")), None)


@pytest.fixture
def remote(tmp_path: Path) -> str:
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


@pytest.fixture
def unreadable() -> Iterator[list[Path]]:
    """Paths to chmod 000 (their mode is given back at the end, so that the test folder can be removed)."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        os.chmod(p, 0o755)


def checkpoint(parent: Path, step: int) -> Path:
    ck = parent / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "model.bin").write_bytes(os.urandom(4096))
    return ck


def test_every_kind_of_unstorable_entry_refuses_its_checkpoint_by_name_and_the_others_are_committed(
    tmp_path: Path, remote: str, unreadable: list[Path]
) -> None:
    d, outside = tmp_path / "ckpts", tmp_path / "outside"
    (outside / "keys").mkdir(parents=True)
    (outside / "keys" / "id_ed25519").write_bytes(os.urandom(64))
    kinds: dict[str, tuple[str, str]] = {}  # kind -> (checkpoint as shown, entry as shown)

    def inside(kind: str, step: int, entry: str) -> Path:
        kinds[kind] = (f"checkpoint-{step}", entry)
        return checkpoint(d, step)

    with open(os.fsencode(inside("name not valid UTF-8", 1, r"b'bad\xff.bin'")) + b"/bad\xff.bin", "wb") as f:
        f.write(b"x")
    (inside("newline in a name", 2, r"'line\x0abreak.bin'") / "line\nbreak.bin").write_bytes(b"x")
    (inside("ESC in a name", 3, r"'esc\x1b[31m.bin'") / "esc\x1b[31m.bin").write_bytes(b"x")
    (inside("backslash in a name", 4, "'back\\slash.bin'") / "back\\slash.bin").write_bytes(b"x")
    (inside("U+202E in a name", 5, r"'rlo\u202etxt.bin'") / "rlo\u202etxt.bin").write_bytes(b"x")
    sub = inside("unreadable sub-folder", 6, "'unreadable-dir'") / "unreadable-dir"
    sub.mkdir()
    (sub / "shard.bin").write_bytes(b"x")
    os.chmod(sub, 0)
    unreadable.append(sub)
    (inside("dangling link", 7, "'dangling'") / "dangling").symlink_to(tmp_path / "nowhere")
    (inside("link to a folder outside --dir", 8, "'keys'") / "keys").symlink_to(outside / "keys")
    os.mkfifo(inside("FIFO", 9, "'pipe'") / "pipe")
    loop = inside("link loop", 10, "'sub/up'") / "sub"
    loop.mkdir()
    (loop / "up").symlink_to("..")
    kinds["ESC in a top-level name"] = (r"'ck\x1b]0;x\x07'", "its name")
    (d / "ck\x1b]0;x\x07").mkdir()
    (d / "ck\x1b]0;x\x07" / "model.bin").write_bytes(b"x")
    checkpoint(d, 99)

    p = cli("push", "--dir", str(d), "--remote", remote, "--workers", "1")

    named = {kind: error_line(p.stderr, f"{ck} not committed: {entry}") is not None for kind, (ck, entry) in kinds.items()}
    done = committed(remote)
    partial = len(done - {"checkpoint-99"})
    raw_controls = any(c in p.stderr for c in ("\x1b", "\x07", "\u202e"))
    figure = (
        f"{sum(named.values())}/{len(kinds)} kinds of entry refused by name, {partial} silent partial commits, "
        f"the good checkpoint committed: {'checkpoint-99' in done}, exit {p.returncode}, raw control characters printed: {raw_controls}"
    )
    ok = all(named.values()) and done == {"checkpoint-99"} and p.returncode == 1 and not raw_controls
    scenarios.record(21, "unstorable entries", len(kinds), figure, ok)
    assert p.returncode == 1, p.stderr
    assert all(named.values()), (named, p.stderr)
    assert done == {"checkpoint-99"}
    assert not raw_controls


def test_a_link_to_a_folder_inside_the_watched_folder_is_followed_and_restores_with_its_files(tmp_path: Path, remote: str) -> None:
    d = tmp_path / "ckpts"
    ck = checkpoint(d, 1)
    (ck / "data").mkdir()
    (ck / "data" / "w.bin").write_bytes(os.urandom(100))
    (ck / "alias").symlink_to("data")  # a folder of the checkpoint itself
    (d / ".shared").mkdir()  # hidden: not a checkpoint of its own
    (d / ".shared" / "vocab.txt").write_text("a b c")
    (ck / "shared").symlink_to("../.shared")  # a folder elsewhere in --dir

    report = ckptsync.push(d, remote, OPTIONS)

    assert report.ok and [r.status for r in report.results] == ["committed"]
    result = ckptsync.restore(remote, tmp_path / "out", options=OPTIONS)
    assert result is not None
    assert set(tree(result.path)) == {"model.bin", "data/w.bin", "alias/w.bin", "shared/vocab.txt"}
    assert tree(result.path)["alias/w.bin"] == tree(ck)["data/w.bin"]


def test_a_link_inside_a_checkpoint_to_a_folder_outside_is_refused_unless_follow_symlinks(tmp_path: Path, remote: str) -> None:
    d, keys = tmp_path / "ckpts", tmp_path / "home" / ".ssh"
    keys.mkdir(parents=True)
    (keys / "id_ed25519").write_bytes(os.urandom(64))
    ck = checkpoint(d, 1)
    (ck / "ssh").symlink_to(keys)

    report = ckptsync.push(d, remote, OPTIONS)

    assert not report.ok and report.results == []
    [failure] = report.failed
    assert failure.name == "checkpoint-1"
    assert failure.message.startswith(f"checkpoint-1 not committed: 'ssh' is a symbolic link to {keys}, outside the watched folder")
    assert failure.hint is not None and "--follow-symlinks" in failure.hint
    assert committed(remote) == set() and (keys / "id_ed25519").read_bytes() not in remote_bytes(remote)

    followed = ckptsync.push(d, remote, OPTIONS, follow_symlinks=True)

    assert followed.ok and [r.status for r in followed.results] == ["committed"]
    result = ckptsync.restore(remote, tmp_path / "out", options=OPTIONS)
    assert result is not None and set(tree(result.path)) == {"model.bin", "ssh/id_ed25519"}


def test_top_level_links_leaving_the_watched_folder_are_skipped_with_a_warning_and_pushed_with_follow_symlinks(
    tmp_path: Path, remote: str
) -> None:
    d, outside = tmp_path / "ckpts", tmp_path / "etc"
    (outside / "keys").mkdir(parents=True)
    secrets = {"shadow": os.urandom(512), "keys": os.urandom(512)}  # random: stored as they are, so findable
    (outside / "shadow").write_bytes(secrets["shadow"])
    (outside / "keys" / "id_rsa").write_bytes(secrets["keys"])
    checkpoint(d, 1)
    (d / "shadow").symlink_to(outside / "shadow")
    (d / "keys").symlink_to(outside / "keys")

    p = cli("push", "--dir", str(d), "--remote", remote, "--workers", "1")

    warned = [
        line
        for line in p.stderr.splitlines()
        if " WARNING skipped " in line and "outside the watched folder" in line and "--follow-symlinks" in line
    ]
    by_default = committed(remote)
    leaked = [name for name, data in secrets.items() if data in remote_bytes(remote)]
    followed = cli("push", "--dir", str(d), "--remote", remote, "--workers", "1", "--follow-symlinks")
    with_flag = committed(remote)
    found = [name for name, data in secrets.items() if data in remote_bytes(remote)]  # the look for them works
    restored = ckptsync.restore(remote, tmp_path / "out", name="keys", options=OPTIONS)
    figure = (
        f"default: exit {p.returncode}, {len(by_default & set(secrets))}/2 links pushed, targets' bytes in the remote: {len(leaked)}, "
        f"warnings naming them: {sum(any(f'skipped {n}:' in w for w in warned) for n in secrets)}/2; "
        f"--follow-symlinks: exit {followed.returncode}, {len(with_flag & set(secrets))}/2 pushed"
    )
    ok = p.returncode == 0 and by_default == {"checkpoint-1"} and not leaked and len(warned) == 2
    ok = ok and followed.returncode == 0 and with_flag == {"checkpoint-1", *secrets} and len(found) == 2
    scenarios.record(25, "symlinks leaving --dir", 2, figure, ok)
    assert p.returncode == 0, p.stderr
    assert by_default == {"checkpoint-1"} and not leaked
    assert sorted(w.split(" WARNING skipped ")[1].split(":")[0] for w in warned) == ["keys", "shadow"], p.stderr
    assert followed.returncode == 0, followed.stderr
    assert with_flag == {"checkpoint-1", "keys", "shadow"} and sorted(found) == ["keys", "shadow"]
    assert restored is not None and (restored.path / "id_rsa").read_bytes() == secrets["keys"]


def test_a_newest_checkpoint_with_an_unreadable_file_fails_alone_and_push_exits_1_naming_it(
    tmp_path: Path, remote: str, unreadable: list[Path]
) -> None:
    d = tmp_path / "ckpts"
    for step in (1, 2, 3):
        checkpoint(d, step)
    bad = d / "checkpoint-3" / "unreadable.bin"
    bad.write_bytes(os.urandom(1000))
    os.chmod(bad, 0)
    unreadable.append(bad)

    p = cli("push", "--dir", str(d), "--remote", remote, "--workers", "1")

    line = error_line(p.stderr, "checkpoint-3 not committed: cannot read ")
    done = committed(remote)
    os.chmod(bad, 0o644)
    again = run_python("-m", "ckptsync", "push", "--dir", str(d), "--remote", remote, "--workers", "1")
    figure = (
        f"newest checkpoint unreadable: exit {p.returncode}, older committed {len(done & {'checkpoint-1', 'checkpoint-2'})}/2, "
        f"failure named: {line is not None}; once readable: exit {again.returncode}, committed {len(committed(remote))}/3"
    )
    ok = p.returncode == 1 and done == {"checkpoint-1", "checkpoint-2"} and line is not None and again.returncode == 0
    scenarios.record(22, "unreadable file", 1, figure, ok)
    assert p.returncode == 1, p.stderr
    assert done == {"checkpoint-1", "checkpoint-2"}
    assert line is not None and line.endswith(f"{bad}: Permission denied"), p.stderr
    assert again.returncode == 0 and committed(remote) == {"checkpoint-1", "checkpoint-2", "checkpoint-3"}, again.stderr


def test_a_scan_records_an_unstorable_entry_and_the_upload_refuses_it_before_touching_the_remote(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path / "ckpts", 4)
    os.mkfifo(ck / "pipe")

    snapshot = scan_entry(ck)  # the daemon observes a checkpoint like this one without an error

    assert [f.relpath for f in snapshot.files] == ["model.bin"] and snapshot.refused is not None
    (tmp_path / "remote").mkdir()
    with RemoteSession(Repository(LocalStore(tmp_path / "remote")), host="h1") as session:
        with pytest.raises(UnstorableEntry, match=r"^checkpoint-4 not committed: 'pipe' is a FIFO"):
            session.upload(snapshot)
    assert list((tmp_path / "remote").iterdir()) == []


def test_listing_the_folder_warns_once_about_a_top_level_name_the_format_cannot_carry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint(tmp_path, 1)
    (tmp_path / "step\x1b[2J").mkdir()

    with caplog.at_level(logging.WARNING, logger="ckptsync.checkpoint"):
        first, second = list_entries(tmp_path), list_entries(tmp_path)

    assert first == second == ["checkpoint-1"]
    assert [r.getMessage() for r in caplog.records] == [
        f"'step\\x1b[2J' in {tmp_path} is not uploaded: its name cannot be carried by the storage format "
        "(it holds a control character U+001B); rename or remove it (docs/FORMAT.md, section 5.6, says what a name may hold)"
    ]


def test_the_daemon_warns_once_about_a_refused_checkpoint_never_retries_it_and_reports_it_unsynced(tmp_path, caplog):
    import time

    from ckptsync.daemon import Daemon
    from ckptsync.options import WatchOptions
    from ckptsync.state import State
    from tests.helpers import wait_until

    folder, root = tmp_path / "ckpts", tmp_path / "remote"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoint-1" / "w.bin").write_bytes(os.urandom(1000))
    (folder / "checkpoint-1" / "ckptsync.json").write_text('{"step": 1}')
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "w.bin").write_bytes(os.urandom(1000))
    (folder / "checkpoint-2" / "esc\x1b[2J.bin").write_bytes(b"x")
    (folder / "checkpoint-2" / "ckptsync.json").write_text('{"step": 2}')
    (tmp_path / "secret").write_bytes(b"key")
    os.symlink(tmp_path / "secret", folder / "checkpoint-3")  # leaves the folder
    root.mkdir()
    daemon = Daemon(folder, Repository(LocalStore(root)), OPTIONS, WatchOptions(settle=0.1, tick=0.02), state=State(tmp_path / "s"))
    with caplog.at_level(logging.WARNING):
        daemon.start()
        try:
            wait_until(lambda: daemon.report.committed == ["checkpoint-1"], 30, "checkpoint-1 committed")
            wait_until(lambda: daemon.status().pending.get("checkpoint-2", "").startswith("checkpoint-2 not committed"), 10, "the reason")
        finally:
            daemon.drain(deadline=time.monotonic() + 5)
            report = daemon.wait(30)
    assert report.committed == ["checkpoint-1"] and report.failures == 0  # refused, not failed and retried
    assert [name for name, _ in report.unsynced] == ["checkpoint-2"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "ckptsync.observer" and "checkpoint-2 not committed" in r.getMessage()]
    assert len(warnings) == 1 and "U+001B" in warnings[0] and "\x1b" not in warnings[0]
    assert any("checkpoint-3" in r.getMessage() and "--follow-symlinks" in r.getMessage() for r in caplog.records)
    assert committed(f"file://{root}") == {"checkpoint-1"}
