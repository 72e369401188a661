"""Tasks about definitions versus calls."""

import re

from .base import line_edits, register

DEF_WITH_DEFAULT = re.compile(
    r"^(?P<indent>\s*)def (?P<name>\w+)\((?P<args>[^()#\n:]*\w+=[^()#\n:,]+)\):\s*$"
)
INIT_DEF = re.compile(r"^(?P<indent>\s*)def __init__\(self(?:(?P<sep>, )(?P<args>[^()#\n:]+))?\):\s*$")


@register("final_kwarg", "):", ")")
def final_kwarg(doc):
    """A real `def NAME(…, key=default):` signature cut after the final keyword argument: the def ->
    `):` (A). The edit turns it into a call, `NAME(…, key=default` -> `)` (B)."""
    return line_edits(doc, DEF_WITH_DEFAULT, "{indent}def {name}({args}", "{indent}{name}({args}")


@register("class_init", "):", ")")
def class_init(doc):
    """A real `def __init__(self, ARGS):` cut after its arguments: the def -> `):` (A). The edit makes
    it the parent-class call `super().__init__(ARGS` -> `)` (B)."""
    return line_edits(
        doc, INIT_DEF, "{indent}def __init__(self{sep}{args}", "{indent}super().__init__({args}"
    )
