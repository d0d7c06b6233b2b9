# Sourced by scripts/run and scripts/test: create .venv and install the project into it.
# Torch goes in first so that nothing else pulls a different (multi-GB CUDA) build:
#   default  torch==2.13.0           (the CPU wheel on CPU-only machines)
#   override IMAGINE_TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124" scripts/run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python
TORCH_SPEC="${IMAGINE_TORCH:-torch==2.13.0}"
if ! "$VENV_PY" -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "$VENV_PY" -m pip install -q $TORCH_SPEC
fi
# PyICU (Unicode's confusables for the content filter) builds against the system ICU.
if ! pkg-config --exists icu-i18n 2>/dev/null || ! command -v g++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libicu-dev pkg-config g++) >/dev/null
  else
    echo "PyICU needs ICU's headers and a C++ compiler: sudo apt-get install libicu-dev pkg-config g++" >&2
  fi
fi
EXTRAS="${1:-}"
STAMP=".venv/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  "$VENV_PY" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi
