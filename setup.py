"""Only the optional C accelerator of the TLS relay is built here; all metadata is in
pyproject.toml.

``tlsgate.tls._relayc`` (tlsgate/tls/relay_accel.c, built by cffi from
tlsgate/tls/relayc_build.py) runs the relay's per-read OpenSSL loops in C. It needs a C compiler
and the Python headers (Debian: gcc, python3-dev). Without them the build step is skipped with a
warning and tlsgate runs its pure-Python loops (same behaviour, more CPU per TLS record);
the first worker's start-up log says which one is in use ("TLS relay loops: ...").
"""

from __future__ import annotations

from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Never fail the installation over the accelerator."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            print(f"WARNING: tlsgate's C relay accelerator was not built ({exc}); "
                  "the pure-Python relay is used")

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler error, missing Python.h
            print(f"WARNING: tlsgate's C relay accelerator was not built ({exc}); "
                  "the pure-Python relay is used")


setup(cffi_modules=["tlsgate/tls/relayc_build.py:ffibuilder"],
      cmdclass={"build_ext": OptionalBuildExt})
