"""``CkptsyncCallback``: a Hugging Face ``TrainerCallback`` that tells ckptsync what is safe.

::

    from ckptsync.integrations.transformers import CkptsyncCallback

    trainer = Trainer(model=model, args=args, ..., callbacks=[CkptsyncCallback()])

On each save it writes the checkpoint's ``ckptsync.json`` marker with the step and
every number the Trainer logged at that step (``eval_loss``, ``loss``, any
``compute_metrics`` output), so ``restore --best --metric NAME`` works for any of
them, and the uploader looks at the checkpoint at once. Each commit it hears of is
added to the Trainer's logs as ``ckptsync/committed_step``. At the end of training
it waits (``wait_timeout`` seconds, default 600) until the last checkpoint is
committed, and says so in the log, so the process exits only once it is safe.

The uploader is ``ckptsync run`` around the script (nothing to pass), a
``ckptsync watch`` sidecar (pass ``remote=``, and ``state_dir=`` if the sidecar was
given one), or an in-process ``ckptsync.Syncer`` (pass ``syncer=``). Only the main
process (``state.is_world_process_zero``) marks and waits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ._common import DEFAULT_WAIT, Companion, describe_wait

if TYPE_CHECKING:
    from ..syncer import Syncer

log = logging.getLogger("ckptsync")

#: The Trainer's checkpoint folder prefix (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``).
PREFIX = "checkpoint"


class CkptsyncCallback(TrainerCallback):  # type: ignore[misc]
    """Mark each checkpoint the Trainer saves, report commits, wait for the last one at the end."""

    def __init__(
        self,
        remote: str | None = None,
        *,
        syncer: Syncer | None = None,
        dir: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        wait_timeout: float = DEFAULT_WAIT,
    ) -> None:
        self.companion = Companion(dir, remote, syncer=syncer, state_dir=state_dir, wait_timeout=wait_timeout)
        self.last_saved: str | None = None
        #: The outcome of the final wait (None before the end of training).
        self.final: Any = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX}-{state.global_step}"
        if not folder.is_dir():
            return
        metrics: dict[str, Any] = {}
        for entry in state.log_history:
            if entry.get("step") == state.global_step:
                metrics.update({k: v for k, v in entry.items() if k != "step"})
        self.companion.mark(folder, state.global_step, metrics)
        self.last_saved = folder.name

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or logs is None:
            return
        last = self.companion.new_commit()
        if last is not None:
            logs["ckptsync/committed_step"] = last.step if last.step is not None else float("nan")
            log.info("ckptsync: committed %s (step %s)", last.name, last.step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.last_saved is None:
            return
        self.final = self.companion.wait(self.last_saved, args.output_dir)
        level, message = describe_wait(self.final, self.last_saved)
        log.log(level, "%s", message)
        _trainer_log(level, message)


def _trainer_log(level: int, message: str) -> None:
    """The same line in the Trainer's own log (transformers' logger), where its users look."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.trainer").log(level, message)
