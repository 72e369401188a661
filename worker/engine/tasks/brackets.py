"""Tasks about bracket nesting."""

import re

from .base import Edit, lines_with_context, register

# A list literal that ends its line and is not an index (preceded by `=`, `(`, `return`, `in`, `:` ...).
FLAT_LIST_AT_EOL = re.compile(
    r"^(?P<head>[^\[\]#\n]*(?:[=(:,]|return|yield|in)\s*)\[(?P<body>[^\[\]#\n]+)\]\s*$"
)


@register("bracket_counting", "]\n", "]]\n")
def bracket_counting(doc):
    """A one-line list literal ending its line, cut before its closing bracket after any of its
    elements (dropping the later ones is part of the edit). The feature is the nesting depth:
    `x = [a, b` -> `]` + newline (A); `x = [[a, b` -> `]]` + newline (B)."""
    for n, line, context in lines_with_context(doc):
        m = FLAT_LIST_AT_EOL.match(line)
        if not m or line.count("(") != line.count(")"):
            continue
        head, elements = m["head"], m["body"].split(",")
        for j in range(1, len(elements) + 1):
            body = ",".join(elements[:j]).rstrip()
            if body and (body[-1].isalnum() or body[-1] in "_)'\""):
                yield Edit(context, f"{head}[{body}", f"{head}[[{body}", f"{doc.path}:{n}")
