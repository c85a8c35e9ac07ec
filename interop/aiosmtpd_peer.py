#!/usr/bin/env python3
"""aiosmtpd as an interop peer: records every message it accepts.

Each message becomes `<out>/<n>.json` with the envelope, the content, the
login used and whether the session was under TLS. Runs until terminated.
"""

import argparse
import asyncio
import itertools
import json
import pathlib
import signal
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    def __init__(self, out):
        self.out = out
        self.counter = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content": envelope.content.decode("utf-8", errors="replace"),
            "auth_user": session.login_data.decode() if isinstance(session.login_data, bytes) else None,
            "tls": session.ssl is not None,
        }
        path = self.out / f"{next(self.counter):06}.json"
        temporary = path.with_suffix(".part")
        temporary.write_text(json.dumps(record))
        temporary.rename(path)
        return "250 2.0.0 OK recorded"


class PasswordTable:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and auth_data.login == self.user \
                and auth_data.password == self.password:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--require-starttls", action="store_true")
    parser.add_argument("--auth", help="USER:PASSWORD; AUTH required")
    args = parser.parse_args()

    kwargs = {}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = args.require_starttls
    if args.auth:
        user, password = args.auth.split(":", 1)
        kwargs["authenticator"] = PasswordTable(user, password)
        kwargs["auth_required"] = True
        # aiosmtpd's own default: AUTH only over TLS.
        kwargs["auth_require_tls"] = True

    controller = Controller(Recorder(args.out), hostname="127.0.0.1", port=args.port,
                            server_hostname="aiosmtpd.interop.test", **kwargs)
    controller.start()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
