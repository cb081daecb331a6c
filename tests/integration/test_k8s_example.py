"""examples/k8s/training-job.yaml: a native ckptsync sidecar whose every command and flag exists in the CLI."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml
from click.core import ParameterSource

from ckptsync.cli import main
from ckptsync.options import SETTINGS, resolve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "k8s" / "training-job.yaml"


def _pod() -> dict[str, Any]:
    (job,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert job["kind"] == "Job"
    return job["spec"]["template"]["spec"]


def _ckptsync_commands(pod: dict[str, Any]) -> list[list[str]]:
    """Every ``ckptsync ...`` invocation of the pod: a container's command, or inside its ``sh -c`` script."""
    out = []
    for c in pod.get("initContainers", []) + pod["containers"]:
        argv = [str(a) for a in c["command"] + c.get("args", [])]
        if argv[:2] == ["sh", "-c"]:
            for part in argv[2].split("&&"):
                words = shlex.split(part)
                if words and words[0] == "ckptsync":
                    out.append(words)
        elif argv[0] == "ckptsync":
            out.append(argv)
    return out


def test_every_ckptsync_command_and_flag_in_the_example_exists_and_parses() -> None:
    commands = _ckptsync_commands(_pod())
    assert {c[1] for c in commands} == {"restore", "watch", "wait"}
    for argv in commands:
        command = main.commands[argv[1]]
        ctx = command.make_context(f"ckptsync {argv[1]}", argv[2:])  # raises on an unknown flag
        given = {k: v for k, v in ctx.params.items() if k in SETTINGS and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        resolve(given, given, command=argv[1], env={})  # every value as ckptsync reads it: raises on a malformed one


def test_the_sidecar_is_native_shares_the_folder_and_outlives_its_drain() -> None:
    pod = _pod()
    init = {c["name"]: c for c in pod["initContainers"]}
    names = [c["name"] for c in pod["initContainers"]]
    assert names.index("restore") < names.index("ckptsync"), "the restore must finish before the sidecar starts"
    sidecar = init["ckptsync"]
    assert sidecar["restartPolicy"] == "Always" and "restartPolicy" not in init["restore"]
    volume = next(v for v in pod["volumes"] if "emptyDir" in v)
    for c in [init["restore"], sidecar, *pod["containers"]]:
        assert any(m["name"] == volume["name"] and m["mountPath"] == "/checkpoints" for m in c["volumeMounts"]), c["name"]
    argv = [str(a) for a in sidecar["command"]]
    drain = float(argv[argv.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain + 30
    port = int(argv[argv.index("--metrics-addr") + 1].rsplit(":", 1)[1])
    assert {"containerPort": port, "name": "metrics"} in sidecar["ports"]
    remotes = {argv[argv.index("--remote") + 1] for argv in _ckptsync_commands(pod) if "--remote" in argv}
    trainer_env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert remotes == {trainer_env["CKPTSYNC_REMOTE"]}
    assert trainer_env["CKPTSYNC_STATE_DIR"] == argv[argv.index("--state-dir") + 1]
