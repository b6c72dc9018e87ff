#!/usr/bin/env bash
# The Python client's tests (clients/python/tests) against real kvd
# processes: a venv in target/python-venv (made if missing), the package
# installed into it with its test extra, the checked-in proto descriptor
# checked against proto/flashkv.proto, then pytest. Extra arguments go to
# pytest (e.g. `-k failover`, `-x`).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
start=$(date +%s)
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/python-venv"
python="${PYTHON:-python3}"
# A venv left half-made (e.g. by an interrupted run) is made again.
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "./clients/python[test]"
cargo xtask python-proto --check
# The tests' fixture builds kvd too; built here first so that a build
# failure reads as one.
cargo build -q -p kvd
"$venv/bin/python" -m pytest -q -rfEs --durations=5 clients/python/tests "$@"
echo "python client: done in $(( $(date +%s) - start ))s"
