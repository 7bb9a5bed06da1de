#!/usr/bin/env bash
# Three-node RabbitMQ 3.10 cluster on one host, beside the default node
# rabbit@localhost (which is never touched).  Run as root.
#
#   cluster.sh start DIR BASEPORT   nodes ${KS_PREFIX}1..3@localhost,
#                                   AMQP ports BASEPORT..BASEPORT+2 (127.0.0.1),
#                                   Erlang dist ports BASEPORT+10..BASEPORT+12
#   cluster.sh stop-app N           rabbitmqctl stop_app   (N = 1|2|3)
#   cluster.sh start-app N          rabbitmqctl start_app  (returns when the app is up)
#   cluster.sh kill N               kill -9 the node's Erlang VM
#   cluster.sh restart N            (re)launch node N on its data dir, wait until back in the cluster
#   cluster.sh status               per-node liveness + cluster_status as JSON
#   cluster.sh teardown DIR         stop every node started from DIR, rm -rf DIR
#   cluster.sh kill-all             stop every VM named ${KS_PREFIX}[123]@localhost, whatever its DIR
#
# Env knobs:
#   KS_PREFIX      node name prefix (default ks)  -> ks1@localhost, ks2@localhost, ks3@localhost
#   KS_STATE       file remembering DIR for the N-commands (default /tmp/${KS_PREFIX}-cluster.current)
#   KS_CLUSTER_DIR overrides the DIR read from KS_STATE
#   KS_MODE        eval (default): boot the 3 nodes in parallel, then ONE `rabbitmqctl eval`
#                      on ks1 does stop_app/join_cluster/start_app for ks2 and ks3 (in parallel)
#                  join: same, with the 6 plain rabbitmqctl stop_app/join_cluster/start_app calls
#                  classic: boot ks1 alone, then ks2+ks3, which join ks1 at boot through
#                      classic_config peer discovery (-rabbit cluster_nodes ...)
#   KS_TIMEOUT     seconds to wait for a node (default 120)
#   KS_ERL_ARGS    extra erl args for the nodes (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS)
#   KS_QUIET=1     no progress lines on stderr
set -euo pipefail

PREFIX=${KS_PREFIX:-ks}
HOST=localhost                  # resolves to 127.0.0.1; same host part as rabbit@localhost
STATE=${KS_STATE:-/tmp/${PREFIX}-cluster.current}
TIMEOUT=${KS_TIMEOUT:-120}
MODE=${KS_MODE:-eval}
RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server  # NOT /usr/sbin/rabbitmq-server: that wrapper
                                                  # sends output to /var/log/rabbitmq/startup_log
CTL=/usr/sbin/rabbitmqctl       # Debian wrapper: as root it re-runs itself as rabbitmq (su), so
                                # HOME=/var/lib/rabbitmq and the cookie there is used
RMQ_HOME=$(getent passwd rabbitmq | cut -d: -f6)  # /var/lib/rabbitmq (.erlang.cookie)

log() { [ "${KS_QUIET:-0}" = 1 ] || echo "[cluster.sh $(date +%T.%3N)] $*" >&2; }
die() { echo "[cluster.sh] ERROR: $*" >&2; exit 1; }

