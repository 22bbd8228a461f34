"""The math tool: a restricted grammar checked before anything is computed, SymPy in a worker process that is
killed when a computation outlasts the timeout."""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmops.assistant.tools.base import ToolArgumentsError, ToolError
from lmops.assistant.tools.expression import ExpressionError, parse, split_equation
from lmops.assistant.tools.sympy_tool import MathTool
from lmops.config import MathToolConfig


@pytest.fixture(scope="module")
async def tool() -> AsyncIterator[MathTool]:
    math = MathTool(MathToolConfig())
    yield math
    await math.close()


async def answer(tool: MathTool, operation: str, expression: str, **args: str) -> str:
    result = await tool.run({"operation": operation, "expression": expression, **args})
    assert result.source == "SymPy" and not result.error
    return result.text


async def refused(tool: MathTool, expression: str, operation: str = "evaluate") -> str:
    with pytest.raises(ToolArgumentsError) as info:
        await tool.run({"operation": operation, "expression": expression})
    return info.value.message


async def test_evaluate_simplify_solve(tool):
    assert await answer(tool, "evaluate", "2**10") == "1024"
    assert await answer(tool, "evaluate", "2^10") == "1024"  # ^ is a power, as in maths
    assert await answer(tool, "evaluate", "1/3 + 1/6") == "1/2 ≈ 0.500000000000000"
    assert await answer(tool, "evaluate", "sqrt(2)*pi") == "sqrt(2)*pi ≈ 4.44288293815837"
    assert await answer(tool, "simplify", "sin(x)**2+cos(x)**2") == "1"
    assert await answer(tool, "solve", "x**2-4") == "solutions for x: [-2, 2]"
    assert await answer(tool, "solve", "x**2 = 4") == "solutions for x: [-2, 2]"
    assert await answer(tool, "solve", "2*y + 6") == "solutions for y: [-3]"
    assert await answer(tool, "solve", "x + y", variable="y") == "solutions for y: [-x]"
    assert (await answer(tool, "evaluate", "factorial(3000)")).endswith("E+9130 (9131 digits)")  # not 9,131 digits
    start = time.monotonic()
    huge = await answer(tool, "evaluate", "*".join(["factorial(10000)"] * 3))  # counted, never written out
    digits = int(math.log10(math.factorial(10000)) * 3) + 1
    assert huge.endswith(f"E+{digits - 1} ({digits} digits)") and time.monotonic() - start < 3


async def test_code_is_refused_and_never_run(tool, tmp_path: Path):
    marker = tmp_path / "pwned"
    before = tool.worker.started
    message = await refused(tool, f"__import__('os').system('touch {marker}')")
    assert message.startswith("only the functions sin, cos") and message.endswith("may be called, by name")
    assert not marker.exists()
    assert "attribute access (.) is not allowed" in await refused(tool, "().__class__")
    assert "attribute access" in await refused(tool, "x.__class__.__mro__")
    assert "indexing" in await refused(tool, "x[0]")
    assert "lambda is not allowed" in await refused(tool, "lambda: 1")
    assert "may be called, by name" in await refused(tool, "(lambda: 1)()")
    assert "only numbers" in await refused(tool, "'a'")
    assert "only numbers" in await refused(tool, "2j")
    assert "unknown name 'eval'" in await refused(tool, "eval")
    assert "unknown function 'eval'" in await refused(tool, "eval('1')")
    assert "no keyword arguments" in await refused(tool, "sin(x=1)")
    assert "sin is a function" in await refused(tool, "sin + 1")
    assert "not valid syntax" in await refused(tool, "2x")
    assert "can only be solved: use the operation solve, not simplify" in await refused(tool, "x = 1", "simplify")
    assert "can only be solved: use the operation solve, not evaluate" in await refused(tool, "x == 1")
    assert "not valid syntax" in await refused(tool, "import os")
    assert tool.worker.started == before  # refused before any process saw them


@pytest.mark.parametrize("expression", ["9**9**9**9", "9^9^9^9", "(x+1)**100000", "10**(10**4 * 10**4)",
                                        "(10**5000)**5000", "2**-99999", "factorial(100000)",
                                        "*".join(["10**10000"] * 20)])
async def test_towers_and_huge_numbers_are_refused_at_once(tool, expression):
    start = time.perf_counter()
    message = await refused(tool, expression)
    assert time.perf_counter() - start < 0.05
    assert "too large" in message


async def test_sizes_known_only_to_sympy_are_refused_by_the_worker(tool):
    assert "exponent is too large" in await refused(tool, "2**factorial(20)")
    assert "factorial of a number above" in await refused(tool, "factorial(factorial(8))")


