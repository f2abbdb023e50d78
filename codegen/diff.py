"""What a Kafka upgrade changes: ``python -m codegen diff OLD NEW``."""

from __future__ import annotations

from collections.abc import Iterator

from codegen.model import Field, Message, Struct


def _fields(s: Struct, prefix: str = "") -> Iterator[tuple[str, Field]]:
    for f in s.fields:
        path = f"{prefix}{f.name}"
        yield path, f
        if f.struct is not None:
            yield from _fields(f.struct, path + ".")


def diff_messages(old: list[Message], new: list[Message]) -> list[str]:
    """Human-readable lines, one per change, grouped by message (sorted, deterministic)."""
    before = {m.name: m for m in old}
    after = {m.name: m for m in new}
    lines: list[str] = []
    for name in sorted(after.keys() - before.keys()):
        m = after[name]
        key = f" (API key {m.api_key})" if m.api_key is not None else ""
        lines.append(f"+ {name}{key}: new {m.kind}, versions {m.valid}")
    for name in sorted(before.keys() - after.keys()):
        lines.append(f"- {name}: removed")
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        changes: list[str] = []
        if a.valid != b.valid:
            added = [v for v in b.versions() if v not in a.valid]
            removed = [v for v in a.versions() if v not in b.valid]
            text = f"versions {a.valid} -> {b.valid}"
            if added:
                text += f" (added {', '.join(map(str, added))})"
            if removed:
                text += f" (removed {', '.join(map(str, removed))})"
            changes.append(text)
        if a.flexible != b.flexible:
            changes.append(f"flexible versions {a.flexible} -> {b.flexible}")
        if a.latest_version_unstable != b.latest_version_unstable:
            changes.append(
                f"latestVersionUnstable {a.latest_version_unstable} -> {b.latest_version_unstable}"
            )
        fa, fb = dict(_fields(a.root)), dict(_fields(b.root))
        for path in sorted(fb.keys() - fa.keys(), key=list(fb).index):
            f = fb[path]
            changes.append(f"field added: {path} {f.type.name} (versions {f.versions})")
        for path in sorted(fa.keys() - fb.keys(), key=list(fa).index):
            changes.append(f"field removed: {path}")
        for path in [p for p in fb if p in fa]:
            x, y = fa[path].declared, fb[path].declared
            if x != y:
                what = ", ".join(
                    f"{k} {x.get(k, '-')} -> {y.get(k, '-')}"
                    for k in sorted(x.keys() | y.keys())
                    if x.get(k) != y.get(k)
                )
                changes.append(f"field changed: {path}: {what}")
        if changes:
            lines.append(f"~ {name}:")
            lines.extend(f"    {c}" for c in changes)
    return lines
