"""Builds the Cython twins in csrc/ as daisi_ws._native.*; everything else is in pyproject.toml.

A machine without a C compiler (or with DAISI_WS_NO_EXTENSIONS=1 at build time) still
installs: the package then runs on its pure-Python twins, with a warning.
DAISI_WS_REQUIRE_EXTENSIONS=1 (set by cibuildwheel) turns that warning into a failed build.
"""

import os
import sys
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
NATIVE_SRC = Path("csrc") / "daisi_ws" / "_native"

# Directives that drop safety checks are set per module in the .pyx headers, where the
# parity tests cover them; these are the safe project-wide defaults.
DIRECTIVES = {
    "language_level": "3",
    "embedsignature": True,
}
REQUIRED = os.environ.get("DAISI_WS_REQUIRE_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}


def _warn(message: str) -> None:
    if REQUIRED:
        raise SystemExit(f"daisi-ws: {message} (DAISI_WS_REQUIRE_EXTENSIONS=1)")
    sys.stderr.write(f"WARNING (daisi-ws): {message}; the pure-Python twins will be used.\n")


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            _warn(f"compiled extensions could not be built ({exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"extension {ext.name} could not be built ({exc})")


def extensions() -> list:
    if os.environ.get("DAISI_WS_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}:
        _warn("DAISI_WS_NO_EXTENSIONS is set at build time")
        return []
    sources = sorted(glob(str(NATIVE_SRC / "*.pyx")))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not available")
        return []
    exts = [
        Extension(f"daisi_ws._native.{Path(src).stem}", [src], extra_compile_args=["-O3", "-g0"])
        for src in sources
    ]
    # include_path is csrc/ (not csrc/daisi_ws/_native): Cython finds the .pxd of module
    # daisi_ws._native.x as daisi_ws/_native/x.pxd under it; without it the cdef class fields
    # declared there are silently missing.
    return cythonize(exts, compiler_directives=DIRECTIVES, include_path=["csrc"], quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
