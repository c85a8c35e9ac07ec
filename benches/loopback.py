#!/usr/bin/env python3
"""Loopback load test: ferry against Postfix's own test tools, side by side.

One command runs every cell of the comparison, alternating the pairs in
each round, and prints the medians and the ratio table:

- `ferry serve --sink --no-tls` against Postfix `smtp-sink`, with Postfix
  `smtp-source` and with `ferry bench` as the load, in four cells: 1 KiB
  messages over 50 sessions that stay open (`smtp-source -d`), 1 KiB with
  a new connection per message, 1 KiB over one session, and 100 KiB over
  50 sessions;
- `ferry serve --maildir` (every message fsynced with its directory entry
  before its 250) in the first cell, with the disk's own rate for the same
  pattern (`fsync-rate`, 50 writers) for scale;
- STARTTLS sessions per second (`ferry bench --tls starttls`, one message
  per connection) against `ferry serve` (the Postfix tools have no TLS);
- idle memory: RSS per session after EHLO with 10,000 sessions open
  (`benches/idle_memory.py`), ferry and smtp-sink.

    cargo build --release -p ferry -p ferry-benches
    python3 benches/loopback.py --ferry target/release/ferry [--rounds 3] [--scale 1]

The machine is shared and noisy: read ratios within one run, not absolute
numbers across runs. `--scale` multiplies every message count (0.2 for a
quick look). `--only sink,maildir,tls,memory` picks groups of cells.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idle_memory  # noqa: E402

TIMEOUT = 300
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

# name, message size, sessions, connection reused, messages at --scale 1
CELLS = [
    ("1 KiB, 50 sessions, reused", 1024, 50, True, 20000),
    ("1 KiB, 50 sessions, new connection per message", 1024, 50, False, 5000),
    ("1 KiB, 1 session, reused", 1024, 1, True, 5000),
    ("100 KiB, 50 sessions, reused", 100 * 1024, 50, True, 2000),
]


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


def start(command):
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_servers(args, workdir):
    """Starts every server; returns {name: (process, port)}."""
    servers = {}
    port = free_port()
    sink = [SMTP_SINK]
    if os.geteuid() == 0:
        sink += ["-u", "nobody"]
    # -m: sessions served at once; 1000 is the listen backlog.
    servers["smtp-sink"] = (start(sink + ["-m", "1000", f"127.0.0.1:{port}", "1000"]), port)
    limits = ["--max-connections-per-ip", "5000", "--max-connections", "5000"]
    port = free_port()
    servers["ferry --sink"] = (start(
        [args.ferry, "serve", "--sink", "--no-tls", "--listen", f"127.0.0.1:{port}"] + limits),
        port)
    if "maildir" in args.only:
        port = free_port()
        maildir = os.path.join(workdir, "maildir")
        servers["ferry --maildir"] = (start(
            [args.ferry, "serve", "--maildir", maildir, "--no-tls",
             "--listen", f"127.0.0.1:{port}"] + limits), port)
    if "tls" in args.only:
        port = free_port()
        # No certificate given: a self-signed one is made in --maildir.
        servers["ferry --sink (STARTTLS)"] = (start(
            [args.ferry, "serve", "--sink", "--maildir", os.path.join(workdir, "tls"),
             "--listen", f"127.0.0.1:{port}"] + limits), port)
    for _, port in servers.values():
        wait_for_port(port)
    return servers


def run_timed(command, capture=False):
    """Runs `command` to its end; returns (seconds, stdout).

    Waits in one blocking wait, with a timer thread that kills the command
    past TIMEOUT: `subprocess.run(timeout=...)` polls with sleeps of up to
    50 ms, which rounded every run up to the next 50 ms (a quarter of a
    0.2 s run)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
    timer = threading.Timer(TIMEOUT, process.kill)
    timer.start()
    try:
        out = process.stdout.read() if capture else b""
        code = process.wait()
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    if code != 0:
        sys.exit(f"{command[0]} failed with {code}")
    return elapsed, out


def run_smtp_source(port, size, sessions, reuse, messages):
    command = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", "bench@example.com", "-t", "sink@example.com"]
    if reuse:
        command.append("-d")
    elapsed, _ = run_timed(command + [f"127.0.0.1:{port}"])
    return messages / elapsed


def run_ferry_bench(ferry, port, size, sessions, reuse, messages, tls="none"):
    per_connection = str(messages if reuse else 1)
    command = [ferry, "bench", "--server", f"127.0.0.1:{port}", "--tls", tls,
               "--messages", str(messages), "--concurrency", str(sessions),
               "--size", str(size), "--messages-per-connection", per_connection, "--json"]
    if tls != "none":
        command.append("--insecure")
    elapsed, out = run_timed(command, capture=True)
    report = json.loads(out)
    if report.get("failed"):
        sys.exit(f"ferry bench saw failures: {report}")
    return messages / elapsed


