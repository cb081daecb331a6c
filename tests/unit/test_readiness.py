"""The daemon's readiness decisions, from observations only: a fake clock, no threads, no files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptsync.checkpoint import LocalCheckpoint, LocalFile
from ckptsync.completion import SIGNAL_SETTLE, Readiness
from ckptsync.metrics import Score
from ckptsync.readiness import Observation, Tracker

SETTLE = 10.0
T0 = 1000.0  # monotonic seconds
WALL0 = 1_800_000_000.0  # seconds since the epoch, at T0


def ckpt(
    name: str = "checkpoint-1", step: int | None = 1, mtime: float = WALL0, files: tuple[str, ...] = ("model.bin",)
) -> LocalCheckpoint:
    made = tuple(LocalFile(f, Path("/ckpts", name, f), 100, 0o644, (100, int(mtime * 1e9), i + 1)) for i, f in enumerate(files))
    return LocalCheckpoint(name, Path("/ckpts", name), "dir", made, Score(step))


def complete(signal: str | None = None) -> Readiness:
    return Readiness(True, signal=signal)


class Clock:
    """Monotonic and wall time moving together."""

    def __init__(self) -> None:
        self.now = T0

    @property
    def wall(self) -> float:
        return WALL0 + (self.now - T0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker() -> Tracker:
    return Tracker(settle=SETTLE, retry_initial=10.0, retry_max=40.0)


def see(tracker: Tracker, clock: Clock, c: LocalCheckpoint, verdict: Readiness | None = None, cached: bool = False) -> str:
    tracker.observe(c.name, Observation(c, verdict or complete(), cached), clock.now, clock.wall)
    return tracker.entries[c.name].status


def test_a_complete_entry_is_ready_only_once_nothing_changed_for_the_settle_time(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "change", clock.now)
    c = ckpt(mtime=clock.wall)
    assert see(tracker, clock, c) == "pending" and tracker.entries["checkpoint-1"].reason == "settling"
    clock.advance(SETTLE - 0.1)
    assert see(tracker, clock, c) == "pending"
    clock.advance(0.1)
    assert see(tracker, clock, c) == "ready"
    assert tracker.entries["checkpoint-1"].ready_since == clock.now


def test_a_file_written_meanwhile_by_its_mtime_keeps_it_settling_even_without_an_event(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "change", clock.now)
    clock.advance(SETTLE)
    assert see(tracker, clock, ckpt(mtime=clock.wall - 1)) == "pending"  # written 1 s ago, by its mtime


def test_a_completion_signal_needs_only_the_short_settle(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "change", clock.now)
    c = ckpt(mtime=clock.wall)
    clock.advance(SIGNAL_SETTLE)
    assert see(tracker, clock, c, complete("trainer_state.json")) == "ready"


def test_an_entry_renamed_into_place_from_a_temporary_name_needs_only_the_short_settle(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "renamed", clock.now)
    c = ckpt(mtime=clock.wall)
    clock.advance(SIGNAL_SETTLE)
    assert see(tracker, clock, c) == "ready"


def test_a_write_after_the_rename_takes_the_rename_signal_back(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "renamed", clock.now)
    tracker.changed("checkpoint-1", "closed", clock.now)  # the moved files' own events keep it
    assert tracker.entries["checkpoint-1"].renamed
    tracker.changed("checkpoint-1", "change", clock.now)  # a file created in it afterwards
    c = ckpt(mtime=clock.wall)
    clock.advance(SIGNAL_SETTLE)
    assert see(tracker, clock, c) == "pending" and tracker.entries["checkpoint-1"].reason == "settling"


def _saved_then_superseded(tracker: Tracker, clock: Clock, *, newer_mtime_offset: float = 0.05) -> LocalCheckpoint:
    """checkpoint-3 finished (trainer_state.json last) at the clock's wall time, then checkpoint-6 begun after it."""
    tracker.changed("checkpoint-3", "change", clock.now)
    done = ckpt("checkpoint-3", 3, clock.wall, ("model.safetensors", "trainer_state.json"))
    clock.advance(0.1)
    tracker.changed("checkpoint-6", "change", clock.now)
    see(
        tracker,
        clock,
        ckpt("checkpoint-6", 6, done.files[0].signature[1] / 1e9 + newer_mtime_offset, ("config.json",)),
        Readiness(False, "waiting"),
    )
    return done


