#!/usr/bin/env python3
"""Loopback load test: ferry against Postfix's own test tools, side by side.

Clients: `ferry bench` (a connection pool) and Postfix `smtp-source -d`
(keeps each session open for the next message, as the pool does).
Servers: `ferry serve --sink` and Postfix `smtp-sink`.
Every client runs against every server with the same message count, size
and concurrency, alternating, `--rounds` times; the report gives the
median messages/s of each pair and the ratios that matter. The machine is
shared and noisy: read ratios within one run, not absolute numbers.

    python3 benches/loopback.py --ferry target/release/ferry \
        [--messages 20000] [--concurrency 32] [--size 4096] [--rounds 3]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

TIMEOUT = 300


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def start_servers(ferry):
    sink_port, ferry_port = free_port(), free_port()
    sink_args = ["/usr/sbin/smtp-sink"]
    if os.geteuid() == 0:
        sink_args += ["-u", "nobody"]
    # -c counts, 1000 is the listen backlog.
    sink_args += [f"127.0.0.1:{sink_port}", "1000"]
    sink = subprocess.Popen(sink_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen(
        [ferry, "serve", "--sink", "--no-tls", "--listen", f"127.0.0.1:{ferry_port}",
         "--max-connections-per-ip", "10000", "--max-connections", "10000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(sink_port)
    wait_for_port(ferry_port)
    return {"smtp-sink": (sink, sink_port), "ferry serve --sink": (server, ferry_port)}


def run_smtp_source(port, args):
    started = time.monotonic()
    subprocess.run(
        ["/usr/sbin/smtp-source", "-d", "-s", str(args.concurrency), "-m", str(args.messages),
         "-l", str(args.size), "-f", "bench@example.com", "-t", "sink@example.com",
         f"127.0.0.1:{port}"],
        check=True, timeout=TIMEOUT, stdout=subprocess.DEVNULL)
    return args.messages / (time.monotonic() - started)


def run_ferry_bench(port, args):
    started = time.monotonic()
    result = subprocess.run(
        [args.ferry, "bench", "--server", f"127.0.0.1:{port}", "--tls", "none",
         "--messages", str(args.messages), "--concurrency", str(args.concurrency),
         "--size", str(args.size), "--json"],
        check=True, timeout=TIMEOUT, capture_output=True)
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout)
    if report.get("failed"):
        sys.exit(f"ferry bench saw failures: {report}")
    return args.messages / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    servers = start_servers(args.ferry)
    clients = {"ferry bench": run_ferry_bench, "smtp-source": run_smtp_source}
    rates = {(c, s): [] for c in clients for s in servers}
    try:
        for _ in range(args.rounds):
            for server_name, (_, port) in servers.items():
                for client_name, run in clients.items():
                    rates[(client_name, server_name)].append(run(port, args))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)

    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"{args.messages} messages of {args.size} octets, {args.concurrency} sessions, "
          f"median of {args.rounds} rounds (wall clock, messages/s)\n")
    print("| client \\ server | " + " | ".join(servers) + " |")
    print("| --- | " + " | ".join("---" for _ in servers) + " |")
    for client in clients:
        cells = " | ".join(f"{median[(client, server)]:,.0f}" for server in servers)
        print(f"| {client} | {cells} |")
    print()
    for server in servers:
        ratio = median[("ferry bench", server)] / median[("smtp-source", server)]
        print(f"ferry bench / smtp-source against {server}: {ratio:.2f}x")
    for client in clients:
        ratio = median[(client, "ferry serve --sink")] / median[(client, "smtp-sink")]
        print(f"ferry serve --sink / smtp-sink with {client}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
