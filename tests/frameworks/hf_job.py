"""A tiny Hugging Face Trainer run on the CPU with ckptsync's callback, as ``ckptsync run`` starts it.

    python hf_job.py OUT_JSON [--syncer REMOTE]

Trains a 1-layer GPT-2 (built from a config: no download) for 8 steps, saving and evaluating every 2, with
``load_best_model_at_end`` on ``eval_loss``, the Trainer made by docs/INTEGRATIONS.md's ``hf-callback`` recipe. After step 5 the weights are knocked off (noise), so the last
checkpoint is not the best. Without ``--syncer`` the uploader is the ``ckptsync run`` around this process
(found through CKPTSYNC_DIR / CKPTSYNC_REMOTE); with it, an in-process ``ckptsync.Syncer`` to REMOTE.
Writes OUT_JSON: the Trainer's best checkpoint, the checkpoints saved, and the callback's final wait.
"""

from __future__ import annotations

import json
import os
import sys

import doc_blocks
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from ckptsync.integrations.transformers import CkptsyncCallback


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        base = torch.arange(16) % 8
        self.rows = [(base + torch.randint(0, 2, (1,), generator=g)) % 32 for _ in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class KnockOff(TrainerCallback):
    """Add noise to the weights after step 5: later evaluations are worse than the best one."""

    def __init__(self, model) -> None:
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(torch.randn_like(p) * 3)


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    output_dir = os.environ["CKPTSYNC_DIR"] if "--syncer" not in sys.argv else sys.argv[sys.argv.index("--syncer") + 2]
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=8,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    syncer = None
    if "--syncer" in sys.argv:
        import ckptsync

        remote = sys.argv[sys.argv.index("--syncer") + 1]
        syncer = ckptsync.Syncer(output_dir, remote, settle=0.5, tick=0.1, state_dir=output_dir + "-state").start()
    if syncer is None:  # docs/INTEGRATIONS.md's recipe, as written
        trainer = doc_blocks.load("hf-callback")["make_trainer"](model, args, Tokens(32, 1), Tokens(8, 2))
        callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, CkptsyncCallback))
    else:
        callback = CkptsyncCallback(syncer=syncer)
        trainer = Trainer(model=model, args=args, train_dataset=Tokens(32, 1), eval_dataset=Tokens(8, 2), callbacks=[callback])
    trainer.add_callback(KnockOff(model))
    trainer.train()
    final = callback.final
    with open(out, "w") as f:
        json.dump(
            {
                "best": os.path.basename(trainer.state.best_model_checkpoint),
                "saved": sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-")),
                "last": callback.last_saved,
                "committed": bool(final and final.committed),
                "commit": final.commit if final else None,
                "reason": final.reason if final else None,
                "eval_losses": {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e},
            },
            f,
        )
    if syncer is not None:
        syncer.stop()


if __name__ == "__main__":
    main()
