"""Build hook: compile the access guard's request path with mypyc when this machine can; pure Python otherwise.

Every request through a gateway with access control runs the key check, the limit counters and the
settlement in ``lmops.access``. Compiled, they cost about a third less CPU per request (docs/benchmarks.md).
``lmops.compiled.MODULES`` lists them, with the pricing they call. They stay ordinary, type-checked Python
source: without a C compiler or Python's headers, when mypyc refuses them, or with ``LMOPS_PURE_PYTHON=1`` at
install, the build leaves them uncompiled and lmops runs the same code interpreted. Everything else is
configured in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
GROUP = "lmops_compiled"  # the shared library holding the compiled modules: lmops_compiled__mypyc.<abi>.so


def _compiled_modules() -> list[str]:
    """The module list, read from the package (importing it would need lmops's dependencies at build time)."""
    namespace: dict[str, Any] = {}
    exec((ROOT / "src/lmops/compiled.py").read_text(), namespace)
    return [f"src/lmops/{name}.py" for name in namespace["MODULES"]]


def _say(message: str) -> None:
    print(f"lmops: {message}", file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("LMOPS_PURE_PYTHON"):
        _say("LMOPS_PURE_PYTHON is set: the access modules stay pure Python")
        return []
    try:
        from mypyc.build import mypycify

        # Imports outside the compiled modules (pydantic, starlette...) are not installed in the build
        # environment: their types are Any to mypyc, which is all the compiled code needs of them.
        return mypycify(["--ignore-missing-imports", "--follow-imports=silent", *_compiled_modules()],
                        opt_level="3", group_name=GROUP)
    except (Exception, SystemExit) as exc:  # mypyc missing, or a type error it will not compile
        _say(f"the access modules stay pure Python (mypyc: {exc!r})")
        return []


class OptionalBuildExt(build_ext):
    """Compile if possible; on failure, leave no half-built module behind (a stub without its shared library
    would not import) and install the pure-Python modules."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no Python headers...
            _say(f"compiling the access modules failed ({exc}); they stay pure Python")
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
