"""Stop-sequence matching over streamed text, holding back only what could still become a stop."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str] | None):
        self._stops = [s for s in (stops or []) if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; return what is safe to emit now. Sets ``stopped`` when a stop appears."""
        if not self._stops:
            return piece
        self._buffer += piece
        cut = min((i for i in (self._buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buffer = self._buffer[:cut], ""
            self.stopped = True
            return out
        keep = self._partial_suffix()
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some stop sequence."""
        buf = self._buffer
        for n in range(min(self._hold, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
