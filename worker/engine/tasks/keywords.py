"""Tasks decided by a keyword earlier on the line."""

import random
import re

from .base import Edit, line_edits, lines, register

INDENTED_STATEMENT = re.compile(r"^(?P<indent> {4,})[a-z_]")
LINES_PER_FILE = 8
NAME = r"[A-Za-z_][\w.]*"
SIMPLE = r"[^:#\n\[\]{}()'\"]*[\w)]"  # an expression without brackets, strings or colons

ELSE_OR_ELIF_NOT = re.compile(r"^(?P<indent>\s*)(?:else:|elif not .*:)\s*$")
WITH_AS = re.compile(rf"^(?P<indent>\s*)with (?P<expr>[^#\n]*?) as (?P<name>{NAME}):\s*$")
CALL_ASSIGN = re.compile(rf"^(?P<indent>\s*)(?P<name>{NAME}) = (?P<expr>{NAME}\([^#\n]*\))\s*$")
OPEN_ARGS = r"(?P<args>(?:[^()#\n]|\([^()#\n]*\))*)"  # allows one level of nested calls
WITH_OPEN = re.compile(rf"^(?P<indent>\s*)with open\({OPEN_ARGS}\) as (?P<name>{NAME}):\s*$")
OPEN_ASSIGN = re.compile(rf"^(?P<indent>\s*)(?P<name>{NAME}) = open\({OPEN_ARGS}\)\s*$")
CALL_ARGS_ASSIGN = re.compile(rf"^(?P<indent>\s*)(?P<name>{NAME}) = {NAME}\({OPEN_ARGS}\)\s*$")
FOR_NAME = re.compile(rf"^(?P<indent>\s*)for (?P<name>{NAME}) in .*:\s*$")
IF_SIMPLE = re.compile(rf"^(?P<indent>\s*)if (?P<cond>{SIMPLE}):\s*$")
IF_EQUALS = re.compile(rf"^(?P<indent>\s*)if (?P<lhs>{NAME}) == (?P<rhs>{SIMPLE}):\s*$")
IF_NAME = re.compile(rf"^(?P<indent>\s*)if (?P<name>{NAME}):\s*$")
DEF_SIMPLE = re.compile(r"^(?P<indent>\s*)def (?P<name>\w+)\((?P<args>[\w, ]+)\):\s*$")
FOR_AT_4 = re.compile(rf"^ {{4}}for (?P<target>{NAME}(?:, {NAME})*) in (?P<iter>[^#\n]*[^\s:]):\s*$")


def indented_lines(doc):
    """(line, indentation) of statement lines inside a block, a deterministic sample per file: places
    to insert a line."""
    found = [(line, m["indent"]) for line in lines(doc) if (m := INDENTED_STATEMENT.match(line.text))]
    random.Random(doc.path).shuffle(found)
    return found[:LINES_PER_FILE]


@register("while_return_true", ":", "\n")
def while_return_true(doc):
    """A line inserted into a real block, at that block's indentation, cut after `True`. The feature
    is the keyword: `while True` -> `:` (A); `return True` -> newline (B)."""
    for line, indent in indented_lines(doc):
        yield Edit(line.context, f"{indent}while True", f"{indent}return True", line.source)


@register("else_elif", ":", " not")
def else_elif(doc):
    """A real `else:` or `elif not …:` branch cut after its keyword: `else` -> `:` (A); `elif` -> a
    condition, here ` not` (B). The edit swaps the keyword."""
    return line_edits(doc, ELSE_OR_ELIF_NOT, "{indent}else", "{indent}elif")


@register("with_as", " as", "\n")
def with_as(doc):
    """A real `with EXPR as NAME:` line, or a real assignment of a call `NAME = CALL(…)`, cut after the
    expression: `with EXPR` -> ` as` (A); the assignment `NAME = EXPR` -> newline (B)."""
    for pattern in (WITH_AS, CALL_ASSIGN):
        yield from line_edits(doc, pattern, "{indent}with {expr}", "{indent}{name} = {expr}")


@register("with_open", " as", "\n")
def with_open(doc):
    """A real `with open(ARGS) as f:` line or `f = open(ARGS)` assignment, cut after the call:
    `with open(…)` -> ` as` (A); the assignment `f = open(…)` -> newline (B). The standard library
    holds only ~400 `open(` calls, so real assignments of other calls `f = CALL(ARGS)` also serve, with
    CALL renamed `open` (their real arguments and context kept)."""
    for pattern in (WITH_OPEN, OPEN_ASSIGN, CALL_ARGS_ASSIGN):
        yield from line_edits(doc, pattern, "{indent}with open({args})", "{indent}{name} = open({args})")


@register("for_while", " in", ":")
def for_while(doc):
    """A real `for NAME in …:` loop cut after NAME: `for NAME` -> ` in` (A); the edit `while NAME` ->
    `:` (B)."""
    return line_edits(doc, FOR_NAME, "{indent}for {name}", "{indent}while {name}")


@register("if_ternary", " else", ":")
def if_ternary(doc):
    """A real `if COND:` line cut after COND. The edit (A) makes it a conditional expression,
    `result = None if COND` -> ` else`; the statement `if COND` -> `:` (B)."""
    return line_edits(doc, IF_SIMPLE, "{indent}result = None if {cond}", "{indent}if {cond}")


@register("if_equals", ":", "\n")
def if_equals(doc):
    """A real `if X == Y:` line cut after Y: comparison `if X == Y` -> `:` (A); the edit `X = Y`
    (an assignment) -> newline (B)."""
    return line_edits(doc, IF_EQUALS, "{indent}if {lhs} == {rhs}", "{indent}{lhs} = {rhs}")


@register("var_if", ":", "\n")
def var_if(doc):
    """A real `if NAME:` test cut after NAME: `if NAME` -> `:` (A); the edit negates the variable in
    an assignment, `NAME = not NAME` -> newline (B)."""
    return line_edits(doc, IF_NAME, "{indent}if {name}", "{indent}{name} = not {name}")


@register("lambda_func", ":", "):")
def lambda_func(doc):
    """A real `def NAME(ARGS):` line cut after ARGS: the edit (A) makes it `NAME = lambda ARGS` -> `:`;
    the def `def NAME(ARGS` -> `):` (B)."""
    return line_edits(doc, DEF_SIMPLE, "{indent}{name} = lambda {args}", "{indent}def {name}({args}")


@register("indent_for", "        x", "    x")
def indent_for(doc):
    """A real `for T in I:` loop at indentation 4 (I any expression), cut after its line's newline: the
    next line is indented deeper, 8 spaces (A). The edit makes the line a plain assignment `T = I` ->
    the next line stays at 4 spaces (B)."""
    return line_edits(doc, FOR_AT_4, "    for {target} in {iter}:\n", "    {target} = {iter}\n")
