#!/usr/bin/env python3
"""The interop matrix: ferry against SMTP software nobody here wrote.

Each case starts its peers on 127.0.0.1, runs one exchange and checks what
arrived: the bytes in ferry's Maildir, or what the peer received. Run it
with `cargo xtask interop` (which builds ferry first); `.ci/run` installs
the peers: swaks and Postfix's smtp-sink/smtp-source from Debian, aiosmtpd
from PyPI.

    python3 interop/matrix.py --ferry target/debug/ferry [--only NAME]
"""

import argparse
import json
import os
import pathlib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.message import EmailMessage

HERE = pathlib.Path(__file__).resolve().parent
CASES = []
# Every wait in the matrix is bounded.
START_TIMEOUT = 30
STEP_TIMEOUT = 120


def case(function):
    CASES.append(function)
    return function


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process=None):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise Failure(f"peer exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"nothing listens on port {port} after {START_TIMEOUT}s")


def run(args, **kwargs):
    kwargs.setdefault("timeout", STEP_TIMEOUT)
    kwargs.setdefault("capture_output", True)
    result = subprocess.run(args, **kwargs)
    return result


def make_certificate(directory, days=2, stem="peer"):
    """A self-signed certificate for localhost and 127.0.0.1, made now."""
    cert = directory / f"{stem}-cert.pem"
    key = directory / f"{stem}-key.pem"
    result = run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        # An end-entity certificate: webpki refuses a CA certificate as a leaf.
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-keyout", str(key), "-out", str(cert),
    ])
    check(result.returncode == 0, f"openssl failed: {result.stderr.decode()}")
    return cert, key


class FerryServer:
    """`ferry serve` on a free loopback port, writing into a fresh Maildir."""

    def __init__(self, ferry, workdir, *extra):
        self.port = free_port()
        self.maildir = workdir / f"maildir-{self.port}"
        self.args = [
            ferry, "serve", "--listen", f"127.0.0.1:{self.port}",
            "--maildir", str(self.maildir), "--hostname", "mx.interop.test", *extra,
        ]
        self.output = []

    def __enter__(self):
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()

        def pump():
            for line in self.process.stdout:
                self.output.append(line.decode(errors="replace"))
                if b"listening on" in line:
                    ready.set()
        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise Failure("ferry serve did not say `listening on`:\n" + "".join(self.output))
        return self

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc):
        self.stop()

    def messages(self):
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        return [path.read_bytes() for path in sorted(new.iterdir())]

    def only_message(self):
        messages = self.messages()
        check(len(messages) == 1, f"expected one message in the Maildir, found {len(messages)}")
        return messages[0]


def assert_stored(stored, sender, recipients, *needles):
    check(stored.startswith(f"Return-Path: <{sender}>\r\n".encode()),
          f"stored message does not start with Return-Path: {stored[:80]!r}")
    for recipient in recipients:
        check(f"\r\nDelivered-To: {recipient}\r\n".encode() in stored,
              f"no Delivered-To: {recipient} in {stored[:300]!r}")
    check(b"\r\nReceived: from " in stored, "no Received: header")
    for needle in needles:
        check(needle in stored, f"{needle!r} not in stored message")
    # The stored message keeps SMTP's CRLF line ends: no bare LF anywhere.
    check(stored.replace(b"\r\n", b"").find(b"\n") == -1, "bare LF in stored message")


def swaks(port, token, *extra, recipient="bob@example.com"):
    args = [
        "swaks", "--server", "127.0.0.1", "--port", str(port),
        "--from", "alice@example.com", "--to", recipient,
        "--helo", "client.interop.test",
        "--header", f"X-Interop: {token}", "--body", f"body {token}",
        "--timeout", "30", *extra,
    ]
    result = run(args)
    check(result.returncode == 0,
          f"swaks exited {result.returncode}:\n{result.stdout.decode(errors='replace')[-3000:]}")
    return result.stdout.decode(errors="replace")


# --- swaks → ferry serve -----------------------------------------------------

@case
def swaks_plain(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir) as server:
        swaks(server.port, token)
        assert_stored(server.only_message(), "alice@example.com", ["bob@example.com"],
                      f"X-Interop: {token}\r\n".encode(), f"body {token}\r\n".encode())


