"""Binary next-token tasks (PAPERS.md section 3): prompt pairs from real code with one edit.

A task family yields *edits*: a shared context and two line prefixes, one whose correct next token is
completion A's first token and one whose is completion B's. Prompts are the last `prompt_len` tokens, so
every prompt of a task has the same length and both prompts of a pair end in the edited line.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..data import Document, is_validation, load_corpus
from ..errors import UserError

CONTEXT_CHARS = 500  # text before the edited line that is tokenised (more than prompt_len tokens need)


class TaskError(UserError):
    pass


@dataclass(frozen=True)
class Edit:
    context: str  # text before the edited line
    tail_a: str  # edited line up to the answer, class A
    tail_b: str  # the same with the one feature changed, class B
    source: str  # "path:line"


EditFn = Callable[[Document], Iterator[Edit]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    completion_a: str
    completion_b: str
    edits: EditFn
    description: str


@dataclass
class TaskData:
    """A task tokenised for one model: token tensors ready for a forward pass."""

    name: str
    completion_a: str
    completion_b: str
    token_a: int
    token_b: int
    train: torch.Tensor  # (pairs, 2, prompt_len): [:, 0] expects token_a, [:, 1] expects token_b
    test: torch.Tensor
    sources: dict[str, list[str]] = field(default_factory=dict)

    def files(self, split: str) -> dict[str, int]:
        """Pairs per source file of a split, largest first."""
        return dict(Counter(source_file(src) for src in self.sources.get(split, [])).most_common())

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "test"):
            raise TaskError(f"unknown split {name!r}; use 'train' or 'test'")
        return self.train if name == "train" else self.test


REGISTRY: dict[str, TaskSpec] = {}


def register(name: str, completion_a: str, completion_b: str):
    def wrap(fn: EditFn) -> EditFn:
        REGISTRY[name] = TaskSpec(name, completion_a, completion_b, fn, (fn.__doc__ or "").strip())
        return fn

    return wrap


def get_task(name: str) -> TaskSpec:
    if name not in REGISTRY:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def first_tokens(tok: Tokenizer, spec: TaskSpec) -> tuple[int, int]:
    a, b = tok.encode(spec.completion_a).ids, tok.encode(spec.completion_b).ids
    if not a or not b or a[0] == b[0]:
        raise TaskError(
            f"task {spec.name}: completions {spec.completion_a!r} and {spec.completion_b!r} share their "
            "first token under this tokenizer"
        )
    return a[0], b[0]


@dataclass(frozen=True)
class Line:
    doc: Document
    number: int
    text: str
    start: int  # offset of the line in the document

    @property
    def context(self) -> str:
        """The text before this line (computed only for lines a task uses)."""
        return self.doc.text[max(0, self.start - CONTEXT_CHARS) : self.start]

    @property
    def source(self) -> str:
        return f"{self.doc.path}:{self.number}"


def lines(doc: Document) -> Iterator[Line]:
    offset = 0
    for i, text in enumerate(doc.text.split("\n")):
        yield Line(doc, i + 1, text, offset)
        offset += len(text) + 1


def line_edits(doc: Document, pattern: re.Pattern, tail_a: str, tail_b: str) -> Iterator[Edit]:
    """An edit for every line matching `pattern`; the tails are format strings over its named groups
    (a group that did not take part is the empty string)."""
    for line in lines(doc):
        m = pattern.match(line.text)
        if m:
            groups = m.groupdict(default="")
            yield Edit(line.context, tail_a.format(**groups), tail_b.format(**groups), line.source)


def tokenise_pairs(
    edits: list[Edit], spec: TaskSpec, tok: Tokenizer, token_a: int, token_b: int, prompt_len: int
):
    """Prompt pairs of the edits that tokenise cleanly: the answer must be the token that follows the
    prompt when the completion is appended, and the edit must fall inside the last prompt_len tokens."""
    texts = [e.context + t for e in edits for t in (e.tail_a, e.tail_b)]
    full = [e.context + e.tail_a + spec.completion_a for e in edits] + [
        e.context + e.tail_b + spec.completion_b for e in edits
    ]
    enc, enc_full = tok.encode_batch(texts), tok.encode_batch(full)
    n = len(edits)
    for j, e in enumerate(edits):
        a, b = enc[2 * j].ids, enc[2 * j + 1].ids
        fa, fb = enc_full[j].ids, enc_full[n + j].ids
        if fa[: len(a)] != a or fb[: len(b)] != b or fa[len(a)] != token_a or fb[len(b)] != token_b:
            continue
        if min(len(a), len(b)) < prompt_len or a[-prompt_len:] == b[-prompt_len:]:
            continue
        yield a[-prompt_len:], b[-prompt_len:], e.source


MAX_FILE_SHARE = 0.10  # no file may be more than this share of a split


def source_file(source: str) -> str:
    """The file of a "path:line" source."""
    return source.rsplit(":", 1)[0]


def round_robin_by_file(edits: list[Edit], rng: random.Random) -> list[Edit]:
    """Edits reordered so that consecutive edits come from different files (files in random order,
    each file's edits shuffled): any prefix spreads over as many files as it can."""
    by_file: dict[str, list[Edit]] = {}
    for e in edits:
        by_file.setdefault(source_file(e.source), []).append(e)
    queues = list(by_file.values())
    rng.shuffle(queues)
    for q in queues:
        rng.shuffle(q)
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def cap_file_share(found: list, share: float = MAX_FILE_SHARE) -> list:
    """Drop the last pairs of every file above `share` of the split (pairs are (a, b, "path:line")),
    repeated because dropping pairs shrinks the split. With fewer than 1/share files, every file keeps
    as many pairs as the smallest one."""
    while found:
        counts = Counter(source_file(src) for *_, src in found)
        if len(counts) * share < 1:
            cap = min(counts.values())
        else:
            cap = max(1, int(share * len(found)))
        if max(counts.values()) <= cap:
            break
        seen: Counter = Counter()
        kept = []
        for item in found:
            f = source_file(item[2])
            seen[f] += 1
            if seen[f] <= cap:
                kept.append(item)
        found = kept
    return found


def build_task(
    spec: TaskSpec,
    tok: Tokenizer,
    docs: list[Document] | None = None,
    prompt_len: int = 40,
    max_pairs: int = 1024,
    seed: int = 0,
    val_percent: float = 10.0,
) -> TaskData:
    """Tokenise a task for a model. Test pairs come from the corpus's validation files only (files the
    model never trained on). Edits are taken round-robin over files and tokenised in chunks until
    max_pairs per split are found; no file is more than MAX_FILE_SHARE of a split."""
    token_a, token_b = first_tokens(tok, spec)
    docs = load_corpus(None) if docs is None else docs
    by_split: dict[str, list[Edit]] = {"train": [], "test": []}
    for d in docs:
        by_split["test" if is_validation(d.path, val_percent) else "train"] += spec.edits(d)
    out = {}
    for split, edits in by_split.items():
        edits = round_robin_by_file(edits, random.Random(f"{spec.name}/{seed}/{split}"))
        found: list[tuple[list[int], list[int], str]] = []
        per_file: dict[str, int] = {}
        per_file_cap = max(1, int(MAX_FILE_SHARE * max_pairs))
        for i in range(0, len(edits), 512):
            chunk = [e for e in edits[i : i + 512] if per_file.get(source_file(e.source), 0) < per_file_cap]
            for pair in tokenise_pairs(chunk, spec, tok, token_a, token_b, prompt_len):
                f = source_file(pair[2])
                if per_file.get(f, 0) < per_file_cap:
                    per_file[f] = per_file.get(f, 0) + 1
                    found.append(pair)
            if len(found) >= max_pairs:
                break
        found = cap_file_share(found[:max_pairs])
        if not found:
            raise TaskError(f"task {spec.name}: the corpus yields no {split} pairs")
        out[split] = found
    return task_data(spec, token_a, token_b, out)


def task_data(spec: TaskSpec, token_a: int, token_b: int, pairs: dict[str, list]) -> TaskData:
    """TaskData from each split's (prompt_a ids, prompt_b ids, source) triples."""
    return TaskData(
        name=spec.name,
        completion_a=spec.completion_a,
        completion_b=spec.completion_b,
        token_a=token_a,
        token_b=token_b,
        train=torch.tensor([[a, b] for a, b, _ in pairs["train"]]),
        test=torch.tensor([[a, b] for a, b, _ in pairs["test"]]),
        sources={s: [src for *_, src in items] for s, items in pairs.items()},
    )


def two_class_logits(logits: torch.Tensor, task: TaskData) -> torch.Tensor:
    """Last-position logits of the two candidates: (..., 2), in at least float32."""
    two = logits[..., -1, :][..., [task.token_a, task.token_b]]
    return two.to(torch.promote_types(two.dtype, torch.float32))


def pair_labels(n_pairs: int, device=None) -> torch.Tensor:
    return torch.tensor([0, 1], device=device).repeat(n_pairs)


def task_loss(logits2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-prompt two-class cross-entropy (mean over prompts, not the released x2 sum over a pair)."""
    return F.cross_entropy(logits2, labels)


@torch.no_grad()
def evaluate_task(model, task: TaskData, split: str = "test", batch_pairs: int = 64, edits=None) -> dict:
    """Accuracy and mean per-prompt two-class CE of a model (optionally with site edits) on a split."""
    prompts = task.split(split)
    device = next(model.parameters()).device
    losses, correct, n = 0.0, 0, 0
    for i in range(0, len(prompts), batch_pairs):
        chunk = prompts[i : i + batch_pairs]
        x = chunk.flatten(0, 1).to(device)
        logits, _ = model(x, edits=edits, last_only=True)
        l2 = two_class_logits(logits, task)
        labels = pair_labels(len(chunk), device)
        losses += F.cross_entropy(l2, labels, reduction="sum").item()
        correct += int((l2.argmax(-1) == labels).sum())
        n += len(labels)
    return {"accuracy": correct / n, "loss": losses / n, "prompts": n}
