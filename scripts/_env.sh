# Sourced by the scripts: the repository root, and a .venv with the project installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [ ! -x "$PY" ]; then
  "${PYTHON:-python3}" -m venv "$ROOT/.venv"
fi
# Reinstall only when the dependency list changed (pip takes seconds even when idle).
stamp="$ROOT/.venv/.kafscale-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  touch "$stamp"
fi
# kcat, for the conformance tests (Debian package `kcat`). Silent when it is already there.
# Without it those tests skip locally and fail under CI.
if ! command -v kcat >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing kcat (apt-get install kcat)" >&2
    apt_log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first: the package lists are often already there.
    if ! apt-get install -y -q kcat >"$apt_log" 2>&1; then
      apt-get update -q >>"$apt_log" 2>&1 || true
      apt-get install -y -q kcat >>"$apt_log" 2>&1 || true
    fi
    if ! command -v kcat >/dev/null 2>&1; then
      cat "$apt_log" >&2
      echo "warning: could not install kcat; the kcat conformance tests will skip (fail in CI)" >&2
    fi
    rm -f "$apt_log"
  else
    echo "note: kcat is not installed and we are not root; the kcat conformance tests will" \
      "skip (fail in CI). Install it with: sudo apt-get install kcat" >&2
  fi
fi