@case
def swaks_starttls_auth_plain(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key),
                     "--user", "alice:s3cret", "--require-auth") as server:
        transcript = swaks(server.port, token, "--tls", "--auth", "PLAIN",
                           "--auth-user", "alice", "--auth-password", "s3cret")
        check("Authentication succeeded" in transcript or "235" in transcript, "no 235 in transcript")
        assert_stored(server.only_message(), "alice@example.com", ["bob@example.com"],
                      f"X-Interop: {token}".encode())


@case
def swaks_starttls_auth_login(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key),
                     "--user", "alice:s3cret", "--require-auth") as server:
        swaks(server.port, token, "--tls", "--auth", "LOGIN",
              "--auth-user", "alice", "--auth-password", "s3cret")
        assert_stored(server.only_message(), "alice@example.com", ["bob@example.com"],
                      f"X-Interop: {token}".encode())


@case
def swaks_wrong_password_is_refused(ctx):
    with FerryServer(ctx.ferry, ctx.workdir, "--user", "alice:s3cret", "--require-auth") as server:
        result = run([
            "swaks", "--server", "127.0.0.1", "--port", str(server.port), "--tls",
            "--from", "alice@example.com", "--to", "bob@example.com",
            "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
        ])
        check(result.returncode != 0, "swaks succeeded with a wrong password")
        check(b"535" in result.stdout, "no 535 reply to a wrong password")
        check(server.messages() == [], "a message was stored without authentication")


@case
def swaks_pipelining(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir) as server:
        swaks(server.port, token, "--pipeline", "--to", "bob@example.com,carol@example.com")
        assert_stored(server.only_message(), "alice@example.com",
                      ["bob@example.com", "carol@example.com"], f"body {token}".encode())


@case
def swaks_attachment(ctx):
    token = uuid.uuid4().hex
    attachment = ctx.workdir / "report.bin"
    payload = os.urandom(3000)
    attachment.write_bytes(payload)
    with FerryServer(ctx.ferry, ctx.workdir) as server:
        swaks(server.port, token, "--attach", str(attachment))
        stored = server.only_message()
        assert_stored(stored, "alice@example.com", ["bob@example.com"])
        import email
        from email import policy
        message = email.message_from_bytes(stored, policy=policy.default)
        parts = [part.get_payload(decode=True) for part in message.iter_attachments()]
        check(payload in parts, "the attachment did not arrive byte-exact")


@case
def swaks_implicit_tls(ctx):
    token = uuid.uuid4().hex
    tls_port = free_port()
    with FerryServer(ctx.ferry, ctx.workdir, "--tls-listen", f"127.0.0.1:{tls_port}",
                     "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key)) as server:
        wait_for_port(tls_port)
        swaks(tls_port, token, "--tls-on-connect")
        assert_stored(server.only_message(), "alice@example.com", ["bob@example.com"],
                      f"X-Interop: {token}".encode())


@case
def swaks_lmtp_one_file_per_recipient(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir, "--lmtp") as server:
        transcript = swaks(server.port, token, "--protocol", "LMTP",
                           "--to", "bob@example.com,carol@example.com")
        check("LHLO" in transcript, "swaks did not speak LMTP")
        messages = server.messages()
        check(len(messages) == 2, f"{len(messages)} files for two LMTP recipients")
        delivered = sorted(m.split(b"\r\nDelivered-To: ")[1].split(b"\r\n")[0] for m in messages)
        check(delivered == [b"bob@example.com", b"carol@example.com"], f"Delivered-To {delivered}")
        for stored in messages:
            check(f"body {token}".encode() in stored, "body missing")


# --- Python smtplib → ferry serve ---------------------------------------------

@case
def smtplib_starttls_login_send_message(ctx):
    token = uuid.uuid4().hex
    with FerryServer(ctx.ferry, ctx.workdir, "--user", "alice:s3cret") as server:
        message = EmailMessage()
        message["From"] = "alice@example.com"
        message["To"] = "bob@example.com"
        message["Subject"] = f"interop {token}"
        message.set_content(f"hello {token}\n.leading dot\n")
        # The most common client in the world, with no options beyond host
        # and port: smtplib's starttls() does not verify by default.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.starttls()
            client.login("alice", "s3cret")
            refused = client.send_message(message)
            check(refused == {}, f"recipients refused: {refused}")
        stored = server.only_message()
        assert_stored(stored, "alice@example.com", ["bob@example.com"],
                      f"Subject: interop {token}\r\n".encode(),
                      f"hello {token}\r\n.leading dot\r\n".encode())


@case
def smtplib_verified_starttls(ctx):
    with FerryServer(ctx.ferry, ctx.workdir, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key)) as server:
        context = ssl.create_default_context(cafile=str(ctx.cert))
        with smtplib.SMTP("localhost", server.port, timeout=30) as client:
            client.starttls(context=context)
            client.sendmail("alice@example.com", ["bob@example.com"], b"Subject: verified\r\n\r\nok\r\n")
        assert_stored(server.only_message(), "alice@example.com", ["bob@example.com"],
                      b"Subject: verified\r\n\r\nok\r\n")


