#!/usr/bin/env bash
# Build the pure-Python wheels the lent GPU machine lacks (it has torch but no package registry) into .whl/ at the
# repository root, for run(..., carry=[".whl"]); benchmarks/device_session.sh installs them into /tmp/site there.
# Versions: the ones installed here (what the tests ran with). PyYAML, omegaconf's compiled dependency, is not
# carried; without it there, the session's preflight fails at `import models` and says so.
set -eu
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >>"$exclude"
pins=$(python -c "from importlib.metadata import version as v
print(' '.join(f'{n}=={v(n)}' for n in ('hydra-core', 'omegaconf', 'antlr4-python3-runtime')))")
rm -rf .whl
python -m pip wheel --no-deps -w .whl $pins
du -sh .whl
