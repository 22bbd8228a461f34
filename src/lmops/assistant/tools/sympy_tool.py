"""The math tool: evaluate, simplify or solve an expression with SymPy, safely.

The expression is checked here first (``expression.parse``: a restricted grammar, never ``eval``), so a refused one
costs microseconds and starts nothing. Accepted ones go to one long-lived worker process
(``sympy_worker``; its address space limited to ``max_memory_mb``), one computation at a time; a computation that
outlasts ``timeout`` has its worker killed, and the next call starts a fresh one. Starting a worker (importing
SymPy, about a second) is not counted in the timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from lmops.assistant.tools.base import Tool, ToolArgumentsError, ToolError, ToolResult
from lmops.assistant.tools.expression import ExpressionError, parse, split_equation
from lmops.config import MathToolConfig

START_TIMEOUT = 60.0  # seconds a new worker may take to import SymPy
SOURCE = "SymPy"


class MathTool(Tool):
    name = "math"
    description = ("Exact mathematics with SymPy: evaluate an expression (2**10, sqrt(2)*pi), simplify it "
                   "(sin(x)**2+cos(x)**2), or solve an equation for x, y or z (x**2-4, or x**2 = 4). Use * for "
                   "products and ** for powers; functions: sin cos tan exp log sqrt abs factorial...")

    def __init__(self, config: MathToolConfig | None = None):
        self.config = config or MathToolConfig()
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "operation": {"type": "string", "enum": ["evaluate", "simplify", "solve"]},
                "expression": {"type": "string", "minLength": 1, "maxLength": self.config.max_chars,
                               "description": "e.g. 2**10, sin(x)**2 + cos(x)**2, x**2 - 4 = 0"},
                "variable": {"type": "string", "enum": ["x", "y", "z"],
                             "description": "solve: the unknown (default x, or the only symbol)"},
            },
            "required": ["operation", "expression"],
            "additionalProperties": False,
        }
        self.worker = SympyWorker(self.config.timeout, self.config.max_memory_mb, self.config.max_chars)

    async def run(self, args: dict[str, Any]) -> ToolResult:
        operation = args["operation"]
        text = args["expression"]
        if len(text) > self.config.max_chars:  # before anything reads it
            raise ToolArgumentsError(f"the expression is too long ({len(text)} characters, at most "
                                     f"{self.config.max_chars})")
        try:
            lhs, rhs = split_equation(text)
            if rhs is not None and operation != "solve":
                raise ExpressionError(f"an equation ('=') can only be solved: use the operation solve, not {operation}")
            parse(lhs, self.config.max_chars)
            if rhs is not None:
                parse(rhs, self.config.max_chars)
        except ExpressionError as exc:
            raise ToolArgumentsError(str(exc)) from None
        answer = await self.worker.compute({"operation": operation, "expression": lhs, "equals": rhs,
                                            "variable": args.get("variable")})
        if not answer.get("ok"):
            error = str(answer.get("error", "the computation failed"))
            raise ToolArgumentsError(error) if answer.get("arguments") else ToolError(error)
        return ToolResult(text=str(answer["text"]), source=SOURCE)

    async def close(self) -> None:
        await self.worker.close()


class SympyWorker:
    """One worker process, started when first needed, one request at a time, killed on timeout."""

    def __init__(self, timeout: float, memory_mb: int, max_chars: int):
        self.timeout = timeout
        self._command = [sys.executable, "-m", "lmops.assistant.tools.sympy_worker", "--memory-mb", str(memory_mb),
                         "--max-chars", str(max_chars)]
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # workers started so far

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def compute(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            process = await self._running()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps(request).encode() + b"\n")
                await process.stdin.drain()
                line = await asyncio.wait_for(process.stdout.readline(), self.timeout)
            except asyncio.TimeoutError:
                await self._stop()
                raise ToolError(f"the computation took longer than {self.timeout:g} s and was stopped") from None
            except (OSError, ValueError):  # the pipe broke (the worker died); an answer line over 64 KiB
                await self._stop()
                raise ToolError("the math worker stopped during the computation") from None
            except BaseException:  # cancelled, or the pipe broke: its state is unknown
                await self._stop()
                raise
            if not line:
                await self._stop()
                raise ToolError("the math worker stopped during the computation (out of memory?)")
            try:
                answer = json.loads(line)
            except ValueError:
                await self._stop()
                raise ToolError("the math worker sent an unreadable answer") from None
            return answer if isinstance(answer, dict) else {"ok": False, "error": "unreadable answer"}

    async def _running(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        self._process = None
        package_root = str(Path(__file__).resolve().parents[3])  # the directory holding lmops/
        # The worker gets no secrets: only what Python needs to find lmops and SymPy.
        env = {"PATH": os.environ.get("PATH", ""),
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        process = await asyncio.create_subprocess_exec(
            *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        self.started += 1
        self._process = process
        assert process.stdout is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            await self._stop()
            raise ToolError(f"the math worker did not start within {START_TIMEOUT:g} s") from None
        except BaseException:
            await self._stop()
            raise
        if not ready.startswith(b'{"ready"'):
            await self._stop()
            raise ToolError("the math worker could not start (is SymPy installed?)")
        return process

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
        await process.wait()

    async def close(self) -> None:
        async with self._lock:
            await self._stop()
