#!/bin/sh
# Instructions per iteration of one benchmark routine, with callgrind:
# deterministic, whatever else the machine is doing.
#
#   cargo build --release -p ferry-benches --bin proto-count
#   sh benches/instructions.sh ehlo/ferry 200
#
# Runs the routine N and 2N times and divides the difference by N, so the
# set-up (building the inputs) cancels out. Cases: see proto-count.
set -eu
case_name=$1
count=${2:-100}
bin=${PROTO_COUNT:-target/release/proto-count}
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$case_name" "$1" 2>&1 |
        awk '/Collected/ {print $4}'
}
once=$(ir "$count")
twice=$(ir $((count * 2)))
echo "$case_name: $(((twice - once) / count)) instructions per iteration"
