"""The optional accelerated codecs: the hot generated modules compiled with mypyc.

``scripts/accelerate`` compiles :data:`MODULES` (the codecs the broker's hot path and the codec
benchmark use, and :mod:`kafscale.protocol.wire`) from the very same source files into
``build/accelerated/`` (never committed). They are used only when ``KAFSCALE_ACCELERATE`` asks
for them:

- unset, ``0`` or ``pure``: the pure Python modules (the default, which always works);
- ``1`` or ``auto``: the compiled modules when they are built and current, else the pure ones
  (with a warning saying why);
- ``require``: the compiled modules, or an ImportError saying why not (tests, benchmarks).

"Current" means the build's manifest names this interpreter and the sha256 of every source
file it was compiled from matches the file as it is now: after ``scripts/regen`` changes a
module, the stale build is refused until ``scripts/accelerate`` runs again. Modules outside
:data:`MODULES` are always pure. :func:`install` runs when :mod:`kafscale.protocol` is
imported (``generated`` imports it first), before any codec module is.

This module uses the standard library only: it must not import the modules it redirects.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ENV = "KAFSCALE_ACCELERATE"
DIR_ENV = "KAFSCALE_ACCELERATED_DIR"

MODULES: tuple[str, ...] = (
    "kafscale.protocol.wire",
    "kafscale.protocol.message",
    "generated.request_header",
    "generated.response_header",
    "generated.produce_request",
    "generated.produce_response",
    "generated.fetch_request",
    "generated.fetch_response",
    "generated.metadata_request",
    "generated.metadata_response",
    "generated.api_versions_request",
    "generated.api_versions_response",
)
"""What ``scripts/accelerate`` compiles: the broker's per-request codecs (headers, Produce,
Fetch, Metadata, ApiVersions), the benchmarked messages, the wire primitives they call and the
base classes of every generated class (native classes, so that the compiled codecs' classes can
be native too). The ``generated`` ones are compiled in the flavor ``codegen`` renders for mypyc
(:func:`codegen.render.render_native`), from the same definitions as the committed modules."""

GENERATOR = ("codegen", "protocol_specs/kafka-specs.lock.json")
"""What else the compiled flavor of the generated modules comes from: the generator and the
pinned definitions (their checksums). A build older than any of it is stale."""

GROUP = "kafscale.protocol._accelerated"
"""mypyc's group name: its shared library is the module ``GROUP + "__mypyc"``."""

MANIFEST = "manifest.json"

ROOT = Path(__file__).resolve().parent.parent.parent
"""The directory holding the ``kafscale`` and ``generated`` packages."""

active = False
"""True once the compiled modules are installed in this process."""
reason = "not requested"
"""Why the pure modules are in use (when ``active`` is False)."""


def build_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or ROOT / "build" / "accelerated")


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def generator_hash() -> str:
    """sha256 over :data:`GENERATOR`'s files (paths and contents, in path order)."""
    digest = hashlib.sha256()
    for entry in GENERATOR:
        path = ROOT / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() if file.exists() else b"(missing)")
    return digest.hexdigest()


def interpreter_tag() -> str:
    """What a compiled module is bound to: implementation, version and ABI."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_config_var('EXT_SUFFIX')}"


def extension_path(directory: Path, module: str) -> Path:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return directory.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[-1] + suffix)


def check(directory: Path | None = None) -> dict[str, Path]:
    """The compiled files by module name (including mypyc's shared library), or ValueError
    saying why the build cannot be used."""
    directory = directory or build_dir()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(f"no accelerated build at {directory} (run scripts/accelerate)") from None
    except ValueError as e:
        raise ValueError(f"unreadable {directory / MANIFEST}: {e}") from None
    if manifest.get("interpreter") != interpreter_tag():
        raise ValueError(
            f"the accelerated build is for {manifest.get('interpreter')}, this is "
            f"{interpreter_tag()} (run scripts/accelerate)"
        )
    if manifest.get("generator") != generator_hash():
        raise ValueError("the accelerated build is older than codegen/ (run scripts/accelerate)")
    sources: dict[str, str] = manifest.get("sources", {})
    files: dict[str, Path] = {}
    for module, digest in sorted(sources.items()):
        if not source_path(module).exists() or source_hash(module) != digest:
            raise ValueError(f"the accelerated build of {module} is stale (run scripts/accelerate)")
        files[module] = extension_path(directory, module)
    files[GROUP + "__mypyc"] = extension_path(directory, GROUP + "__mypyc")
    for module, path in files.items():
        if not path.exists():
            raise ValueError(f"the accelerated build lacks {module} ({path})")
    return files


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules (first on ``sys.meta_path``); declines everything else."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install() -> None:
    """Put the compiled modules in front of the pure ones when ``KAFSCALE_ACCELERATE`` asks."""
    global active, reason
    mode = os.environ.get(ENV, "").strip().lower()
    if active or mode in ("", "0", "pure", "no", "off", "false"):
        return
    if mode not in ("1", "auto", "yes", "on", "true", "require"):
        raise ImportError(f"{ENV}={mode!r}: expected pure, auto or require")
    loaded = [m for m in MODULES if m in sys.modules]
    finder = None
    try:
        if loaded:
            raise ValueError(f"pure modules were imported first: {', '.join(loaded)}")
        finder = _Finder(check())
        sys.meta_path.insert(0, finder)
        importlib.import_module(GROUP + "__mypyc")  # a build that cannot load fails here
    except Exception as e:  # any failure: the pure modules, which always work
        if finder is not None:
            sys.meta_path.remove(finder)
        reason = str(e)
        if mode == "require":
            raise ImportError(f"{ENV}=require: {reason}") from None
        warnings.warn(f"pure Python codecs: {reason}", RuntimeWarning, stacklevel=2)
        return
    active = True
    reason = ""


def load_pure(module: str) -> ModuleType:
    """A private pure-Python copy of a generated module (and of the wire primitives and base
    classes it uses), whatever this process uses: the codec benchmark times both builds in one
    run."""
    name = f"_kafscale_pure.{module}"
    if name in sys.modules:
        return sys.modules[name]
    shared = ("kafscale.protocol.wire", "kafscale.protocol.message")  # in import order
    saved = {m: sys.modules.get(m) for m in shared}
    try:
        for m in shared:  # each copy's imports bind to the copies before it
            sys.modules[m] = sys.modules.get(f"_kafscale_pure.{m}") or _exec_copy(
                f"_kafscale_pure.{m}", m
            )
        return _exec_copy(name, module)
    finally:
        for m, previous in saved.items():
            if previous is None:
                del sys.modules[m]
            else:
                sys.modules[m] = previous


def _exec_copy(name: str, module: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, source_path(module))
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy
    spec.loader.exec_module(copy)
    return copy
