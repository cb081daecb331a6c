"""The framework recipes of docs/INTEGRATIONS.md, run against writers that lay files out as the frameworks do.

No torch, Lightning or transformers: each framework's checkpoint writer is simulated precisely (the same file
names, written in the same order, with the same temporary names and renames, and the same deletions), at a
writer's pace (short pauses between files, so the daemon interleaves with the writer; they are not used to
synchronise anything), while the recipe's ``ckptsync.Syncer`` or ``ckptsync run`` uploads to a ``file://`` remote.

The recipes themselves are the fenced blocks marked ``<!-- tested: NAME -->`` in the doc, executed as written;
``import torch`` / ``lightning`` / ``transformers`` in them resolve to the stand-ins below, and ``ckptsync.Syncer``
to the real one with test speeds (settle 0.5 s).

After each run:

- every commit (each one is observed as it happens, even those retention deletes later) is a version of the
  checkpoint that the writer had finished: never a folder without ``trainer_state.json`` or ``.metadata``, never
  a hidden temp file, never half a file;
- step and metrics recorded are the writer's;
- restores (latest, best, by name) are byte-identical to what the writer finished, and the recipe resumes
  from the right step on a new machine.

The last section holds regression tests for bugs found with these writers and since fixed: a file moved into
place was not uploaded until the job ended; a Trainer folder cut short before its weights, or by rotation, was
committed; a single file's marker was trusted when stale and ignored when rewritten.
"""

from __future__ import annotations

import builtins
import itertools
import json
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest

import ckptsync
import ckptsync.syncer
from ckptsync.cli import main as cli_main
from ckptsync.hashes import DEFAULT_HASH, hash_hex
from tests.helpers import run_cli, start_cli, wait_until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "INTEGRATIONS.md"
#: Test speeds for every Syncer: 0.5 s without changes (instead of 10 s), decisions every 0.1 s.
FAST = {"settle": 0.5, "tick": 0.1, "workers": 4}
TESTED_BLOCKS = {"hf-train-script", "hf-syncer", "lightning-callback", "lightning-fit", "torch-recipe", "dcp-recipe"}
#: The framework callbacks, run with the real frameworks by tests/frameworks/test_callbacks.py, and the SageMaker
#: Estimator, run with a stand-in ``sagemaker`` by tests/integration/test_wait_metrics_docs.py.
ELSEWHERE_BLOCKS = {"hf-callback", "lightning-ckptsync", "sagemaker-estimator"}
#: The "Many nodes" recipes, run with real torch by tests/frameworks/test_dcp_multinode.py.
MULTINODE_BLOCKS = {"multinode-run": "sh", "multinode-planner": "python", "multinode-reshard": "sh"}


# ============================================================================ the doc


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def block(name: str) -> str:
    m = re.search(r"<!-- tested: " + re.escape(name) + r" -->\s*```python\n(.*?)\n```", doc_text(), re.DOTALL)
    assert m, f"no ```python block after <!-- tested: {name} --> in {DOC}"
    return m.group(1)


def exec_block(name: str, modules: dict[str, types.ModuleType]) -> dict[str, Any]:
    """Run a doc block as written; its imports of the names in ``modules`` get those modules instead."""
    real_import = builtins.__import__
    tops = {n.split(".")[0] for n in modules}

    def fake_import(mod: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and mod.split(".")[0] in tops:
            if mod not in modules:
                raise ModuleNotFoundError(f"No module named {mod!r} (no stand-in for it)")
            return modules[mod] if fromlist else modules[mod.split(".")[0]]
        return real_import(mod, globals, locals, fromlist, level)

    ns: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": fake_import}, "__name__": "doc_" + name.replace("-", "_")}
    exec(compile(block(name), f"{DOC}:{name}", "exec"), ns)
    return ns


def fast_ckptsync(state_root: Path) -> types.ModuleType:
    """``ckptsync`` as the doc's code sees it: the real one, with test speeds and a new state folder per Syncer."""
    mod = types.ModuleType("ckptsync")
    mod.__dict__.update({k: v for k, v in vars(ckptsync).items() if not k.startswith("__")})
    counter = itertools.count(1)

    def Syncer(dir: Any, remote: str, **options: Any) -> ckptsync.Syncer:
        return ckptsync.Syncer(dir, remote, **{**FAST, "state_dir": state_root / f"syncer-state-{next(counter)}", **options})

    mod.Syncer = Syncer  # type: ignore[attr-defined]
    return mod


def module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


# ============================================================================ what the writers finished, what was committed


def digest(data: bytes) -> str:
    """The content hash a manifest of the default hash records for a file of one chunk."""
    return hash_hex(DEFAULT_HASH, data)


@dataclass
class Version:
    files: dict[str, str]  # relpath -> sha256 (for a file checkpoint: its name -> sha256)
    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)


class Finished:
    """Every version of every checkpoint a writer finished (thread-safe)."""

    def __init__(self) -> None:
        self.versions: dict[str, list[Version]] = defaultdict(list)
        self._lock = threading.Lock()

    def add(self, name: str, files: dict[str, str], step: int | None, metrics: dict[str, float] | None = None) -> None:
        with self._lock:
            self.versions[name].append(Version(dict(files), step, dict(metrics or {})))

    def find(self, name: str, files: dict[str, str]) -> Version | None:
        return next((v for v in self.versions.get(name, []) if v.files == files), None)

    def by_hash(self, digest: str) -> Version:
        """The version of a single-file checkpoint with this content."""
        return next(v for vs in self.versions.values() for v in vs if digest in v.files.values())


class Recorder:
    """Every manifest the daemon commits, as it commits it (retention may delete it from the remote later)."""

    def __init__(self) -> None:
        self.manifests: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, result: Any) -> None:
        with self._lock:
            self.manifests.append(result.manifest)

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [m for m in self.manifests if m.name == name]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    real = ckptsync.syncer.Daemon

    class RecordingDaemon(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("on_commit") is None:
                kwargs["on_commit"] = rec
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ckptsync.syncer, "Daemon", RecordingDaemon)
    return rec


@pytest.fixture
def remote(tmp_path: Path) -> str:
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def files_of(manifest: Any) -> dict[str, str]:
    return {f.path: f.hash for f in manifest.files}


