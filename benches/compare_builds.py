#!/usr/bin/env python3
"""Several `ferry serve --sink` builds (or flag sets) against Postfix
`smtp-sink` in one run: every server is started at once and each round
sends the same load to each in turn, so all of them see the same noise.
Prints the median rate per server and its ratio to smtp-sink.

    python3 benches/compare_builds.py --server before=../old/target/release/ferry \\
        --server now=target/release/ferry \\
        --server "one-thread=target/release/ferry --threads 1" \\
        [--cells 0,1,2,3] [--rounds 5] [--scale 0.5] [--load smtp-source|FERRY]

`--load` is `smtp-source` (default) or a ferry binary whose `ferry bench`
is the load. Cells are numbered as in benches/loopback.py (0: 1 KiB, 50
sessions, reused; 1: new connection per message; 2: one session; 3:
100 KiB).
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback as lb  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", required=True,
                        help="NAME=FERRY [FLAGS...]; repeat for each build")
    parser.add_argument("--cells", default="0,1,2,3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--load", default="smtp-source")
    args = parser.parse_args()

    servers = {}
    port = lb.free_port()
    sink = [lb.SMTP_SINK] + (["-u", "nobody"] if os.geteuid() == 0 else [])
    servers["smtp-sink"] = (lb.start(sink + ["-m", "1000", f"127.0.0.1:{port}", "1000"]), port)
    for spec in args.server:
        name, command = spec.split("=", 1)
        binary, *flags = command.split()
        port = lb.free_port()
        servers[name] = (lb.start(
            [binary, "serve", "--sink", "--no-tls", "--listen", f"127.0.0.1:{port}",
             "--max-connections-per-ip", "5000", "--max-connections", "5000"] + flags), port)
    cells = [int(cell) for cell in args.cells.split(",")]
    rates = {}
    try:
        for _, port in servers.values():
            lb.wait_for_port(port)
        for _ in range(args.rounds):
            for cell in cells:
                _, size, sessions, reuse, count = lb.CELLS[cell]
                messages = max(sessions, int(count * args.scale))
                for name, (_, port) in servers.items():
                    if args.load == "smtp-source":
                        rate = lb.run_smtp_source(port, size, sessions, reuse, messages)
                    else:
                        rate = lb.run_ferry_bench(args.load, port, size, sessions, reuse,
                                                  messages)
                    rates.setdefault((cell, name), []).append(rate)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)

    print(f"load {args.load}, median of {args.rounds} alternating rounds, messages/s, "
          f"scale {args.scale}\n")
    print("| cell | server | median | / smtp-sink | every round |")
    print("| --- | --- | --- | --- | --- |")
    for cell in cells:
        sink_median = statistics.median(rates[(cell, "smtp-sink")])
        for name in servers:
            values = rates[(cell, name)]
            median = statistics.median(values)
            rounds = " ".join(f"{value:,.0f}" for value in values)
            print(f"| {lb.CELLS[cell][0]} | {name} | {median:,.0f} | "
                  f"{median / sink_median:.2f}x | {rounds} |")


if __name__ == "__main__":
    main()
