"""Run the reliability scenarios and write docs/RELIABILITY.md.

Usage: python bench/reliability.py [--full] [--out docs/RELIABILITY.md]

Each scenario of the reliability suite is one or more tests; those that count
runs record their figure (tests/faults/scenarios.py), the others are reported
by their tests' outcome. --full sets CKPTSYNC_RELIABILITY_FULL=1: the counts
the issue asks for (100+ runs where it says so) instead of CI's small ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# scenario: (title, pytest selections)
SCENARIOS: dict[int, tuple[str, list[str]]] = {
    1: (
        "kill -9 during upload at random points, then restore",
        ["tests/faults/test_crash.py::test_kill_9_during_upload_at_random_points_never_gives_a_partial_restore"],
    ),
    2: (
        "kill -9 between the last chunk and the manifest",
        ["tests/faults/test_crash.py::test_kill_between_last_chunk_and_manifest_then_restart_resends_nothing"],
    ),
    3: (
        "slow writer (1 MiB/s, pauses > 1 s)",
        ["tests/faults/test_writer_scenarios.py::test_slow_writer_with_long_pauses_never_gets_an_incomplete_checkpoint_committed"],
    ),
    4: (
        "rotation deleting a folder mid-upload",
        ["tests/faults/test_writer_scenarios.py::test_rotation_deleting_folders_mid_upload_never_commits_missing_data"],
    ),
    5: ("connection resets at random offsets of uploads and downloads", ["tests/faults/test_network_faults.py -k scenario_5 or reset"]),
    6: ("503 SlowDown on 30% of requests", ["tests/faults/test_network_faults.py -k slowdown or 503"]),
    7: ("500 after the server applied the manifest PUT", ["tests/faults/test_network_faults.py -k manifest"]),
    8: (
        "errors that cannot heal (403, NoSuchBucket, no credentials)",
        [
            "tests/integration/test_cli_s3.py::test_missing_bucket_fails_fast_without_retries_or_traceback",
            "tests/integration/test_cli_s3.py::test_wrong_credentials_are_a_clear_error",
            "tests/integration/test_cli_s3.py::test_no_credentials_is_a_clear_error",
        ],
    ),
    9: ("truncated or bit-flipped downloads", ["tests/faults/test_network_faults.py -k truncat or flip"]),
    10: ("two writers on one prefix", ["tests/faults/test_writer_scenarios.py::test_two_writers_on_one_prefix_never_overwrite_a_manifest"]),
    11: ("SIGTERM with a drain budget on a bandwidth-limited link", ["tests/faults/test_network_faults.py -k drain or sigterm"]),
    12: (
        "spot notice from a fake IMDSv2 endpoint",
        ["tests/integration/test_sidecar.py::test_spot_notice_is_logged_within_one_poll_interval"],
    ),
    13: (
        "stale multipart uploads aborted at start (ckptsync itself uploads no multipart)",
        ["tests/integration/test_cli_s3.py::test_stale_multipart_uploads_under_the_prefix_are_aborted_and_others_kept"],
    ),
    14: ("clock skew, equal steps, NaN or missing metrics", ["tests/faults/test_choice_scenarios.py"]),
    15: ("hostile manifests", ["tests/faults/test_network_faults.py -k hostile", "tests/unit/test_format.py"]),
    16: (
        "decompression bombs",
        [
            "tests/unit/test_codec.py::test_frame_declaring_more_than_the_manifest_is_rejected_before_decompressing",
            "tests/unit/test_codec.py::test_frame_without_content_size_cannot_inflate_past_declared_size",
            "tests/unit/test_float_codec.py::test_a_grouped_plane_cannot_inflate_past_its_size",
        ],
    ),
    17: ("credentials in logs at debug level", ["tests/faults/test_secrets.py"]),
    18: ("ENOSPC during restore", ["tests/faults/test_enospc.py"]),
    19: ("property-based round trips and decoder fuzzing", ["tests/faults/test_properties.py"]),
    # 20 is the soak run (bench/soak.py), outside the suite.
    21: (
        "entries the format cannot carry, dangling or looping links, unreadable folders, FIFOs in a checkpoint",
        [
            "tests/pipeline/test_unstorable_entries.py -k every_kind or daemon_warns or scan_records or warns_once",
            "tests/pipeline/test_unstorable_entries.py::test_a_link_to_a_folder_inside_the_watched_folder_is_followed_and_restores_with_its_files",
        ],
    ),
    22: (
        "one unreadable file in the newest checkpoint",
        [
            "tests/pipeline/test_unstorable_entries.py::test_a_newest_checkpoint_with_an_unreadable_file_fails_alone_and_push_exits_1_naming_it"
        ],
    ),
    23: (
        "a junk object over 64 MiB under manifests/",
        ["tests/pipeline/test_push_restore.py::test_a_junk_object_too_large_for_a_manifest_is_skipped_with_a_warning"],
    ),
    24: (
        "a remote whose manifests are all unusable",
        ["tests/pipeline/test_push_restore.py -k remote_whose_only_manifest_is_unusable"],
    ),
    25: (
        "symbolic links leaving --dir",
        [
            "tests/pipeline/test_unstorable_entries.py -k top_level_links_leaving or link_inside_a_checkpoint_to_a_folder_outside",
        ],
    ),
    26: (
        "a file swapped for a FIFO during an upload",
        ["tests/pipeline/test_special_files.py"],
    ),
    27: (
        "verify by each manifest's own (hash, codec, size) references",
        ["tests/pipeline/test_push_restore.py::test_verify_judges_each_manifests_own_references_not_the_hash_alone"],
    ),
    28: ("terminal escapes in names from a remote or a marker", ["tests/unit/test_printable.py"]),
    29: ("a server that accepts connections and never answers", ["tests/faults/test_silent_server.py"]),
    30: (
        "smaller defects (export onto a file, modes beyond the umask, silent replacement, URL passwords, "
        "--latest with --best, metavars, logs over the progress bar)",
        [
            "tests/integration/test_fleet_cli.py::test_export_onto_a_file_is_a_one_line_error_that_changes_nothing",
            "tests/pipeline/test_push_restore.py -k umask_allows or warns_which_local_files",
            "tests/faults/test_secrets.py::test_an_endpoint_urls_password_is_masked_in_config_errors_and_logs",
            "tests/integration/test_cli_options.py -k latest_and_best_together or names_every_options_value or clears_the_progress_bar",
        ],
    ),
    31: (
        "rotation with save_total_limit=1 on a 5 MiB/s link",
        ["tests/faults/test_rotation.py"],
    ),
}


def _quoted(selection: str) -> str:
    path, _, k = selection.partition(" -k ")
    return f'{path} -k "{k}"' if k else path


def run(selection: str, env: dict[str, str], junit: Path) -> tuple[int, int]:
    args = selection.split(" -k ", 1)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", args[0]]
    if len(args) == 2:
        cmd += ["-k", args[1]]
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not junit.exists():
        return 0, 0
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    total = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return total, total - bad


def _soak_paragraph(out: Path) -> str:
    """Scenario 20's paragraph: kept from the file being replaced (bench/soak.py's figures), else the generic one."""
    old = out.read_text() if out.exists() else ""
    start = old.find("Scenario 20")
    if start >= 0:
        return old[start:].strip()
    return "Scenario 20 (a soak run of at least 30 minutes with faults injected) is not part of the suite: `python bench/soak.py`."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    a = ap.parse_args()
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = dict(os.environ, CKPTSYNC_RELIABILITY_OUT=str(figures))
        if a.full:
            env["CKPTSYNC_RELIABILITY_FULL"] = "1"
        outcomes = {}
        for number, (_title, selections) in SCENARIOS.items():
            total = passed = 0
            for i, sel in enumerate(selections):
                t, p = run(sel, env, Path(tmp) / f"s{number}-{i}.xml")
                total, passed = total + t, passed + p
            outcomes[number] = (total, passed)
            print(f"scenario {number}: {passed}/{total} tests pass", file=sys.stderr)
        recorded: dict[int, list[dict]] = {}
        if figures.exists():
            for line in figures.read_text().splitlines():
                doc = json.loads(line)
                recorded.setdefault(int(doc["scenario"]), []).append(doc)
    lines = [
        "# Reliability",
        "",
        "Failure on purpose: kill -9 at random points, S3 servers that drop connections, hostile manifests, full disks.",
        "Every scenario runs in the test suite at a small size; the figures below come from the run named here.",
        "This file is written by `bench/reliability.py`; edit that, not this file.",
        "",
        f"Run: `python bench/reliability.py{' --full' if a.full else ''}` on {started:%Y-%m-%d %H:%M} UTC, "
        f"{'full counts' if a.full else 'CI counts'}; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "Servers: SeaweedFS, `rclone serve s3` and moto on 127.0.0.1, with the fault proxy of tests/faults/proxy.py in front where a scenario needs it.",
        "",
        "| # | scenario | runs | figure | result | reproduce |",
        "|---|---|---|---|---|---|",
    ]
    for number, (title, selections) in SCENARIOS.items():
        total, passed = outcomes[number]
        figs = recorded.get(number, [])
        runs = sum(int(f["runs"]) for f in figs) if figs else total
        figure = "; ".join(f["figure"] for f in figs) if figs else f"{passed}/{total} tests pass"
        ok = total > 0 and passed == total and all(f["result"] == "pass" for f in figs)
        reproduce = "<br>".join(f"`pytest {_quoted(s)}`" for s in selections)
        figure = re.sub(r"/tmp/\S+?(?=[;),]|\s|$)", "<tmp>", figure)
        lines.append(f"| {number} | {title} | {runs} | {figure} | {'pass' if ok else 'FAIL'} | {reproduce} |")
    lines += ["", _soak_paragraph(a.out), ""]
    a.out.write_text("\n".join(lines))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
