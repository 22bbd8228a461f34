"""The math tool's worker process: ``python -m lmops.assistant.tools.sympy_worker --memory-mb N``.

It reads one JSON request per line on stdin (``{"operation", "expression", "equals", "variable"}``), checks the
expression again with the same grammar (``expression.parse``), builds the SymPy objects node by node itself (no
``sympify``, which evaluates text with ``eval``), refusing powers and factorials of numbers that would be too large
once their operands are known, computes, and writes one JSON line: ``{"ok": true, "text": ...}`` or
``{"ok": false, "error": ..., "arguments": bool}``. It runs with its address space limited to ``--memory-mb``; the
gateway kills it when a computation outlasts the tool's timeout and starts another; it ends itself when the
gateway's process ends.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import threading
import time
from typing import Any

from lmops.assistant.tools.expression import (
    FUNCTIONS,
    MAX_DIGITS,
    MAX_EXPONENT,
    MAX_FACTORIAL,
    ExpressionError,
    parse,
)

MAX_TEXT = 2000  # characters of an answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--max-chars", type=int, default=2000)
    options = parser.parse_args()
    if options.memory_mb:
        import resource

        limit = options.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _exit_with_parent()
    sys.set_int_max_str_digits(0)  # answers are cut to MAX_TEXT characters instead
    import sympy  # noqa: F401 - loaded before the first request, not during it

    _send({"ready": True})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = {"ok": True, "text": compute(request, options.max_chars)}
        except ExpressionError as exc:
            answer = {"ok": False, "error": str(exc), "arguments": True}
        except MemoryError:
            answer = {"ok": False, "error": "the computation ran out of memory", "arguments": False}
        except Exception as exc:  # noqa: BLE001 - SymPy's own refusals (not invertible, not implemented...)
            answer = {"ok": False, "error": f"SymPy could not do it: {type(exc).__name__}: {str(exc)[:300]}",
                      "arguments": False}
        _send(answer)


def _exit_with_parent() -> None:
    """End this process within a second of the gateway's end, even in the middle of a computation (a gateway that
    exits normally kills its worker; one killed outright cannot)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def compute(request: dict[str, Any], max_chars: int) -> str:
    import sympy

    operation = request["operation"]
    expr = build(parse(request["expression"], max_chars))
    if request.get("equals") is not None:
        expr = expr - build(parse(request["equals"], max_chars))
    if operation == "evaluate":
        return _evaluated(expr)
    if operation == "simplify":
        return _cut(str(sympy.simplify(expr)))
    if operation == "solve":
        variable = _variable(expr, request.get("variable"))
        solutions = sympy.solve(expr, variable)
        if not solutions:
            return f"SymPy found no solution for {variable}: []"
        return _cut(f"solutions for {variable}: {solutions}")
    raise ExpressionError(f"unknown operation {operation!r}")


def _evaluated(expr: Any) -> str:
    import sympy

    if expr.free_symbols or not expr.is_number:
        return _cut(str(expr))
    exact = _number_text(expr)
    if isinstance(expr, sympy.Integer):
        return exact
    approx = str(expr.evalf(15))
    return exact if approx == exact else f"{exact} ≈ {approx}"


def _number_text(expr: Any) -> str:
    import sympy

    if isinstance(expr, sympy.Integer):
        digits = _digits(int(expr))
        return str(expr) if digits <= MAX_TEXT else f"{sympy.Float(expr, 15)} ({digits} digits)"
    return _cut(str(expr))


def _digits(n: int) -> int:
    """The decimal digits of ``n``, without writing it out (which takes quadratic time)."""
    n = abs(n)
    estimate = max(int(n.bit_length() * 0.30102999566398), 1)  # digits - 1 or digits
    return estimate + 1 if n >= 10**estimate else estimate


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _variable(expr: Any, name: str | None) -> Any:
    import sympy

    if name:
        return sympy.Symbol(name)
    symbols = sorted(expr.free_symbols, key=str)
    if not symbols:
        raise ExpressionError("there is no variable to solve for (use x, y or z)")
    for symbol in symbols:
        if str(symbol) == "x":
            return symbol
    return symbols[0]


def build(node: ast.expr) -> Any:
    """The SymPy expression of a tree that ``expression.parse`` accepted."""
    import sympy

    if isinstance(node, ast.Constant):
        value = node.value
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(repr(value))
    if isinstance(node, ast.Name):
        constants = {"pi": sympy.pi, "E": sympy.E, "e": sympy.E, "I": sympy.I}
        return constants[node.id] if node.id in constants else sympy.Symbol(node.id)
    if isinstance(node, ast.UnaryOp):
        inner = build(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = build(node.left), build(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        return power(left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        args = [build(a) for a in node.args]
        return _function(node.func.id, args)
    raise ExpressionError(f"{type(node).__name__} is not allowed")  # parse() refused it already


def power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, refused when the exponent (now known) or the power of numbers is too large."""
    import sympy

    if exponent.is_Number and abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"the exponent is too large (at most {MAX_EXPONENT})")
    if base.is_Rational and exponent.is_Rational:
        digits = (abs(base.p).bit_length() + base.q.bit_length()) * 0.302 * abs(exponent)
        if digits > MAX_DIGITS:
            raise ExpressionError(f"the power is too large (about {int(digits)} digits, at most {MAX_DIGITS})")
    return sympy.Pow(base, exponent)


def _function(name: str, args: list[Any]) -> Any:
    import sympy

    if name == "factorial" and args[0].is_Number and args[0] > MAX_FACTORIAL:
        raise ExpressionError(f"factorial of a number above {MAX_FACTORIAL} is refused (too large)")
    functions = {"abs": sympy.Abs, "ln": sympy.log, "ceiling": sympy.ceiling, "cbrt": sympy.cbrt}
    function = functions.get(name) or getattr(sympy, name)
    return function(*args)


if __name__ == "__main__":
    main()
