"""The one options builder: precedence of the layers, typed results, one-line errors naming the source."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ckptsync.errors import UsageError
from ckptsync.options import COMMON, DAEMON, REMOTE, SETTINGS, resolve, workers_for

NAMES = (*DAEMON, *COMMON)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ckptsync.toml"
    path.write_text(
        'remote = "s3://from-file/run"\nsettle = 11\nworkers = 3\nhosts = ["b", "a"]\n[watch]\nkeep-last = 4\n[prune]\nkeep-last = 9\n'
    )
    return path


def test_each_layer_wins_over_the_ones_below(config: Path) -> None:
    env = {
        "CKPTSYNC_CONFIG": str(config),
        "CKPTSYNC_SETTLE": "12",
        "SM_CURRENT_HOST": "algo-2",
        "SM_NUM_CPUS": "8",
        "SM_LOG_LEVEL": "30",
        "SM_HOSTS": '["algo-1", "algo-2"]',
    }
    r = resolve(NAMES, {"region": "us-west-2"}, command="watch", env=env)
    assert (r["region"], r.sources["region"]) == ("us-west-2", "flag")
    assert (r["settle"], r.sources["settle"]) == (12.0, "env CKPTSYNC_SETTLE")
    assert (r["workers"], r.sources["workers"]) == (3, f"config file {config}")  # above SageMaker's SM_NUM_CPUS
    assert (r["hosts"], r.sources["hosts"]) == (("b", "a"), f"config file {config}")  # as given: the first leads
    assert (r["keep_last"], r.sources["keep_last"]) == (4, f"config file {config}")  # the [watch] table
    assert (r["host"], r.sources["host"]) == ("algo-2", "SageMaker SM_CURRENT_HOST")
    assert (r["log_level"], r.sources["log_level"]) == ("warning", "SageMaker SM_LOG_LEVEL")
    assert (r["drain_timeout"], r.sources["drain_timeout"]) == (100.0, "default")
    assert resolve(NAMES, command="prune", env=env)["keep_last"] == 9


def test_sagemaker_gives_workers_hosts_and_the_model_folder(tmp_path: Path) -> None:
    env = {"SM_NUM_CPUS": "8", "SM_HOSTS": '["algo-1", "algo-2", "algo-1"]', "SM_MODEL_DIR": "/opt/ml/model"}
    r = resolve((*REMOTE, "to"), env=env)
    assert (r["workers"], r["hosts"], r["to"]) == (workers_for(8), ("algo-1", "algo-2"), Path("/opt/ml/model"))
    assert r.options().hosts == ("algo-1", "algo-2")  # SM_HOSTS's order (algo-1, rank 0's host, leads), no repeats
    assert resolve(REMOTE, env={"SM_HOSTS": '["algo-2", "algo-1"]'})["hosts"] == ("algo-2", "algo-1")
    malformed = resolve(REMOTE, env={"SM_NUM_CPUS": "many", "SM_HOSTS": "algo-1"})
    assert malformed.sources["workers"] == "default" and malformed["hosts"] == ()


def test_the_typed_objects_carry_every_value() -> None:
    given = {"remote": "s3://b/p", "endpoint_url": "http://127.0.0.1:9", "retries": "9", "max_memory": "64M", "bwlimit": "1M"}
    given |= {"keep_best": "2", "metric": "eval_loss", "grace": "30m", "settle": "3", "poll": True, "hosts": "h1", "host": "h1"}
    r = resolve(NAMES, given, env={})
    o, w = r.options(), r.watch(tick=0.5)
    assert (o.s3.endpoint_url, o.retry.attempts, o.max_memory, o.bwlimit, o.nice) == ("http://127.0.0.1:9", 9, 64 << 20, 1 << 20, 10)
    assert o.hosts == (), "a one-host set is a single-host job"
    assert (w.settle, w.poll, w.grace, w.tick, w.retention.keep_best, w.retention.metric) == (
        3.0,
        True,
        timedelta(minutes=30),
        0.5,
        2,
        "eval_loss",
    )


@pytest.mark.parametrize(
    ("given", "env", "message"),
    [
        ({"workers": "0"}, {}, "invalid value for --workers: '0' is not in the range 1..256"),
        ({}, {"CKPTSYNC_MAX_MEMORY": "lots"}, "invalid value for --max-memory (from env CKPTSYNC_MAX_MEMORY): 'lots' is not a size"),
        ({}, {"CKPTSYNC_POLL": "maybe"}, "invalid value for --poll (from env CKPTSYNC_POLL): 'maybe' is not a boolean"),
        ({"checksum": "md5"}, {}, "invalid value for --checksum: 'md5' is not one of auto, when_supported, when_required"),
        ({"grace": "-1h"}, {}, "invalid value for --grace: '-1h' must not be negative"),
    ],
)
def test_a_bad_value_names_the_option_and_where_it_came_from(given: dict, env: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        resolve(NAMES, given, env=env)
    assert e.value.message.startswith(message) and e.value.exit_code == 2


def test_a_config_file_that_is_missing_malformed_or_has_unknown_keys_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve(NAMES, {"config": tmp_path / "nope.toml"}, env={})
    (tmp_path / "bad.toml").write_text("settle = [")
    with pytest.raises(UsageError, match="is not valid TOML"):
        resolve(NAMES, env={"CKPTSYNC_CONFIG": str(tmp_path / "bad.toml")})
    (tmp_path / "typo.toml").write_text("setle = 3\n")
    with pytest.raises(UsageError, match="unknown option 'setle'"):
        resolve(NAMES, {"config": tmp_path / "typo.toml"}, env={})


def test_keyword_arguments_are_sources_of_their_own_and_unknown_names_are_refused() -> None:
    r = resolve(NAMES, {"settle": 0.25, "grace": timedelta(seconds=5), "workers": 2}, given_as="argument", env={})
    assert (r["settle"], r["grace"], r["workers"], r.sources["settle"]) == (0.25, timedelta(seconds=5), 2, "argument")
    with pytest.raises(UsageError, match="unknown option"):
        resolve(NAMES, {"setle": 1}, env={})


def test_no_remote_is_a_usage_error_with_the_ways_to_give_one() -> None:
    with pytest.raises(UsageError) as e:
        resolve(REMOTE, env={}).remote()
    assert "CKPTSYNC_REMOTE" in (e.value.hint or "")


def test_every_setting_has_help_and_an_environment_variable() -> None:
    for s in SETTINGS.values():
        assert s.help.endswith(".") or s.help.endswith(")"), s.name
        assert s.env == "CKPTSYNC_" + s.name.upper() and s.option == "--" + s.name.replace("_", "-")
