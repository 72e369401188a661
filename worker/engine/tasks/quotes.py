"""Tasks about strings: quote type and f-string fields."""

import re

from .base import line_edits, register

CALL_WITH_STRING = re.compile(
    r"""^(?P<head>[^"'#\n]*\()(?P<q>["'])(?P<body>[A-Za-z0-9 _,.:%=-]*[A-Za-z0-9])(?P=q)\)\s*$"""
)
FSTRING_FIELD = re.compile(r"""^(?P<head>[^#\n]*\bf(?P<q>["'])[^"'{}\n]*)\{(?P<expr>[A-Za-z_][\w.]*)\}""")


@register("single_double_quote", '")', "')")
def single_double_quote(doc):
    """A call whose only argument is a string literal, cut just before the closing quote.
    The feature is the opening quote: `"` -> the answer is `")` (A); `'` -> `')` (B).
    The edit swaps the quote type of a real line of code."""
    return line_edits(doc, CALL_WITH_STRING, '{head}"{body}', "{head}'{body}")


@register("fstring_brace", "}", ")")
def fstring_brace(doc):
    """A real f-string replacement field `{name`, cut after the name: `{` -> `}` (A). The edit opens the
    field with `(` instead -> `)` (B): which bracket closes depends on which one opened."""
    return line_edits(doc, FSTRING_FIELD, "{head}{{{expr}", "{head}({expr}")
