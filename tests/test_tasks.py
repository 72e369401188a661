import pytest
import torch
import torch.nn.functional as F

from worker.engine import checkpoints as ck
from worker.engine.data import is_validation, load_corpus
from worker.engine.tasks import REGISTRY, TaskError, build_task, evaluate_task, get_task
from worker.engine.tasks.base import (
    MAX_FILE_SHARE,
    TaskSpec,
    cap_file_share,
    first_tokens,
    two_class_logits,
)

CONFIRMED = ["single_double_quote", "bracket_counting", "while_return_true"]


@pytest.fixture(scope="module")
def model_and_tok(test_model):
    model, tok, _ = ck.load_model(test_model)
    return model, tok


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(None)


@pytest.mark.parametrize("name", CONFIRMED)
def test_task_pairs(name, model_and_tok, corpus):
    _, tok = model_and_tok
    spec = get_task(name)
    td = build_task(spec, tok, corpus)
    a, b = first_tokens(tok, spec)
    assert a != b and (td.token_a, td.token_b) == (a, b)
    for split in ("train", "test"):
        prompts = td.split(split)
        assert prompts.ndim == 3 and prompts.shape[1:] == (2, 40)
        assert len(prompts) >= 50
        assert (prompts[:, 0] != prompts[:, 1]).any(-1).all()  # the two prompts differ
        # the difference is one edit: a short run of tokens, not the whole context
        assert (prompts[:, 0] != prompts[:, 1]).sum(-1).float().median() <= 40
    assert all(is_validation(s.rsplit(":", 1)[0], 10.0) for s in td.sources["test"])
    assert not any(is_validation(s.rsplit(":", 1)[0], 10.0) for s in td.sources["train"])
    for split in ("train", "test"):
        files = td.files(split)
        assert len(files) >= 10 and max(files.values()) <= MAX_FILE_SHARE * len(td.sources[split])
    again = build_task(spec, tok, corpus)
    assert torch.equal(again.test, td.test) and torch.equal(again.train, td.train)


def test_prompts_end_where_the_answer_goes(model_and_tok, corpus):
    _, tok = model_and_tok
    td = build_task(get_task("single_double_quote"), tok, corpus)
    a_text, b_text = tok.decode(td.test[0, 0].tolist()), tok.decode(td.test[0, 1].tolist())
    assert a_text.rsplit("(", 1)[1].startswith('"') and b_text.rsplit("(", 1)[1].startswith("'")


def test_evaluate_matches_manual_two_class_loss(model_and_tok, corpus):
    model, tok = model_and_tok
    td = build_task(get_task("while_return_true"), tok, corpus, max_pairs=64)
    r = evaluate_task(model, td)
    with torch.no_grad():
        logits, _ = model(td.test.flatten(0, 1))
    l2 = two_class_logits(logits, td)
    labels = torch.tensor([0, 1]).repeat(len(td.test))
    assert r["loss"] == pytest.approx(F.cross_entropy(l2, labels).item(), rel=1e-5)
    assert r["accuracy"] == pytest.approx((l2.argmax(-1) == labels).float().mean().item())
    assert r["prompts"] == 2 * len(td.test)


def test_shared_first_token_is_rejected(model_and_tok):
    _, tok = model_and_tok
    spec = TaskSpec("bad", '")', '")\\n', lambda d: iter(()), "")
    with pytest.raises(TaskError, match="share their first token"):
        first_tokens(tok, spec)


def test_registry_has_the_confirmed_tasks():
    assert set(CONFIRMED) <= set(REGISTRY)
    with pytest.raises(TaskError, match="unknown task"):
        get_task("nope")


def test_all_twenty_tasks_yield_512_pairs_with_their_own_answers(model_and_tok, corpus):
    _, tok = model_and_tok
    assert len(REGISTRY) == 20
    for name, spec in REGISTRY.items():
        td = build_task(spec, tok, corpus)
        assert len(td.train) + len(td.test) >= 512, name
        assert spec.description, name
        assert (td.train[:, 0] != td.train[:, 1]).any(-1).all(), name


def test_cap_file_share_keeps_every_file_at_most_a_tenth():
    pairs = [([0], [1], f"big.py:{i}") for i in range(60)] + [([0], [1], f"f{j}.py:1") for j in range(40)]
    capped = cap_file_share(pairs)
    big = sum(src.startswith("big.py") for *_, src in capped)
    assert big <= 0.1 * len(capped) and len(capped) == 40 + big
    assert [src for *_, src in capped][:3] == ["big.py:0", "big.py:1", "big.py:2"]  # the first ones stay
    few = [([0], [1], f"a.py:{i}") for i in range(5)] + [([0], [1], "b.py:1"), ([0], [1], "b.py:2")]
    assert sorted(src for *_, src in cap_file_share(few)) == ["a.py:0", "a.py:1", "b.py:1", "b.py:2"]
