#!/usr/bin/env bash
# local_slurm.sh - install, configure, start, check and stop a real single-node
# SLURM cluster (munge + MariaDB + slurmdbd + slurmctld + slurmd) for tests.
# Works without systemd (daemons are started directly). Needs root.
#
# Usage: scripts/local_slurm.sh {install|start|stop|restart|status}
#
# State, logs, pid files and spool dirs live under $LOCAL_SLURM_DIR
# (default /var/tmp/local-slurm). slurm.conf / slurmdbd.conf are written to
# /etc/slurm/ because the client tools (sbatch, sacct, ...) read them there.
# The MariaDB socket stays at the distribution default
# (/run/mysqld/mysqld.sock) because slurmdbd (StorageHost=localhost) connects
# through it; the munge socket likewise stays at /run/munge/munge.socket.2.
#
# Every subcommand is idempotent: `start` on a healthy cluster returns in well
# under a second without touching anything; `stop` with nothing running is a
# no-op.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/var/tmp/local-slurm}"
ETC_SLURM=/etc/slurm
SLURM_CONF="$ETC_SLURM/slurm.conf"
SLURMDBD_CONF="$ETC_SLURM/slurmdbd.conf"
CLUSTER=local
NODE=localhost
ACCOUNT=default
DB_USER=slurm
DB_NAME=slurm_acct_db
DBD_PORT=6819
MYSQL_SOCK=/run/mysqld/mysqld.sock
START_TIMEOUT="${LOCAL_SLURM_TIMEOUT:-90}"

LOG_DIR="$DIR/log"
RUN_DIR="$DIR/run"
STATE_DIR="$DIR/slurmctld"
SPOOL_DIR="$DIR/slurmd"
MUNGE_DIR="$DIR/munge"            # owned by munge (pid file)
MYSQL_DIR="$DIR/mysql"            # owned by mysql (datadir, pid file)
MYSQL_DATA="$MYSQL_DIR/data"
MYSQL_CNF="$DIR/my.cnf"
DB_PASS_FILE="$DIR/slurmdb.pass"

MUNGE_PID="$MUNGE_DIR/munged.pid"
MYSQL_PID="$MYSQL_DIR/mariadb.pid"
DBD_PID="$RUN_DIR/slurmdbd.pid"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
# The client tools must read the config this script writes.
export SLURM_CONF

log() { printf '[local-slurm] %s\n' "$*"; }
warn() { printf '[local-slurm] WARNING: %s\n' "$*" >&2; }
die() { printf '[local-slurm] ERROR: %s\n' "$*" >&2; exit 1; }

show_logs() {
    local f
    for f in "$LOG_DIR"/munged.log "$LOG_DIR"/mariadb.log "$LOG_DIR"/slurmdbd.log \
             "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log "$LOG_DIR"/*.stderr; do
        [[ -s "$f" ]] || continue
        printf '[local-slurm] ---- tail of %s ----\n' "$f" >&2
        tail -n 20 "$f" >&2 || true
    done
}

fail() { printf '[local-slurm] ERROR: %s\n' "$*" >&2; show_logs; exit 1; }

need_root() { [[ $EUID -eq 0 ]] || die "must be run as root"; }

# ---------------------------------------------------------------- processes --

