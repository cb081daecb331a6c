"""Which entries of a checkpoint folder are checkpoints, and which are still being written (pure).

Each top-level entry (a folder or a file) of the checkpoint folder is one
checkpoint, named by its entry name, unless its name marks it as temporary.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Names trainers and tools give to entries that are not finished yet.
TEMPORARY_PATTERNS = (
    ".*",  # hidden: our own staging folders, editors, rsync, HF's .tmpXXXX
    "tmp-*",  # Hugging Face Trainer's tmp-checkpoint-N
    "*.tmp",
    "*.partial",
    "*.orbax-checkpoint-tmp-*",
    "*.orbax-checkpoint-tmp",
    "lost+found",
)


# Sidecar markers of single-file checkpoints (``model.ckpt.ckptsync.json``).
SIDECAR_SUFFIX = ".ckptsync.json"


#: DeepSpeed's pointers to its newest tag (``engine.save_checkpoint(dir)`` writes ``dir/latest``): not checkpoints.
POINTER_NAMES = frozenset({"latest", "latest_universal"})


def is_checkpoint_name(name: str) -> bool:
    """True if a top-level entry with this name may be a checkpoint."""
    return not is_temporary_name(name) and not name.endswith(SIDECAR_SUFFIX) and name not in POINTER_NAMES


def is_temporary_name(name: str) -> bool:
    """True if an entry with this name is never a (finished) checkpoint."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMPORARY_PATTERNS)


# Files whose presence says a checkpoint folder was finished: each is written
# last by the trainer that uses it.
SIGNAL_FILES = (
    "ckptsync.json",  # ckptsync mark / ckptsync.mark()
    "trainer_state.json",  # Hugging Face Trainer
    ".metadata",  # torch.distributed.checkpoint (written as .metadata.tmp, then renamed)
    "commit_success.txt",  # Orbax on stores without atomic rename
)
# Files that make a folder look like a Hugging Face Trainer checkpoint, which
# is finished only once trainer_state.json is written.
HF_FILES = frozenset(
    {
        "training_args.bin",
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "rng_state.pth",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "adapter_model.safetensors",
    }
)
# Written first by Hugging Face Trainer: in a checkpoint-N folder they announce the rest.
HF_CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
_HF_NAME = re.compile(r"checkpoint-\d+\Z")
_HF_WEIGHTS = re.compile(r"(model|pytorch_model|adapter_model|tf_model|flax_model)([-.].*)?\.(safetensors|bin|h5|msgpack|pt|pth|json)\Z")

# Names of files still being written, inside a checkpoint folder.
INNER_TEMPORARY = (".tmp*", "*.tmp", "*.partial", ".ckptsync-tmp-*", ".ckptsync-marker-*", "*.orbax-checkpoint-tmp*")

#: A checkpoint carrying a completion signal needs only this long without changes.
SIGNAL_SETTLE = 2.0


@dataclass(frozen=True)
class Readiness:
    """Whether an entry's files allow calling it complete (time aside), and why not."""

    ready: bool
    reason: str = ""
    signal: str | None = None
    #: Not ready only for want of files the coordinator (rank 0) writes: in a multi-host job those
    #: are on another node, whose announcement on the remote then completes this folder.
    coordinator: bool = False


def assess(kind: str, relpaths: Iterable[str], *, require_marker: bool = False, marker_present: bool = False, name: str = "") -> Readiness:
    """Decide from an entry's file list whether its completion signals permit a commit.

    - a folder with a file being written (hidden temp files, ``*.tmp``, ...) is not ready;
    - a folder that looks like a Hugging Face checkpoint needs ``trainer_state.json``
      (a ``checkpoint-N`` folder counts as one from its first ``config.json``, or its
      first per-rank ``rng_state_N.pth``);
    - a torch.distributed.checkpoint folder (``*.distcp``) needs ``.metadata`` beside its files;
    - DeepSpeed shards in a sub-folder (Hugging Face's and Lightning's layouts) need ``latest``;
    - with ``require_marker`` every checkpoint needs its ``ckptsync.json`` marker
      (for a single-file checkpoint ``X``, the sidecar ``X.ckptsync.json``).

    ``signal`` names the completion signal found, if any; ``coordinator`` says the
    entry waits only for files the coordinator writes (see :mod:`ckptsync.shards`).
    A single-file checkpoint has no signal unless its sidecar marker exists (``marker_present``).
    """
    paths = list(relpaths)
    if kind == "file":
        if require_marker and not marker_present:
            return Readiness(False, "waiting for its .ckptsync.json marker")
        return Readiness(True, signal="ckptsync.json" if marker_present else None)
    top = {p for p in paths if "/" not in p}
    for p in paths:
        base = p.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatchcase(base, pat) for pat in INNER_TEMPORARY):
            return Readiness(False, f"{p} is still being written")
    signal = next((f for f in SIGNAL_FILES if f in top), None)
    if require_marker and "ckptsync.json" not in top:
        return Readiness(False, "waiting for its ckptsync.json marker")
    if not paths:
        return Readiness(False, "empty folder")
    if "ckptsync.json" in top:
        return Readiness(True, signal="ckptsync.json")
    # A Trainer's checkpoint-N: from its config, a per-rank rng_state_N.pth, or a sharded save's sub-folder.
    trainer_parts = any(_RANK_RNG.match(p) or _TRAINER_SHARDS.match(p) for p in paths) or top & HF_CONFIG_FILES
    hf_like = top & HF_FILES or (_HF_NAME.match(name) and trainer_parts)
    if hf_like and "trainer_state.json" not in top:
        return Readiness(False, "waiting for trainer_state.json", coordinator=True)
    if "trainer_state.json" in top and not any(_HF_WEIGHTS.match(p) for p in top) and not _sharded_weights(paths):
        # Trainer writes the weights before its state: a state without weights is a
        # folder the trainer's own rotation is deleting (or a save cut short).
        return Readiness(False, "trainer_state.json without model weights (being deleted?)")
    distcp = {p.rpartition("/")[0] for p in paths if p.endswith(".distcp")}
    if distcp - {p.rpartition("/")[0] for p in paths if p.rsplit("/", 1)[-1] == ".metadata"}:
        return Readiness(False, "waiting for .metadata", coordinator=True)
    if any("/" in p and "zero_pp_rank_" in p.rsplit("/", 1)[-1] for p in paths) and "latest" not in top:
        return Readiness(False, "waiting for DeepSpeed's latest", coordinator=True)
    return Readiness(True, signal=signal or (".metadata" if distcp else None))


_RANK_RNG = re.compile(r"rng_state_\d+\.pth\Z")
_TRAINER_SHARDS = re.compile(r"(pytorch_model_fsdp_\d+|optimizer_\d+|global_step\d+)/")


def _sharded_weights(paths: list[str]) -> bool:
    """Model weights saved as shards in a sub-folder (FSDP's ``pytorch_model_fsdp_0/``, DeepSpeed's ``global_stepN/``)."""
    return any(p.endswith(".distcp") or "_model_states.pt" in p or "zero_pp_rank_" in p for p in paths if "/" in p)


def settled(last_change: float, now: float, settle: float, *, signal: bool) -> bool:
    """True once nothing changed for ``settle`` seconds (shorter when a completion signal is present)."""
    wait = min(settle, SIGNAL_SETTLE) if signal else settle
    return now - last_change >= wait
