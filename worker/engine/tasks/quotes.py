"""Tasks about string quotes."""

import re

from .base import Edit, lines_with_context, register

CALL_WITH_STRING = re.compile(
    r"""^(?P<head>[^"'#\n]*\()(?P<q>["'])(?P<body>[A-Za-z0-9 _,.:%=-]*[A-Za-z0-9])(?P=q)\)\s*$"""
)


@register("single_double_quote", '")', "')")
def single_double_quote(doc):
    """A call whose only argument is a string literal, cut just before the closing quote.
    The feature is the opening quote: `"` -> the answer is `")` (A); `'` -> `')` (B).
    The edit swaps the quote type of a real line of code."""
    for n, line, context in lines_with_context(doc):
        m = CALL_WITH_STRING.match(line)
        if m:
            head, body = m["head"], m["body"]
            yield Edit(context, f'{head}"{body}', f"{head}'{body}", f"{doc.path}:{n}")
