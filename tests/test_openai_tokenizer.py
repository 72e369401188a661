"""The released tokenizer format (GPT-2 style encoder.json + vocab.bpe with the tinypython pattern) loads
into our tokenizer type and tokenizes token for token as tiktoken does."""

import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from worker.engine import openai_format as of
from worker.engine.data import load_corpus

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402

N_FILES = 320


def gpt2_byte_chars() -> list[str]:
    """The 256 bytes as GPT-2's printable stand-ins, in the rank order tiktoken's data-gym loader uses."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def build_pair(folder: Path, texts: list[str], vocab_size: int = 700) -> None:
    """Train a byte-level BPE on `texts` and write it as the release does: single bytes first (ids 0-255
    in data-gym order), then one id per merge in merge order, `<|endoftext|>` last."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(of.PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in merges]
    encoder = {c: i for i, c in enumerate(gpt2_byte_chars())}
    for a, b in merges:
        encoder[a + b] = len(encoder)
    encoder[of.EOT] = len(encoder)
    (folder / of.ENCODER_FILE).write_text(json.dumps(encoder))
    (folder / of.MERGES_FILE).write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def test_token_for_token_equal_to_tiktoken_on_real_files(tmp_path):
    docs = load_corpus(None, max_bytes=12_000_000)[: N_FILES + 40]
    build_pair(tmp_path, [d.text for d in docs[:40]])
    ours = of.load_bpe_pair(tmp_path / of.ENCODER_FILE, tmp_path / of.MERGES_FILE)
    ranks = data_gym_to_mergeable_bpe_ranks(str(tmp_path / of.MERGES_FILE), str(tmp_path / of.ENCODER_FILE))
    eot = len(ranks)
    ref = tiktoken.Encoding(
        "tinypython_test", pat_str=of.PATTERN, mergeable_ranks=ranks, special_tokens={of.EOT: eot}
    )
    held_out = [d.text for d in docs[40:]]
    assert len(held_out) >= 300
    mismatched = [
        i
        for i, (a, b) in enumerate(
            zip(ours.encode_batch(held_out), ref.encode_ordinary_batch(held_out), strict=True)
        )
        if a.ids != b
    ]
    assert mismatched == []
    assert ours.token_to_id(of.EOT) == eot and ref.encode(of.EOT, allowed_special="all") == [eot]
    assert ours.decode(ours.encode(held_out[0]).ids) == held_out[0]
