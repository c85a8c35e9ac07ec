#!/usr/bin/env bash
# Relay benchmarks with Postfix's smtp-source as the load (1 KiB messages,
# 50 sessions), on loopback. Needs a release build (`cargo build --release
# -p ferry`) and Debian's postfix package for smtp-source and smtp-sink.
#
#   benches/relay/run.sh [MESSAGES]
#   ROUNDS=3 benches/relay/run.sh 20000   # the acceptance pair 3 times
#
# 1. Durable acceptance: `ferry serve --maildir` (file and directory
#    fsynced before each 250) against `ferry relay --durability sync` whose
#    route leads to a closed port (so the machine only accepts; the
#    destination is backed off after the first attempts and the rest of
#    the mail waits for it). The same messages, sessions and size for both,
#    alternating ROUNDS times (default 1); each round prints the ratio, and
#    the median ratio ends the part.
# 2. End to end: smtp-source -> ferry relay -> smtp-sink on a --route,
#    timed until smtp-sink has counted every message.
# 3. With POSTFIX=1, the same end-to-end run through Postfix configured as a
#    relay with benches/relay/postfix/main.cf (started with its own config
#    and queue directories, stopped afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."
MESSAGES=${1:-20000}
SESSIONS=50
FERRY=${FERRY:-target/release/ferry}
WORK=$(mktemp -d /tmp/ferry-relay-bench.XXXXXX)
# Postfix's daemons run as the postfix user and must reach their queue.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
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
# CPU time (user + system) a process used so far, in microseconds per
# message: less sensitive to other work on the machine than the rates.
TICK=$(getconf CLK_TCK)
cpu_per_message() { awk -v tick="$TICK" -v n="$MESSAGES" '{printf "%.0f", ($14 + $15) * 1e6 / tick / n}' "/proc/$1/stat"; }
rate() { python3 -c "print(f'{$1/($3-$2):.0f}')"; }
load() {
    /usr/sbin/smtp-source -s "$SESSIONS" -m "$MESSAGES" -l 1024 \
        -f load@bench.test -t sink@example.com "127.0.0.1:$1"
}
# smtp-sink as root must drop privileges.
SINK_USER=()
if [ "$(id -u)" = 0 ]; then SINK_USER=(-u nobody); fi

echo "== $MESSAGES messages of 1 KiB over $SESSIONS sessions"

ROUNDS=${ROUNDS:-1}
RATIOS=()
for ROUND in $(seq 1 "$ROUNDS"); do
    # 1a. ferry serve --maildir
    P=$(port)
    "$FERRY" serve --listen "127.0.0.1:$P" --no-tls --max-connections-per-ip 200 --maildir "$WORK/maildir" >/dev/null 2>&1 &
    PIDS+=($!); wait_port "$P"
    T0=$(now); load "$P"; T1=$(now)
    MAILDIR_RATE=$(rate "$MESSAGES" "$T0" "$T1")
    echo "ferry serve --maildir (fsync per message): $MAILDIR_RATE msg/s accepted, $(cpu_per_message "${PIDS[-1]}") us CPU per message"
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    rm -rf "$WORK/maildir"

    # 1b. ferry relay --durability sync, route to a closed port
    DEAD=$(port)
    P=$(port)
    "$FERRY" relay --listen "127.0.0.1:$P" --no-tls --max-connections-per-ip 200 --spool "$WORK/spool-accept" \
        --durability sync --route "example.com=127.0.0.1:$DEAD" --retry-min 1h >/dev/null 2>&1 &
    PIDS+=($!); wait_port "$P"
    T0=$(now); load "$P"; T1=$(now)
    RELAY_RATE=$(rate "$MESSAGES" "$T0" "$T1")
    echo "ferry relay --durability sync (group commit): $RELAY_RATE msg/s accepted, $(cpu_per_message "${PIDS[-1]}") us CPU per message"
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    rm -rf "$WORK/spool-accept"
    RATIO=$(python3 -c "print(f'{$RELAY_RATE/$MAILDIR_RATE:.2f}')")
    RATIOS+=("$RATIO")
    echo "round $ROUND: relay / serve --maildir = ${RATIO}x"
done
echo "median acceptance ratio over $ROUNDS round(s): $(python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "${RATIOS[@]}")x"

# 2. end to end through ferry relay to smtp-sink
end_to_end() {
    local name=$1 relay_port=$2 count_file=$3
    T0=$(now); load "$relay_port"; T1=$(now)
    for _ in $(seq 1 1200); do
        # smtp-sink -c writes "sess=N quit=N mesg=N" lines ended by CR.
        if [ "$(tr '\r' '\n' < "$count_file" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)" = "$MESSAGES" ]; then break; fi
        sleep 0.05
    done
    T2=$(now)
    echo "$name: $(rate "$MESSAGES" "$T0" "$T1") msg/s accepted, $(rate "$MESSAGES" "$T0" "$T2") msg/s delivered end to end"
}
S=$(port)
/usr/sbin/smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$S" 1000 > "$WORK/sink-ferry.count" &
PIDS+=($!); wait_port "$S"
P=$(port)
"$FERRY" relay --listen "127.0.0.1:$P" --no-tls --max-connections-per-ip 200 --spool "$WORK/spool-e2e" \
    --durability sync --route "example.com=127.0.0.1:$S" --max-per-destination 50 >/dev/null 2>&1 &
PIDS+=($!); wait_port "$P"
end_to_end "ferry relay -> smtp-sink" "$P" "$WORK/sink-ferry.count"

# 3. the same through Postfix
if [ "${POSTFIX:-0}" = 1 ]; then
    # Stop it whatever happens.
    trap 'postfix -c "$WORK/postfix" stop 2>/dev/null || true; cleanup' EXIT
    S=$(port)
    /usr/sbin/smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$S" 1000 > "$WORK/sink-postfix.count" &
    PIDS+=($!); wait_port "$S"
    P=$(port)
    CONF="$WORK/postfix"
    mkdir -p "$CONF"
    sed -e "s|@SINK_PORT@|$S|" -e "s|@QUEUE@|$WORK/postfix-queue|" -e "s|@DATA@|$WORK/postfix-data|" \
        benches/relay/postfix/main.cf > "$CONF/main.cf"
    sed -e "s|@LISTEN@|127.0.0.1:$P|" benches/relay/postfix/master.cf > "$CONF/master.cf"
    mkdir -p "$WORK/postfix-queue" "$WORK/postfix-data"
    chown postfix "$WORK/postfix-data"
    postfix -c "$CONF" check
    postfix -c "$CONF" start
    wait_port "$P"
    end_to_end "Postfix relay -> smtp-sink" "$P" "$WORK/sink-postfix.count"
    postfix -c "$CONF" stop
    echo "(Postfix stopped; its log was $WORK/postfix-data/maillog)"
fi