def tree(path: Path) -> dict[str, str]:
    """What is on disk: {relpath: sha256}, or {name: sha256} for a single file."""
    if path.is_file():
        return {path.name: digest(path.read_bytes())}
    return {p.relative_to(path).as_posix(): digest(p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}


def remote_manifests(remote: str) -> list[Any]:
    repo = ckptsync.open_repository(remote)
    try:
        return [r.manifest for r in repo.load_manifests()]
    finally:
        repo.store.close()


def remote_names(remote: str) -> set[str]:
    return {m.name for m in remote_manifests(remote)}


def assert_finished_versions(manifests: list[Any], finished: Finished) -> list[tuple[Any, Version]]:
    """Every manifest names exactly the files of a version the writer finished; returns the pairs."""
    assert manifests, "nothing was committed"
    out = []
    for m in manifests:
        v = finished.find(m.name, files_of(m))
        assert v is not None, (
            f"{m.name} was committed with files {sorted(files_of(m))}, a state the writer never finished; "
            f"finished versions: {[sorted(x.files) for x in finished.versions.get(m.name, [])]}"
        )
        out.append((m, v))
    return out


def restore_and_compare(remote: str, dest: Path, finished: Finished, **select: Any) -> tuple[Any, Version]:
    """Restore into a fresh folder; the bytes must be those of the manifest, which must be a finished version."""
    result = ckptsync.restore(remote, dest, **select)
    assert result is not None, f"nothing restored for {select}"
    got = tree(result.path)
    assert got == files_of(result.manifest), f"{result.name}: restored bytes differ from its manifest"
    v = finished.find(result.name, got)
    assert v is not None, f"{result.name} restored as {sorted(got)}, which the writer never finished"
    return result, v


def restore_every_name(remote: str, dest: Path, finished: Finished) -> None:
    """Every checkpoint on the remote (its newest commit) restores byte-identical to a version the writer finished."""
    names = remote_names(remote)
    assert names
    for i, name in enumerate(sorted(names)):
        result, _ = restore_and_compare(remote, dest / str(i), finished, name=name)
        assert result.name == name


# ============================================================================ Hugging Face Trainer (stand-in)

FAKE_TRANSFORMERS = r'''
"""Stand-in for transformers (tests only): the Trainer saves checkpoint-N as the real one does.

In place, in this order: config.json, generation_config.json, model.safetensors (written as a hidden
.tmpXXXX inside the folder, then renamed), training_args.bin, optimizer.pt, scheduler.pt,
rng_state.pth, and trainer_state.json last; then rotation (save_total_limit) deletes the oldest
checkpoint-N file by file. Environment: FAKE_HF_PACE (seconds after each file written or deleted),
FAKE_HF_TRAIN_SECONDS (training between two saves), FAKE_HF_GATHER_SECONDS (pause before optimizer.pt,
consolidating a sharded optimizer state, with no file activity), FAKE_HF_MAX_STEPS (overrides max_steps),
FAKE_HF_LOG (JSON lines: every checkpoint as finished), FAKE_HF_CRASH ("write:checkpoint-20/config.json"
or "delete:checkpoint-10/optimizer.pt": the process dies right after that file operation).
"""
import json
import os
import random
import re
import struct
import time

PREFIX_CHECKPOINT_DIR = "checkpoint"
_re_checkpoint = re.compile(r"^" + PREFIX_CHECKPOINT_DIR + r"\-(\d+)$")


def get_last_checkpoint(folder):
    """As transformers.trainer_utils.get_last_checkpoint: the highest checkpoint-N folder; nothing is checked."""
    content = os.listdir(folder)
    checkpoints = [p for p in content if _re_checkpoint.search(p) is not None and os.path.isdir(os.path.join(folder, p))]
    if len(checkpoints) == 0:
        return None
    return os.path.join(folder, max(checkpoints, key=lambda x: int(_re_checkpoint.search(x).groups()[0])))


def eval_loss_at(step):
    return round(0.3 + (step * 7919 % 1013) / 1000, 6)


class SimulatedCrash(RuntimeError):
    pass


def _digest(data):  # the content hash a manifest of ckptsync's default hash (BLAKE3) records
    from blake3 import blake3

    return blake3(data).hexdigest()


def _safetensors(step, n):
    data = random.Random(step).randbytes(4 * n)
    header = {"__metadata__": {"format": "pt"}, "lm_head.weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


class TrainingArguments:
    def __init__(self, output_dir, max_steps=-1, save_strategy="steps", save_steps=500, eval_strategy="no", eval_steps=None,
                 save_total_limit=None, report_to=None, **kwargs):
        self.output_dir = output_dir
        self.max_steps = max_steps
        self.save_strategy = save_strategy
        self.save_steps = save_steps
        self.eval_strategy = eval_strategy
        self.eval_steps = eval_steps if eval_steps is not None else save_steps
        self.save_total_limit = save_total_limit


class AutoModelForCausalLM:
    @classmethod
    def from_pretrained(cls, name, **kwargs):
        model = cls()
        model.name_or_path = name
        return model


class Trainer:
    def __init__(self, model=None, args=None, train_dataset=None, eval_dataset=None, **kwargs):
        self.model = model
        self.args = args
        self.pace = float(os.environ.get("FAKE_HF_PACE", "0.03"))
        self.train_seconds = float(os.environ.get("FAKE_HF_TRAIN_SECONDS", "0.15"))
        self.gather_seconds = float(os.environ.get("FAKE_HF_GATHER_SECONDS", "0"))
        self.log = os.environ.get("FAKE_HF_LOG", "")
        self.crash = os.environ.get("FAKE_HF_CRASH", "")
        self.resumed_from = None
        self.global_step = 0

    def _did(self, op, path, pause):
        time.sleep(pause)
        rel = os.path.relpath(path, self.args.output_dir)
        if self.crash == op + ":" + rel:
            raise SimulatedCrash("the trainer died right after it did " + op + " " + rel)

    def train(self, resume_from_checkpoint=None):
        out = self.args.output_dir
        os.makedirs(out, exist_ok=True)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(out)
            if resume_from_checkpoint is None:
                raise ValueError("No valid checkpoint found in output directory (" + out + ")")
        step, history = 0, []
        if resume_from_checkpoint:
            # The real Trainer loads each of these; a missing one fails the job here.
            for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
                if not os.path.isfile(os.path.join(resume_from_checkpoint, name)):
                    raise FileNotFoundError("cannot resume: " + os.path.join(resume_from_checkpoint, name) + " is missing")
            with open(os.path.join(resume_from_checkpoint, "trainer_state.json")) as f:
                state = json.load(f)
            step, history = state["global_step"], state["log_history"]
            self.resumed_from = (os.path.basename(resume_from_checkpoint), step)
            print("resumed from %s at step %d" % self.resumed_from, flush=True)
        else:
            print("starting from scratch", flush=True)
        max_steps = int(os.environ.get("FAKE_HF_MAX_STEPS") or self.args.max_steps)
        while step < max_steps:
            time.sleep(self.train_seconds)  # the training steps up to the next save
            step = min(step + self.args.save_steps, max_steps)
            epoch = round(step / 1000, 4)
            history.append({"epoch": epoch, "grad_norm": 1.5, "learning_rate": 5e-05, "loss": round(eval_loss_at(step) + 0.1, 6), "step": step})
            if self.args.eval_strategy == "steps" and step % self.args.eval_steps == 0:
                history.append({"epoch": epoch, "eval_loss": eval_loss_at(step), "eval_runtime": 1.25,
                                "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0, "step": step})
            self._save_checkpoint(step, max_steps, history)
            self._rotate_checkpoints()
            print("saved checkpoint-%d" % step, flush=True)
        self.global_step = step

    def _save_checkpoint(self, step, max_steps, history):
        folder = os.path.join(self.args.output_dir, "%s-%d" % (PREFIX_CHECKPOINT_DIR, step))
        os.makedirs(folder, exist_ok=True)
        rnd = random.Random(step)
        files = {}

        def put(name, data):
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(data)
            files[name] = _digest(data)
            self._did("write", path, self.pace)

        put("config.json", json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}, indent=2).encode())
        put("generation_config.json", json.dumps({"bos_token_id": 50256, "eos_token_id": 50256}, indent=2).encode())
        weights = _safetensors(step, 16384)
        tmp = os.path.join(folder, ".tmp" + "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(8)))
        with open(tmp, "wb") as f:  # save_pretrained's atomic write: hidden temp file in the folder, then rename
            part = len(weights) // 4 + 1
            for i in range(0, len(weights), part):
                f.write(weights[i:i + part])
                f.flush()
                time.sleep(self.pace / 2)
        os.rename(tmp, os.path.join(folder, "model.safetensors"))
        files["model.safetensors"] = _digest(weights)
        self._did("write", os.path.join(folder, "model.safetensors"), self.pace)
        put("training_args.bin", b"\x80\x04training-args" + json.dumps(vars(self.args), default=str).encode())
        time.sleep(self.gather_seconds)
        put("optimizer.pt", rnd.randbytes(65536))
        put("scheduler.pt", rnd.randbytes(1064))
        put("rng_state.pth", rnd.randbytes(14540))
        state = {
            "best_metric": None,
            "best_model_checkpoint": None,
            "epoch": round(step / 1000, 4),
            "eval_steps": self.args.eval_steps,
            "global_step": step,
            "is_hyper_param_search": False,
            "is_local_process_zero": True,
            "is_world_process_zero": True,
            "log_history": history,
            "logging_steps": self.args.save_steps,
            "max_steps": max_steps,
            "num_train_epochs": 1,
            "save_steps": self.args.save_steps,
            "total_flos": 0.0,
            "train_batch_size": 8,
            "trial_name": None,
            "trial_params": None,
        }
        put("trainer_state.json", (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())  # always last
        if self.log:
            at_step = {k: v for e in history if e.get("step") == step for k, v in e.items() if k != "step"}
            with open(self.log, "a") as f:
                f.write(json.dumps({"name": os.path.basename(folder), "step": step, "metrics": at_step, "files": files}) + "\n")

    def _rotate_checkpoints(self):
        limit = self.args.save_total_limit
        if not limit:
            return
        out = self.args.output_dir
        found = sorted(
            (int(m.group(1)), n) for n in os.listdir(out) if (m := _re_checkpoint.match(n)) and os.path.isdir(os.path.join(out, n))
        )
        for _, name in found[: max(0, len(found) - limit)]:
            folder = os.path.join(out, name)
            for f in sorted(os.listdir(folder)):  # shutil.rmtree: one file after the other
                os.unlink(os.path.join(folder, f))
                self._did("delete", os.path.join(folder, f), self.pace / 2)
            os.rmdir(folder)

    def save_model(self, output_dir=None):
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "config.json"), "w") as f:
            f.write("{}")
        with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
            f.write(_safetensors(self.global_step, 1024))
'''


def fake_transformers() -> dict[str, types.ModuleType]:
    tf = module("transformers")
    exec(compile(FAKE_TRANSFORMERS, "fake transformers", "exec"), tf.__dict__)
    tu = module("transformers.trainer_utils", get_last_checkpoint=tf.get_last_checkpoint, PREFIX_CHECKPOINT_DIR="checkpoint")
    tf.trainer_utils = tu  # type: ignore[attr-defined]
    return {"transformers": tf, "transformers.trainer_utils": tu}


def write_fake_hf_packages(root: Path) -> Path:
    """transformers and my_project as importable packages, for a training script run as a child process."""
    (root / "transformers").mkdir(parents=True)
    (root / "transformers" / "__init__.py").write_text(FAKE_TRANSFORMERS)
    (root / "transformers" / "trainer_utils.py").write_text("from transformers import PREFIX_CHECKPOINT_DIR, get_last_checkpoint\n")
    (root / "my_project.py").write_text("def load_datasets():\n    return [], []\n")
    return root


def read_hf_log(path: Path) -> Finished:
    finished = Finished()
    if path.exists():
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            finished.add(doc["name"], doc["files"], doc["step"], doc["metrics"])
    return finished


def check_hf_commits(manifests: list[Any], finished: Finished) -> None:
    for m, v in assert_finished_versions(manifests, finished):
        paths = [f.path for f in m.files]
        assert "trainer_state.json" in paths, f"{m.name} committed without trainer_state.json: {paths}"
        assert not any(part.startswith(".") for p in paths for part in p.split("/")), f"{m.name} committed a hidden file: {paths}"
        assert m.step == v.step, f"{m.name}: step {m.step}, the trainer was at {v.step}"
        assert m.metrics.get("eval_loss") == v.metrics["eval_loss"], f"{m.name}: eval_loss {m.metrics.get('eval_loss')}"
        assert m.metrics.get("loss") == v.metrics["loss"]


def hf_args(tf: types.ModuleType, output_dir: Path, max_steps: int, save_total_limit: int | None = 2) -> Any:
    return tf.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=10,
        eval_strategy="steps",
        eval_steps=10,
        save_total_limit=save_total_limit,
    )


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The stand-in transformers and the doc's in-script recipe, bound to it."""
    log = tmp_path / "hf-finished.jsonl"
    for k in ("FAKE_HF_CRASH", "FAKE_HF_MAX_STEPS", "FAKE_HF_GATHER_SECONDS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FAKE_HF_LOG", str(log))
    monkeypatch.setenv("FAKE_HF_PACE", "0.03")
    monkeypatch.setenv("FAKE_HF_TRAIN_SECONDS", "0.15")
    mods = fake_transformers()
    ns = exec_block("hf-syncer", {**mods, "ckptsync": fast_ckptsync(tmp_path)})
    return types.SimpleNamespace(tf=mods["transformers"], train=ns["train_with_ckptsync"], finished=lambda: read_hf_log(log))


