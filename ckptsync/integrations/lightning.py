"""``CkptsyncCallback``: a PyTorch Lightning ``Callback`` that tells ckptsync what is safe.

::

    from ckptsync.integrations.lightning import CkptsyncCallback

    checkpoint = ModelCheckpoint(dirpath=CKPT_DIR, monitor="val_loss", save_top_k=3)
    trainer = Trainer(..., callbacks=[checkpoint, CkptsyncCallback()])

Right after Lightning writes a checkpoint file, it writes the file's sidecar marker
(``<file>.ckptsync.json``) with the global step and every number in
``trainer.callback_metrics`` (``val_loss``, ``train_loss``, ...), so ``restore --best
--metric NAME`` works for any logged metric, and the uploader looks at the file at
once; when Lightning deletes a checkpoint (``save_top_k``), its marker goes too. To
see each write as it completes, the callback wraps the strategy's ``CheckpointIO``
(with an asynchronous ``CheckpointIO`` the marker would come before the file is
whole: it is then not wrapped, and files are taken when they settle). Commits it
hears of are logged to the trainer's loggers as ``ckptsync/committed_step``. When
``fit`` ends it waits (``wait_timeout`` seconds, default 600) until the last
checkpoint is committed, and logs the outcome.

``ModelCheckpoint(dirpath=...)`` must be the folder ckptsync watches. The uploader
is ``ckptsync run`` around the script (nothing to pass), a ``ckptsync watch``
sidecar (pass ``remote=``), or an in-process ``ckptsync.Syncer`` (``syncer=``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, CheckpointIO
except ImportError:  # the older package name
    from pytorch_lightning import Callback  # type: ignore[no-redef,assignment]
    from pytorch_lightning.plugins.io import AsyncCheckpointIO, CheckpointIO  # type: ignore[no-redef,assignment]

from ..marker import marker_path
from ._common import DEFAULT_WAIT, Companion, describe_wait

if TYPE_CHECKING:
    from ..syncer import Syncer

log = logging.getLogger("ckptsync")


class CkptsyncCallback(Callback):  # type: ignore[misc]
    """Mark each checkpoint file as Lightning writes it, report commits, wait for the last one at the end."""

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
        self.trainer: Any = None
        self.last_saved: Path | None = None
        #: The outcome of the final wait (None before fit ends).
        self.final: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.trainer = trainer
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, (_MarkingIO, AsyncCheckpointIO)):
            trainer.strategy.checkpoint_io = _MarkingIO(io, self)

    def saved(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Lightning wrote ``path``: mark it."""
        trainer = self.trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        step = checkpoint.get("global_step")
        metrics = dict(trainer.callback_metrics) if trainer is not None else {}
        self.companion.mark(path, step if isinstance(step, int) else None, metrics)
        self.last_saved = path

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.is_global_zero:
            last = self.companion.new_commit()
            if last is not None and last.step is not None:
                pl_module.log("ckptsync/committed_step", float(last.step), rank_zero_only=True)
                log.info("ckptsync: committed %s (step %s)", last.name, last.step)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.last_saved is None:
            return
        path = self.last_saved
        self.final = self.companion.wait(path.name, path.parent)
        level, message = describe_wait(self.final, path.name)
        log.log(level, "%s", message)


class _MarkingIO(CheckpointIO):  # type: ignore[misc]
    """The strategy's CheckpointIO, telling the callback of each file once it is written."""

    def __init__(self, inner: Any, callback: CkptsyncCallback) -> None:
        self.inner = inner
        self.callback = callback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        # A file saved again under the same name (last.ckpt) must never be described by the previous save's marker.
        marker_path(Path(path)).unlink(missing_ok=True)
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self.callback.saved(Path(path), checkpoint)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        marker = marker_path(Path(path))
        marker.unlink(missing_ok=True)

    def teardown(self) -> None:
        self.inner.teardown()
