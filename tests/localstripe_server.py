"""Run localstripe on 127.0.0.1:PORT without its on-disk state file (test-time only, never shipped).

Usage: python tests/localstripe_server.py PORT
"""

from __future__ import annotations

import sys

import localstripe.resources
from aiohttp import web
from localstripe.server import app


def main() -> None:
    port = int(sys.argv[1])
    # localstripe pickles its store to a fixed /tmp file after each request: tests share nothing.
    localstripe.resources.Store.dump_to_disk = lambda self: None
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
