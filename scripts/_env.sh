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