async def test_long_and_deep_expressions_are_refused(tool):
    start = time.perf_counter()
    assert "too long (100001 characters" in await refused(tool, "1+" * 50_000 + "1")
    assert time.perf_counter() - start < 0.05
    assert "nested too deeply" in await refused(tool, "sin(" * 150 + "x" + ")" * 150)
    assert "not valid syntax" in await refused(tool, "(" * 300 + "1" + ")" * 300)  # Python's parser stops at 200
    assert "nested too deeply" in await refused(tool, "-" * 1500 + "1")
    assert "too complex" in await refused(tool, "+".join(f"({'*'.join(['x'] * 20)})" for _ in range(30)))
    assert await answer(tool, "simplify", "+".join(["x"] * 90)) == "90*x"


def test_the_grammar_alone():
    parse("log(x, 2) + gcd(12, 18) - abs(-3) * exp(I*pi)")
    assert split_equation("x**2 == 4") == ("x**2 ", " 4")
    assert split_equation("x = 4") == ("x ", " 4")
    assert split_equation("sin(x=1)") == ("sin(x=1)", None)  # refused by parse, as a keyword argument
    assert split_equation("x <= 1") == ("x <= 1", None)  # refused by parse, as a comparison
    with pytest.raises(ExpressionError, match="exactly one '='"):
        split_equation("x = 1 = 2")
    with pytest.raises(ExpressionError, match="takes 1 or 2 arguments"):
        parse("log(1, 2, 3)")
    with pytest.raises(ExpressionError, match="a comparison is not allowed"):
        parse("x < 1")
    with pytest.raises(ExpressionError, match="too long"):
        parse("1" * 11, max_chars=10)


async def test_a_runaway_computation_is_killed_and_the_next_call_gets_a_fresh_worker():
    tool = MathTool(MathToolConfig(timeout=1.0))
    try:
        assert await answer(tool, "evaluate", "2**10") == "1024"  # the worker is up: its start is not timed
        first = tool.worker.pid
        assert first is not None
        limits = Path(f"/proc/{first}/limits")
        if limits.exists():  # the worker's address space is bounded (max_memory_mb, 1024 by default)
            line = next(x for x in limits.read_text().splitlines() if x.startswith("Max address space"))
            assert line.split()[3:5] == [str(1024 * 1024 * 1024)] * 2
        start = time.monotonic()
        with pytest.raises(ToolError) as info:
            await tool.run({"operation": "simplify", "expression": "(x+y+z+1)**40 - (x-y)**40"})
        assert info.value.message == "the computation took longer than 1 s and was stopped"
        assert not isinstance(info.value, ToolArgumentsError)
        assert time.monotonic() - start < 3
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(first, 0)
        assert await answer(tool, "evaluate", "3**3") == "27"
        assert tool.worker.started == 2 and tool.worker.pid != first
    finally:
        await tool.close()
    assert tool.worker.pid is None


async def test_the_worker_gets_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENWEATHER_API_KEY", "secret-value")
    tool = MathTool(MathToolConfig())
    try:
        await answer(tool, "evaluate", "1+1")
        environ = Path(f"/proc/{tool.worker.pid}/environ")
        if not environ.exists():
            pytest.skip("no /proc here")
        names = {item.split(b"=", 1)[0] for item in environ.read_bytes().split(b"\0") if item}
        assert names <= {b"PATH", b"PYTHONPATH"}
    finally:
        await tool.close()


async def test_the_start_is_not_timed_and_concurrent_calls_take_turns():
    import asyncio

    tool = MathTool(MathToolConfig(timeout=0.2))  # importing SymPy takes longer than that
    try:
        answers = await asyncio.gather(*(answer(tool, "evaluate", f"{n}**2") for n in range(1, 6)))
        assert answers == ["1", "4", "9", "16", "25"]
        assert tool.worker.started == 1
    finally:
        await tool.close()


def test_the_worker_ends_when_the_gateway_is_killed(tmp_path: Path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "gateway.py"
    script.write_text(
        "import asyncio\n"
        "from lmops.assistant.tools.sympy_tool import MathTool\n"
        "from lmops.config import MathToolConfig\n"
        "async def main():\n"
        "    tool = MathTool(MathToolConfig(timeout=600))\n"
        "    await tool.run({'operation': 'evaluate', 'expression': '1'})\n"
        "    print(tool.worker.pid, flush=True)\n"
        "    await tool.run({'operation': 'simplify', 'expression': '(x+y+z+1)**40 - (x-y)**40'})\n"
        "asyncio.run(main())\n")
    gateway = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    try:
        assert gateway.stdout is not None
        worker = int(gateway.stdout.readline())
        time.sleep(0.5)  # the worker is computing
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        gateway.kill()
        gateway.wait(10)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False
