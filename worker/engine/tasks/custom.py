"""Custom tasks from a JSON spec: prompt pairs written by the user plus the two completions.

    {"name": "my_task", "completion_a": ")", "completion_b": "]",
     "description": "optional text",
     "pairs": [{"prompt_a": "print(len(x", "prompt_b": "print(x[len(y", "split": "test"}, ...]}

`split` is optional: pairs without one are assigned train/test by a fixed hash of their text (20 % test).
Prompts are truncated from the left to the shortest prompt's token length so that a task is one tensor;
a pair whose two prompts become identical, or whose prompt absorbs the completion's first token when
tokenised together, is dropped and counted in the report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tokenizers import Tokenizer

from .base import (
    REGISTRY,
    Edit,
    TaskData,
    TaskError,
    TaskSpec,
    build_task,
    first_tokens,
    get_task,
    task_data,
    tokenise_pairs,
)

TEST_PERCENT = 20
MAX_PROMPT_TOKENS = 64
MIN_PAIRS_PER_SPLIT = 1


class PromptPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_a: str = Field(min_length=1, max_length=4000)
    prompt_b: str = Field(min_length=1, max_length=4000)
    split: Literal["train", "test"] | None = None

    @model_validator(mode="after")
    def _differ(self) -> PromptPair:
        if self.prompt_a == self.prompt_b:
            raise ValueError("prompt_a and prompt_b are identical; a pair must differ by an edit")
        return self


class CustomTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    completion_a: str = Field(min_length=1, max_length=100)
    completion_b: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    pairs: list[PromptPair] = Field(min_length=2, max_length=20_000)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in REGISTRY:
            raise ValueError(f"{name!r} is a built-in task; choose another name")
        return name

    @model_validator(mode="after")
    def _completions_differ(self) -> CustomTask:
        if self.completion_a == self.completion_b:
            raise ValueError("completion_a and completion_b are identical")
        return self

    def spec(self) -> TaskSpec:
        no_corpus_edits = lambda doc: iter(())  # noqa: E731  (the pairs are given, not mined)
        return TaskSpec(self.name, self.completion_a, self.completion_b, no_corpus_edits, self.description)

    def split_of(self, pair: PromptPair) -> str:
        if pair.split:
            return pair.split
        digest = hashlib.sha256(f"{pair.prompt_a}\0{pair.prompt_b}".encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % 100 < TEST_PERCENT else "train"


def parse_custom_task(source: str | bytes | dict) -> CustomTask:
    """A validated CustomTask from JSON text or a decoded dict; TaskError names what is wrong."""
    if isinstance(source, (str, bytes)):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise TaskError(f"custom task is not valid JSON: {e.msg} at {where}") from e
    if not isinstance(source, dict):
        raise TaskError("custom task must be a JSON object with name, completion_a, completion_b, pairs")
    try:
        return CustomTask.model_validate(source)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "task"
        raise TaskError(f"custom task: {where}: {first['msg']}") from e


def build_custom_task(task: CustomTask, tok: Tokenizer) -> tuple[TaskData, dict]:
    """Tokenise a custom task for a model: (TaskData, report of pairs kept and dropped per split)."""
    spec = task.spec()
    token_a, token_b = first_tokens(tok, spec)
    prompts = [t for p in task.pairs for t in (p.prompt_a, p.prompt_b)]
    lengths = [len(e.ids) for e in tok.encode_batch(prompts)]
    prompt_len = min(min(lengths), MAX_PROMPT_TOKENS)
    by_split: dict[str, list[Edit]] = {"train": [], "test": []}
    for i, pair in enumerate(task.pairs):
        by_split[task.split_of(pair)].append(Edit("", pair.prompt_a, pair.prompt_b, f"pairs[{i}]"))
    out, report = {}, {"prompt_len": prompt_len}
    for split, edits in by_split.items():
        kept = list(tokenise_pairs(edits, spec, tok, token_a, token_b, prompt_len))
        report[split] = {"given": len(edits), "kept": len(kept)}
        if len(kept) < MIN_PAIRS_PER_SPLIT:
            raise TaskError(
                f"custom task {task.name}: no usable {split} pairs ({len(edits)} given; a pair is dropped "
                f"when its prompts are identical in their last {prompt_len} tokens or the completion "
                "merges with the prompt's last token)"
            )
        out[split] = kept
    return task_data(spec, token_a, token_b, out), report


def load_task(name_or_file: str, tok: Tokenizer, docs=None) -> TaskData:
    """A built-in task by name, or a custom task from a `.json` file."""
    if name_or_file.endswith(".json"):
        path = Path(name_or_file)
        if not path.is_file():
            raise TaskError(f"custom task file {name_or_file} does not exist")
        return build_custom_task(parse_custom_task(path.read_text()), tok)[0]
    return build_task(get_task(name_or_file), tok, docs)
