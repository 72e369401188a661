import json
import subprocess
import sys

import pytest

from worker.engine import checkpoints as ck


def circuits(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "test", "--steps", "-5"], "--steps must be a positive integer"),
        (["--preset", "test", "--corpus", "/no/such/dir"], "matches no readable files"),
    ],
)
def test_train_bad_input_is_one_clear_line(tmp_path, args, message):
    out = tmp_path / "run"
    r = circuits("train", *args, "--out", str(out))
    assert r.returncode == 2
    assert message in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == r.stderr.splitlines()[-1:]
    assert not out.exists()


def test_resume_from_corrupt_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    ck_text = '{"format_version": 1, "model": {}, "train": {"steps": 5}}'
    out.mkdir()
    (out / ck.CONFIG).write_text(ck_text)
    (out / ck.CHECKPOINT).write_bytes(b"not a safetensors file")
    r = circuits("train", "--resume", "--out", str(out))
    assert r.returncode == 2
    assert "corrupt" in r.stderr and r.stderr.strip().count("\n") <= 1
    assert not (out / ck.WEIGHTS).exists()


def test_eval_tasks_json(test_model):
    r = circuits(
        "eval-tasks", "--model", str(test_model), "--tasks", "single_double_quote,while_return_true", "--json"
    )
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)["tasks"]
    assert set(tasks) == {"single_double_quote", "while_return_true"}
    for t in tasks.values():
        assert 0 <= t["accuracy"] <= 1 and t["loss"] > 0 and t["prompts"] >= 100
        assert t["files"]["test"]["files"] >= 10 and t["files"]["test"]["largest_share"] <= 0.10
        assert t["files"]["train"]["files"] > t["files"]["test"]["files"]


def test_eval_tasks_errors(tmp_path, test_model):
    r = circuits("eval-tasks", "--model", str(test_model), "--tasks", "no_such_task")
    assert r.returncode == 2 and "unknown task 'no_such_task'" in r.stderr
    r = circuits("eval-tasks", "--model", str(tmp_path))
    assert r.returncode == 2 and "no config.json" in r.stderr
