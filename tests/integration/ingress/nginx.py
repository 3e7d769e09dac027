"""Debian's nginx running the shipped deploy/nginx configuration on loopback, and a recording upstream.

`make test` installs nginx when it is missing (the Makefile's `nginx` target, through apt-get); where
that was not possible the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from demo.processes import Process

ROOT = Path(__file__).parents[3]
DEPLOY = ROOT / "deploy" / "nginx"
# The example site's own addresses, each swapped for the test's (each must occur exactly once).
AUTHZ_ADDRESS = "server 127.0.0.1:9192;"
APP_ADDRESS = "server 127.0.0.1:8000;"
LISTEN = "listen 8080;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.skip("nginx is not installed and `make test` could not install it (apt-get install nginx)")
    return found


def site_config(authz_port: int, app_port: int, listen_port: int) -> str:
    """deploy/nginx/example.conf with the test's addresses; nothing else changes."""
    text = (DEPLOY / "example.conf").read_text()
    for old, new in (
        (AUTHZ_ADDRESS, f"server 127.0.0.1:{authz_port};"),
        (APP_ADDRESS, f"server 127.0.0.1:{app_port};"),
        (LISTEN, f"listen 127.0.0.1:{listen_port};"),
    ):
        assert text.count(old) == 1, f"deploy/nginx/example.conf should contain {old!r} exactly once"
        text = text.replace(old, new)
    return text


def main_config(directory: Path) -> str:
    """What /etc/nginx/nginx.conf provides around a site, pointed at a private directory."""
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy"))
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n" if os.getuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n    include site.conf;\n}}\n"
    )


def start_nginx(
    directory: Path, api_keys: dict[str, str], authz_port: int, app_port: int, port: int
) -> Process:
    """nginx -c directory/nginx.conf: the shipped snippets copied verbatim under directory/tiergate."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DEPLOY / "tiergate", directory / "tiergate", dirs_exist_ok=True)
    keys = "".join(f'    "{key}" {tenant};\n' for key, tenant in api_keys.items())
    (directory / "tiergate" / "api-keys.map").write_text(keys)
    (directory / "site.conf").write_text(site_config(authz_port, app_port, port))
    (directory / "nginx.conf").write_text(main_config(directory))
    argv = [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf")]
    process = Process("nginx", argv, dict(os.environ), directory / "nginx.log", directory)
    process.start()
    process.wait_http(f"http://127.0.0.1:{port}/nowhere", lambda status: status == 404, timeout_s=10)
    return process


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RecordingApp:
    """The upstream: answers 200 with the headers it got, and remembers every request."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    def last(self) -> Seen:
        assert self.seen, "the upstream saw no request"
        return self.seen[-1]


def serve_app() -> Iterator[RecordingApp]:
    app = RecordingApp()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            app.seen.append(Seen(self.command, self.path, headers))
            body = json.dumps({"upstream": True, "headers": headers}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    app.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()