# proc_live PID -> 0 if PID exists and is not a zombie. PID 1 on this kind of
# machine is not a real init and reaps orphaned zombies only after a delay,
# so a killed daemon can linger as a zombie for a few seconds.
proc_live() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ -n "$stat" && "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# pid_alive PIDFILE COMM -> prints pid and returns 0 if the pid file names a
# live process whose command name is COMM (guards against pid reuse).
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r "$pidfile" ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    [[ -n "$pid" ]] || return 1
    [[ -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    proc_live "$pid" || return 1
    printf '%s\n' "$pid"
}

# find_pids COMM PIDFILE [CMDLINE_SUBSTRING] -> pids of the daemon: from its
# pid file, else by exact process name (optionally also requiring a substring
# of the command line, used for mariadbd so a foreign server is left alone).
find_pids() {
    local comm=$1 pidfile=$2 match=${3:-} pid
    if pid=$(pid_alive "$pidfile" "$comm"); then
        printf '%s\n' "$pid"
        return 0
    fi
    for pid in $(pgrep -x "$comm" 2>/dev/null || true); do
        proc_live "$pid" || continue
        if [[ -n "$match" ]]; then
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" || continue
        fi
        printf '%s\n' "$pid"
    done
}

is_running() { [[ -n "$(find_pids "$@")" ]]; }

# stop_daemon LABEL COMM PIDFILE [CMDLINE_SUBSTRING]
STOP_VERBOSE=0
stop_daemon() {
    local label=$1 comm=$2 pidfile=$3 match=${4:-} pids i
    pids=$(find_pids "$comm" "$pidfile" "$match" | tr '\n' ' ')
    if [[ -z "${pids// /}" ]]; then
        ((STOP_VERBOSE)) && log "$label not running"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $label (pid ${pids% })"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        pids=$(find_pids "$comm" "$pidfile" "$match" | tr '\n' ' ')
        [[ -z "${pids// /}" ]] && break
        sleep 0.2
    done
    if [[ -n "${pids// /}" ]]; then
        warn "$label did not exit after 30 s, sending SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

port_open() { (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND... : poll COMMAND every 0.3 s.
wait_for() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail "timed out after ${timeout}s waiting for $what"
        fi
        sleep 0.3
    done
}

# ------------------------------------------------------------------ install --

MARIADBD=""
find_mariadbd() {
    local c
    for c in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        [[ -x "$c" ]] && { MARIADBD=$c; return 0; }
    done
    return 1
}

binaries_present() {
    local b
    for b in munged munge unmunge slurmctld slurmd slurmdbd sacctmgr sbatch sinfo \
             scontrol sacct mariadb-install-db mariadb mariadb-admin; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
    find_mariadbd
}

cmd_install() {
    need_root
    if binaries_present; then
        log "packages already installed ($(slurmctld -V 2>/dev/null || echo slurm))"
        return 0
    fi
    local pkgs=(munge slurm-wlm slurmdbd mariadb-server slurm-client)
    local policy=/usr/sbin/policy-rc.d created_policy=0
    # Keep the package maintainer scripts from starting daemons via init.d;
    # this script starts them itself with its own configuration.
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    log "installing ${pkgs[*]} (apt-get)"
    local rc=0
    apt-get install -y --no-install-recommends "${pkgs[@]}" >"/tmp/local-slurm-apt.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        log "apt-get install failed (rc=$rc); running apt-get update and retrying"
        apt-get update >>"/tmp/local-slurm-apt.log" 2>&1 || true
        rc=0
        apt-get install -y --no-install-recommends "${pkgs[@]}" >>"/tmp/local-slurm-apt.log" 2>&1 || rc=$?
    fi
    ((created_policy)) && rm -f "$policy"
    if ((rc != 0)); then
        tail -n 30 /tmp/local-slurm-apt.log >&2 || true
        die "apt-get install failed (see /tmp/local-slurm-apt.log)"
    fi
    binaries_present || die "packages installed but binaries still missing"
    log "installed $(slurmctld -V 2>/dev/null || echo slurm)"
}

# ------------------------------------------------------------------ configs --

node_cpus() { nproc; }

node_real_memory_mb() {
    # A bit below physical RAM (slurmd drains the node if RealMemory exceeds
    # what it detects): 95 % of MemTotal but leave at least 512 MB, floor 256.
    local kb mb mem
    kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mb=$((kb / 1024))
    mem=$((mb * 95 / 100))
    ((mb - 512 < mem)) && mem=$((mb - 512))
    ((mem < 256)) && mem=256
    printf '%s\n' "$mem"
}

db_password() {
    if [[ ! -s "$DB_PASS_FILE" ]]; then
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
    fi
    cat "$DB_PASS_FILE"
}

render_slurm_conf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh - single-node test cluster. Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Tests rely on finished jobs leaving slurmctld memory quickly (a dependency
# on a purged job is then treated as satisfied). 2 is the smallest non-zero
# value slurm.conf(5) recommends (0 would disable purging). Jobs are not purged
# during a backfill cycle, so in practice a finished job is gone from
# 'scontrol show job' ~3-10 s after it ends (measured on Slurm 22.05.8).
MinJobAge=2
KillWait=5
InactiveLimit=0
Waittime=0
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$(node_cpus) RealMemory=$(node_real_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

render_slurmdbd_conf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh - single-node test cluster. Do not edit.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$(db_password)
StorageLoc=$DB_NAME
EOF
}

render_my_cnf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh - MariaDB for slurmdbd. Do not edit.
[mysqld]
user=mysql
datadir=$MYSQL_DATA
socket=$MYSQL_SOCK
pid-file=$MYSQL_PID
log-error=$LOG_DIR/mariadb.log
port=3306
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=256M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
max_allowed_packet=64M

[client]
socket=$MYSQL_SOCK
EOF
}

# write_if_changed FILE MODE CONTENT -> returns 0 if the file was (re)written.
write_if_changed() {
    local file=$1 mode=$2 content=$3
    if [[ -f "$file" ]] && [[ "$(cat "$file")" == "$content" ]]; then
        chmod "$mode" "$file"
        return 1
    fi
    local tmp
    tmp=$(mktemp "$file.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown root:root "$tmp"
    mv -f "$tmp" "$file"
    log "wrote $file"
    return 0
}

SLURM_CONF_CHANGED=0
DBD_CONF_CHANGED=0
MY_CNF_CHANGED=0

prepare_dirs() {
    install -d -m 0755 "$DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR" "$SPOOL_DIR" "$ETC_SLURM"
    install -d -m 0700 -o munge -g munge "$MUNGE_DIR"
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0750 -o mysql -g mysql "$MYSQL_DIR"
    install -d -m 0755 -o mysql -g mysql /run/mysqld
    # Log files written by the unprivileged munge / mysql users.
    [[ -e "$LOG_DIR/munged.log" ]] || install -m 0640 -o munge -g munge /dev/null "$LOG_DIR/munged.log"
    [[ -e "$LOG_DIR/mariadb.log" ]] || install -m 0640 -o mysql -g mysql /dev/null "$LOG_DIR/mariadb.log"
}

write_configs() {
    write_if_changed "$SLURM_CONF" 0644 "$(render_slurm_conf)" && SLURM_CONF_CHANGED=1
    write_if_changed "$SLURMDBD_CONF" 0600 "$(render_slurmdbd_conf)" && DBD_CONF_CHANGED=1
    write_if_changed "$MYSQL_CNF" 0644 "$(render_my_cnf)" && MY_CNF_CHANGED=1
    return 0
}

# ------------------------------------------------------------------- health --

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok() { mariadb-admin --defaults-file="$MYSQL_CNF" --protocol=socket -uroot ping >/dev/null 2>&1; }
dbd_ok() { is_running slurmdbd "$DBD_PID" && port_open "$DBD_PORT"; }
ctld_ok() { is_running slurmctld "$CTLD_PID" && scontrol ping 2>/dev/null | grep -q 'is UP'; }
slurmd_ok() { is_running slurmd "$SLURMD_PID"; }

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1; }

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing | planned) return 0 ;;
        *) return 1 ;;
    esac
}

