"""The math tool's grammar: an expression is parsed with Python's ``ast`` (mode "eval", never executed) and
accepted only if every node is allowed. Plain Python, no SymPy: the gateway checks an expression before any
process computes it, and the worker process checks it again before it builds the SymPy objects.

Allowed: integer and decimal numbers; the names x, y, z (symbols), pi, E (or e), I; + - * / and ** (``^`` means
power too, as in maths: it is read as ``**``); unary + and -; calls of the functions in ``FUNCTIONS``, by name,
with positional arguments. Everything else (attributes, subscripts, strings, comparisons, lambdas, keywords, any
other name) is refused. Bounds: length, node count, nesting depth, and the size of powers of numbers: an exponent above
``MAX_EXPONENT``, or a power or product of numbers with more than ``MAX_DIGITS`` digits, is refused before anything
is computed (``9**9**9**9`` in microseconds).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

SYMBOLS = ("x", "y", "z")
CONSTANTS = ("pi", "E", "e", "I")
FUNCTIONS: dict[str, tuple[int, int]] = {  # name -> (fewest, most) arguments
    "sin": (1, 1), "cos": (1, 1), "tan": (1, 1), "cot": (1, 1), "asin": (1, 1), "acos": (1, 1), "atan": (1, 1),
    "sinh": (1, 1), "cosh": (1, 1), "tanh": (1, 1), "exp": (1, 1), "log": (1, 2), "ln": (1, 1), "sqrt": (1, 1),
    "cbrt": (1, 1), "abs": (1, 1), "factorial": (1, 1), "floor": (1, 1), "ceiling": (1, 1), "gcd": (2, 2),
    "lcm": (2, 2),
}
MAX_CHARS = 2000
MAX_NODES = 400
MAX_DEPTH = 100  # a chain of a + b + c... is as deep as it is long
MAX_EXPONENT = 10_000
MAX_DIGITS = 100_000  # of a power of numbers (2**10000 has 3,011)
MAX_FACTORIAL = 10_000
_EXACT_DIGITS = 60  # exact values of integer constants are followed up to this size


class ExpressionError(ValueError):
    """The expression is refused; the message says why, for the model (or the user) to correct it."""


@dataclass(frozen=True)
class _Size:
    """What is known of a sub-expression: ``digits`` bounds the digits of a constant number (None: it has symbols
    or function calls); ``value`` is the exact value of a small integer constant."""

    digits: int | None
    value: int | None = None


def split_equation(text: str) -> tuple[str, str | None]:
    """``"lhs = rhs"`` (or ``==``) -> (lhs, rhs); an expression without ``=`` outside brackets -> (text, None)."""
    depth = 0
    cuts: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "=" and depth == 0 and (i == 0 or text[i - 1] not in "<>!="):
            width = 2 if text[i + 1 : i + 2] == "=" else 1
            cuts.append((i, i + width))
            i += width
            continue
        i += 1
    if not cuts:
        return text, None
    if len(cuts) > 1:
        raise ExpressionError("an equation has exactly one '='")
    start, end = cuts[0]
    return text[:start], text[end:]


def parse(text: str, max_chars: int = MAX_CHARS) -> ast.expr:
    """The checked syntax tree of ``text``; ``ExpressionError`` if it is refused."""
    if len(text) > max_chars:
        raise ExpressionError(f"the expression is too long ({len(text)} characters, at most {max_chars})")
    if not text.strip():
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")  # as a token: 2^x+1 is 2**x + 1
    except SyntaxError as exc:
        raise ExpressionError(f"the expression is not valid syntax ({exc.msg}); write products with '*', "
                              f"e.g. 2*x") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError("the expression cannot be read (too deeply nested or too large)") from None
    _Checker().check(tree.body)
    return tree.body


class _Checker:
    def __init__(self) -> None:
        self.nodes = 0

    def check(self, node: ast.expr) -> _Size:
        return self._visit(node, 0)

    def _visit(self, node: ast.expr, depth: int) -> _Size:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExpressionError(f"the expression is too complex (more than {MAX_NODES} parts)")
        if depth > MAX_DEPTH:
            raise ExpressionError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, ast.Constant):
            return _constant(node.value)
        if isinstance(node, ast.Name):
            if node.id in SYMBOLS:
                return _Size(None)
            if node.id in CONSTANTS:
                return _Size(1)
            if node.id in FUNCTIONS:
                raise ExpressionError(f"{node.id} is a function: call it, e.g. {node.id}(x)")
            raise ExpressionError(f"unknown name {node.id[:40]!r}: the allowed names are "
                                  f"{', '.join(SYMBOLS + CONSTANTS)} and the functions {', '.join(FUNCTIONS)}")
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.UAdd | ast.USub):
                raise ExpressionError(f"the operator {_op_name(node.op)} is not allowed")
            inner = self._visit(node.operand, depth + 1)
            if isinstance(node.op, ast.USub) and inner.value is not None:
                return _Size(inner.digits, -inner.value)
            return inner
        if isinstance(node, ast.BinOp):
            left = self._visit(node.left, depth + 1)
            right = self._visit(node.right, depth + 1)
            return _binop(node.op, left, right)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise ExpressionError(f"{_kind(node)} is not allowed in an expression")

    def _call(self, node: ast.Call, depth: int) -> _Size:
        if not isinstance(node.func, ast.Name):
            raise ExpressionError(f"only the functions {', '.join(FUNCTIONS)} may be called, by name")
        name = node.func.id
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {name[:40]!r}: the allowed functions are {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise ExpressionError(f"{name}() takes no keyword arguments")
        fewest, most = FUNCTIONS[name]
        if not fewest <= len(node.args) <= most:
            count = str(fewest) if fewest == most else f"{fewest} or {most}"
            raise ExpressionError(f"{name}() takes {count} argument{'s' if most > 1 else ''}")
        sizes = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise ExpressionError("* arguments are not allowed")
            sizes.append(self._visit(arg, depth + 1))
        if name == "factorial" and sizes[0].value is not None and sizes[0].value > MAX_FACTORIAL:
            raise ExpressionError(f"factorial of a number above {MAX_FACTORIAL} is refused (too large)")
        return _Size(None)


def _constant(value: object) -> _Size:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionError(f"{type(value).__name__} values are not allowed: only numbers")
    if isinstance(value, float):
        return _Size(len(str(int(abs(value)))) if value == value and abs(value) != float("inf") else 1)
    return _Size(len(str(value)), value if len(str(value)) <= _EXACT_DIGITS else None)


def _binop(op: ast.operator, left: _Size, right: _Size) -> _Size:
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if not isinstance(op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        raise ExpressionError(f"the operator {_op_name(op)} is not allowed (use + - * / **)")
    if left.digits is None or right.digits is None:
        return _Size(None)
    if isinstance(op, ast.Add | ast.Sub):
        digits = max(left.digits, right.digits) + 1
        value = None
        if left.value is not None and right.value is not None:
            value = left.value + right.value if isinstance(op, ast.Add) else left.value - right.value
    else:
        digits = left.digits + right.digits
        value = left.value * right.value if (isinstance(op, ast.Mult) and left.value is not None
                                             and right.value is not None) else None
    if digits > MAX_DIGITS:
        raise ExpressionError(f"the numbers are too large (about {digits} digits, at most {MAX_DIGITS})")
    return _Size(digits, value if value is not None and len(str(abs(value))) <= _EXACT_DIGITS else None)


def _power(base: _Size, exponent: _Size) -> _Size:
    if exponent.digits is None:
        return _Size(None)  # a symbolic exponent (2**x): checked again by the worker once known
    if exponent.value is not None:
        if abs(exponent.value) > MAX_EXPONENT:
            raise ExpressionError(f"the exponent {_short(exponent.value)} is too large (at most {MAX_EXPONENT})")
        times = abs(exponent.value)
    else:
        if exponent.digits > len(str(MAX_EXPONENT)):
            raise ExpressionError(f"the exponent is too large (at most {MAX_EXPONENT})")
        times = 10 ** exponent.digits
    if base.digits is None:
        return _Size(None)
    digits = base.digits * max(times, 1)
    if digits > MAX_DIGITS:
        raise ExpressionError(f"the power is too large (about {digits} digits, at most {MAX_DIGITS})")
    value = None
    if base.value is not None and exponent.value is not None and exponent.value >= 0 and digits <= _EXACT_DIGITS:
        value = base.value ** exponent.value
    return _Size(digits, value)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"{text[:8]}... ({len(text)} digits)"


def _op_name(op: ast.AST) -> str:
    return type(op).__name__


def _kind(node: ast.AST) -> str:
    names = {ast.Attribute: "attribute access (.)", ast.Subscript: "indexing ([])", ast.Compare: "a comparison",
             ast.Lambda: "lambda", ast.BoolOp: "and/or", ast.IfExp: "if/else", ast.NamedExpr: ":=",
             ast.JoinedStr: "an f-string", ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict",
             ast.Set: "a set"}
    return names.get(type(node), type(node).__name__)
