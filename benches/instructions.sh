#!/bin/sh
# Instructions per iteration of one benchmark routine, with callgrind:
# deterministic, whatever else the machine is doing.
#
#   cargo build --release -p ferry-benches --bin proto-count
#   sh benches/instructions.sh ehlo/ferry 200
#
# Runs the routine N and 2N times and divides the difference by N, so the
# set-up (building the inputs) cancels out. Cases: see proto-count.
#
# PROTO_COLLECT counts only inside one function (callgrind's
# --toggle-collect), e.g. the DATA decoder without the copy of its input:
#
#   PROTO_COLLECT='ferry_benches::ferry_decode_buffer' sh benches/instructions.sh decode-10k/ferry 100
#
# glibc copies large blocks with `rep movsb`, which callgrind counts as one
# instruction per octet, while small copies go through the vector loop; the
# threshold is raised so that every copy, on either side, is counted the
# same way (the vector loop).
set -eu
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.cpu.x86_rep_movsb_threshold=4294967295}"
case_name=$1
count=${2:-100}
bin=${PROTO_COUNT:-target/release/proto-count}
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        ${PROTO_COLLECT:+"--toggle-collect=$PROTO_COLLECT"} "$bin" "$case_name" "$1" 2>&1 |
        awk '/Collected/ {print $4}'
}
once=$(ir "$count")
twice=$(ir $((count * 2)))
echo "$case_name: $(((twice - once) / count)) instructions per iteration"