node_idle() { [[ "$(node_state)" == idle ]]; }

all_healthy() {
    munge_ok && mysql_ok && dbd_ok && ctld_ok && slurmd_ok && node_usable
}

# -------------------------------------------------------------------- start --

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s "$key" ]]; then
        log "creating munge key $key"
        install -d -m 0700 -o munge -g munge /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    # munged refuses keys readable by anyone but the owner.
    chown munge:munge "$key"
    chmod 0400 "$key"
    if is_running munged "$MUNGE_PID" && munge_ok; then
        log "munged already running"
        return 0
    fi
    stop_daemon munged munged "$MUNGE_PID"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    log "starting munged"
    runuser -u munge -- munged --pid-file="$MUNGE_PID" --log-file="$LOG_DIR/munged.log" \
        </dev/null >>"$LOG_DIR/munged.stderr" 2>&1 || fail "munged failed to start"
    wait_for 15 "munge to work" munge_ok
}

start_mariadb() {
    find_mariadbd || die "mariadbd not found (run: $0 install)"
    if mysql_ok && ((MY_CNF_CHANGED == 0)); then
        log "mariadb already running"
    else
        stop_daemon mariadb "$(basename "$MARIADBD")" "$MYSQL_PID" "$MYSQL_CNF"
        if [[ ! -d "$MYSQL_DATA/mysql" ]]; then
            log "initialising MariaDB datadir $MYSQL_DATA"
            rm -rf "$MYSQL_DATA"
            install -d -m 0750 -o mysql -g mysql "$MYSQL_DATA"
            mariadb-install-db --defaults-file="$MYSQL_CNF" --user=mysql \
                --auth-root-authentication-method=socket --skip-test-db \
                >>"$LOG_DIR/mariadb-install.stderr" 2>&1 || fail "mariadb-install-db failed"
        fi
        log "starting mariadb"
        # --defaults-file must be the first option.
        setsid "$MARIADBD" --defaults-file="$MYSQL_CNF" </dev/null >>"$LOG_DIR/mariadb.stderr" 2>&1 &
        disown || true
        wait_for 60 "mariadb to answer ping" mysql_ok
    fi
    local pass
    pass=$(db_password)
    mariadb --defaults-file="$MYSQL_CNF" --protocol=socket -uroot <<EOF || fail "creating MariaDB user $DB_USER failed"
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if dbd_ok && ((DBD_CONF_CHANGED == 0)); then
        log "slurmdbd already running"
    else
        stop_daemon slurmdbd slurmdbd "$DBD_PID"
        log "starting slurmdbd"
        slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.stderr" 2>&1 || fail "slurmdbd failed to start"
        wait_for 60 "slurmdbd to listen on port $DBD_PORT" dbd_ok
    fi
    wait_for 60 "slurmdbd to answer sacctmgr" sacctmgr -n -P list cluster format=cluster
}

