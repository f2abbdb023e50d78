#!/usr/bin/env python3
"""Build the optional accelerated codecs: mypyc-compile ``accelerated.MODULES``.

The same source files the pure build imports are compiled (nothing is generated for this), into
``build/accelerated/`` with a manifest of their sha256, so that a build older than its sources
is refused at import (see :mod:`kafscale.protocol.accelerated`). The build runs in a scratch
directory outside the repository: setuptools there sees no ``pyproject.toml`` (it would build the
whole project), and mypy no configuration (the modules are already checked strictly by ``mypy``).

Run from the repository root: ``scripts/accelerate`` (``--check`` only reports whether the
current build is usable).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from kafscale.protocol import accelerated  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process (mypy, mypyc) and its finished children (the C compiler)."""
    ours = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ours.ru_utime + ours.ru_stime + children.ru_utime + children.ru_stime


def build(out: Path, opt_level: str) -> tuple[float, float]:
    """Compile into ``out`` (replaced only when the build succeeds): (wall, CPU) seconds."""
    import mypy.version
    from mypyc.build import mypycify
    from setuptools import setup

    sources = {m: accelerated.source_hash(m) for m in accelerated.MODULES}  # before compiling
    out.parent.mkdir(parents=True, exist_ok=True)
    # Outside the repository: setuptools and mypy look for their configuration upwards.
    scratch = Path(tempfile.mkdtemp(prefix="kafscale-accelerate-"))
    cwd = Path.cwd()
    started, cpu = time.monotonic(), cpu_seconds()
    try:
        os.chdir(scratch)
        extensions = mypycify(
            [str(accelerated.source_path(m)) for m in accelerated.MODULES],
            group_name=accelerated.GROUP,
            opt_level=opt_level,
            debug_level="0",
            target_dir=str(scratch / "c"),
        )
        setup(
            name="kafscale-accelerated",
            ext_modules=extensions,
            script_args=[
                "-q",
                "build_ext",
                "--build-lib",
                str(scratch / "lib"),
                "--build-temp",
                str(scratch / "tmp"),
            ],
        )
        seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu
        if sources != {m: accelerated.source_hash(m) for m in accelerated.MODULES}:
            raise SystemExit("sources changed while compiling (scripts/regen?): run it again")
        manifest = {
            "interpreter": accelerated.interpreter_tag(),
            "mypy": mypy.version.__version__,
            "opt_level": opt_level,
            "compile_seconds": round(seconds, 1),
            "compile_cpu_seconds": round(cpu, 1),
            "sources": sources,
        }
        (scratch / "lib" / accelerated.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        accelerated.check(scratch / "lib")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(scratch / "lib", out)
    finally:
        os.chdir(cwd)
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is usable")
    parser.add_argument("--opt", default="3", help="C optimisation level (default 3)")
    args = parser.parse_args()
    out = accelerated.build_dir()
    if not args.check:
        modules = ", ".join(accelerated.MODULES)
        print(f"compiling {len(accelerated.MODULES)} modules with mypyc: {modules}", flush=True)
        seconds, cpu = build(out, args.opt)
        print(f"built {out} in {seconds:.0f} s ({cpu:.0f} s of CPU)")
    try:
        accelerated.check(out)
    except ValueError as e:
        print(f"not usable: {e}", file=sys.stderr)
        return 1
    print(f"usable: {out} (KAFSCALE_ACCELERATE=1 to use it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