def test_a_signalled_entry_superseded_by_a_newer_checkpoint_needs_no_settling_once_two_scans_agree(tracker: Tracker, clock: Clock) -> None:
    done = _saved_then_superseded(tracker, clock)
    assert see(tracker, clock, done, complete("trainer_state.json")) == "pending"  # one scan: it could be mid-deletion
    assert see(tracker, clock, done, complete("trainer_state.json")) == "ready"  # 0.1 s after its signal, not 2 s


def test_superseding_takes_a_signal_a_higher_step_and_newer_files(tracker: Tracker, clock: Clock) -> None:
    done = _saved_then_superseded(tracker, clock)
    for _ in range(2):  # without a completion signal: the full settle time
        assert see(tracker, clock, done) == "pending"
    assert tracker.entries["checkpoint-3"].reason == "settling"

    stale = Tracker(settle=SETTLE)  # the higher step was there before this one was written (an older run's)
    done = _saved_then_superseded(stale, clock, newer_mtime_offset=-60)
    for _ in range(2):
        assert see(stale, clock, done, complete("trainer_state.json")) == "pending"

    lower = Tracker(settle=SETTLE)  # a newer folder with a lower step does not say this one is finished
    lower.changed("checkpoint-3", "change", clock.now)
    done = ckpt("checkpoint-3", 3, clock.wall, ("model.safetensors", "trainer_state.json"))
    lower.changed("checkpoint-2", "change", clock.now)
    see(lower, clock, ckpt("checkpoint-2", 2, clock.wall + 1, ("config.json",)), Readiness(False, "waiting"))
    for _ in range(2):
        assert see(lower, clock, done, complete("trainer_state.json")) == "pending"


def test_a_superseded_entry_whose_files_change_between_scans_is_not_taken(tracker: Tracker, clock: Clock) -> None:
    done = _saved_then_superseded(tracker, clock)
    see(tracker, clock, done, complete("trainer_state.json"))
    # the rotation deleting it file by file: the next scan sees fewer files
    shrinking = ckpt("checkpoint-3", 3, clock.wall - 0.1, ("trainer_state.json",))
    assert see(tracker, clock, shrinking, complete("trainer_state.json")) == "pending"


