"""Tasks about bracket nesting and bracket types."""

import re

from .base import Edit, line_edits, lines, register

# A list literal that ends its line and is not an index (preceded by `=`, `(`, `return`, `in`, `:` ...).
FLAT_LIST_AT_EOL = re.compile(
    r"^(?P<head>[^\[\]#\n]*(?:[=(:,]|return|yield|in)\s*)\[(?P<body>[^\[\]#\n]+)\]\s*$"
)
ENUMERATE_LOOP = re.compile(
    r"^(?P<indent>\s*)for (?P<i>\w+), (?P<x>\w+) in enumerate\((?P<seq>[\w.]+)\):\s*$"
)
NAME_LOOP = re.compile(r"^(?P<indent>\s*)for (?P<x>[a-z_]\w*) in (?P<seq>[A-Za-z_][\w.]*):\s*$")


def display_prefix_edits(doc, pattern, opener_a: str, opener_b: str):
    """A one-line display ending its line, cut after any of its items (dropping the later ones is part
    of the edit), opened with opener_a (A) or opener_b (B)."""
    for line in lines(doc):
        m = pattern.match(line.text)
        if m and line.text.count("(") == line.text.count(")"):
            for body in _prefixes(m["body"]):
                yield Edit(
                    line.context, m["head"] + opener_a + body, m["head"] + opener_b + body, line.source
                )


def _prefixes(body: str):
    """The display's first 1, 2, ... comma-separated items, each ending in a name, call or string."""
    items = body.split(",")
    for j in range(1, len(items) + 1):
        prefix = ",".join(items[:j]).rstrip()
        if prefix and (prefix[-1].isalnum() or prefix[-1] in "_)'\""):
            yield prefix


@register("bracket_counting", "]\n", "]]\n")
def bracket_counting(doc):
    """A one-line list literal ending its line, cut before its closing bracket after any of its
    elements. The feature is the nesting depth: `x = [a, b` -> `]` + newline (A); the edit
    `x = [[a, b` -> `]]` + newline (B)."""
    return display_prefix_edits(doc, FLAT_LIST_AT_EOL, "[", "[[")


@register("bracket_brace", "}", "]")
def bracket_brace(doc):
    """A one-line list display ending its line, cut after any of its elements. The edit opens it as a
    set, `{a, b` -> `}` (A); the real list `[a, b` -> `]` (B): which bracket closes depends on which
    one opened."""
    return display_prefix_edits(doc, FLAT_LIST_AT_EOL, "{", "[")


@register("enumerate_range", "):", "))")
def enumerate_range(doc):
    """A real `for i, x in enumerate(seq):` loop, or a real `for x in seq:` loop given the index `i`,
    cut after `seq`: one call open, `for i, x in enumerate(seq` -> `):` (A). The edit rewrites it as
    `for i in range(len(seq` -> two calls open -> `))` (B)."""
    yield from line_edits(
        doc, ENUMERATE_LOOP, "{indent}for {i}, {x} in enumerate({seq}", "{indent}for {i} in range(len({seq}"
    )
    yield from line_edits(
        doc, NAME_LOOP, "{indent}for i, {x} in enumerate({seq}", "{indent}for i in range(len({seq}"
    )
