#!/usr/bin/env python3
"""Idle memory per SMTP session: RSS of a server holding N sessions after EHLO.

Starts the server itself (so the raised open-file limit below applies to
this tool and the server it starts, nothing else), reads the server's RSS
from /proc, opens N loopback connections, reads each greeting, sends EHLO
and reads the whole reply, then reads the RSS again while every session is
idle. Prints the growth per session.

    python3 benches/idle_memory.py --ferry target/release/ferry [--sessions 10000]
    python3 benches/idle_memory.py --smtp-sink [--sessions 10000]

The count is bounded (`--sessions`, at most 30,000) and so is the time
(`--timeout` seconds for the whole run).
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

MAX_SESSIONS = 30000


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_fd_limit(wanted):
    """Raises this process's open-file limit (inherited by the server it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_for_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.recv(512)
                probe.sendall(b"QUIT\r\n")
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def read_reply(sock):
    """Reads one whole reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
        if data.endswith(b"\r\n"):
            last = data[:-2].rsplit(b"\r\n", 1)[-1]
            if len(last) >= 4 and last[3:4] == b" ":
                return data


def server_command(args, port):
    if args.smtp_sink:
        command = ["/usr/sbin/smtp-sink"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        # -m: smtp-sink serves at most 256 sessions at once unless told.
        return command + ["-m", str(args.sessions + 100), f"127.0.0.1:{port}", "1000"]
    limit = str(args.sessions + 100)
    return [args.ferry, "serve", "--sink", "--no-tls", "--listen", f"127.0.0.1:{port}",
            "--max-connections-per-ip", limit, "--max-connections", limit]


def measure(args):
    """Returns (sessions, RSS before in KiB, RSS after in KiB)."""
    deadline = time.monotonic() + args.timeout
    raise_fd_limit(2 * args.sessions + 256)
    port = free_port()
    server = subprocess.Popen(server_command(args, port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    sockets = []
    try:
        wait_for_port(port, deadline)
        # Let the probe's session end and the server settle.
        time.sleep(0.5)
        before = rss_kib(server.pid)
        for _ in range(args.sessions):
            if time.monotonic() > deadline:
                sys.exit(f"timed out after {len(sockets)} sessions")
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sockets.append(sock)
                read_reply(sock)
                sock.sendall(b"EHLO client.example.org\r\n")
                read_reply(sock)
            except OSError as error:
                sys.exit(f"session {len(sockets)} failed: {error}")
        time.sleep(0.5)
        after = rss_kib(server.pid)
        return len(sockets), before, after
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        server.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ferry", help="the ferry binary (runs `ferry serve --sink --no-tls`)")
    which.add_argument("--smtp-sink", action="store_true", help="measure Postfix smtp-sink")
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if not 1 <= args.sessions <= MAX_SESSIONS:
        sys.exit(f"--sessions must be 1 to {MAX_SESSIONS}")
    sessions, before, after = measure(args)
    name = "smtp-sink" if args.smtp_sink else "ferry serve --sink"
    print(f"{name}: {sessions} idle sessions after EHLO: RSS {before / 1024:.1f} MiB -> "
          f"{after / 1024:.1f} MiB, {(after - before) / sessions:.2f} KiB per session")


if __name__ == "__main__":
    main()
