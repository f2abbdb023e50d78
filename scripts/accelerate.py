#!/usr/bin/env python3
"""Build the optional accelerated codecs: mypyc-compile ``accelerated.MODULES``.

``kafscale/protocol``'s modules are compiled from the files the pure build imports; the
``generated`` ones from the flavor ``codegen`` renders for mypyc from the same definitions
(native classes, primitives instead of ``struct``: ``codegen.render.render_native``), never
committed. Into ``build/accelerated/``, with a manifest of the sources' and the generator's
sha256, so that a build older than either is refused at import (see
:mod:`kafscale.protocol.accelerated`). The build runs in a scratch
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
from collections.abc import Callable
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


def source_tree(root: Path, render_native: Callable[[list[str]], dict[str, str]]) -> Path:
    """The packages the compiled modules import, at ``root``, with the generated modules of
    :data:`accelerated.MODULES` in their compiled flavor: mypy checks and mypyc compiles
    these (the committed ones are the pure flavor)."""
    for package in ("kafscale", "generated"):
        for file in (REPO_ROOT / package).rglob("*"):
            if file.suffix in (".py", ".typed") and "__pycache__" not in file.parts:
                target = root / file.relative_to(REPO_ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
    generated = [m.split(".", 1)[1] for m in accelerated.MODULES if m.startswith("generated.")]
    for name, text in render_native(generated).items():
        (root / "generated" / f"{name}.py").write_text(text)
    return root


def build(out: Path, opt_level: str) -> tuple[float, float]:
    """Compile into ``out`` (replaced only when the build succeeds): (wall, CPU) seconds."""
    import mypy.version
    from mypyc.build import mypycify
    from setuptools import setup

    from codegen.render import render_native

    # Before compiling: what the build is checked against at import.
    sources = {m: accelerated.source_hash(m) for m in accelerated.MODULES}
    generator = accelerated.generator_hash()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Outside the repository: setuptools and mypy look for their configuration upwards.
    scratch = Path(tempfile.mkdtemp(prefix="kafscale-accelerate-"))
    cwd = Path.cwd()
    started, cpu = time.monotonic(), cpu_seconds()
    try:
        tree = source_tree(scratch / "src", render_native)
        os.chdir(scratch)
        extensions = mypycify(
            [
                str(tree / accelerated.source_path(m).relative_to(REPO_ROOT))
                for m in accelerated.MODULES
            ],
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
        if (
            sources != {m: accelerated.source_hash(m) for m in accelerated.MODULES}
            or generator != accelerated.generator_hash()
        ):
            raise SystemExit("sources changed while compiling (scripts/regen?): run it again")
        manifest = {
            "interpreter": accelerated.interpreter_tag(),
            "mypy": mypy.version.__version__,
            "opt_level": opt_level,
            "compile_seconds": round(seconds, 1),
            "compile_cpu_seconds": round(cpu, 1),
            "sources": sources,
            "generator": generator,
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