def test_an_incomplete_verdict_keeps_the_entry_pending_with_its_reason(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    assert see(tracker, clock, ckpt(mtime=clock.wall - 3600), Readiness(False, "waiting for .metadata")) == "pending"
    assert tracker.pending() == {"checkpoint-1": "waiting for .metadata"}


def test_a_single_file_open_for_writing_waits_for_its_close(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("last.ckpt", "write", clock.now, writing=True)
    clock.advance(SETTLE + 1)
    c = ckpt("last.ckpt", None, mtime=clock.wall - SETTLE - 1)
    assert see(tracker, clock, c) == "pending" and tracker.entries["last.ckpt"].reason == "still open for writing"
    tracker.changed("last.ckpt", "closed", clock.now - SETTLE)  # closed at the time of its last write
    assert see(tracker, clock, c) == "ready"


def test_a_change_of_files_starts_settling_again_and_reopens_a_committed_entry(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    old = ckpt(mtime=clock.wall - 3600)
    assert see(tracker, clock, old) == "ready"
    e = tracker.next_upload(clock.now)
    assert e is not None and e.status == "uploading"
    tracker.uploaded(e, "committed", "", clock.now)
    assert see(tracker, clock, old) == "committed"
    clock.advance(5)
    new = ckpt(mtime=clock.wall, files=("model.bin", "optimizer.pt"))
    assert see(tracker, clock, new) == "pending" and tracker.entries["checkpoint-1"].reason == "settling"


def test_an_entry_the_state_folder_knows_as_committed_is_not_uploaded(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    assert see(tracker, clock, ckpt(mtime=clock.wall - 3600), cached=True) == "committed"
    assert tracker.next_upload(clock.now) is None


def test_during_a_drain_only_what_was_complete_or_carries_a_signal_is_taken(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    assert see(tracker, clock, ckpt("checkpoint-1", 1, clock.wall - 3600)) == "ready"
    tracker.changed("checkpoint-2", "change", clock.now)
    tracker.changed("checkpoint-3", "change", clock.now)
    assert see(tracker, clock, ckpt("checkpoint-2", 2, clock.wall)) == "pending"
    tracker.begin_drain(writers_gone=False)
    clock.advance(SETTLE)
    # complete only now, without a completion signal: the trainer may have died mid-save
    assert see(tracker, clock, ckpt("checkpoint-2", 2, clock.wall - SETTLE)) == "pending"
    assert tracker.entries["checkpoint-2"].reason == "became complete after shutdown began without a completion signal"
    assert see(tracker, clock, ckpt("checkpoint-3", 3, clock.wall - SETTLE), complete("ckptsync.json")) == "ready"
    assert [e.name for e in tracker.queue()] == ["checkpoint-3", "checkpoint-1"]


def test_when_the_writers_are_gone_nothing_needs_to_settle(tracker: Tracker, clock: Clock) -> None:
    tracker.changed("checkpoint-1", "change", clock.now)
    tracker.begin_drain(writers_gone=True)
    assert see(tracker, clock, ckpt(mtime=clock.wall)) == "ready"


def test_a_spot_notice_takes_signalled_entries_at_once_and_others_after_settling(tracker: Tracker, clock: Clock) -> None:
    tracker.urgent = True
    tracker.changed("checkpoint-1", "change", clock.now)
    tracker.changed("checkpoint-2", "change", clock.now)
    assert see(tracker, clock, ckpt("checkpoint-1", mtime=clock.wall), complete("trainer_state.json")) == "ready"
    assert see(tracker, clock, ckpt("checkpoint-2", 2, clock.wall)) == "pending"


def test_the_newest_step_goes_first_and_a_failed_one_waits_its_backoff(tracker: Tracker, clock: Clock) -> None:
    for step in (1, 3, 2):
        tracker.discovered(f"checkpoint-{step}", clock.now - 3600)
        see(tracker, clock, ckpt(f"checkpoint-{step}", step, clock.wall - 3600))
    e = tracker.next_upload(clock.now)
    assert e is not None and e.name == "checkpoint-3"
    assert tracker.failed(e, "503 SlowDown", clock.now) == 10.0
    assert tracker.entries["checkpoint-3"].reason == "upload failed: 503 SlowDown"
    nxt = tracker.next_upload(clock.now)
    assert nxt is not None and nxt.name == "checkpoint-2"  # checkpoint-3 backs off
    tracker.uploaded(nxt, "committed", "", clock.now)
    clock.advance(10)
    again = tracker.next_upload(clock.now)
    assert again is e
    assert tracker.failed(e, "503", clock.now) == 20.0 and tracker.failed(e, "503", clock.now) == 40.0
    assert tracker.failed(e, "503", clock.now) == 40.0  # capped at retry_max
    clock.advance(40)
    assert tracker.next_upload(clock.now) is e
    tracker.uploaded(e, "committed", "", clock.now)
    assert e.backoff.failures == 0


@pytest.mark.parametrize(
    ("outcome", "status", "reason"),
    [
        ("unchanged", "committed", "committed"),
        ("changed", "pending", "changed during upload (model.bin was modified)"),
        ("cancelled", "ready", "model.bin was modified"),
    ],
)
def test_an_upload_outcome_moves_the_entry_on(tracker: Tracker, clock: Clock, outcome: str, status: str, reason: str) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    see(tracker, clock, ckpt(mtime=clock.wall - 3600))
    e = tracker.next_upload(clock.now)
    assert e is not None
    tracker.uploaded(e, outcome, "model.bin was modified", clock.now)
    assert (e.status, e.reason) == (status, reason)


def test_a_vanished_entry_is_forgotten_and_a_deleted_one_too_unless_uploading(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    tracker.discovered("checkpoint-2", clock.now - 3600)
    see(tracker, clock, ckpt("checkpoint-1", 1, clock.wall - 3600))
    see(tracker, clock, ckpt("checkpoint-2", 2, clock.wall - 3600))
    e = tracker.next_upload(clock.now)
    assert e is not None and e.name == "checkpoint-2"
    tracker.gone("checkpoint-2")  # a scan during the upload does not drop it
    tracker.gone("checkpoint-1")
    assert set(tracker.entries) == {"checkpoint-2"}
    tracker.uploaded(e, "vanished", "it was deleted", clock.now)
    assert tracker.entries == {}


def test_unsynced_and_the_lag_report_complete_entries_not_committed(tracker: Tracker, clock: Clock) -> None:
    tracker.discovered("checkpoint-1", clock.now - 3600)
    see(tracker, clock, ckpt("checkpoint-1", 1, clock.wall - 3600))
    first_ready = clock.now
    clock.advance(30)
    tracker.discovered("checkpoint-2", clock.now - 3600)
    see(tracker, clock, ckpt("checkpoint-2", 2, clock.wall - 3600))
    tracker.next_upload(clock.now)
    assert tracker.unsynced() == [("checkpoint-2", "complete"), ("checkpoint-1", "complete")]
    assert tracker.oldest_ready() == first_ready


def test_evaluation_covers_changed_and_undecided_entries_but_never_one_uploading(tracker: Tracker, clock: Clock) -> None:
    tracker.rescanned(["checkpoint-1", "checkpoint-2"], clock.now)
    assert tracker.to_evaluate() == {"checkpoint-1", "checkpoint-2"}
    second = ckpt("checkpoint-2", 2, clock.wall - 3600)
    see(tracker, clock, ckpt("checkpoint-1", 1, clock.wall - 3600), cached=True)
    see(tracker, clock, second)
    assert tracker.to_evaluate() == {"checkpoint-2"}  # pending: looked at every tick
    clock.advance(SETTLE)
    assert see(tracker, clock, second) == "ready"
    e = tracker.next_upload(clock.now)
    tracker.look_again()
    assert tracker.to_evaluate() == {"checkpoint-1"}
    # a change seen while it uploads is looked at once the upload ended, not forgotten
    tracker.changed("checkpoint-2", "change", clock.now)
    assert tracker.to_evaluate() == set()
    tracker.uploaded(e, "committed", "", clock.now)
    assert tracker.to_evaluate() == {"checkpoint-2"}


def test_only_the_newest_signalled_entry_skips_settling_so_the_newest_still_goes_first(tracker: Tracker, clock: Clock) -> None:
    """Complete checkpoints 3 and 6 found at a restart, 9 being written: 6 is taken at once, 3 settles."""
    names = {3: clock.wall - 30, 6: clock.wall - 20, 9: clock.wall - 1}
    for step in names:
        tracker.discovered(f"checkpoint-{step}", clock.now)
    cks = {step: ckpt(f"checkpoint-{step}", step, mtime, ("model.safetensors", "trainer_state.json")) for step, mtime in names.items()}
    for _ in range(2):
        see(tracker, clock, cks[9], Readiness(False, "waiting for trainer_state.json"))
        statuses = [see(tracker, clock, cks[s], complete("trainer_state.json")) for s in (3, 6)]
    assert statuses == ["pending", "ready"]


def test_a_file_renamed_into_place_is_superseded_by_a_newer_one_renamed_in_after_it(tracker: Tracker, clock: Clock) -> None:
    """Atomic writers (Lightning moves each file in): every newer checkpoint is signalled at once."""
    tracker.changed("step=50.ckpt", "renamed", clock.now)
    first = ckpt("step=50.ckpt", 50, clock.wall, ("step=50.ckpt",))
    see(tracker, clock, first)
    clock.advance(0.3)
    tracker.changed("step=100.ckpt", "renamed", clock.now)
    second = ckpt("step=100.ckpt", 100, clock.wall, ("step=100.ckpt",))
    assert see(tracker, clock, second) == "pending"  # the newest settles
    assert see(tracker, clock, first) == "ready"  # 0.3 s after its rename, not 2 s