# --- smtp-source → ferry serve ------------------------------------------------

@case
def smtp_source_1000_messages_10_sessions(ctx):
    with FerryServer(ctx.ferry, ctx.workdir) as server:
        result = run(["/usr/sbin/smtp-source", "-s", "10", "-m", "1000", "-l", "1024",
                      "-f", "alice@example.com", "-t", "bob@example.com",
                      f"127.0.0.1:{server.port}"])
        check(result.returncode == 0, f"smtp-source failed: {result.stderr.decode()}")
        messages = server.messages()
        check(len(messages) == 1000, f"{len(messages)} messages stored, expected 1000")
        for stored in messages:
            assert_stored(stored, "alice@example.com", ["bob@example.com"])


# --- ferry send → aiosmtpd ----------------------------------------------------

class Aiosmtpd:
    """aiosmtpd on a free port, recording each message into a directory."""

    def __init__(self, ctx, *extra):
        self.port = free_port()
        self.out = ctx.workdir / f"aiosmtpd-{self.port}"
        self.out.mkdir()
        self.args = [ctx.python, str(HERE / "aiosmtpd_peer.py"), "--port", str(self.port),
                     "--out", str(self.out), *extra]

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def received(self):
        records = []
        for path in sorted(self.out.glob("*.json")):
            records.append(json.loads(path.read_text()))
        return records


def ferry_send(ctx, port, *extra):
    result = run([ctx.ferry, "send", "--server", f"127.0.0.1:{port}",
                  "--from", "alice@example.com", "--to", "bob@example.com", "--json", *extra])
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise Failure(f"ferry send printed no JSON (exit {result.returncode}): "
                      f"{result.stdout!r} {result.stderr!r}")
    check(result.returncode == 0, f"ferry send exited {result.returncode}: {report}")
    check(report["exit"] == 0 and report["error"] is None, f"unexpected report {report}")
    check([r["status"] for r in report["recipients"]] == ["accepted"], f"recipients {report}")
    return report


def assert_received(records, token, auth_user=None):
    check(len(records) == 1, f"peer received {len(records)} messages")
    record = records[0]
    check(record["mail_from"] == "alice@example.com", f"MAIL FROM {record['mail_from']}")
    check(record["rcpt_tos"] == ["bob@example.com"], f"RCPT TO {record['rcpt_tos']}")
    content = record["content"]
    check(f"Subject: {token}" in content, "subject missing at the peer")
    check("From: " in content and "Message-ID: " in content and "Date: " in content,
          "composed headers missing at the peer")
    if auth_user is not None:
        check(record["auth_user"] == auth_user, f"peer saw login {record['auth_user']}")


@case
def ferry_send_to_aiosmtpd_plain(ctx):
    token = uuid.uuid4().hex
    with Aiosmtpd(ctx) as peer:
        ferry_send(ctx, peer.port, "--tls", "none", "--subject", token, "--body", "plain")
        assert_received(peer.received(), token)


@case
def ferry_send_to_aiosmtpd_starttls(ctx):
    token = uuid.uuid4().hex
    with Aiosmtpd(ctx, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key), "--require-starttls") as peer:
        ferry_send(ctx, peer.port, "--tls", "starttls", "--ca", str(ctx.cert),
                   "--subject", token, "--body", "over tls")
        records = peer.received()
        assert_received(records, token)
        check(records[0]["tls"], "aiosmtpd saw no TLS")


@case
def ferry_send_to_aiosmtpd_auth(ctx):
    token = uuid.uuid4().hex
    with Aiosmtpd(ctx, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key),
                  "--auth", "alice:s3cret") as peer:
        ferry_send(ctx, peer.port, "--tls", "starttls", "--ca", str(ctx.cert),
                   "--user", "alice", "--password", "s3cret", "--subject", token, "--body", "auth")
        assert_received(peer.received(), token, auth_user="alice")


