#!/usr/bin/env bash
# The PostgreSQL queue next to the spool, with Postfix's smtp-source as the
# load (1 KiB messages, 50 sessions in all), on loopback. Needs a release
# build (`cargo build --release -p ferry`), Debian's postfix package (for
# smtp-source and smtp-sink) and postgresql (a throwaway cluster is made in
# a temporary directory, with the server's default durability: fsync and
# synchronous_commit on, and stopped afterwards).
#
#   benches/relay/postgres.sh [MESSAGES]
#
# 1. Acceptance: one node on the spool, one node on PostgreSQL, three nodes
#    on one PostgreSQL (the load split across them); routes lead to a
#    closed port, so the nodes only accept.
# 2. End to end to smtp-sink: the same three setups.
set -euo pipefail
cd "$(dirname "$0")/../.."
MESSAGES=${1:-20000}
FERRY=${FERRY:-target/release/ferry}
WORK=$(mktemp -d /tmp/ferry-pg-bench.XXXXXX)
chmod 755 "$WORK"
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); chown postgres "$WORK"; fi
PIDS=()
SINK=
cleanup() {
    for pid in "${PIDS[@]}" $SINK; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    exit 1
}
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):.0f}')"; }
SINK_USER=()
if [ "$(id -u)" = 0 ]; then SINK_USER=(-u nobody); fi

PG=$(port)
"${AS_PG[@]}" "$BIN/initdb" -D "$WORK/data" -U ferry -A trust -E UTF8 >/dev/null
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
    -o "-p $PG -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
# A new database per run (called in a subshell, so named by a counter file).
echo 0 > "$WORK/db.count"
database() {
    local n
    n=$(( $(cat "$WORK/db.count") + 1 ))
    echo "$n" > "$WORK/db.count"
    "$BIN/psql" -q -h 127.0.0.1 -p "$PG" -U ferry -d postgres -c "CREATE DATABASE b$n" >/dev/null
    echo "host=127.0.0.1 port=$PG user=ferry dbname=b$n"
}

# start_nodes N QUEUE ROUTE RETRY: N relays; their ports in NODES.
start_nodes() {
    local n=$1 queue=$2 route=$3 retry=$4
    NODES=()
    for i in $(seq 1 "$n"); do
        local p
        p=$(port)
        if [ "$queue" = spool ]; then
            set -- --spool "$WORK/spool-$RANDOM" --durability sync
        else
            set -- --queue "$queue" --queue-node "node$i"
        fi
        "$FERRY" relay --listen "127.0.0.1:$p" --no-tls --max-connections-per-ip 200 "$@" \
            --route "example.com=$route" --retry-min "$retry" --max-per-destination 50 >/dev/null 2>&1 &
        PIDS+=($!)
        wait_port "$p"
        NODES+=("$p")
    done
}
# Only the nodes: a bare `wait` would also wait for the running smtp-sink,
# which never exits by itself.
stop_nodes() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
# load: smtp-source split over the NODES, 50 sessions in all, in parallel.
load() {
    local n=${#NODES[@]} each=$((MESSAGES / ${#NODES[@]})) sessions=$((50 / ${#NODES[@]}))
    local loads=()
    for p in "${NODES[@]}"; do
        /usr/sbin/smtp-source -s "$sessions" -m "$each" -l 1024 \
            -f load@bench.test -t sink@example.com "127.0.0.1:$p" &
        loads+=($!)
    done
    for l in "${loads[@]}"; do wait "$l"; done
    SENT=$((each * n))
}

echo "== $MESSAGES messages of 1 KiB over 50 sessions"
DEAD=$(port)
for setup in "spool 1" "pg 1" "pg 3"; do
    set -- $setup
    queue=spool
    [ "$1" = pg ] && queue=$(database)
    # The destination is down: mail stays queued, retried in an hour.
    start_nodes "$2" "$queue" "127.0.0.1:$DEAD" 1h
    T0=$(now); load; T1=$(now)
    echo "acceptance, $1, $2 node(s): $(rate "$SENT" "$T0" "$T1") msg/s"
    stop_nodes
done

for setup in "spool 1" "pg 1" "pg 3"; do
    set -- $setup
    S=$(port)
    /usr/sbin/smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$S" 1000 > "$WORK/sink-$1-$2.count" &
    SINK=$!
    wait_port "$S"
    queue=spool
    [ "$1" = pg ] && queue=$(database)
    # A deferral (none is expected) is retried within seconds, not held
    # back for the acceptance runs' hour.
    start_nodes "$2" "$queue" "127.0.0.1:$S" 1s
    T0=$(now); load; T1=$(now)
    # smtp-sink counts every message it took (mesg=); a duplicate delivery
    # (at least once) may take it past SENT.
    delivered=0
    for _ in $(seq 1 2400); do
        delivered=$(tr '\r' '\n' < "$WORK/sink-$1-$2.count" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
        delivered=${delivered:-0}
        if [ "$delivered" -ge "$SENT" ]; then break; fi
        sleep 0.05
    done
    T2=$(now)
    if [ "$delivered" -lt "$SENT" ]; then
        echo "end to end, $1, $2 node(s): only $delivered of $SENT delivered after 120 s" >&2
        exit 1
    fi
    echo "end to end, $1, $2 node(s): $(rate "$SENT" "$T0" "$T1") msg/s accepted, $(rate "$SENT" "$T0" "$T2") msg/s delivered ($delivered at the sink)"
    stop_nodes
    kill "$SINK" 2>/dev/null || true
    wait "$SINK" 2>/dev/null || true
    SINK=
done
