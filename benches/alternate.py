#!/usr/bin/env python3
"""Runs each criterion benchmark pair of `benches/proto.rs` (ferry against
Stalwart) in alternation, `--rounds` times, and prints the median of each
side and their ratio. On a loaded machine the two sides of a pair then see
the same load; read the ratios, not the times.

    python3 benches/alternate.py [--rounds 5] [--measurement-time 1]

Builds the benchmark binary first (`cargo bench --no-run`).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

PAIRS = [
    ("commands/pipelined-transaction/ferry", "commands/pipelined-transaction/stalwart"),
    ("commands/pipelined-transaction/ferry-owned", "commands/pipelined-transaction/stalwart"),
    ("data/decode/ferry/10240", "data/decode/stalwart/10240"),
    ("data/decode/ferry-with-copy/10240", "data/decode/stalwart/10240"),
    ("data/decode/ferry/1048576", "data/decode/stalwart/1048576"),
    ("data/decode/ferry-with-copy/1048576", "data/decode/stalwart/1048576"),
    ("replies/ehlo/ferry", "replies/ehlo/stalwart"),
    ("replies/ehlo/ferry-owned", "replies/ehlo/stalwart"),
]


def bench_binary():
    result = subprocess.run(
        ["cargo", "bench", "-p", "ferry-benches", "--bench", "proto", "--no-run",
         "--message-format", "json"], check=True, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") \
                and message["target"]["name"] == "proto":
            return message["executable"]
    sys.exit("no benchmark binary")


def run(binary, name, args):
    """The mean time of one benchmark, in nanoseconds."""
    result = subprocess.run(
        [binary, "--bench", "--warm-up-time", str(args.warm_up_time), "--measurement-time",
         str(args.measurement_time), f"^{re.escape(name)}$"],
        check=True, capture_output=True, text=True, timeout=300)
    # criterion keeps "group/name" as "group_name" (the group here has a
    # slash of its own), then the function and the parameter.
    parts = name.split("/")
    path = os.path.join("target", "criterion", f"{parts[0]}_{parts[1]}", *parts[2:], "new",
                        "estimates.json")
    with open(path) as estimates:
        return json.load(estimates)["mean"]["point_estimate"]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm-up-time", type=float, default=0.5)
    parser.add_argument("--measurement-time", type=float, default=1.0)
    args = parser.parse_args()
    binary = bench_binary()
    times = {name: [] for pair in PAIRS for name in pair}
    for _ in range(args.rounds):
        for pair in PAIRS:
            for name in pair:
                times[name].append(run(binary, name, args))
    print(f"median of {args.rounds} alternating rounds (criterion mean of each run)\n")
    print("| benchmark | ferry | Stalwart | ferry / Stalwart |")
    print("| --- | --- | --- | --- |")
    for ferry, stalwart in PAIRS:
        a, b = statistics.median(times[ferry]), statistics.median(times[stalwart])
        label = (ferry.replace("/ferry-owned", " (owned)")
                 .replace("/ferry-with-copy", " (with copy)").replace("/ferry", ""))
        print(f"| `{label}` | {a / 1000:,.2f} µs | {b / 1000:,.2f} µs | {a / b:.2f} |")


if __name__ == "__main__":
    main()
