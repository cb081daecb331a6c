"""Names and metrics from a remote or a marker never reach a terminal as control sequences."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timezone

from ckptsync import catalog
from ckptsync import format as fmt
from ckptsync.cli.listing import table
from ckptsync.logs import printable, setup
from ckptsync.repository import ManifestRecord
from tests.faults.scenarios import record

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen


def test_control_characters_and_bidi_overrides_are_escaped():
    assert printable(f"a{TITLE}b") == "a\\x1b]0;pwned\\x07b"
    assert printable("x\u202ey\nz\r") == "x\\u202ey\\x0az\\x0d"
    assert printable("plain-name_1.ckpt é") == "plain-name_1.ckpt é"


def test_list_escapes_metric_and_host_names_from_a_remote():
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    m = fmt.Manifest("ck-1", "dir", 1, {f"loss{CLEAR}": 0.5}, now, f"h{TITLE}", fmt.new_commit_id(now, "h"), (), "t")
    lines = table([catalog.Checkpoint("ck-1", (), {m.host: ManifestRecord("k", m)})])
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b[2j" in text.lower()


def test_log_lines_escape_what_they_quote():
    out = io.StringIO()
    setup("info", "text", out)
    try:
        logging.getLogger("ckptsync.test").info("committed %s", f"ck{CLEAR}")
    finally:
        setup("info", "text")
    assert "\x1b" not in out.getvalue() and "committed ck\\x1b[2J" in out.getvalue()
    record(
        28,
        "terminal escapes in names from a remote or a marker",
        3,
        "ESC]0;..BEL (title), ESC[2J (clear), CR, LF and U+202E printed escaped in list and in log lines: 0 raw control characters",
        True,
    )
