"""The `imagerec` command: run the service locally, migrate, reconcile, upload photos."""

from __future__ import annotations

import argparse
import logging

from imagerec import logs
from imagerec.config import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagerec")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run the whole service on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=5000)
    commands.add_parser("migrate", help="bring the database schema up to date")
    reconcile = commands.add_parser(
        "reconcile", help="re-send work for stuck images and delete orphaned blobs, once"
    )
    reconcile.add_argument("--sink", help="where to send events (default: K_SINK)")
    commands.add_parser("upload", help="upload photos into an album", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "upload":
        from web.client import main as upload_main  # only this command needs the web client

        # A person reads this one: plain lines, not the services' JSON.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return upload_main(rest)
    logs.configure({"reconcile": "reconciler"}.get(args.command, args.command))
    settings = load_settings()
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "dev":
        from workflows.dev import run

        return run(settings, args.host, args.port)
    if args.command == "migrate":
        from imagerec.db import upgrade

        upgrade(settings.database_url)
        print("database schema is up to date")
        return 0
    if args.command == "reconcile":
        from imagerec.blobstore import open_blob_store
        from imagerec.db import session_factory
        from workflows.reconciler import resend_stuck, sweep_orphans

        sink = args.sink or settings.sink
        if not sink:
            parser.error("no sink: pass --sink or set K_SINK")
        with session_factory(settings.database_url)() as session:
            sent = resend_stuck(session, sink, settings.patience)
            blobs = open_blob_store(settings.blob_url)
            swept = sweep_orphans(session, blobs, settings.untouched_after_seconds)
        print(f"re-sent {len(sent)} stuck image(s); deleted {len(swept)} orphaned blob(s)")
        return 0
    return 2
