#!/usr/bin/env bash
# make test-slurm: install Slurm + munge (+ slurmdbd, MariaDB), then run the driver inside a private
# network namespace, so the test cluster listens on a loopback that nothing else can reach.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
[ "$(id -u)" = 0 ] || { echo "make test-slurm: needs root (apt-get, Slurm daemons)" >&2; exit 1; }
tests/slurm/cluster.sh install
if command -v ip >/dev/null && unshare --net true 2>/dev/null; then
  # the extra address on lo: Slurm resolves its listen address with AI_ADDRCONFIG, which finds
  # nothing while 127.0.0.1 is the only address; the namespace has no link out either way
  exec unshare --net bash -c 'ip link set lo up && ip addr add 10.254.254.254/32 dev lo && exec "$@"' \
    _ "$PY" tests/slurm/run_slurm.py "$@"
fi
echo "test-slurm: no network namespace here; the daemons listen on all interfaces (munge-authenticated)" >&2
exec "$PY" tests/slurm/run_slurm.py "$@"
