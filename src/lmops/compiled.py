"""Which build of the request path's access modules runs: compiled by mypyc at install, or their source.

setup.py compiles ``MODULES`` (the access checks and the pricing every authenticated request runs) when it
can. A compiled module shadows its ``.py`` file, so after an edit of a checkout installed in editable mode the
old compiled code would keep running. ``use_sources_if_needed``
(called by ``lmops/__init__.py``) prevents that: if any of the modules has no compiled build at least as
recent as its source, or ``LMOPS_PURE_PYTHON`` is set, all of them load from source. All or none: compiled
modules call each other's native code directly and must not meet an interpreted twin of one of them.

This file is read by setup.py before lmops is installed: standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MODULES = ("access/counters", "access/plan", "access/guard", "access/key_cache", "usage/pricing")  # under lmops/

COMPILED, SOURCE, STALE = "compiled", "source", "stale"


def build_state(directory: Path, names: Sequence[str], checkout: bool = True) -> str:
    """``compiled`` when every module has a compiled build (in a ``checkout``: one newer than its source),
    ``source`` when none has one, ``stale`` otherwise (a build missing, or a source edited since its build).

    Outside a checkout (installed from a wheel) the files' times say nothing: pip may write a module's source
    after its build.
    """
    fresh = 0
    for name in names:
        source = directory / f"{name}.py"
        builds = [directory / f"{name}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        built = [path.stat().st_mtime for path in builds if path.exists()]
        if built and (not checkout or max(built) >= source.stat().st_mtime):
            fresh += 1
        elif built:
            return STALE
    if fresh == len(names):
        return COMPILED
    return SOURCE if fresh == 0 else STALE


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules (paths under ``directory``, the package ``package``) in their ``.py`` files,
    whatever else lies beside them."""

    def __init__(self, package: str, directory: Path, names: Sequence[str]):
        self.package = package
        self.paths = {f"{package}.{name.replace('/', '.')}": directory / f"{name}.py" for name in names}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.paths.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def use_sources_if_needed(package: str, directory: Path) -> str:
    """Make ``package``'s ``MODULES`` load from source unless their compiled builds are usable; the build
    that will run (``compiled`` or ``source``)."""
    checkout = (directory.parents[1] / "setup.py").exists()  # src/lmops: an editable install
    state = build_state(directory, MODULES, checkout)
    if state == SOURCE or (state == COMPILED and not os.environ.get("LMOPS_PURE_PYTHON")):
        return state
    if state == STALE:
        logging.getLogger("lmops").warning(
            "the compiled modules in %s are older than their sources: running the sources "
            "(reinstall lmops to compile them again)", directory)
    if not any(isinstance(f, SourceFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder(package, directory, MODULES))
    return SOURCE
