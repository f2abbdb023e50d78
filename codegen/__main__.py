"""``python -m codegen``: generate, check, or diff Kafka message codecs.

    python -m codegen [--specs PATH] [--out DIR] [--check]
    python -m codegen diff OLD NEW      (paths, or release names next to the pinned one)
    python -m codegen configs [--out DIR] [--check]
    python -m codegen errors [--out DIR] [--check]
    python -m codegen errors --extract KAFKA_SOURCE_TREE
    python -m codegen crds [--check]

PATH is a directory of Kafka JSON definitions or a kafka-clients jar (default:
``$KAFSCALE_KAFKA_SPECS``, else the release pinned in ``protocol_specs/kafka-specs.lock.json``).
Writing into the repository's ``generated/`` also rewrites the lock file.

A directory under ``protocol_specs/`` holds KafScale's own definitions in Kafka's format (e.g.
``protocol_specs/storage`` -> ``generated/storage``): the lock file does not cover them, and
they get no API table. ``configs`` writes the config tables (``protocol_specs/topic-configs.yaml``
and ``broker-configs.yaml``: ``codegen/configs.py``) into ``generated/``; ``errors`` writes
Kafka's error codes (``protocol_specs/errors.yaml`` -> ``generated/errors.py``:
``codegen/errors.py``), and ``errors --extract`` rebuilds that table from Kafka's source tree.
``crds`` writes the Kubernetes artefacts declared in ``protocol_specs/crds/`` (the CRDs of
``deploy/helm/kafscale``, ``generated/crds.py``, the plain manifests: ``codegen/crds.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from codegen.configs import DEFAULT_OUT as CONFIGS_OUT
from codegen.configs import OUTPUTS as CONFIG_TABLES
from codegen.configs import generate_tables
from codegen.crds import MODULE_NAME as CRDS_MODULE
from codegen.crds import generate_crds
from codegen.diff import diff_messages
from codegen.errors import DEFAULT_OUT as ERRORS_OUT
from codegen.errors import OUTPUT as ERRORS_MODULE
from codegen.errors import generate_errors, write_spec
from codegen.model import SpecError
from codegen.render import KAFKA, KAFSCALE, render_all, stale_files, write_files
from codegen.specs import (
    REPO_ROOT,
    SPECS_DIR,
    default_specs_path,
    is_own_specs,
    load_lock,
    load_messages,
    read_spec_files,
)

GENERATED = REPO_ROOT / "generated"
LOCK = SPECS_DIR / "kafka-specs.lock.json"
KEEP = {"py.typed", *CONFIG_TABLES, ERRORS_MODULE, CRDS_MODULE}
"""Files of ``generated/`` the codecs' generation leaves alone (the config tables are
``python -m codegen configs``'s, the error codes ``python -m codegen errors``')."""


def release_name(path: Path) -> str:
    """``3.9.1`` for ``.../3.9.1`` or ``kafka-clients-3.9.1.jar``."""
    m = re.fullmatch(r"kafka-clients-(.+)\.jar", path.name)
    return m.group(1) if m else path.name


def own_release(path: Path) -> str:
    """How generated files name our own definitions: their folder, ``protocol_specs/storage``."""
    return path.resolve().relative_to(REPO_ROOT).as_posix()


def resolve_release(path: Path) -> Path:
    """A path as given, or a bare release name next to the pinned one (``3.8.0``)."""
    if path.exists() or len(path.parts) > 1:
        return path
    return default_specs_path().parent / path


def lock_data(path: Path) -> dict[str, object]:
    files = read_spec_files(path)
    return {
        "kafka_release": release_name(path),
        "files": {f.name: f.sha256 for f in files},
    }


def check_lock(path: Path) -> list[str]:
    """Differences between the definitions at ``path`` and the pinned checksums."""
    lock = load_lock()
    now = lock_data(path)
    problems = []
    if now["kafka_release"] != lock["kafka_release"]:
        problems.append(f"release {now['kafka_release']} is not the pinned {lock['kafka_release']}")
    pinned, actual = lock["files"], now["files"]
    assert isinstance(actual, dict)
    for name in sorted(pinned.keys() | actual.keys()):
        if pinned.get(name) != actual.get(name):
            problems.append(f"{name}: checksum differs from the lock")
    return problems


def generate(specs: Path, out: Path, check: bool) -> int:
    own = is_own_specs(specs)
    if own and out.resolve() == GENERATED.resolve():
        # It would delete every Kafka module there and pin a "release" named after the folder.
        raise SpecError(f"{specs}: our own definitions go to a subpackage, e.g. --out generated/x")
    messages = load_messages(specs)
    files = render_all(
        messages,
        own_release(specs) if own else release_name(specs),
        strict=out.resolve() == GENERATED.resolve(),
        vendor=KAFSCALE if own else KAFKA,
    )
    if check:
        problems = check_lock(specs) if out.resolve() == GENERATED.resolve() else []
        existing = {p.name for p in out.glob("*.py")} if out.is_dir() else set()
        for name in sorted(existing - files.keys() - KEEP):
            problems.append(f"{out / name}: not produced by the specs (stale)")
        problems += stale_files({out / n: t for n, t in files.items()}, "the specs give")
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(
                f"generated/ is stale ({len(problems)} problems): run scripts/regen",
                file=sys.stderr,
            )
            return 1
        print(f"{len(files)} files match {specs} ({len(messages)} definitions)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.py"):
        if stale.name not in files and stale.name not in KEEP:
            stale.unlink()
    write_files({out / n: t for n, t in files.items()})
    (out / "py.typed").touch()
    if out.resolve() == GENERATED.resolve():
        LOCK.write_text(json.dumps(lock_data(specs), indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(files)} files to {out} from {specs} ({len(messages)} definitions)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["configs"]:
            p = argparse.ArgumentParser(prog="python -m codegen configs")
            p.add_argument("--out", type=Path, default=CONFIGS_OUT, help="output directory")
            p.add_argument("--check", action="store_true", help="fail if --out differs")
            a = p.parse_args(argv[1:])
            return generate_tables(a.out, a.check)
        if argv[:1] == ["crds"]:
            p = argparse.ArgumentParser(prog="python -m codegen crds")
            p.add_argument("--check", action="store_true", help="fail if the files differ")
            a = p.parse_args(argv[1:])
            return generate_crds(a.check)
        if argv[:1] == ["errors"]:
            p = argparse.ArgumentParser(prog="python -m codegen errors")
            p.add_argument("--out", type=Path, default=ERRORS_OUT, help="output directory")
            p.add_argument("--check", action="store_true", help="fail if --out differs")
            p.add_argument(
                "--extract",
                type=Path,
                metavar="KAFKA_SOURCE_TREE",
                help="rewrite protocol_specs/errors.yaml from Kafka's source (of the pinned "
                "release) instead",
            )
            a = p.parse_args(argv[1:])
            if a.extract is not None:
                return write_spec(a.extract)
            return generate_errors(a.out, a.check)
        if argv[:1] == ["diff"]:
            p = argparse.ArgumentParser(prog="python -m codegen diff")
            p.add_argument("old", type=Path)
            p.add_argument("new", type=Path)
            a = p.parse_args(argv[1:])
            old, new = resolve_release(a.old), resolve_release(a.new)
            lines = diff_messages(load_messages(old), load_messages(new))
            print(f"# {release_name(old)} -> {release_name(new)}: {len(lines)} lines")
            print("\n".join(lines))
            return 0
        p = argparse.ArgumentParser(prog="python -m codegen", description=__doc__.splitlines()[0])
        p.add_argument("--specs", type=Path, default=None, help="definitions directory or jar")
        p.add_argument("--out", type=Path, default=GENERATED, help="output directory")
        p.add_argument("--check", action="store_true", help="fail if --out differs")
        a = p.parse_args(argv)
        return generate(a.specs or default_specs_path(), a.out, a.check)
    except SpecError as e:
        print(f"codegen: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