@case
def ferry_send_attachment_to_aiosmtpd(ctx):
    token = uuid.uuid4().hex
    attachment = ctx.workdir / "photo.png"
    payload = os.urandom(5000)
    attachment.write_bytes(payload)
    with Aiosmtpd(ctx) as peer:
        ferry_send(ctx, peer.port, "--tls", "none", "--subject", token, "--body", "see attached",
                   "--attach", str(attachment))
        records = peer.received()
        assert_received(records, token)
        import email
        from email import policy
        message = email.message_from_string(records[0]["content"], policy=policy.default)
        attachments = list(message.iter_attachments())
        check(len(attachments) == 1, "attachment missing")
        check(attachments[0].get_content_type() == "image/png",
              f"content type {attachments[0].get_content_type()}")
        check(attachments[0].get_payload(decode=True) == payload, "attachment not byte-exact")


# --- ferry send / bench → smtp-sink -------------------------------------------

class SmtpSink:
    def __init__(self, ctx):
        self.port = free_port()
        self.dump = ctx.workdir / f"sink-{self.port}"
        self.dump.mkdir()
        self.dump.chmod(0o777)
        args = ["/usr/sbin/smtp-sink", "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["-D", str(self.dump / "dump"), f"127.0.0.1:{self.port}", "256"]
        self.args = args

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, self.process)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def dumped(self):
        path = self.dump / "dump"
        return path.read_bytes() if path.exists() else b""


@case
def ferry_send_to_smtp_sink(ctx):
    token = uuid.uuid4().hex
    with SmtpSink(ctx) as sink:
        ferry_send(ctx, sink.port, "--tls", "none", "--subject", token, "--body", "to the sink")
        deadline = time.monotonic() + 10
        while token.encode() not in sink.dumped() and time.monotonic() < deadline:
            time.sleep(0.05)
        dumped = sink.dumped()
        check(f"Subject: {token}".encode() in dumped, "smtp-sink did not receive the message")
        check(b"to the sink" in dumped, "body missing at smtp-sink")


@case
def ferry_bench_against_smtp_sink(ctx):
    with SmtpSink(ctx) as sink:
        result = run([ctx.ferry, "bench", "--server", f"127.0.0.1:{sink.port}", "--tls", "none",
                      "--messages", "500", "--concurrency", "10", "--size", "2048", "--json"])
        check(result.returncode == 0, f"ferry bench exited {result.returncode}: {result.stderr!r}")
        report = json.loads(result.stdout)
        check(report["messages"] == 500, f"bench sent {report.get('messages')} messages")
        check(report["failed"] == 0, f"bench failures: {report}")
        deadline = time.monotonic() + 10
        while sink.dumped().count(b"X-Ferry-Bench") < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        received = sink.dumped().count(b"\nX-Ferry-Bench")
        check(received == 500, f"smtp-sink stored {received} bench messages")


# --- ferry relay: swaks and smtplib submit, aiosmtpd and smtp-sink receive ---

class FerryRelay(FerryServer):
    """`ferry relay` on a free loopback port with a fresh spool."""

    def __init__(self, ferry, workdir, *extra):
        super().__init__(ferry, workdir)
        self.spool = workdir / f"spool-{self.port}"
        self.args = [
            ferry, "relay", "--listen", f"127.0.0.1:{self.port}",
            "--spool", str(self.spool), "--hostname", "relay.interop.test", *extra,
        ]


