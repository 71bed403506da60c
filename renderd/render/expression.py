"""Band math for raster layers, checked and evaluated without ``eval``.

An expression such as ``(b4 - b3) / (b4 + b3)`` is parsed with Python's
``ast`` module into a tree of the few node kinds allowed below, and turned
into nested functions over numpy arrays. Anything else (names other than
``bN``, attributes, subscripts, calls of other functions, keywords,
strings) is refused with the position it starts at.

    expr = parse_expression("(b4 - b3) / (b4 + b3)")
    expr.bands                 # (3, 4): the bands it reads, from 1
    values = expr(arrays)      # arrays: {band number: float32 array}

Allowed: numbers; ``b1``, ``b2``, ...; ``+ - * / **`` and unary ``-``/``+``;
comparisons (``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``, giving 0 or 1);
the functions ``abs``, ``sqrt``, ``log``, ``log10``, ``exp``, ``min``,
``max`` (two or more arguments, elementwise) and ``where(cond, a, b)``.
Division by zero and the like give inf or nan, which the renderer treats
as no data.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..errors import UsageError

MAX_LENGTH = 1000
BAND_RE = re.compile(r"b([1-9][0-9]{0,4})")

Arrays = Mapping[int, np.ndarray]
Node = Callable[[Arrays], np.ndarray]

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal}
_FUNCTIONS: dict[str, tuple[Callable[..., np.ndarray], int, int]] = {
    # name: (function, fewest arguments, most arguments)
    "abs": (np.abs, 1, 1), "sqrt": (np.sqrt, 1, 1), "log": (np.log, 1, 1),
    "log10": (np.log10, 1, 1), "exp": (np.exp, 1, 1),
    "min": (lambda *a: np.minimum.reduce(a), 2, 16), "max": (lambda *a: np.maximum.reduce(a), 2, 16),
    "where": (lambda c, a, b: np.where(c != 0, a, b), 3, 3),
}


class ExpressionError(UsageError):
    """An expression that is not valid band math."""


@dataclass(frozen=True)
class Expression:
    text: str
    bands: tuple[int, ...]
    _root: Node

    def __call__(self, arrays: Arrays) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = self._root(arrays)
        return np.asarray(out, dtype=np.float32)


def _where(node: ast.AST) -> str:
    return f"at column {getattr(node, 'col_offset', 0) + 1}"


def _build(node: ast.AST, bands: set[int]) -> Node:
    if isinstance(node, ast.Expression):
        return _build(node.body, bands)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        value = np.float32(node.value)
        return lambda a: value
    if isinstance(node, ast.Name):
        m = BAND_RE.fullmatch(node.id)
        if not m:
            raise ExpressionError(f"unknown name {node.id!r} {_where(node)} (bands are b1, b2, ...)")
        band = int(m.group(1))
        bands.add(band)
        return lambda a: a[band]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _build(node.left, bands), _build(node.right, bands)
        return lambda a: op(left(a), right(a))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op1 = _UNARY[type(node.op)]
        operand = _build(node.operand, bands)
        return lambda a: op1(operand(a))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        cmp = _COMPARE[type(node.ops[0])]
        left, right = _build(node.left, bands), _build(node.comparators[0], bands)
        return lambda a: cmp(left(a), right(a)).astype(np.float32)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name = node.func.id
        if name not in _FUNCTIONS:
            raise ExpressionError(f"unknown function {name!r} {_where(node)} "
                                  f"(known: {', '.join(sorted(_FUNCTIONS))})")
        fn, lo, hi = _FUNCTIONS[name]
        if not lo <= len(node.args) <= hi:
            raise ExpressionError(f"{name}() {_where(node)} takes "
                                  f"{lo if lo == hi else f'{lo} to {hi}'} arguments")
        args = [_build(x, bands) for x in node.args]
        return lambda a: fn(*(f(a) for f in args))
    raise ExpressionError(f"{type(node).__name__.lower()} {_where(node)} is not allowed in band math")


def parse_expression(text: str) -> Expression:
    """Check ``text`` and compile it; ``ExpressionError`` says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"not an expression: {e.msg} at column {e.offset or 0}") from None
    bands: set[int] = set()
    root = _build(tree, bands)
    if not bands:
        raise ExpressionError("the expression reads no band (b1, b2, ...)")
    return Expression(text, tuple(sorted(bands)), root)
