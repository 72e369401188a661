"""Tasks about strings: quote type and f-string fields."""

import re

from .base import Edit, line_edits, lines, register

CALL_WITH_STRING = re.compile(
    r"""^(?P<head>[^"'#\n]*\()(?P<q>["'])(?P<body>[A-Za-z0-9 _,.:%=-]*[A-Za-z0-9])(?P=q)\)\s*$"""
)
FSTRING_FIELD = re.compile(r"""(?P<expr>[A-Za-z_][\w.]*)[}!:]""")  # a field's leading name
FSTRING = re.compile(r"""\b(?:[rR]?[fF]|[fF][rR])(?P<q>["'])(?P<body>[^"'\n]*)(?P=q)""")


@register("single_double_quote", '")', "')")
def single_double_quote(doc):
    """A call whose only argument is a string literal, cut just before the closing quote.
    The feature is the opening quote: `"` -> the answer is `")` (A); `'` -> `')` (B).
    The edit swaps the quote type of a real line of code."""
    return line_edits(doc, CALL_WITH_STRING, '{head}"{body}', "{head}'{body}")


@register("fstring_brace", "}", ")")
def fstring_brace(doc):
    """Any real f-string replacement field `{name}` (or `{name!r}`, `{name:fmt}`), cut after the name:
    `{name` -> `}` (A). The edit opens the field with `(` instead -> `)` (B): which bracket closes
    depends on which one opened."""
    for line in lines(doc):
        if "#" in line.text:
            continue
        for s in FSTRING.finditer(line.text):
            for field in re.finditer(r"(?<!\{)\{(?!\{)", s["body"]):
                start = s.start("body") + field.end()
                m = FSTRING_FIELD.match(line.text, start)
                if m:
                    head = line.text[: field.start() + s.start("body")]
                    yield Edit(line.context, f"{head}{{{m['expr']}", f"{head}({m['expr']}", line.source)
