"""Load a hot-path twin for a test: `daisi_ws._pure.<module>` or `daisi_ws._native.<module>`.

A missing compiled module FAILS the native tests (ImportError) — unless
DAISI_WS_NO_EXTENSIONS=1 is set, when pure-only is the point of the run and the native
parameters are skipped.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

FORCE_PURE = os.environ.get("DAISI_WS_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}
KINDS = ("pure", "native")


def load(kind: str, module: str) -> ModuleType:
    if kind == "native":
        if FORCE_PURE:
            pytest.skip("DAISI_WS_NO_EXTENSIONS=1: pure twins only")
        return importlib.import_module(f"daisi_ws._native.{module}")
    return importlib.import_module(f"daisi_ws._pure.{module}")


def both(module: str) -> tuple[ModuleType, ModuleType]:
    """(pure, native) for a parity test; skipped as a whole under DAISI_WS_NO_EXTENSIONS=1."""
    return load("pure", module), load("native", module)
