"""The serving process's log handler: lines logged together leave in one write, none lost or reordered."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading

from lmops.observability.logging import BufferedStreamHandler


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def logger_to(stream: Writes, interval: float = 0.05) -> tuple[logging.Logger, BufferedStreamHandler]:
    handler = BufferedStreamHandler(stream, interval=interval, max_lines=4)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger(f"test-{id(stream)}")  # not registered: nothing else writes to it
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


async def test_lines_logged_on_the_loop_leave_together_after_the_interval() -> None:
    out = Writes()
    log, _ = logger_to(out)
    log.info("one")
    log.info("two")
    assert out.writes == []
    await asyncio.sleep(0.15)
    assert out.writes == ["INFO one\nINFO two\n"]
    log.info("three")
    await asyncio.sleep(0.15)
    assert out.writes[1:] == ["INFO three\n"]


async def test_a_warning_a_full_buffer_and_another_thread_write_at_once_in_order() -> None:
    out = Writes()
    log, _ = logger_to(out)
    log.info("held")
    log.warning("now")
    assert out.writes == ["INFO held\nWARNING now\n"]
    for n in range(4):
        log.info("line %d", n)
    assert out.getvalue().endswith("INFO line 2\nINFO line 3\n")  # max_lines=4 reached: written without waiting
    log.info("before the thread")
    thread = threading.Thread(target=log.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert out.getvalue().endswith("INFO before the thread\nINFO from a thread\n")
    await asyncio.sleep(0.15)
    assert out.getvalue().count("\n") == 8  # every line once


def test_a_loop_that_ends_before_its_flush_strands_nothing() -> None:
    out = Writes()
    log, handler = logger_to(out, interval=30)

    async def log_and_leave() -> None:
        log.info("first loop")

    asyncio.run(log_and_leave())  # its scheduled flush never runs
    assert out.writes == []

    async def log_on_a_new_loop() -> None:
        log.info("second loop")
        await asyncio.sleep(0.1)

    handler.interval = 0.01
    asyncio.run(log_on_a_new_loop())  # the new loop schedules its own flush, which writes both lines
    assert out.writes == ["INFO first loop\nINFO second loop\n"]


def test_a_serving_process_writes_its_held_lines_at_exit() -> None:
    code = ("import asyncio, logging; from lmops.observability.logging import configure_logging\n"
            "configure_logging('info', True)\n"
            "async def main():\n"
            "    for n in range(3): logging.getLogger('lmops.test').info('line %d', n)\n"
            "asyncio.run(main())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["msg"] for line in lines] == ["line 0", "line 1", "line 2"]
