import json
import subprocess
import sys

import pytest

from worker.engine import checkpoints as ck
from worker.engine.tasks import TaskError, build_custom_task, evaluate_task, load_task, parse_custom_task


def spec(**changes):
    pairs = [
        {"prompt_a": f"value = compute(item_{i}", "prompt_b": f"value = compute[item_{i}"} for i in range(40)
    ]
    return {"name": "close_bracket", "completion_a": ")", "completion_b": "]", "pairs": pairs, **changes}


@pytest.fixture(scope="module")
def tok(test_model):
    return ck.load_tokenizer(test_model)


def test_custom_task_tokenises_into_fixed_splits(tok, test_model):
    task = parse_custom_task(json.dumps(spec()))
    data, report = build_custom_task(task, tok)
    assert report["train"]["kept"] + report["test"]["kept"] == 40
    assert data.train.shape[1:] == data.test.shape[1:] == (2, report["prompt_len"])
    assert len(data.test) >= 1 and len(data.train) >= len(data.test)
    again, _ = build_custom_task(parse_custom_task(spec()), tok)  # a dict works too, same split
    assert again.test.tolist() == data.test.tolist()
    # the explicit split field wins
    pairs = spec()["pairs"]
    for p in pairs[:5]:
        p["split"] = "test"
    for p in pairs[5:]:
        p["split"] = "train"
    forced, _ = build_custom_task(parse_custom_task(spec(pairs=pairs)), tok)
    assert len(forced.test) == 5 and len(forced.train) == 35
    model, _, _ = ck.load_model(test_model)
    result = evaluate_task(model, data)
    assert result["prompts"] == 2 * len(data.test) and result["loss"] > 0


@pytest.mark.parametrize(
    "source, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (spec(name="Bad Name"), "name"),
        (spec(name="single_double_quote"), "is a built-in task"),
        (spec(completion_b=")"), "identical"),
        (spec(pairs=[{"prompt_a": "x"}]), "pairs.0.prompt_b"),
        (spec(pairs=[{"prompt_a": "same", "prompt_b": "same"}] * 3), "identical"),
        (spec(extra=1), "extra"),
    ],
)
def test_custom_task_validation_names_the_problem(source, message):
    with pytest.raises(TaskError, match=message):
        parse_custom_task(json.dumps(source) if isinstance(source, dict) else source)


def test_completions_sharing_a_first_token_are_rejected(tok):
    task = parse_custom_task(spec(completion_a=")\n", completion_b=")"))
    with pytest.raises(TaskError, match="share their first token"):
        build_custom_task(task, tok)


def test_load_task_reads_json_files(tmp_path, tok):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec()))
    assert load_task(str(path), tok).name == "close_bracket"
    with pytest.raises(TaskError, match="does not exist"):
        load_task(str(tmp_path / "missing.json"), tok)


def test_cli_rejects_malformed_custom_task(tmp_path, test_model):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "pairs": [')
    r = subprocess.run(
        [sys.executable, "-m", "backend.cli", "eval-tasks", "--model", str(test_model), "--tasks", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: custom task is not valid JSON")
