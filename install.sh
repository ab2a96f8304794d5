#!/usr/bin/env bash
# Installs ttt_kernels into a virtual environment with only what running it needs, and builds it.
#
#   bash install.sh            # .venv: CPU torch and a CPU build, or the CUDA build where a GPU is present
#   bash install.sh --cuda     # CUDA torch and the CUDA kernels (sm_80 + sm_90a), GPU or not
#   bash install.sh --cpu      # CPU torch and a CPU build, GPU or not
#   bash install.sh --test     # also what the tests need (pytest)
#   bash install.sh --venv DIR # another environment (created if missing)
#
# Running it again reuses the environment and the build directory (build/install-cpu or build/install-cuda): only
# what changed is rebuilt. It never touches files outside the venv and the build directory.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
want=auto
test=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) want=cuda ;;
    --cpu) want=cpu ;;
    --test) test=1 ;;
    --venv)
      [ $# -ge 2 ] || { echo "install.sh: --venv needs a directory" >&2; exit 2; }
      venv=$2
      shift
      ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$want" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    want=cuda
  else
    want=cpu
  fi
fi
# torch 2.13.0+cpu is the CPU build (no CUDA libraries, ~200 MB); 2.14.1 the CUDA 13 build (several GB).
if [ "$want" = cuda ]; then torch="torch==2.14.1"; cuda=ON; else torch="torch==2.13.0"; cuda=OFF; fi
echo "install.sh: $want build into $venv ($torch)"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
reqs=(-r requirements/runtime.txt -r requirements/build.txt)
[ "$test" = 1 ] && reqs+=(-r requirements/test.txt)
"$py" -m pip install -q "$torch" "${reqs[@]}"

start=$SECONDS
echo "install.sh: building (CPU only: about 2 minutes on 2 cores; with the CUDA kernels about 7 more)"
# --test also builds the tests' own kernels (libttt_kernels_testing.so); the library users run has none.
TTT_KERNELS_CUDA=$cuda TTT_KERNELS_TESTING=$([ "$test" = 1 ] && echo ON || echo OFF) \
  "$py" -m pip install -q --no-build-isolation --no-deps . -Cbuild-dir="build/install-$want"
echo "install.sh: built in $((SECONDS - start)) s"
"$venv/bin/ttt-kernels" --version
