"""The one progress protocol of every long engine step (training, profiling, pruning, bridges,
transcoders): `on_progress(fraction, message, **figures)`.

fraction is the share of the step done (0..1) and message a short line for people; figures are optional
numbers a caller may show (training reports its records: stage, step, total, loss, val_loss, ...).
Callers that only draw a bar ignore them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Progress(Protocol):
    def __call__(self, fraction: float, message: str, /, **figures: Any) -> None: ...


def silent(fraction: float, message: str, /, **figures: Any) -> None:
    pass


def training_reporter(on_progress: Progress | None) -> Callable[[dict], None]:
    """Training's records as Progress calls: a record's step over its total, and the message
    `step 12/40 loss 3.210 val 3.300` (`corpus...` and the like before the first step)."""
    report = on_progress or silent

    def record(rec: dict) -> None:
        stage, step, total = rec["stage"], rec.get("step", 0), rec.get("total", 1)
        if stage == "train" and "loss" in rec:
            message = f"step {step}/{total} loss {rec['loss']:.3f}"
            if "val_loss" in rec:
                message += f" val {rec['val_loss']:.3f}"
        else:
            message = f"{stage}..."
        report(1.0 if stage == "done" else step / total, message, **rec)

    return record