def fsync_rate(args, workdir):
    if not args.fsync_rate or not os.path.exists(args.fsync_rate):
        return None
    try:
        result = subprocess.run(
            [args.fsync_rate, "--dir", os.path.join(workdir, "fsync-probe"), "--writers", "50",
             "--seconds", "3", "--json"], check=True, timeout=TIMEOUT, capture_output=True)
    except (subprocess.SubprocessError, OSError) as error:
        print(f"fsync-rate failed: {error}", file=sys.stderr)
        return None
    return json.loads(result.stdout)["deliveries_per_second"]


def idle_rss(args, smtp_sink):
    options = SimpleNamespace(ferry=None if smtp_sink else args.ferry, smtp_sink=smtp_sink,
                              sessions=args.idle_sessions, timeout=TIMEOUT)
    sessions, before, after = idle_memory.measure(options)
    return (after - before) / sessions


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--fsync-rate", default=None,
                        help="the fsync-rate binary (default: next to --ferry)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--idle-sessions", type=int, default=10000)
    parser.add_argument("--only", default="sink,maildir,tls,memory")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if args.fsync_rate is None:
        args.fsync_rate = os.path.join(os.path.dirname(args.ferry), "fsync-rate")
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is not installed (Debian: postfix)")

    # On the disk under test (target/ or the current directory), not a tmpfs.
    parent = "target" if os.path.isdir("target") else os.getcwd()
    workdir = tempfile.mkdtemp(prefix="loopback-", dir=parent)
    servers = start_servers(args, workdir)
    clients = {
        "smtp-source": lambda port, cell: run_smtp_source(port, *cell),
        "ferry bench": lambda port, cell: run_ferry_bench(args.ferry, port, *cell),
    }
    rates = {}

    def record(key, rate):
        rates.setdefault(key, []).append(rate)

    try:
        for _ in range(args.rounds):
            if "sink" in args.only:
                for name, size, sessions, reuse, count in CELLS:
                    cell = (size, sessions, reuse, max(sessions, int(count * args.scale)))
                    for server in ("smtp-sink", "ferry --sink"):
                        for client, run in clients.items():
                            record((name, server, client), run(servers[server][1], cell))
            if "maildir" in args.only:
                name, size, sessions, reuse, count = CELLS[0]
                cell = (size, sessions, reuse, max(sessions, int(count * args.scale / 4)))
                for client, run in clients.items():
                    record((name, "ferry --maildir", client),
                           run(servers["ferry --maildir"][1], cell))
            if "tls" in args.only:
                count = max(50, int(2000 * args.scale))
                record(("STARTTLS", "ferry --sink (STARTTLS)", "ferry bench"),
                       run_ferry_bench(args.ferry, servers["ferry --sink (STARTTLS)"][1],
                                       1024, 50, False, count, tls="starttls"))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)

    disk = fsync_rate(args, workdir) if "maildir" in args.only else None
    memory = {}
    if "memory" in args.only:
        memory["ferry serve --sink"] = idle_rss(args, smtp_sink=False)
        memory["smtp-sink"] = idle_rss(args, smtp_sink=True)
    shutil.rmtree(workdir, ignore_errors=True)

    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"median of {args.rounds} alternating rounds, messages/s (wall clock), "
          f"scale {args.scale}\n")
    if "sink" in args.only:
        print("| cell | load | smtp-sink | ferry serve --sink | ferry / smtp-sink |")
        print("| --- | --- | --- | --- | --- |")
        for name, *_ in CELLS:
            for client in clients:
                sink = median[(name, "smtp-sink", client)]
                ferry = median[(name, "ferry --sink", client)]
                print(f"| {name} | {client} | {sink:,.0f} | {ferry:,.0f} | {ferry / sink:.2f}x |")
        print()
        print("| cell | server | smtp-source | ferry bench | ferry bench / smtp-source |")
        print("| --- | --- | --- | --- | --- |")
        for name, *_ in CELLS:
            for server in ("smtp-sink", "ferry --sink"):
                source = median[(name, server, "smtp-source")]
                bench = median[(name, server, "ferry bench")]
                print(f"| {name} | {server} | {source:,.0f} | {bench:,.0f} | "
                      f"{bench / source:.2f}x |")
        print()
    if "maildir" in args.only:
        name = CELLS[0][0]
        for client in clients:
            rate = median[(name, "ferry --maildir", client)]
            line = f"ferry serve --maildir, {name}, {client}: {rate:,.0f} messages/s"
            if (name, "smtp-sink", client) in median:
                line += f", {rate / median[(name, 'smtp-sink', client)]:.2f}x smtp-sink"
            if disk:
                line += f", {rate / disk:.2f}x the disk's {disk:,.0f} deliveries/s (fsync-rate, 50 writers)"
            print(line)
        print()
    if "tls" in args.only:
        rate = median[("STARTTLS", "ferry --sink (STARTTLS)", "ferry bench")]
        print(f"STARTTLS, one message per connection, 50 at once (ferry bench -> ferry serve): "
              f"{rate:,.0f} sessions/s\n")
    for name, per_session in memory.items():
        print(f"idle memory, {name}: {per_session:.2f} KiB per session after EHLO "
              f"({args.idle_sessions} sessions)")


if __name__ == "__main__":
    main()