def test_hf_trainer_in_script_recipe_rotation_and_keep_last(
    tmp_path: Path, remote: str, recorder: Recorder, hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Longer than the settle time without any file activity, midway through each save: only the
    # trainer_state.json rule keeps the folder from being taken then.
    monkeypatch.setenv("FAKE_HF_GATHER_SECONDS", "0.6")
    monkeypatch.setenv("FAKE_HF_TRAIN_SECONDS", "0.1")
    tf = hf.tf
    out1 = tmp_path / "job1" / "output"
    trainer = tf.Trainer(model=tf.AutoModelForCausalLM.from_pretrained("gpt2"), args=hf_args(tf, out1, max_steps=50))
    hf.train(trainer, remote)

    finished = hf.finished()
    assert trainer.resumed_from is None
    assert sorted(finished.versions, key=lambda n: int(n.split("-")[1])) == [f"checkpoint-{s}" for s in (10, 20, 30, 40, 50)]
    # Saved in place, model.safetensors through a hidden .tmp, trainer_state.json last, rotation right after:
    # every commit is a whole checkpoint the trainer finished, with its global_step and log_history numbers.
    check_hf_commits(recorder.manifests, finished)
    assert sorted(p.name for p in out1.iterdir()) == ["checkpoint-40", "checkpoint-50"]  # save_total_limit=2
    assert {m.name for m in recorder.manifests} >= {"checkpoint-40", "checkpoint-50"}
    # keep_last=save_total_limit: the remote keeps the two newest as well
    assert remote_names(remote) == {"checkpoint-40", "checkpoint-50"}
    for name in ("checkpoint-40", "checkpoint-50"):
        result, _ = restore_and_compare(remote, tmp_path / "check" / name, finished, name=name)
        assert tree(result.path) == tree(out1 / name)

    # A new machine: restored into the trainer's output_dir, found by get_last_checkpoint, resumed.
    monkeypatch.setenv("FAKE_HF_GATHER_SECONDS", "0")
    out2 = tmp_path / "job2" / "output"
    trainer2 = tf.Trainer(model=tf.AutoModelForCausalLM.from_pretrained("gpt2"), args=hf_args(tf, out2, max_steps=70))
    hf.train(trainer2, remote)
    assert trainer2.resumed_from == ("checkpoint-50", 50)
    finished = hf.finished()
    check_hf_commits(recorder.manifests, finished)
    assert remote_names(remote) == {"checkpoint-60", "checkpoint-70"}
    result, version = restore_and_compare(remote, tmp_path / "check-latest", finished)
    assert (result.name, result.manifest.step) == ("checkpoint-70", 70)
    assert tree(result.path) == tree(out2 / "checkpoint-70")
    best = min((m for m in remote_manifests(remote)), key=lambda m: m.metrics["eval_loss"])
    result, version = restore_and_compare(remote, tmp_path / "check-best", finished, select="best", metric="eval_loss")
    assert result.name == best.name and result.manifest.metrics["eval_loss"] == version.metrics["eval_loss"]
    restore_every_name(remote, tmp_path / "check-all", finished)


def doc_command(prefix: str, containing: str) -> list[str]:
    """The ``ckptsync ...`` command line of a ```sh block of the doc that contains ``containing``."""
    for cmd in doc_commands():
        if shlex.join(cmd).startswith(prefix) and containing in shlex.join(cmd):
            return cmd
    raise AssertionError(f"no {prefix!r} command containing {containing!r} in {DOC}")


def with_options(cmd: list[str], replace: dict[str, str], extra: list[str], program: list[str]) -> list[str]:
    """The arguments of the doc's command (after ``ckptsync``) with some option values replaced, options added, and the
    program after -- replaced."""
    sep = cmd.index("--")
    opts = cmd[2:sep]
    for i, tok in enumerate(opts[:-1]):
        if tok in replace:
            opts[i + 1] = replace[tok]
    return [cmd[1], *opts, *extra, "--", *program]


def test_hf_train_script_under_ckptsync_run_survives_a_spot_stop(tmp_path: Path, remote: str) -> None:
    """The doc's train.py, started by the doc's ``ckptsync run`` line: SIGTERM mid-training, then a new machine resumes."""
    fakes = write_fake_hf_packages(tmp_path / "fakes")
    script = tmp_path / "code" / "train.py"
    script.parent.mkdir()
    script.write_text(block("hf-train-script") + "\n")
    ckdir = tmp_path / "opt-ml-checkpoints"
    log = tmp_path / "hf-finished.jsonl"
    doc_cmd = doc_command("ckptsync run", "python train.py")
    assert "--keep-last" in doc_cmd and "--metric" in doc_cmd

    def command(state: str) -> list[str]:
        return with_options(
            doc_cmd,
            {"--dir": str(ckdir), "--remote": remote},
            ["--settle", "0.5", "--state-dir", str(tmp_path / state)],
            [sys.executable, str(script)],
        )

    env = {
        "PYTHONPATH": str(fakes),
        "CKPTSYNC_DIR": str(ckdir),
        "SM_MODEL_DIR": str(tmp_path / "opt-ml-model"),
        # every setting of the stand-in, so that none comes from the environment of the tests
        "FAKE_HF_LOG": str(log),
        "FAKE_HF_PACE": "0.03",
        "FAKE_HF_TRAIN_SECONDS": "0.15",
        "FAKE_HF_GATHER_SECONDS": "0",
        "FAKE_HF_MAX_STEPS": "",
        "FAKE_HF_CRASH": "",
    }
    # Job 1: stopped (spot reclaim: SIGTERM to the entrypoint) while training after checkpoint-600.
    with open(tmp_path / "run1.stderr", "w") as err:
        proc = start_cli(*command("state1"), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err)
        try:
            lines = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.strip())
                if line.strip() == "saved checkpoint-600":
                    proc.send_signal(signal.SIGTERM)
                    break
            rest = proc.stdout.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr1 = (tmp_path / "run1.stderr").read_text()
    assert lines[0] == "starting from scratch", lines
    assert code == 128 + signal.SIGTERM, f"exit {code}\n{rest}\n{stderr1}"
    finished = read_hf_log(log)
    assert sorted(finished.versions) == ["checkpoint-200", "checkpoint-400", "checkpoint-600"]
    check_hf_commits(remote_manifests(remote), finished)
    assert remote_names(remote) == {"checkpoint-200", "checkpoint-400", "checkpoint-600"}

    # Job 2, a new machine: empty disk, the same command; it restores checkpoint-600 and trains to step 1000.
    shutil.rmtree(ckdir)
    run2 = run_cli(*command("state2"), env={**env, "FAKE_HF_MAX_STEPS": "1000"}, cwd=tmp_path, timeout=60)
    assert run2.returncode == 0, run2.stderr
    assert run2.stdout.splitlines() == ["resumed from checkpoint-600 at step 600", "saved checkpoint-800", "saved checkpoint-1000"]
    assert (tmp_path / "opt-ml-model" / "model.safetensors").is_file()  # the final model, outside the watched folder
    finished = read_hf_log(log)
    committed = remote_manifests(remote)
    check_hf_commits(committed, finished)
    # --keep-last 3 --metric eval_loss: the three newest, and the best by eval_loss, stay
    losses = {name: vs[-1].metrics["eval_loss"] for name, vs in finished.versions.items()}
    best = min(losses, key=losses.__getitem__)
    assert {m.name for m in committed} == {"checkpoint-600", "checkpoint-800", "checkpoint-1000", best}
    result, version = restore_and_compare(remote, tmp_path / "check-best", finished, select="best", metric="eval_loss")
    assert result.name == best and version.metrics["eval_loss"] == min(losses.values())
    result, _ = restore_and_compare(remote, tmp_path / "check-latest", finished)
    assert result.name == "checkpoint-1000" and tree(result.path) == tree(ckdir / "checkpoint-1000")
    restore_every_name(remote, tmp_path / "check-all", finished)