def wait_until(condition, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for {what}")
        time.sleep(0.05)


@case
def swaks_submits_to_ferry_relay_for_a_local_domain(ctx):
    token = uuid.uuid4().hex
    maildir = ctx.workdir / f"relay-local-{token}"
    with FerryRelay(ctx.ferry, ctx.workdir, "--local-domain", "example.com",
                    "--maildir", str(maildir)) as relay:
        relay.maildir = maildir
        swaks(relay.port, token, "--tls")
        wait_until(lambda: relay.messages(), "local delivery")
        stored = relay.only_message()
        assert_stored(stored, "alice@example.com", ["bob@example.com"],
                      f"X-Interop: {token}\r\n".encode(), f"body {token}\r\n".encode(),
                      b"by relay.interop.test with ESMTPS id ")


@case
def swaks_foreign_recipient_is_refused_outside_the_relay_networks(ctx):
    token = uuid.uuid4().hex
    with FerryRelay(ctx.ferry, ctx.workdir, "--relay-network", "192.0.2.0/24",
                    "--local-domain", "example.com",
                    "--maildir", str(ctx.workdir / f"relay-deny-{token}")) as relay:
        result = run(["swaks", "--server", "127.0.0.1", "--port", str(relay.port),
                      "--from", "alice@example.com", "--to", "victim@elsewhere.example",
                      "--timeout", "30"])
        output = result.stdout.decode(errors="replace")
        check(result.returncode != 0, "swaks relayed through ferry relay from outside")
        check("554 5.7.1 relay access denied" in output, f"no 554 5.7.1 in:\n{output[-2000:]}")


@case
def smtplib_submits_to_ferry_relay_delivering_to_aiosmtpd(ctx):
    token = uuid.uuid4().hex
    with Aiosmtpd(ctx) as peer, FerryRelay(
            ctx.ferry, ctx.workdir, "--route", f"example.net=127.0.0.1:{peer.port}") as relay:
        message = EmailMessage()
        message["From"] = "alice@example.com"
        message["To"] = "bob@example.net"
        message["Subject"] = token
        message.set_content(f"relayed {token}\n")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.starttls(context=context)
            client.send_message(message)
        wait_until(lambda: peer.received(), "delivery to aiosmtpd")
        records = peer.received()
        check(len(records) == 1, f"aiosmtpd received {len(records)} messages")
        record = records[0]
        check(record["mail_from"] == "alice@example.com", f"MAIL FROM {record['mail_from']}")
        check(record["rcpt_tos"] == ["bob@example.net"], f"RCPT TO {record['rcpt_tos']}")
        content = record["content"]
        check(content.startswith("Received: from "), f"no Received first: {content[:200]!r}")
        check("by relay.interop.test with ESMTPS id " in content, "the relay's Received is missing")
        check(f"Subject: {token}" in content and f"relayed {token}" in content, "content missing")


@case
def ferry_relay_delivers_to_smtp_sink(ctx):
    token = uuid.uuid4().hex
    with SmtpSink(ctx) as sink, FerryRelay(
            ctx.ferry, ctx.workdir, "--route", f"example.com=127.0.0.1:{sink.port}") as relay:
        ferry_send(ctx, relay.port, "--tls", "none", "--subject", token, "--body", "through the relay")
        wait_until(lambda: token.encode() in sink.dumped(), "delivery to smtp-sink")
        dumped = sink.dumped()
        check(b"by relay.interop.test with ESMTP id " in dumped, "the relay's Received is missing")
        check(b"through the relay" in dumped, "body missing at smtp-sink")


# --- ferry check against ferry serve, aiosmtpd and smtp-sink ------------------

def ferry_check(ctx, target, *extra):
    result = run([ctx.ferry, "check", target, "--json", "--timeout", "5", *extra])
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise Failure(f"ferry check printed no JSON (exit {result.returncode}): "
                      f"{result.stdout!r} {result.stderr!r}")
    check(result.returncode in (0, 1), f"ferry check exited {result.returncode}")
    check((result.returncode == 1) == report["failed"], "exit status does not match the report")
    return result.returncode, {r["id"]: r for r in report["results"]}


def statuses(results):
    return {id: r["status"] for id, r in results.items()}


@case
def ferry_check_against_ferry_serve(ctx):
    # A certificate valid for a year: the matrix's two-day one would be
    # reported as about to expire, rightly.
    cert, key = make_certificate(ctx.workdir, days=365, stem="check")
    with FerryServer(ctx.ferry, ctx.workdir, "--tls-cert", str(cert), "--tls-key", str(key),
                     "--sink") as server:
        code, results = ferry_check(ctx, f"127.0.0.1:{server.port}", "--ca", str(cert))
        check(code == 0, f"ferry check found failures: {statuses(results)}")
        # ferry serve stores mail for any recipient, so the relay probe can
        # only say "possible"; everything else that applies passes.
        expected_warn = {"security.open-relay"}
        for id, result in results.items():
            if id in expected_warn:
                check(result["status"] == "warn", f"{id}: {result}")
            else:
                check(result["status"] in ("pass", "info", "skip"), f"{id}: {result}")
        for id in ["tls.starttls", "tls.chain", "protocol.pipelining", "protocol.size-limit",
                   "security.bare-lf", "security.starttls-injection", "tls.legacy-versions"]:
            check(results[id]["status"] == "pass", f"{id}: {results[id]}")
        # Nothing was stored: the checks never send DATA.
        check(server.messages() == [], "ferry check stored a message")


@case
def ferry_check_against_aiosmtpd(ctx):
    with Aiosmtpd(ctx) as peer:
        code, results = ferry_check(ctx, f"127.0.0.1:{peer.port}")
        # aiosmtpd ends command lines at a bare LF.
        check(results["security.bare-lf"]["status"] == "warn", f"bare LF: {results['security.bare-lf']}")
        check(results["tls.starttls"]["status"] == "warn", f"STARTTLS: {results['tls.starttls']}")
        check(results["protocol.ehlo"]["status"] == "pass", f"EHLO: {results['protocol.ehlo']}")
        check(peer.received() == [], "aiosmtpd received a message")


@case
def ferry_check_against_aiosmtpd_starttls(ctx):
    with Aiosmtpd(ctx, "--tls-cert", str(ctx.cert), "--tls-key", str(ctx.key)) as peer:
        code, results = ferry_check(ctx, f"127.0.0.1:{peer.port}", "--ca", str(ctx.cert))
        check(results["tls.starttls"]["status"] == "pass", f"STARTTLS: {results['tls.starttls']}")
        check(results["security.starttls-injection"]["status"] == "pass",
              f"injection: {results['security.starttls-injection']}")
        check(results["protocol.ehlo-after-tls"]["status"] == "pass",
              f"EHLO after TLS: {results['protocol.ehlo-after-tls']}")


@case
def ferry_check_against_smtp_sink(ctx):
    with SmtpSink(ctx) as sink:
        code, results = ferry_check(ctx, f"127.0.0.1:{sink.port}")
        check(results["connection.greeting"]["status"] == "pass", f"{results['connection.greeting']}")
        check(results["protocol.ehlo"]["status"] == "pass", f"{results['protocol.ehlo']}")
        check(results["tls.starttls"]["status"] == "warn", f"{results['tls.starttls']}")
        # smtp-sink offers AUTH PLAIN LOGIN without TLS and says 250 to VRFY.
        check(results["security.auth-plaintext"]["status"] == "fail", f"{results['security.auth-plaintext']}")
        check(results["security.vrfy"]["status"] == "warn", f"{results['security.vrfy']}")
        check(code == 1, "the plaintext AUTH failure sets exit status 1")
        # smtp-sink accepts every recipient.
        check(results["security.open-relay"]["status"] == "warn", f"{results['security.open-relay']}")
        check(sink.dumped() == b"", "smtp-sink received a message")


class Context:
    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", required=True, help="the ferry binary")
    parser.add_argument("--python", default=os.environ.get("FERRY_INTEROP_PYTHON", sys.executable),
                        help="a Python with aiosmtpd installed")
    parser.add_argument("--only", action="append", help="run only the named cases")
    args = parser.parse_args()

    for tool in ["swaks", "/usr/sbin/smtp-sink", "/usr/sbin/smtp-source", "openssl"]:
        if shutil.which(tool) is None:
            sys.exit(f"interop: {tool} is not installed (run .ci/run as root, or install swaks and postfix)")
    probe = run([args.python, "-c", "import aiosmtpd"])
    if probe.returncode != 0:
        sys.exit(f"interop: {args.python} cannot import aiosmtpd (pip install aiosmtpd)")

    failures = []
    with tempfile.TemporaryDirectory(prefix="ferry-interop-") as tmp:
        ctx = Context()
        ctx.ferry = str(pathlib.Path(args.ferry).resolve())
        ctx.python = args.python
        ctx.workdir = pathlib.Path(tmp)
        os.chmod(tmp, 0o755)
        ctx.cert, ctx.key = make_certificate(ctx.workdir)
        selected = [c for c in CASES if not args.only or c.__name__ in args.only]
        for function in selected:
            started = time.monotonic()
            try:
                function(ctx)
                print(f"ok    {function.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
            except Exception as error:  # report every case, then fail
                failures.append(function.__name__)
                print(f"FAIL  {function.__name__}: {error}", flush=True)
    print(f"\n{len(selected) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