register_accounting() {
    if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster 2>/dev/null)" ]]; then
        log "sacctmgr: adding cluster $CLUSTER"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
    fi
    if [[ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account 2>/dev/null)" ]]; then
        log "sacctmgr: adding account $ACCOUNT"
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=local >/dev/null \
            || fail "sacctmgr add account failed"
    fi
    if [[ -z "$(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user=root format=user 2>/dev/null)" ]]; then
        log "sacctmgr: adding user root to account $ACCOUNT"
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
            || fail "sacctmgr add user failed"
    fi
}

start_slurmctld() {
    if ((SLURM_CONF_CHANGED)); then
        # Node/partition definitions may have changed: restart both daemons.
        stop_daemon slurmd slurmd "$SLURMD_PID"
        stop_daemon slurmctld slurmctld "$CTLD_PID"
    fi
    if ctld_ok; then
        log "slurmctld already running"
        return 0
    fi
    stop_daemon slurmctld slurmctld "$CTLD_PID"
    log "starting slurmctld"
    slurmctld </dev/null >>"$LOG_DIR/slurmctld.stderr" 2>&1 || fail "slurmctld failed to start"
    wait_for 60 "slurmctld to answer scontrol ping" ctld_ok
}

start_slurmd() {
    if slurmd_ok; then
        log "slurmd already running"
        return 0
    fi
    log "starting slurmd"
    slurmd -N "$NODE" </dev/null >>"$LOG_DIR/slurmd.stderr" 2>&1 || fail "slurmd failed to start"
    wait_for 30 "slurmd to start" slurmd_ok
}

wait_node_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state resumed=0
    while :; do
        state=$(node_state)
        case "$state" in
            idle | mixed | allocated | completing) log "node $NODE is $state"; return 0 ;;
            *drain* | down* | fail*)
                if ((!resumed)); then
                    log "node $NODE is $state; resuming it"
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            scontrol show node "$NODE" >&2 || true
            fail "node $NODE not idle after ${START_TIMEOUT}s (state: '${state:-unknown}')"
        fi
        sleep 0.5
    done
}

cmd_start() {
    need_root
    binaries_present || cmd_install
    find_mariadbd
    prepare_dirs
    write_configs
    if ((SLURM_CONF_CHANGED + DBD_CONF_CHANGED + MY_CNF_CHANGED == 0)) && all_healthy; then
        log "already running and healthy (node $NODE: $(node_state))"
        return 0
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    wait_node_idle
    log "cluster '$CLUSTER' is up (logs: $LOG_DIR)"
}

# --------------------------------------------------------------------- stop --

cmd_stop() {
    need_root
    local mariadbd_comm=mariadbd
    STOP_VERBOSE=1
    find_mariadbd && mariadbd_comm=$(basename "$MARIADBD")
    stop_daemon slurmd slurmd "$SLURMD_PID"
    stop_daemon slurmctld slurmctld "$CTLD_PID"
    stop_daemon slurmdbd slurmdbd "$DBD_PID"
    stop_daemon mariadb "$mariadbd_comm" "$MYSQL_PID" "$MYSQL_CNF"
    stop_daemon munged munged "$MUNGE_PID"
    log "stopped"
}

# ------------------------------------------------------------------- status --

cmd_status() {
    local rc=0 state
    up() { if "$@"; then echo up; else echo DOWN; fi; }
    log "munged:    $(up munge_ok)"
    log "mariadb:   $(up mysql_ok)"
    log "slurmdbd:  $(up dbd_ok)"
    log "slurmctld: $(up ctld_ok)"
    log "slurmd:    $(up slurmd_ok)"
    if is_running slurmctld "$CTLD_PID" && command -v sinfo >/dev/null 2>&1 && sinfo 2>/dev/null; then
        state=$(node_state)
        if node_usable; then
            log "node $NODE: $state (usable)"
        else
            log "node $NODE: ${state:-unknown} (NOT usable)"
            rc=1
        fi
    else
        log "sinfo: slurmctld not reachable"
        rc=1
    fi
    return "$rc"
}

usage() {
    cat <<EOF
Usage: $0 {install|start|stop|restart|status}
  install  apt-get install munge slurm-wlm slurmdbd mariadb-server slurm-client
  start    configure and start munged, mariadb, slurmdbd, slurmctld, slurmd
  stop     stop all daemons (idempotent)
  restart  stop + start
  status   show daemon state and sinfo; exit 0 only if the node is usable
Scratch dir: \$LOCAL_SLURM_DIR (default /var/tmp/local-slurm), now $DIR
EOF
}

main() {
    case "${1:-}" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_stop; cmd_start ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
