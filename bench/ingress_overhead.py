"""What the ingress hook adds to a request through NGINX (prints figures; asserts nothing).

    .venv/bin/python bench/ingress_overhead.py            # ~20 s
    .venv/bin/python bench/ingress_overhead.py --quick    # smoke run

Starts a real sidecar (authz listener on) and Debian's nginx twice on loopback, in front of the same
tiny upstream: once with the shipped deploy/nginx configuration (every request makes an auth
subrequest to the sidecar; a metered route, so each one is a check-and-reserve), once with a plain
`proxy_pass` and no hook (the baseline of the same run). One keep-alive connection, requests in turn,
alternating rounds so both see the same machine; prints p50/p90/p99 of each and their ratio.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from pathlib import Path

from harness import percentiles_ms

from demo.processes import Process, free_port
from tests.integration.ingress.conftest import API_KEYS, start_sidecar
from tests.integration.ingress.nginx import main_config, nginx_binary, serve_app, start_nginx

PLAIN_SITE = 'upstream app {{ server 127.0.0.1:{app}; keepalive 16; }}\nserver {{ listen 127.0.0.1:{port}; location / {{ proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://app; }} }}\n'


def plain_nginx(directory: Path, app_port: int, port: int) -> Process:
    directory.mkdir(parents=True)
    (directory / "site.conf").write_text(PLAIN_SITE.format(app=app_port, port=port))
    (directory / "nginx.conf").write_text(main_config(directory))
    argv = [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf")]
    process = Process("nginx-plain", argv, {}, directory / "nginx.log", directory)
    process.start()
    process.wait_http(f"http://127.0.0.1:{port}/", lambda status: status == 200, timeout_s=10)
    return process


def timings(port: int, path: str, headers: dict[str, str], count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        out.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    connection.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, per_round = (2, 100) if args.quick else (10, 500)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        app_iter = serve_app()
        app = next(app_iter)
        sidecar_port, authz_port = free_port(), free_port()
        sidecar = start_sidecar(directory, sidecar_port, authz_port)
        gated_port, plain_port = free_port(), free_port()
        gated = start_nginx(directory / "gated", API_KEYS, authz_port, app.port, gated_port)
        plain = plain_nginx(directory / "plain", app.port, plain_port)
        try:
            headers = {"X-Api-Key": "key-pro-active"}  # /api/v1/reports/x: GET, feature only
            metered = {"X-Api-Key": "key-free-light"}
            samples: dict[str, list[float]] = {"plain": [], "hook": [], "hook+reserve": []}
            timings(gated_port, "/api/v1/reports/x", headers, 50)  # warm-up
            timings(plain_port, "/api/v1/reports/x", headers, 50)
            for _ in range(rounds):
                samples["plain"] += timings(plain_port, "/api/v1/reports/x", headers, per_round)
                samples["hook"] += timings(gated_port, "/api/v1/reports/x", headers, per_round)
                samples["hook+reserve"] += timings(
                    gated_port, "/api/v1/things", metered, per_round // 10
                )  # free: 990 left
            base = percentiles_ms(samples["plain"])
            for name, values in samples.items():
                figures = percentiles_ms(values)
                ratio = figures["p50_ms"] / base["p50_ms"]
                print(
                    f"{name:13} n={len(values):5}  p50 {figures['p50_ms']:.2f} ms  p90 {figures['p90_ms']:.2f} ms"
                    f"  p99 {figures['p99_ms']:.2f} ms  p50 vs plain x{ratio:.2f}"
                )
        finally:
            gated.stop()
            plain.stop()
            sidecar.stop()
            next(app_iter, None)  # the upstream's shutdown


if __name__ == "__main__":
    main()
