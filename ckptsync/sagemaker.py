"""SageMaker's training environment, read in one place (pure: the environment is a parameter).

SageMaker sets ``SM_CURRENT_HOST``, ``SM_HOSTS`` (a JSON list), ``SM_NUM_CPUS``,
``SM_LOG_LEVEL``, ``SM_OUTPUT_DATA_DIR`` and ``SM_MODEL_DIR`` in every training
container. The options builder (:mod:`ckptsync.options`) turns the first four
into defaults below the config file; the last two say where the sync report
and exported models go. Malformed values are ignored, as if unset: a job must
not fail because of a variable ckptsync only uses for defaults.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

Env = Mapping[str, str]

#: The file ``watch`` and ``run`` write into ``SM_OUTPUT_DATA_DIR`` at exit.
REPORT_FILE = "ckptsync-report.json"


def current_host(env: Env = os.environ) -> str | None:
    """``SM_CURRENT_HOST``: this host's name in the job (``algo-1``, ...)."""
    return env.get("SM_CURRENT_HOST") or None


def hosts(env: Env = os.environ) -> tuple[str, ...]:
    """``SM_HOSTS`` in its order (``algo-1`` first), without repeats; empty when unset or not a JSON list of names."""
    try:
        doc = json.loads(env.get("SM_HOSTS", ""))
    except ValueError:
        return ()
    if not isinstance(doc, list) or not all(isinstance(h, str) and h for h in doc):
        return ()
    return tuple(dict.fromkeys(doc))


def num_cpus(env: Env = os.environ) -> int | None:
    """``SM_NUM_CPUS`` when it is a positive number."""
    try:
        cpus = int(env.get("SM_NUM_CPUS", ""))
    except ValueError:
        return None
    return cpus if cpus > 0 else None


def log_level(env: Env = os.environ) -> str | None:
    """``SM_LOG_LEVEL`` (a number such as 20, or a name) as a level name."""
    value = (env.get("SM_LOG_LEVEL") or "").strip()
    if value.isdigit():
        return logging.getLevelName(int(value)).lower() if int(value) in (10, 20, 30, 40, 50) else None
    name = value.lower()
    return name if name in ("debug", "info", "warning", "error", "critical") else None


def output_data_dir(env: Env = os.environ) -> Path | None:
    """``SM_OUTPUT_DATA_DIR``: a folder SageMaker keeps after the job (the sync report goes there)."""
    value = env.get("SM_OUTPUT_DATA_DIR")
    return Path(value) if value else None


def model_dir(env: Env = os.environ) -> Path | None:
    """``SM_MODEL_DIR``: the folder SageMaker packages as the model artefact."""
    value = env.get("SM_MODEL_DIR")
    return Path(value) if value else None


def write_report(doc: Mapping[str, object], env: Env = os.environ) -> Path | None:
    """Write the sync report into ``SM_OUTPUT_DATA_DIR`` (atomically); its path, or None outside SageMaker.

    Raises OSError when the folder cannot be written.
    """
    from .fsutil import write_json_atomic

    folder = output_data_dir(env)
    if folder is None:
        return None
    write_json_atomic(folder / REPORT_FILE, dict(doc))
    return folder / REPORT_FILE
