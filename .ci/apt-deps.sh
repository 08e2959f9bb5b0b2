#!/usr/bin/env bash
# The Debian packages tfcnn needs, listed once; `make demo`, `make test` and .ci/run all call this.
#   .ci/apt-deps.sh data   Fashion-MNIST for the main job (dataset-fashion-mnist)
#   .ci/apt-deps.sh test   that, plus what the tests drive: kotlinc + JUnit 4 (Android core), headless Chromium
# Installs what is missing when apt is usable (root, or sudo without a password); otherwise prints
# one line saying what is missing and the ways to get it, and exits 1.
set -euo pipefail

data_pkgs=(dataset-fashion-mnist)
test_pkgs=(kotlin junit4 chromium chromium-driver)
case "${1:-test}" in
  data) want=("${data_pkgs[@]}") ;;
  test) want=("${data_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 data|test" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ "${#missing[@]}" -eq 0 ] && exit 0

# Fashion-MNIST found elsewhere (TFCNN_DATA_DIR) needs no package.
if [ -n "${TFCNN_DATA_DIR:-}" ] && [ -e "$TFCNN_DATA_DIR/train-images-idx3-ubyte.gz" -o -e "$TFCNN_DATA_DIR/train-images-idx3-ubyte" ]; then
  rest=(); for p in "${missing[@]}"; do [ "$p" = dataset-fashion-mnist ] || rest+=("$p"); done
  missing=("${rest[@]+"${rest[@]}"}")
  [ "${#missing[@]}" -eq 0 ] && exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
  if [[ " ${missing[*]} " == *" dataset-fashion-mnist "* ]]; then
    echo "tfcnn: Fashion-MNIST is not installed and apt-get cannot be used here; either run 'sudo apt-get install dataset-fashion-mnist', or set TFCNN_DATA_DIR to a folder holding the four IDX files, or set data.path in the pipeline file (missing: ${missing[*]})" >&2
  else
    echo "tfcnn: the tests need the Debian packages ${missing[*]} and apt-get cannot be used here (not root, no password-less sudo); run 'sudo apt-get install ${missing[*]}'" >&2
  fi
  exit 1
fi
echo "tfcnn: installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
