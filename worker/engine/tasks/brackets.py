"""Tasks about bracket nesting and bracket types."""

import re

from .base import Edit, line_edits, lines_with_context, register

# A list literal that ends its line and is not an index (preceded by `=`, `(`, `return`, `in`, `:` ...).
FLAT_LIST_AT_EOL = re.compile(
    r"^(?P<head>[^\[\]#\n]*(?:[=(:,]|return|yield|in)\s*)\[(?P<body>[^\[\]#\n]+)\]\s*$"
)
DICT_AT_EOL = re.compile(r"^(?P<head>[^\[\]{}#\n]*=\s*)\{(?P<body>[^\[\]{}#\n]*:[^\[\]{}#\n]*[\w)'\"])\}\s*$")
ENUMERATE_LOOP = re.compile(
    r"^(?P<indent>\s*)for (?P<i>\w+), (?P<x>\w+) in enumerate\((?P<seq>[\w.]+)\):\s*$"
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


@register("bracket_brace", "}", "]")
def bracket_brace(doc):
    """A one-line dict literal ending its line, cut before the closing brace: `{k: v` -> `}` (A). The
    edit opens it with `[` -> `]` (B)."""
    return line_edits(doc, DICT_AT_EOL, lambda m: (f"{m['head']}{{{m['body']}", f"{m['head']}[{m['body']}"))


@register("enumerate_range", "):", "))")
def enumerate_range(doc):
    """A real `for i, x in enumerate(seq):` loop cut after `seq`: one call open -> `):` (A). The edit
    rewrites it as `for i in range(len(seq` -> two calls open -> `))` (B)."""
    return line_edits(
        doc,
        ENUMERATE_LOOP,
        lambda m: (
            f"{m['indent']}for {m['i']}, {m['x']} in enumerate({m['seq']}",
            f"{m['indent']}for {m['i']} in range(len({m['seq']}",
        ),
    )
