"""Tasks decided by a keyword earlier on the line."""

import random
import re

from .base import Edit, lines_with_context, register

INDENTED_STATEMENT = re.compile(r"^(?P<indent> {4,})[a-z_]")
LINES_PER_FILE = 8


def indented_lines(doc):
    """Statement lines inside a block, a deterministic sample per file: places to insert a line."""
    found = [
        (n, m["indent"], ctx)
        for n, line, ctx in lines_with_context(doc)
        if (m := INDENTED_STATEMENT.match(line))
    ]
    random.Random(doc.path).shuffle(found)
    return found[:LINES_PER_FILE]


@register("while_return_true", ":", "\n")
def while_return_true(doc):
    """A line inserted into a real block, at that block's indentation, cut after `True`. The feature
    is the keyword: `while True` -> `:` (A); `return True` -> newline (B)."""
    for n, indent, context in indented_lines(doc):
        yield Edit(context, f"{indent}while True", f"{indent}return True", f"{doc.path}:{n}")
