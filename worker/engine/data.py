"""Corpora, the byte-level BPE tokenizer and token streams."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import UserError

EOT = "<|endoftext|>"
# Always whole tokens, so task completions such as "]\n" vs "]]\n" differ in their first token.
FORCED_TOKENS = ("]]",)
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3"}


class CorpusError(UserError):
    pass


@dataclass(frozen=True)
class Document:
    path: str  # relative to the corpus root; stable across machines for the stdlib
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def load_corpus(spec: str | None = None, max_bytes: int | None = None) -> list[Document]:
    """Documents of a corpus: None = the standard library's .py files; else a directory or a glob."""
    if spec is None:
        root = stdlib_root()
        paths = _stdlib_files(root)
    else:
        p = Path(spec).expanduser()
        if p.is_dir():
            root = p
            paths = sorted(q for q in p.rglob("*") if q.is_file())
        else:
            paths = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
        if not paths:
            raise CorpusError(f"corpus path {spec!r} matches no readable files")
        if not p.is_dir():
            root = Path(os.path.commonpath([str(q.parent) for q in paths]))
    docs, total = [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        docs.append(Document(str(path.relative_to(root)), text))
        total += len(text.encode())
        if max_bytes is not None and total >= max_bytes:
            break
    if not docs:
        raise CorpusError(f"corpus {spec or root!s} holds no readable UTF-8 text")
    return docs


def is_validation(doc_path: str, val_percent: float) -> bool:
    """Deterministic split by file: a hash of the path, not of the machine or the order."""
    h = int.from_bytes(hashlib.sha256(doc_path.encode()).digest()[:8], "big")
    return (h % 10_000) < val_percent * 100


def split_corpus(docs: list[Document], val_percent: float) -> tuple[list[Document], list[Document]]:
    train = [d for d in docs if not is_validation(d.path, val_percent)]
    val = [d for d in docs if is_validation(d.path, val_percent)]
    if not train or not val:
        raise CorpusError(
            f"corpus of {len(docs)} files gives an empty train or validation split at {val_percent}%"
        )
    return train, val


def train_tokenizer(docs: list[Document], vocab_size: int) -> Tokenizer:
    """Byte-level BPE. A newline is always its own token, so completions such as ':' vs '\\n' and
    ']' vs ']]' start with well-defined tokens no matter what indentation follows."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(FORCED_TOKENS),
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in docs), trainer=trainer, length=len(docs))
    tok.add_tokens([AddedToken(t, normalized=False) for t in FORCED_TOKENS])
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def encode_documents(tok: Tokenizer, docs: list[Document]) -> torch.Tensor:
    """One flat stream of token ids, documents separated by the end-of-text token."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch([d.text for d in docs]):
        ids.extend(enc.ids)
        ids.append(eot)
    dtype = torch.int16 if tok.get_vocab_size() <= 32767 else torch.int32
    return torch.tensor(ids, dtype=dtype)


def sample_batch(
    stream: torch.Tensor, batch_size: int, n_ctx: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of n_ctx+1 tokens: inputs and next-token targets."""
    if len(stream) <= n_ctx + 1:
        raise CorpusError(f"token stream of {len(stream)} tokens is shorter than the context {n_ctx}")
    starts = torch.randint(0, len(stream) - n_ctx - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + n_ctx + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def fixed_batches(stream: torch.Tensor, n_batches: int, batch_size: int, n_ctx: int, seed: int = 1234):
    g = torch.Generator().manual_seed(seed)
    return [sample_batch(stream, batch_size, n_ctx, g) for _ in range(n_batches)]
