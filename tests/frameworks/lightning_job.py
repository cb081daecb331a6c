"""A tiny PyTorch Lightning run on the CPU with ckptsync's callback, as ``ckptsync run`` starts it.

    python lightning_job.py OUT_JSON

Fits a linear model for 10 steps, validating every 2, with the Trainer docs/INTEGRATIONS.md's
``lightning-ckptsync`` recipe makes (``ModelCheckpoint(monitor="val_loss", save_top_k=3)``) into CKPTSYNC_DIR (the folder ``ckptsync run`` watches). After step 9 the weights are knocked off, so the
last checkpoint is not the best. Writes OUT_JSON: Lightning's best checkpoint, the files saved, the
callback's final wait.
"""

from __future__ import annotations

import json
import os
import sys

import doc_blocks
import lightning.pytorch as pl
import torch

from ckptsync.integrations.lightning import CkptsyncCallback


class Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == 9:  # after the validation at step 8, before the one at step 10
            with torch.no_grad():
                self.layer.weight.add_(torch.randn_like(self.layer.weight) * 20)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(0)
    folder = os.environ["CKPTSYNC_DIR"]
    make_trainer = doc_blocks.load("lightning-ckptsync")["make_trainer"]  # docs/INTEGRATIONS.md's recipe, as written
    trainer = make_trainer(
        folder,
        max_steps=10,
        val_check_interval=2,
        limit_val_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    checkpoint = trainer.checkpoint_callback
    callback = next(c for c in trainer.callbacks if isinstance(c, CkptsyncCallback))
    trainer.fit(Linear(), loader(1), loader(2))
    final = callback.final
    with open(out, "w") as f:
        json.dump(
            {
                "best": os.path.basename(checkpoint.best_model_path),
                "saved": sorted(n for n in os.listdir(folder) if n.endswith(".ckpt")),
                "last": callback.last_saved.name if callback.last_saved else None,
                "committed": bool(final and final.committed),
                "commit": final.commit if final else None,
                "reason": final.reason if final else None,
            },
            f,
        )


if __name__ == "__main__":
    main()
