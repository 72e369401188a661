"""Tasks that depend on how a variable was set earlier."""

import re

from .base import Edit, line_edits, register
from .keywords import indented_lines

ASSIGNED_NAME = re.compile(r"^\s*([a-z_]\w*) = ", re.M)
SIMPLE_ASSIGN = re.compile(r"^(?P<indent>\s*)(?P<a>[a-z_]\w*) = (?P<b>[a-z_]\w*)\s*$")


def _set_or_string(doc, fixed_name: str | None):
    for line, indent in indented_lines(doc):
        context = line.context
        names = ASSIGNED_NAME.findall(context)
        if len(names) < 2:
            continue
        var, seq = fixed_name or names[-1], names[-2]
        if var == seq:
            continue
        loop = f"{indent}for item in {seq}:\n{indent}    {var}"
        yield Edit(context, f"{indent}{var} = set()\n{loop}", f'{indent}{var} = ""\n{loop}', line.source)


@register("set_or_string", ".", " +=")
def set_or_string(doc):
    """Inserted into a real block: `VAR = set()` (A) or `VAR = ""` (B), then `for item in SEQ:` and
    `VAR` on the loop body's line. A set grows with `.add` -> `.` (A); a string with ` +=` (B).
    VAR and SEQ are the names most recently assigned in the real code above."""
    return _set_or_string(doc, None)


@register("set_or_string_fixedvarname", ".", " +=")
def set_or_string_fixedvarname(doc):
    """As set_or_string, with the variable always named `x`."""
    return _set_or_string(doc, "x")


@register("var_swap", ",", "\n")
def var_swap(doc):
    """A real `A = B` assignment of one name to another, cut after B. The edit (A) makes it the start
    of a swap, `A, B = B` -> `,`; the plain assignment -> newline (B)."""
    return line_edits(doc, SIMPLE_ASSIGN, "{indent}{a}, {b} = {b}", "{indent}{a} = {b}")
