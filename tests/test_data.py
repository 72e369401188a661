import pytest
import torch

from worker.engine.data import (
    CorpusError,
    encode_documents,
    is_validation,
    load_corpus,
    sample_batch,
    split_corpus,
    stdlib_root,
    train_tokenizer,
)


def test_default_corpus_is_the_stdlib_without_tests():
    docs = load_corpus(None, max_bytes=2_000_000)
    assert docs and all(d.path.endswith(".py") for d in docs)
    assert not any(part in ("test", "tests") for d in docs for part in d.path.split("/")[:-1])
    assert (stdlib_root() / docs[0].path).read_text(encoding="utf-8") == docs[0].text


def test_user_directory_and_glob(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("x = 1\n")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    assert sorted(d.path for d in load_corpus(str(tmp_path))) == ["a.txt", "sub/b.py"]
    assert [d.path for d in load_corpus(str(tmp_path / "**" / "*.py"))] == ["b.py"]
    with pytest.raises(CorpusError, match="matches no readable files"):
        load_corpus(str(tmp_path / "nothing*"))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "c.bin").write_bytes(b"\xff\xfe")
    with pytest.raises(CorpusError, match="no readable UTF-8"):
        load_corpus(str(tmp_path / "only"))


def test_split_is_by_file_and_deterministic():
    docs = load_corpus(None, max_bytes=3_000_000)
    train, val = split_corpus(docs, 10.0)
    assert {d.path for d in train}.isdisjoint({d.path for d in val})
    assert len(train) + len(val) == len(docs)
    assert 0.03 < len(val) / len(docs) < 0.2
    assert all(is_validation(d.path, 10.0) for d in val)
    assert is_validation("json/decoder.py", 10.0) == is_validation("json/decoder.py", 10.0)


def test_tokenizer_and_stream():
    docs = load_corpus(None, max_bytes=300_000)
    tok = train_tokenizer(docs, 512)
    assert tok.get_vocab_size() == 512
    text = "def f(x):\n    return x[y[0]]\n"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    assert "Ċ" in enc.tokens and "]]" in enc.tokens  # newline alone, "]]" whole
    stream = encode_documents(tok, docs[:3])
    assert int((stream == tok.token_to_id("<|endoftext|>")).sum()) == 3
    x, y = sample_batch(stream, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
