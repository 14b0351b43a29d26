#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for `make test-slurm` (Debian 12: Slurm 22.05 + munge,
# slurmdbd on MariaDB for sacct), loopback only, one fake GPU as a GRES.
#   tests/slurm/cluster.sh install   apt packages (root; ~30 s the first time, nothing after)
#   tests/slurm/cluster.sh start     configs to $STATE/etc, start the daemons that are not running
#   tests/slurm/cluster.sh check     sinfo, srun, srun --gpus=1, sacct
#   tests/slurm/cluster.sh stop      stop exactly the daemons `start` started (PIDs recorded)
# Configs go to /etc/slurm (marked; an unmarked existing slurm.conf stops the script), state, logs
# and PIDs to $STATE. Why not SLURM_CONF=$STATE/...: the executor plugin's job step strips every
# SLURM_* variable but a few before its inner `srun`, which then finds no configuration.
# Why the daemons are started by hand: Debian's service scripts are denied in containers
# (policy-rc.d), and a PID we record is the only safe thing to stop later (no pkill).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${DERMSYNTH_SLURM_STATE:-/tmp/dermsynth-slurm}"
PIDS="$STATE/pids"                    # one file per daemon THIS script started
ETC=/etc/slurm
MARK="# dermsynth test cluster"           # first line of every config this script writes

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_pidfile() {  # $1 = pidfile written by a daemon; up to 20 s
  for _ in $(seq 1 40); do alive "$1" && return 0; sleep 0.5; done
  echo "cluster.sh: no live pid in $1" >&2; return 1
}

install_packages() {
  if command -v slurmctld slurmd slurmdbd sacct munged mariadbd >/dev/null 2>&1 \
     && [ "$(command -v slurmctld slurmd slurmdbd sacct munged mariadbd | wc -l)" = 6 ]; then
    echo "slurm, munge, mariadb already installed"; return 0
  fi
  [ "$(id -u)" = 0 ] || { echo "cluster.sh install: needs root (apt-get)" >&2; exit 1; }
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))   # must not exceed the machine
  local f
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ -e "$ETC/$f" ] && [ "$(head -1 "$ETC/$f")" != "$MARK" ]; then
      echo "cluster.sh: $ETC/$f exists and is not ours: not overwriting a real cluster's config" >&2
      exit 1
    fi
  done
  mkdir -p "$ETC" "$STATE"/{spool/slurmctld,spool/slurmd,log,run} "$PIDS"
  for f in slurm.conf slurmdbd.conf gres.conf; do
    { echo "$MARK"; sed -e "s#@STATE@#$STATE#g" -e "s#@CPUS@#$cpus#g" -e "s#@MEM@#$mem#g" "$HERE/$f"; } \
      > "$ETC/$f"
  done
  chmod 600 "$ETC/slurmdbd.conf"      # slurmdbd refuses a readable password file
}

start() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh start: needs root (SlurmUser=root)" >&2; exit 1; }
  if scontrol ping >/dev/null 2>&1 && ! alive "$PIDS/slurmctld.pid"; then
    echo "cluster.sh: a SLURM controller not started by this script answers; not touching it" >&2
    exit 1
  fi
  write_conf
  # munge: the Debian package created /etc/munge/munge.key; reuse a running munged
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_pidfile /run/munge/munged.pid
    cp /run/munge/munged.pid "$PIDS/munged.pid"
  fi
  munge -n | unmunge >/dev/null
  # MariaDB on its socket only (no TCP port); reuse a running server
  if ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    # mariadbd itself (not mysqld_safe), so the recorded PID is the server
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
      > "$STATE/log/mariadbd.out" 2>&1 < /dev/null &
    wait_pidfile /run/mysqld/mysqld.pid
    cp /run/mysqld/mysqld.pid "$PIDS/mariadbd.pid"
    for _ in $(seq 1 40); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS dermsynth_slurm_acct;
            CREATE USER IF NOT EXISTS 'dermsynth_slurm'@'localhost' IDENTIFIED BY 'dermsynth-test';
            GRANT ALL ON dermsynth_slurm_acct.* TO 'dermsynth_slurm'@'localhost'; FLUSH PRIVILEGES;"
  if ! alive "$PIDS/slurmdbd.pid"; then
    /usr/sbin/slurmdbd
    wait_pidfile "$STATE/run/slurmdbd.pid" || { tail -5 "$STATE/log/slurmdbd.log" >&2; exit 1; }
    cp "$STATE/run/slurmdbd.pid" "$PIDS/slurmdbd.pid"
    for _ in $(seq 1 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  if ! alive "$PIDS/slurmctld.pid"; then
    rm -f "$STATE/run/slurmctld.pid"
    /usr/sbin/slurmctld
    wait_pidfile "$STATE/run/slurmctld.pid" || { tail -5 "$STATE/log/slurmctld.log" >&2; exit 1; }
    cp "$STATE/run/slurmctld.pid" "$PIDS/slurmctld.pid"
  fi
  if ! alive "$PIDS/slurmd.pid"; then
    rm -f "$STATE/run/slurmd.pid"
    # -N localhost: the node is called localhost in slurm.conf, whatever $(hostname) says
    /usr/sbin/slurmd -N localhost
    wait_pidfile "$STATE/run/slurmd.pid" || { tail -5 "$STATE/log/slurmd.log" >&2; exit 1; }
    cp "$STATE/run/slurmd.pid" "$PIDS/slurmd.pid"
  fi
  for _ in $(seq 1 60); do
    sinfo -h -o '%T' | grep -qE '^(idle|mixed|allocated)' && break; sleep 0.5
  done
  sinfo -h -o '%T' | grep -qE '^(idle|mixed|allocated)' \
    || { sinfo; tail -5 "$STATE/log/slurmctld.log" >&2; exit 1; }
  sinfo
  echo "started: $(for f in "$PIDS"/*.pid; do [ -e "$f" ] && printf '%s=%s ' "$(basename "$f" .pid)" "$(cat "$f")"; done)"
}

stop() {
  local name pid
  # reverse start order; only the daemons whose PID this script recorded
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [ -s "$PIDS/$name.pid" ] || continue
    pid=$(cat "$PIDS/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then echo "$name ($pid) ignored SIGTERM: SIGKILL"; kill -9 "$pid"; fi
      echo "stopped $name ($pid)"
    fi
    rm -f "$PIDS/$name.pid"
  done
  if ! ls "$PIDS"/*.pid >/dev/null 2>&1; then   # configs go with the last daemon
    for f in slurm.conf slurmdbd.conf gres.conf; do
      [ -e "$ETC/$f" ] && [ "$(head -1 "$ETC/$f")" = "$MARK" ] && rm -f "$ETC/$f"
    done
  fi
  return 0
}

check() {
  sinfo
  srun -p cpu hostname
  srun -p gpu --gpus=1 bash -c 'echo "gpu job: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'
  sacct -n -X -o JobID,Partition,State,AllocTRES%40 | tail -2
}

case "${1:-}" in
  install) install_packages;;
  start) start;;
  stop) stop;;
  check) check;;
  *) echo "usage: $0 install|start|check|stop" >&2; exit 2;;
esac
