#!/usr/bin/env bash
# mypy over src/, which setuptools installs as the package `totes` (package-dir): mypy is
# given a folder where `totes` is a link to src/, so that `from totes.x import y` resolves.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/typecheck
ln -sfn ../../src build/typecheck/totes
cd build/typecheck
exec ../../.venv/bin/mypy --config-file ../../pyproject.toml -p totes "$@"
