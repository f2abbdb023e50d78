# Sourced by the scripts: the repository root, and a .venv with the project installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [ ! -x "$PY" ]; then
  "${PYTHON:-python3}" -m venv "$ROOT/.venv"
fi
# What to install: KAFSCALE_EXTRAS names the project's extras ("test" by default: everything
# the suite needs; scripts/serve asks for none, scripts/serve --cluster for "cluster").
# Reinstall only when the dependency list changed (pip takes seconds even when idle).
extras="${KAFSCALE_EXTRAS-test}"
stamp="$ROOT/.venv/.kafscale-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
  touch "$stamp"
fi
# Debian packages the tests need: kcat (conformance), etcd-server (the etcd metadata store
# tests; 3.4), chromium and chromium-driver (the web console in a real browser). Silent when
# they are already there. Without them those tests skip locally and fail under CI.
apt_need() {  # apt_need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing $2 (apt-get install $2)" >&2
    local apt_log
    apt_log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first: the package lists are often already there.
    if ! apt-get install -y -q "$2" >"$apt_log" 2>&1; then
      apt-get update -q >>"$apt_log" 2>&1 || true
      apt-get install -y -q "$2" >>"$apt_log" 2>&1 || true
    fi
    if ! command -v "$1" >/dev/null 2>&1; then
      cat "$apt_log" >&2
      echo "warning: could not install $2; the tests that need it will skip (fail in CI)" >&2
    fi
    rm -f "$apt_log"
  else
    echo "note: $2 is not installed and we are not root; the tests that need it will skip" \
      "(fail in CI). Install it with: sudo apt-get install $2" >&2
  fi
}
case " ${KAFSCALE_APT-kcat etcd chromium} " in *" kcat "*) apt_need kcat kcat ;; esac
case " ${KAFSCALE_APT-kcat etcd chromium} " in *" etcd "*) apt_need etcd etcd-server ;; esac
case " ${KAFSCALE_APT-kcat etcd chromium} " in *" chromium "*)
  apt_need chromium chromium
  apt_need chromedriver chromium-driver ;;
esac