node()      { echo "${PREFIX}$1@${HOST}"; }
ctl()       { (cd / && "$CTL" "$@"); }
ndir()      { echo "$1/${PREFIX}$2"; }
port_of()   { sed -n 's/^RABBITMQ_NODE_PORT=//p' "$(ndir "$1" "$2")/env"; }
beam_pid()  { local f; f="$(ndir "$1" "$2")/pid"; if [ -s "$f" ]; then cat "$f"; fi; }
alive()     { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
check_n()   { case "${1:-}" in 1|2|3) ;; *) die "node index must be 1, 2 or 3 (got '${1:-}')";; esac; }
abspath()   { case $1 in /*) echo "$1";; *) echo "$(pwd)/$1";; esac; }

state_dir() {
    local d=${KS_CLUSTER_DIR:-}
    if [ -z "$d" ] && [ -f "$STATE" ]; then d=$(cat "$STATE"); fi
    [ -n "$d" ] && [ -d "$d" ] || die "no cluster dir (run start first, or set KS_CLUSTER_DIR)"
    echo "$d"
}

# Per-node environment, one VAR=value per line; every launch (start, restart) uses it
# with `env -i`, so nothing from the caller's environment (RABBITMQ_*, ERL_*) leaks in.
write_env() {  # DIR I BASEPORT
    local d=$1 i=$2 base=$3 nd args=""; nd=$(ndir "$d" "$i")
    if [ "$MODE" = classic ] && [ "$i" != 1 ]; then
        # join ks1 at first boot; retry 480 x 250 ms while ks1 is unreachable (the default,
        # 10 x 500 ms, then boots standalone).  No spaces: the value is word-split by the script.
        args="-rabbit cluster_nodes {[$(node 1)],disc}"
        args="$args -rabbit cluster_formation [{discovery_retry_limit,480},{discovery_retry_interval,250}]"
    fi
    cat > "$nd/env" <<EOF
PATH=/usr/sbin:/usr/bin:/sbin:/bin
HOME=$RMQ_HOME
LANG=C.UTF-8
LC_ALL=C.UTF-8
RABBITMQ_NODENAME=$(node "$i")
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$((base + i - 1))
RABBITMQ_DIST_PORT=$((base + 10 + i - 1))
RABBITMQ_CONFIG_FILE=$nd/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$nd/advanced.config
RABBITMQ_CONFIG_FILES=$nd/conf.d/*.conf
RABBITMQ_ENABLED_PLUGINS_FILE=$nd/enabled_plugins
RABBITMQ_MNESIA_BASE=$nd/mnesia
RABBITMQ_LOG_BASE=$nd/log
RABBITMQ_PID_FILE=$nd/pid
RABBITMQ_SERVER_START_ARGS=$args
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=${KS_ERL_ARGS:-}
EOF
    # The three config files above deliberately do not exist: /etc/rabbitmq/rabbitmq.conf
    # (listener on 5672) is not read, and with no config file at all RabbitMQ skips the
    # Cuttlefish schema translation (~2 s CPU per boot).  Listener/dist port come from env.
    echo '[].' > "$nd/enabled_plugins"   # no management (15672) / prometheus (15692) listeners
}

launch() {  # DIR I -- start node I in the background, detached from the caller's stdio
    local d=$1 i=$2 nd; nd=$(ndir "$d" "$i")
    rm -f "$nd/pid"                      # stale after kill -9; we poll it
    local -a envv; mapfile -t envv < "$nd/env"
    # setsid + </dev/null + own console.log: a caller that captures our output (e.g. Rust
    # Command::output()) must not wait for EOF on a pipe inherited by the Erlang VM.
    ( cd "$nd" && exec setsid runuser -u rabbitmq -- env -i "${envv[@]}" "$RMQ_SERVER" \
        </dev/null >>"$nd/console.log" 2>&1 ) &
    echo $! > "$nd/launcher.pid"
}

wait_ready() {  # DIR I -- until the AMQP listener is up (= rabbit boot finished)
    local d=$1 i=$2 nd port pid deadline=$((SECONDS + TIMEOUT)); nd=$(ndir "$d" "$i"); port=$(port_of "$d" "$i")
    while :; do
        pid=$(beam_pid "$d" "$i")
        if alive "$pid" && listening "$port"; then return 0; fi
        if [ -n "$pid" ] && ! alive "$pid"; then
            tail -n 25 "$nd/console.log" >&2; die "$(node "$i") died while booting (see $nd/console.log)"
        fi
        if [ -z "$pid" ] && ! alive "$(cat "$nd/launcher.pid" 2>/dev/null)"; then
            tail -n 25 "$nd/console.log" >&2; die "$(node "$i") failed to launch (see $nd/console.log)"
        fi
        [ $SECONDS -lt $deadline ] || die "$(node "$i") not ready after ${TIMEOUT}s"
        sleep 0.1
    done
}

running_nodes() {  # DIR -- running cluster members, as seen by the first live node
    local d=$1 i
    for i in 1 2 3; do
        alive "$(beam_pid "$d" "$i")" || continue
        ctl -q -n "$(node "$i")" eval \
            'io:format("~s~n", [string:join([atom_to_list(N) || N <- lists:sort(rabbit_nodes:all_running())], " ")]).' \
            2>/dev/null | head -n 1 && return 0
    done
    return 1
}

assert_members() {  # "node list" EXPECTED_COUNT
    [ "$(wc -w <<<"$1")" -eq "$2" ] || die "expected $2 running nodes, got: '$1'"
}

# Erlang VMs whose environment says they belong to DIR (also catches leftovers of crashed
# runs whose pid file is gone).  Never matches the default node rabbit@localhost.
pids_of_dir() {
    local d=$1 p
    for p in $(pgrep -u rabbitmq -x beam.smp || true); do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "RABBITMQ_MNESIA_BASE=$d/.*"; then echo "$p"; fi
    done
}

stop_pids() {  # SIGTERM (the VM runs init:stop(), a clean shutdown), SIGKILL after 15 s
    local p deadline=$((SECONDS + 15))
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for p in "$@"; do
        while alive "$p"; do
            if [ $SECONDS -ge $deadline ]; then kill -KILL "$p" 2>/dev/null || true; fi
            sleep 0.05
        done
    done
}

wait_epmd_gone() {  # NAME -- epmd drops a name when the VM's socket closes; a relaunch
    local n=$1 deadline=$((SECONDS + 10))   # before that fails with "name already in use"
    while epmd -names 2>/dev/null | grep -q "^name $n at port" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
}

cmd_start() {
    [ $# -eq 2 ] || die "usage: start DIR BASEPORT"
    local d base=$2 i p t0=$SECONDS; d=$(abspath "$1")
    [[ $base =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 32700 ] \
        || die "BASEPORT must be 1024..32700 (dist ports must stay below the ephemeral range 32768+)"
    # leftovers of an earlier run in the same DIR are stopped; anything else is an error
    local old; old=$(pids_of_dir "$d" | tr '\n' ' ')
    # shellcheck disable=SC2086
    if [ -n "${old// }" ]; then log "stopping leftover nodes of $d: $old"; stop_pids $old; fi
    local names; names=$(epmd -names 2>/dev/null || true)
    for i in 1 2 3; do
        if grep -q "^name ${PREFIX}$i at port" <<<"$names"; then
            die "node name $(node "$i") is already registered in epmd (another cluster running? teardown its DIR)"
        fi
    done
    for p in $base $((base+1)) $((base+2)) $((base+10)) $((base+11)) $((base+12)); do
        if listening "$p"; then die "port $p already in use"; fi
    done
    mkdir -p "$d"; chmod 755 "$d"
    for i in 1 2 3; do
        p=$(ndir "$d" "$i"); rm -rf "$p"; mkdir -p "$p/mnesia" "$p/log"   # never reuse old state
        write_env "$d" "$i" "$base"
    done
    chown -R rabbitmq:rabbitmq "$d"
    echo "$d" > "$STATE"
    log "launching $(node 1) $(node 2) $(node 3) (mode $MODE) in $d"
    local members
    case $MODE in
    eval|join)
        for i in 1 2 3; do launch "$d" "$i"; done
        for i in 1 2 3; do wait_ready "$d" "$i"; log "$(node "$i") up (standalone)"; done
        if [ "$MODE" = join ]; then
            for i in 2 3; do
                ctl -q -n "$(node "$i")" stop_app
                ctl -q -n "$(node "$i")" join_cluster "$(node 1)"
                ctl -q -n "$(node "$i")" start_app
            done
            members=$(running_nodes "$d")
        else
            # stop_app + join_cluster + start_app for ks2 and ks3 concurrently, from ONE CLI VM
            # (each rabbitmqctl call costs ~1 s of Erlang VM start-up); prints the members.
            members=$(ctl -q -n "$(node 1)" eval "
                Seed = '$(node 1)', Self = self(),
                J = fun(N) -> ok = rpc:call(N, rabbit, stop, []),
                              case rpc:call(N, rabbit_mnesia, join_cluster, [Seed, disc]) of
                                  ok -> ok; {ok, already_member} -> ok end,
                              ok = rpc:call(N, rabbit, start, []) end,
                Ns = ['$(node 2)', '$(node 3)'],
                [spawn(fun() -> Self ! {joined, N, catch J(N)} end) || N <- Ns],
                Rs = [receive {joined, N, R} -> {N, R} end || N <- Ns],
                case [X || {_, R} = X <- Rs, R =/= ok] of
                    [] -> io:format(\"~s~n\", [string:join([atom_to_list(N)
                              || N <- lists:sort(rabbit_nodes:all_running())], \" \")]);
                    Bad -> io:format(\"JOIN FAILED ~p~n\", [Bad])
                end." 2>"$d/join.log" | head -n 1) || true
            # join.log gets the joining nodes' benign "Failed to create a tracked connection
            # table for node ...: node_not_running" lines (their app is stopped while joining)
            [ "$(wc -w <<<"$members")" -eq 3 ] || { cat "$d/join.log" >&2; die "join failed: '$members'"; }
        fi
        for i in 2 3; do wait_ready "$d" "$i"; done
        ;;
    classic)
        # ks1 must be completely up before ks2/ks3 join it: booting all three at once makes
        # ks2 join while ks1 is still enabling feature flags on its fresh database, and ks1
        # then dies with incompatible_feature_flags / "All replicas on diskfull nodes are
        # not active yet".
        launch "$d" 1; wait_ready "$d" 1; log "$(node 1) up"
        launch "$d" 2; launch "$d" 3
        for i in 2 3; do wait_ready "$d" "$i"; log "$(node "$i") up"; done
        members=$(running_nodes "$d")
        ;;
    *) die "unknown KS_MODE '$MODE' (eval|join|classic)";;
    esac
    assert_members "$members" 3
    log "cluster ready in $((SECONDS - t0))s: $members"
}

cmd_stop_app()  { check_n "$1"; ctl -q -n "$(node "$1")" stop_app; }
cmd_start_app() { check_n "$1"; ctl -q -n "$(node "$1")" start_app; }

cmd_kill() {
    check_n "$1"; local d pid; d=$(state_dir); pid=$(beam_pid "$d" "$1")
    alive "$pid" || die "$(node "$1") is not running"
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.05; done
    wait_epmd_gone "${PREFIX}$1"
    log "$(node "$1") (pid $pid) killed"
}

cmd_restart() {
    check_n "$1"; local d pid members; d=$(state_dir); pid=$(beam_pid "$d" "$1")
    if alive "$pid"; then stop_pids "$pid"; wait_epmd_gone "${PREFIX}$1"; fi
    launch "$d" "$1"        # non-virgin node: rejoins from its own mnesia state, no join needed
    wait_ready "$d" "$1"
    members=$(running_nodes "$d")
    grep -qw "$(node "$1")" <<<"$members" || die "$(node "$1") is up but not in the cluster: '$members'"
    log "$(node "$1") restarted; running nodes: $members"
}

cmd_status() {
    local d i pid port; d=$(state_dir)
    for i in 1 2 3; do
        pid=$(beam_pid "$d" "$i"); port=$(port_of "$d" "$i")
        printf '%s amqp=%s pid=%s vm=%s listener=%s\n' "$(node "$i")" "$port" "${pid:--}" \
            "$(alive "$pid" && echo up || echo down)" "$(listening "$port" && echo up || echo down)"
    done
    for i in 1 2 3; do
        alive "$(beam_pid "$d" "$i")" || continue
        if ctl -q -n "$(node "$i")" cluster_status --formatter json; then echo; return 0; fi
    done
    return 1
}

cmd_teardown() {
    [ $# -eq 1 ] || die "usage: teardown DIR"
    local d pids i; d=$(abspath "$1")
    [ "$d" != / ] || die "refusing to remove /"
    pids=$(pids_of_dir "$d" | tr '\n' ' ')
    # shellcheck disable=SC2086
    stop_pids $pids
    for i in 1 2 3; do wait_epmd_gone "${PREFIX}$i"; done
    rm -rf "$d"
    if [ -f "$STATE" ] && [ "$(cat "$STATE")" = "$d" ]; then rm -f "$STATE"; fi
    log "torn down $d (stopped: ${pids:-none})"
}

cmd_kill_all() {  # stale nodes of ANY dir that use our node names (crashed test run, lost DIR)
    local p pids=""
    for p in $(pgrep -u rabbitmq -x beam.smp || true); do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=${PREFIX}[123]@${HOST}"; then pids="$pids $p"; fi
    done
    # shellcheck disable=SC2086
    stop_pids $pids
    for p in 1 2 3; do wait_epmd_gone "${PREFIX}$p"; done
    log "stopped:${pids:- none}"
}

[ "$(id -u)" = 0 ] || die "run as root (it switches to the rabbitmq user itself)"
case "${1:-}" in
    start)      shift; cmd_start "$@";;
    stop-app)   cmd_stop_app "${2:-}";;
    start-app)  cmd_start_app "${2:-}";;
    kill)       cmd_kill "${2:-}";;
    restart)    cmd_restart "${2:-}";;
    status)     cmd_status;;
    teardown)   shift; cmd_teardown "$@";;
    kill-all)   cmd_kill_all;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2;;
esac
