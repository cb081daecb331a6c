"""Scenario 18: the file system fills up during a restore.

The target folder is a small tmpfs mounted for the test (the tests run as root); where mounting is not permitted,
the restore runs with RLIMIT_FSIZE instead (SIGXFSZ ignored, so a write past the limit fails with EFBIG). The
figure says which was used. A restore larger than the free space must exit non-zero with a message about space,
leave the target folder exactly as it was (hidden entries included, an older copy of the same checkpoint intact,
no space kept by a partial file), and succeed once space is freed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
from pathlib import Path

import pytest

import ckptsync
from tests.faults.scenarios import record
from tests.helpers import listing, run_cli, tree

MiB = 1 << 20
FS_SIZE = 8 * MiB


def _mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(path)], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def _unmount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(args, capture_output=True, timeout=20).returncode == 0:
                return


@pytest.fixture(params=["tmpfs", "rlimit"])
def small_fs(request, tmp_path):
    """``(folder, method)``: a folder on an 8 MiB tmpfs (falling back to RLIMIT_FSIZE when mounting is not
    permitted), or, for the second parameter, always RLIMIT_FSIZE, so that the fallback is exercised too."""
    mnt = tmp_path / "mnt"
    if request.param == "tmpfs" and _mount_tmpfs(mnt):
        try:
            yield mnt, "tmpfs size=8m"
        finally:
            _unmount(mnt)
    else:
        mnt.mkdir(exist_ok=True)
        why = "mount not permitted" if request.param == "tmpfs" else "the fallback, always run"
        yield mnt, f"RLIMIT_FSIZE {FS_SIZE // 2 >> 20} MiB ({why})"


def _limit_file_size() -> None:  # in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FS_SIZE // 2, FS_SIZE // 2))


def restore(remote: str, target: Path, method: str, *, limited: bool = True) -> subprocess.CompletedProcess[str]:
    limit = _limit_file_size if limited and method.startswith("RLIMIT") else None
    return run_cli("restore", "--remote", remote, "--dir", str(target), "--latest", preexec_fn=limit)


def _state(folder: Path) -> tuple[list[str], dict]:
    return listing(folder), {p: tree(folder / p) for p in listing(folder) if (folder / p).is_dir() and "/" not in p}


def test_s18_enospc_during_restore_leaves_the_folder_as_it_was_and_succeeds_once_space_is_freed(small_fs, tmp_path):
    mnt, method = small_fs
    rng = random.Random(18)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    remote = f"file://{remote_dir}"
    src = tmp_path / "src"
    ck = src / "checkpoint-5"
    ck.mkdir(parents=True)
    # the first commit of checkpoint-5 (1 MiB) fits; it is restored into the small folder first
    (ck / "model.bin").write_bytes(rng.randbytes(1 * MiB))
    (ck / "ckptsync.json").write_text(json.dumps({"step": 5}))
    ckptsync.push(src, remote)
    target = mnt / "ckpts"
    target.mkdir()
    (target / "unrelated.txt").write_text("keep me")
    (target / ".hidden").mkdir()
    (target / ".hidden" / "state").write_text("hidden too")
    first = restore(remote, target, method)
    assert first.returncode == 0, first.stderr
    old_copy = tree(target / "checkpoint-5")
    # the trainer rewrote checkpoint-5 with 5 MiB (a new commit of the same name), and the disk filled up meanwhile
    (ck / "model.bin").write_bytes(rng.randbytes(4 * MiB + MiB // 2))
    (ck / "optimizer.bin").write_bytes(rng.randbytes(MiB // 2))
    ckptsync.push(src, remote)
    filler = target / ".filler"
    filler.write_bytes(bytes(3 * MiB) if not method.startswith("RLIMIT") else b"")
    before = _state(target)
    free_before = os.statvfs(target).f_bfree

    p = restore(remote, target, method)
    after = _state(target)
    free_after = os.statvfs(target).f_bfree
    message = [ln for ln in p.stderr.splitlines() if ln.startswith("ckptsync: error: ")]
    rlimit = method.startswith("RLIMIT")
    verdict = {
        "exit non-zero": p.returncode != 0,
        "one clear error line": len(message) == 1,
        # ENOSPC must say so; under RLIMIT_FSIZE the kernel's EFBIG ("File too large") is the true cause
        "it names the cause (space)": bool(message) and ("space" in message[0].lower() or (rlimit and "too large" in message[0].lower())),
        "no traceback": "Traceback" not in p.stderr and "internal error" not in p.stderr,
        "folder listing unchanged (hidden included)": after[0] == before[0],
        "older copy of checkpoint-5 intact": tree(target / "checkpoint-5") == old_copy,
        # on the private tmpfs only: /tmp is shared with other processes
        "no space kept by a partial file": rlimit or free_after == free_before,
    }

    filler.unlink()  # free the space (with RLIMIT_FSIZE: lift the limit)
    again = restore(remote, target, method, limited=False)
    verdict["succeeds once space is freed"] = again.returncode == 0 and again.stdout.strip().splitlines()[-1] == str(
        target / "checkpoint-5"
    )
    verdict["then byte-identical"] = tree(target / "checkpoint-5") == tree(ck)
    verdict["then no staging left"] = not [e for e in os.listdir(target) if e.startswith(".ckptsync")]

    ok = all(verdict.values())
    figure = (
        f"{method}: failed restore exit {p.returncode} ({message[0] if message else 'no error line'}); folder unchanged: "
        f"{verdict['folder listing unchanged (hidden included)'] and verdict['older copy of checkpoint-5 intact']}; after freeing space: "
        f"exit {again.returncode}, byte-identical: {verdict['then byte-identical']}"
    )
    record(18, f"ENOSPC during restore ({'RLIMIT_FSIZE' if rlimit else 'tmpfs'})", 1, figure, ok)
    assert ok, f"{figure}\nfailed: {[k for k, v in verdict.items() if not v]}\nstderr:\n{p.stderr[-2000:]}\nsecond:\n{again.stderr[-1000:]}"