# ============================================================================ PyTorch Lightning (stand-in)


class FakeCallback:
    """lightning.pytorch.callbacks.Callback: the hooks the recipe uses, doing nothing."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None: ...

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None: ...

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None: ...

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None: ...

    def on_train_end(self, trainer: Any, pl_module: Any) -> None: ...


def lightning_modules() -> dict[str, types.ModuleType]:
    callbacks = module("lightning.pytorch.callbacks", Callback=FakeCallback)
    pytorch = module("lightning.pytorch", callbacks=callbacks)
    return {"lightning": module("lightning", pytorch=pytorch), "lightning.pytorch": pytorch, "lightning.pytorch.callbacks": callbacks}


def val_loss_at(step: int) -> float:
    return 0.2 + (step * 40503 % 1009) / 1000 + 0.00012345  # more digits than the file name keeps


class FakeModelCheckpoint(FakeCallback):
    """ModelCheckpoint(filename="{epoch}-{step}-{val_loss:.3f}", monitor="val_loss", mode="min", save_top_k=k, save_last=True)."""

    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: Path, save_top_k: int = 2) -> None:
        self.dirpath = str(dirpath)
        self.save_top_k = save_top_k
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        score = trainer.callback_metrics["val_loss"]
        if len(self.best_k_models) < self.save_top_k or score < max(self.best_k_models.values()):
            worst = max(self.best_k_models, key=self.best_k_models.__getitem__) if len(self.best_k_models) == self.save_top_k else None
            path = os.path.join(self.dirpath, f"epoch={trainer.current_epoch}-step={trainer.global_step}-val_loss={score:.3f}.ckpt")
            self.best_k_models[path] = score
            self.best_model_path = min(self.best_k_models, key=self.best_k_models.__getitem__)
            self.best_model_score = self.best_k_models[self.best_model_path]
            trainer.save_checkpoint(path)
            if worst is not None:  # the one pushed out of the top k, after the new one is saved
                del self.best_k_models[worst]
                os.remove(worst)
        self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        trainer.save_checkpoint(self.last_model_path)  # save_last: replaced at every save

    def state_dict(self) -> dict[str, Any]:
        return {"best_model_path": self.best_model_path, "best_model_score": self.best_model_score, "last_model_path": self.last_model_path}


class FakeLightningTrainer:
    """The parts of lightning.Trainer the recipe touches; ModelCheckpoint runs after the other callbacks of a hook."""

    is_global_zero = True

    def __init__(
        self,
        callbacks: list[Any],
        checkpoint: FakeModelCheckpoint,
        max_steps: int,
        writer: Callable[[str, bytes], None],
        finished: Finished,
    ) -> None:
        self.user_callbacks = callbacks
        self.checkpoint_callback = checkpoint
        self.max_steps = max_steps
        self.writer = writer
        self.finished = finished
        self.global_step = 0
        self.current_epoch = 0
        self.callback_metrics: dict[str, float] = {}
        self.resumed_from: tuple[str, int] | None = None
        self.val_every = 5
        self.steps_per_epoch = 15
        self.step_seconds = 0.02

    @property
    def callbacks(self) -> list[Any]:
        return [*self.user_callbacks, self.checkpoint_callback]

    def save_checkpoint(self, filepath: str) -> None:
        checkpoint = {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": {"layer.weight": random.Random(self.global_step).randbytes(24000)},
            "callbacks": {"ModelCheckpoint": self.checkpoint_callback.state_dict()},
        }
        for cb in self.callbacks:
            cb.on_save_checkpoint(self, None, checkpoint)  # before the file is written
        data = pickle.dumps(checkpoint)
        self.writer(filepath, data)
        metrics = {"epoch": float(self.current_epoch), **self.callback_metrics}
        self.finished.add(os.path.basename(filepath), {os.path.basename(filepath): digest(data)}, self.global_step, metrics)

    def fit(self, model: Any, ckpt_path: str | None = None) -> None:
        if ckpt_path is not None:
            with open(ckpt_path, "rb") as f:
                ck = pickle.load(f)
            self.global_step, self.current_epoch = ck["global_step"], ck["epoch"]
            self.resumed_from = (os.path.basename(ckpt_path), self.global_step)
        for cb in self.callbacks:
            cb.on_train_start(self, model)
        while self.global_step < self.max_steps:
            time.sleep(self.step_seconds)  # one training step
            self.global_step += 1
            self.callback_metrics["train_loss"] = 1.0 / self.global_step
            for cb in self.callbacks:
                cb.on_train_batch_end(self, model, {"loss": 1.0 / self.global_step}, None, self.global_step % self.steps_per_epoch)
            if self.global_step % self.val_every == 0:
                self.callback_metrics["val_loss"] = val_loss_at(self.global_step)
                for cb in self.callbacks:
                    cb.on_validation_end(self, model)
            if self.global_step % self.steps_per_epoch == 0:
                self.current_epoch += 1
        for cb in self.callbacks:
            cb.on_train_end(self, model)


def lightning_writer(mode: str, tmpdir: Path, pace: float = 0.01, stall: float = 0.0) -> Callable[[str, bytes], None]:
    """How a checkpoint file reaches its folder: moved whole from a temp file (one file system), or copied
    under its final name, growing, then given the temp file's times (shutil.move across mounts). The first
    copy stalls ``stall`` seconds halfway (a slow network mount): only "not closed yet" keeps it from being taken."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    stalls = [stall]

    def write(path: str, data: bytes) -> None:
        fd, tmp = tempfile_in(tmpdir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode == "atomic":
            shutil.move(tmp, path)
            return
        with open(path, "wb") as f:
            part = len(data) // 4 + 1
            for i in range(0, len(data), part):
                f.write(data[i : i + part])
                f.flush()
                time.sleep(pace if i or not stalls else stalls.pop())
        shutil.copystat(tmp, path)
        os.unlink(tmp)

    return write


def tempfile_in(folder: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder)


def check_lightning_commits(manifests: list[Any], finished: Finished) -> None:
    for m, v in assert_finished_versions(manifests, finished):
        assert m.kind == "file"
        exact = v.metrics["val_loss"]
        if m.name == "last.ckpt":
            # no step in its name: the marker's, or none; never another save's numbers
            assert m.step in (v.step, None), f"last.ckpt holding step {v.step} was committed as step {m.step}"
            if "val_loss" in m.metrics:
                assert m.metrics["val_loss"] == exact, f"last.ckpt of step {v.step}: val_loss {m.metrics['val_loss']}, not {exact}"
        else:
            assert m.step == v.step, f"{m.name}: step {m.step}"
            assert m.metrics["val_loss"] in (exact, float(f"{exact:.3f}")), f"{m.name}: val_loss {m.metrics['val_loss']}"
            assert m.metrics["epoch"] == v.metrics["epoch"]


@pytest.mark.parametrize("mode", ["atomic", "cross-mount"])
def test_lightning_callback_and_names(tmp_path: Path, remote: str, recorder: Recorder, mode: str) -> None:
    mods = lightning_modules()
    marker_ns = exec_block("lightning-callback", {**mods, "ckptsync": fast_ckptsync(tmp_path)})
    fit_ns = exec_block("lightning-fit", {"ckptsync": fast_ckptsync(tmp_path)})
    assert len({val_loss_at(s) for s in range(5, 51, 5)}) == 10
    finished = Finished()

    def run(ckpt_dir: Path, max_steps: int) -> FakeLightningTrainer:
        mc = FakeModelCheckpoint(ckpt_dir, save_top_k=2)
        writer = lightning_writer(mode, tmp_path / f"fsspec-tmp-{ckpt_dir.parent.name}", stall=0.7)
        trainer = FakeLightningTrainer([marker_ns["CkptsyncMarker"]()], mc, max_steps, writer, finished)
        fit_ns["fit_with_ckptsync"](trainer, object(), str(ckpt_dir), remote)
        return trainer

    dir1 = tmp_path / "job1" / "checkpoints"
    t1 = run(dir1, max_steps=40)
    assert t1.resumed_from is None
    check_lightning_commits(recorder.manifests, finished)
    on_disk = sorted(p.name for p in dir1.iterdir() if not p.name.endswith(".ckptsync.json"))
    assert len(on_disk) == 3 and "last.ckpt" in on_disk  # top 2 and last
    assert sorted(p.name for p in dir1.glob("*.ckptsync.json")) == sorted(n + ".ckptsync.json" for n in on_disk)
    for name in on_disk:  # each was committed as it is on disk, with the marker's exact numbers
        newest = max(recorder.named(name), key=lambda m: m.created)
        assert files_of(newest) == tree(dir1 / name)
        v = finished.by_hash(files_of(newest)[name])
        assert (newest.step, newest.metrics["val_loss"]) == (v.step, v.metrics["val_loss"])
    # best by val_loss: the lowest of the run, whichever file holds that state
    best_step = min(range(5, 41, 5), key=val_loss_at)
    result = ckptsync.restore(remote, tmp_path / "check-best", select="best", metric="val_loss")
    assert result is not None and tree(result.path) == files_of(result.manifest)
    assert finished.by_hash(files_of(result.manifest)[result.name]).step == best_step

    # A new machine: fit_with_ckptsync restores the highest step and Lightning resumes from it.
    dir2 = tmp_path / "job2" / "checkpoints"
    t2 = run(dir2, max_steps=50)
    assert t2.resumed_from is not None and t2.resumed_from[1] == 40
    check_lightning_commits(recorder.manifests, finished)
    for marker in dir2.glob("*.ckptsync.json"):  # the restored file was not marked as one of this run's
        ckpt = Path(str(marker)[: -len(".ckptsync.json")])
        assert json.loads(marker.read_text())["step"] == finished.by_hash(digest(ckpt.read_bytes())).step, marker.name
    latest = max(recorder.named("last.ckpt"), key=lambda m: m.created)
    assert latest.step == 50 and files_of(latest) == tree(dir2 / "last.ckpt")
    restore_every_name(remote, tmp_path / "check-all", finished)


# ============================================================================ plain PyTorch and torch.distributed.checkpoint (stand-ins)


class FakeDist:
    """torch.distributed for ranks that are threads of this process."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.local = threading.local()
        self.barrier_ = threading.Barrier(world)

    def get_rank(self) -> int:
        return getattr(self.local, "rank", 0)

    def get_world_size(self) -> int:
        return self.world

    def barrier(self) -> None:
        self.barrier_.wait(timeout=30)


def fake_torch(dist: FakeDist | None = None, dcp: types.ModuleType | None = None) -> dict[str, types.ModuleType]:
    def save(obj: Any, f: Any) -> None:
        data = pickle.dumps(obj)
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(data)
            return
        part = len(data) // 3 + 1
        for i in range(0, len(data), part):  # a large state is written over a while
            f.write(data[i : i + part])
            time.sleep(0.01)

    def load(f: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        with open(f, "rb") as fh:
            return pickle.load(fh)

    dist_mod = module("torch.distributed")
    if dist is not None:
        dist_mod.get_rank = dist.get_rank  # type: ignore[attr-defined]
        dist_mod.get_world_size = dist.get_world_size  # type: ignore[attr-defined]
        dist_mod.barrier = dist.barrier  # type: ignore[attr-defined]
    mods = {"torch": module("torch", save=save, load=load, distributed=dist_mod), "torch.distributed": dist_mod}
    if dcp is not None:
        dist_mod.checkpoint = dcp  # type: ignore[attr-defined]
        mods["torch.distributed.checkpoint"] = dcp
    return mods


class FakeModel:
    def __init__(self) -> None:
        self.weights = b""

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weight"]


def loss_at(step: int) -> float:
    return 0.1 + (step * 2731 % 997) / 1000 + 0.000321


def test_plain_pytorch_recipe(tmp_path: Path, remote: str, recorder: Recorder) -> None:
    finished = Finished()
    ns = exec_block("torch-recipe", {**fake_torch(), "ckptsync": fast_ckptsync(tmp_path)})
    real_save = ns["save_checkpoint"]

    def save_and_note(state: dict[str, Any], ckpt_dir: str, step: int, metrics: Any = None, keep: int = 3) -> Path:
        path = real_save(state, ckpt_dir, step, metrics, keep)
        finished.add(path.name, {path.name: digest(pickle.dumps(state))}, step, metrics)
        return path

    ns["save_checkpoint"] = save_and_note  # train() calls it through the module's globals

    def job(ckpt_dir: Path, total: int) -> tuple[FakeModel, list[int]]:
        model, optimizer, steps = FakeModel(), FakeModel(), []

        def train_step(step: int) -> float:
            time.sleep(0.02)
            steps.append(step)
            model.weights = random.Random(step).randbytes(30000)
            optimizer.weights = random.Random(-step).randbytes(10000)
            return loss_at(step)

        ns["train"](model, optimizer, train_step, str(ckpt_dir), remote, total, every=5)
        return model, steps

    dir1 = tmp_path / "job1" / "ckpts"
    _, steps = job(dir1, 30)
    assert steps[0] == 1
    assert sorted(p.name for p in dir1.iterdir()) == sorted(
        n for s in (20, 25, 30) for n in (f"step_{s:08d}.pt", f"step_{s:08d}.pt.ckptsync.json")
    )
    for m, v in assert_finished_versions(recorder.manifests, finished):  # never the .tmp, never half a file
        assert (m.step, dict(m.metrics)) == (v.step, v.metrics), m.name  # the marker's exact numbers
    committed = sorted({m.name for m in recorder.manifests})
    assert remote_names(remote) == set(committed[-5:])  # keep_last=5
    result, version = restore_and_compare(remote, tmp_path / "check-best", finished, select="best", metric="loss")
    assert version.metrics["loss"] == min(m.metrics["loss"] for m in remote_manifests(remote))

    dir2 = tmp_path / "job2" / "ckpts"  # a new machine
    model, steps = job(dir2, 40)
    assert steps[0] == 31
    assert model.weights == random.Random(40).randbytes(30000)
    for m, v in assert_finished_versions(recorder.manifests, finished):
        assert (m.step, dict(m.metrics)) == (v.step, v.metrics), m.name
    result, _ = restore_and_compare(remote, tmp_path / "check-latest", finished)
    assert result.name == "step_00000040.pt" and tree(result.path) == tree(dir2 / "step_00000040.pt")
    restore_every_name(remote, tmp_path / "check-all", finished)


def fake_dcp(dist: FakeDist, finished: Finished, pace: float = 0.02, slow: tuple[int, ...] = ()) -> types.ModuleType:
    """torch.distributed.checkpoint: every rank writes __{rank}_{n}.distcp, the coordinator .metadata last.

    At the steps in ``slow``, the last rank starts writing 0.7 s after the others (longer than the settle
    time): only the .metadata rule keeps the folder from being taken with some ranks' files missing."""
    written: dict[str, dict[str, str]] = defaultdict(dict)
    lock = threading.Lock()

    def save(state: dict[str, Any], checkpoint_id: str) -> None:
        rank, path = dist.get_rank(), Path(checkpoint_id)
        path.mkdir(parents=True, exist_ok=True)
        items = sorted(state.items())
        if rank == dist.world - 1 and int(path.name.split("_")[1]) in slow:
            time.sleep(0.7)
        for n in range(2):  # FileSystemWriter(thread_count=2): two files per rank
            data = pickle.dumps(dict(items[n::2]))
            with open(path / f"__{rank}_{n}.distcp", "wb") as f:
                part = len(data) // 3 + 1
                for i in range(0, len(data), part):
                    f.write(data[i : i + part])
                    f.flush()
                    time.sleep(pace / 2)
            with lock:
                written[checkpoint_id][f"__{rank}_{n}.distcp"] = digest(data)
            time.sleep(pace)
        dist.barrier()  # the coordinator gathers every rank's write results
        if rank == 0:
            meta = pickle.dumps({"world_size": dist.world, "files": sorted(written[checkpoint_id])})
            (path / ".metadata.tmp").write_bytes(meta)
            time.sleep(pace)
            os.replace(path / ".metadata.tmp", path / ".metadata")
            finished.add(path.name, {**written[checkpoint_id], ".metadata": digest(meta)}, int(path.name.split("_")[1]))
        dist.barrier()  # dcp.save returns on every rank once .metadata is in place

    def load(state: dict[str, Any], checkpoint_id: str) -> None:
        path = Path(checkpoint_id)
        assert (path / ".metadata").is_file(), f"{path} has no .metadata"
        for f in sorted(path.glob(f"__{dist.get_rank()}_*.distcp")):
            state.update(pickle.loads(f.read_bytes()))

    return module("torch.distributed.checkpoint", save=save, load=load)


def rank_state(rank: int, step: int) -> dict[str, bytes]:
    rnd = random.Random(step * 10 + rank)
    return {f"layers.{i}.weight": rnd.randbytes(6000) for i in range(4)}


def test_torch_distributed_checkpoint_recipe(tmp_path: Path, remote: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    world = 2
    dist, finished = FakeDist(world), Finished()
    dir1 = tmp_path / "job1" / "ckpts"
    monkeypatch.setenv("CKPTSYNC_DIR", str(dir1))
    ns = exec_block("dcp-recipe", {**fake_torch(dist, fake_dcp(dist, finished, slow=(20, 40))), "ckptsync": fast_ckptsync(tmp_path)})
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        dist.local.rank = rank
        try:
            for step in range(10, 51, 10):
                time.sleep(0.1)  # training
                path = ns["save_checkpoint"](rank_state(rank, step), step, {"loss": loss_at(step)})
                if rank == 0:
                    finished.add(Path(path).name, tree(Path(path)), step, {"loss": loss_at(step)})  # with its marker
        except BaseException as exc:
            errors.append(exc)
            dist.barrier_.abort()

    with ckptsync.Syncer(dir1, remote, state_dir=tmp_path / "state1", **FAST):  # what `ckptsync run -- torchrun` runs
        ranks = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
        for t in ranks:
            t.start()
        for t in ranks:
            t.join(timeout=60)
    assert not errors, errors
    for m, v in assert_finished_versions(recorder.manifests, finished):
        paths = [f.path for f in m.files]
        assert ".metadata" in paths and not any(p.endswith(".tmp") for p in paths), f"{m.name}: {paths}"
        assert sorted(p for p in paths if p.endswith(".distcp")) == [f"__{r}_{n}.distcp" for r in range(world) for n in range(2)]
        assert m.step == v.step
        if "ckptsync.json" in paths:
            assert m.metrics["loss"] == loss_at(v.step)  # type: ignore[arg-type]
    assert remote_names(remote) == {f"step_{s:08d}" for s in range(10, 51, 10)}
    best_step = min(range(10, 51, 10), key=loss_at)
    result, version = restore_and_compare(remote, tmp_path / "check-best", finished, select="best", metric="loss")
    assert version.step == best_step
    restore_every_name(remote, tmp_path / "check-all", finished)

    # A new machine: `ckptsync run` restores before torchrun starts; every rank loads the newest.
    dir2 = tmp_path / "job2" / "ckpts"
    result, _ = restore_and_compare(remote, dir2, finished)
    assert result.name == "step_00000050"
    monkeypatch.setenv("CKPTSYNC_DIR", str(dir2))
    ns2 = exec_block("dcp-recipe", {**fake_torch(dist, fake_dcp(dist, Finished())), "ckptsync": fast_ckptsync(tmp_path)})
    assert ns2["latest_checkpoint"]() == str(dir2 / "step_00000050")
    for rank in range(world):
        dist.local.rank = rank
        state: dict[str, bytes] = {}
        assert ns2["load_latest"](state) == 50
        assert state == rank_state(rank, 50)


# ============================================================================ the doc's commands and structure


def doc_commands() -> list[list[str]]:
    """Every ckptsync command line of the doc: in ```sh blocks and in Dockerfile ENTRYPOINT arrays."""
    text = doc_text()
    out: list[list[str]] = []
    for body in re.findall(r"```sh\n(.*?)\n```", text, re.DOTALL):
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip().startswith("ckptsync "):
                out.append(shlex.split(line))
    for span in re.findall(r"`(ckptsync [^`]*)`", text):  # inline, e.g. `ckptsync export --remote ... --to DIR`
        argv = shlex.split(" ".join(span.split()))
        if len(argv) > 2 and not argv[-1].startswith("--"):
            out.append(argv)
    for array in re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE):
        argv = json.loads(array)
        if "ckptsync" in argv:
            out.append(argv[argv.index("ckptsync") :])
    return out


def test_doc_sections_blocks_and_commands() -> None:
    text = doc_text()
    for heading in (
        "## Hugging Face Trainer",
        "## PyTorch Lightning",
        "## Plain PyTorch",
        "## torch.distributed.checkpoint",
        "## Many nodes (node-local disks)",
        "## SageMaker",
        "## Pitfalls",
    ):
        assert heading in text, heading
    assert set(re.findall(r"<!-- tested: ([\w-]+) -->", text)) == TESTED_BLOCKS | MULTINODE_BLOCKS.keys() | ELSEWHERE_BLOCKS
    for name, lang in MULTINODE_BLOCKS.items():
        assert re.search(r"<!-- tested: " + name + r" -->\s*```" + lang + r"\n", text), name
    for name in TESTED_BLOCKS | ELSEWHERE_BLOCKS:
        compile(block(name), name, "exec")
    assert "import torch" not in block("hf-syncer") and "checkpoint_s3_uri" in text and "/opt/ml/checkpoints" in text
    commands = doc_commands()
    assert {c[1] for c in commands} >= {"run", "export"}, commands
    for argv in commands:  # every flag the doc shows exists and parses
        ctx = cli_main.make_context("ckptsync", [argv[1]])
        sub = cli_main.get_command(ctx, argv[1])
        assert sub is not None, argv
        try:
            sub.make_context(argv[1], list(argv[2:]), parent=ctx)
        except click.ClickException as exc:
            raise AssertionError(f"{shlex.join(argv)}: {exc.format_message()}") from None


# ============================================================================ regression tests: bugs found with these writers, fixed


def test_file_moved_into_place_is_uploaded_while_training(tmp_path: Path, remote: str, recorder: Recorder) -> None:
    """The plain-PyTorch recipe (temp file, os.replace, mark) is uploaded while the job runs, not only at its end.

    Regression: the move that brings a finished single file in counted as "open for writing", and no
    close-after-write event follows for the final name (the file was closed under its temporary name), so the
    entry waited for the drain; a kill -9 or a drain that ran out of time lost every checkpoint of the job.
    Lightning's atomic save (temp file + move) was hit the same way.
    """
    ns = exec_block("torch-recipe", {**fake_torch(), "ckptsync": fast_ckptsync(tmp_path)})
    ckpts = tmp_path / "ckpts"
    with ckptsync.Syncer(ckpts, remote, state_dir=tmp_path / "state", **FAST) as syncer:
        path = ns["save_checkpoint"]({"step": 5, "weight": os.urandom(20000)}, str(ckpts), 5, {"loss": 0.5})
        wait_until(  # settle is 0.5 s
            lambda: recorder.named(path.name),
            3.0,
            lambda: f"{path.name} committed within 3 s of being written and marked, while training ran: {syncer.status().pending}",
        )


def test_hf_save_cut_short_before_the_weights_is_not_committed(
    tmp_path: Path, remote: str, recorder: Recorder, hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint-N holding only config.json and generation_config.json is not a checkpoint.

    Regression: those two files did not make a folder Trainer-like, so one cut short before model.safetensors
    (the process killed, or out of memory while gathering the state dict) needed no trainer_state.json; the
    drain on exit committed it, and the next start restored it as the newest checkpoint, from which
    resume_from_checkpoint fails.
    """
    monkeypatch.setenv("FAKE_HF_CRASH", "write:checkpoint-20/generation_config.json")
    tf = hf.tf
    trainer = tf.Trainer(model=tf.AutoModelForCausalLM.from_pretrained("gpt2"), args=hf_args(tf, tmp_path / "output", max_steps=50))
    with pytest.raises(tf.SimulatedCrash):
        hf.train(trainer, remote)
    finished = hf.finished()
    assert sorted(finished.versions) == ["checkpoint-10"]
    check_hf_commits(recorder.manifests, finished)
    restored, _ = restore_and_compare(remote, tmp_path / "next-job", finished)
    assert restored.name == "checkpoint-10"


def test_hf_rotation_cut_short_is_not_committed(
    tmp_path: Path, remote: str, recorder: Recorder, hf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that rotation was deleting when the trainer died is not a new version of that checkpoint.

    Regression: after the trainer died midway through save_total_limit's rmtree, the oldest folder still held
    trainer_state.json and passed as complete; the drain (writers gone: no settling) committed it as a second,
    newer commit of the same name and step, without model.safetensors and optimizer.pt, and restore preferred
    it (newest commit) by name, by step and by best metric.
    """
    monkeypatch.setenv("FAKE_HF_CRASH", "delete:checkpoint-10/optimizer.pt")
    monkeypatch.setenv("FAKE_HF_TRAIN_SECONDS", "0.3")
    tf = hf.tf
    trainer = tf.Trainer(model=tf.AutoModelForCausalLM.from_pretrained("gpt2"), args=hf_args(tf, tmp_path / "output", max_steps=50))
    with pytest.raises(tf.SimulatedCrash):
        hf.train(trainer, remote)
    finished = hf.finished()
    assert sorted(finished.versions) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    check_hf_commits(recorder.manifests, finished)
    if "checkpoint-10" in remote_names(remote):  # retention may have removed it from the remote
        restore_and_compare(remote, tmp_path / "by-name", finished, name="checkpoint-10")


def test_sidecar_marker_of_a_replaced_file_is_recorded_and_a_stale_one_ignored(tmp_path: Path, remote: str, recorder: Recorder) -> None:
    """A file replaced in place (last.ckpt) whose marker is rewritten one training step later.

    Regression, two bugs: (1) the previous save's X.ckptsync.json was trusted for the new content of X although
    older than X (and, as a completion signal, let X be taken after 2 s); (2) the new marker, written after X
    was committed, was never recorded: a marker's change did not count as a change of X, nor was the marker
    part of X's fingerprint. The remote then held step 200's weights recorded as step 100 with step 100's
    val_loss, which misled --latest and --best.
    """
    ckpts = tmp_path / "ckpts"
    writer = lightning_writer("cross-mount", tmp_path / "fsspec-tmp")
    versions = {
        100: pickle.dumps({"global_step": 100, "w": os.urandom(20000)}),
        200: pickle.dumps({"global_step": 200, "w": os.urandom(20000)}),
    }
    step_of = {digest(data): step for step, data in versions.items()}
    last = ckpts / "last.ckpt"
    with ckptsync.Syncer(ckpts, remote, state_dir=tmp_path / "state", **FAST):
        writer(str(last), versions[100])
        ckptsync.mark(last, step=100, metrics={"val_loss": 0.5})
        wait_until(lambda: recorder.named("last.ckpt"), 4.0, "last.ckpt of step 100 committed")
        writer(str(last), versions[200])  # Lightning replaces last.ckpt ...
        time.sleep(1.2)  # ... and a callback marks it at the next hook, one (slow) training step later
        ckptsync.mark(last, step=200, metrics={"val_loss": 0.4})
        time.sleep(0.3)
    commits = recorder.named("last.ckpt")
    for m in commits:
        content_step = step_of[files_of(m)["last.ckpt"]]
        assert m.step in (content_step, None), f"last.ckpt holding step {content_step} was committed as step {m.step} ({dict(m.metrics)})"
    newest = max(commits, key=lambda m: m.created)
    assert (newest.step, newest.metrics.get("val_loss")) == (200, 0.4)
