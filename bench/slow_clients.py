"""Other requests' latency while slow clients trickle their requests in.

    .venv/bin/python -m bench.slow_clients [--slow 64] [--requests 100] [--timeout 2]

gunicorn as `make run` serves it (taskq_project/gunicorn.conf.py), on a
database of its own. First the baseline: `GET /healthz` and an authenticated
`GET /v1/namespace`, one after the other, with no slow client. Then the
same while `--slow` clients each hold a connection open and send one header
line a second (slowloris), and again while they send a declared body one
byte a second. A request that gets no answer within `--timeout` seconds
counts as that long. The figure that matters is p99 against the baseline's;
the target is at most 100 ms more.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time

from bench.common import (
    Server,
    argument_parser,
    bench_database,
    machine_description,
    percentile,
    print_table,
    setup_django,
    verdict,
)

DATABASE = "taskq_slow_clients"
TARGET_EXTRA_P99_MS = 100


def trickle(port: int, mode: str, stop: threading.Event) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    with sock:
        try:
            if mode == "headers":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
                chunk = b"X-Slow: 1\r\n"
            else:
                sock.sendall(
                    b"POST /v1/namespace HTTP/1.1\r\nHost: bench\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                chunk = b" "
            while not stop.wait(1.0):
                sock.sendall(chunk)
        except OSError:
            return


def measure(port: int, token: str, requests: int, timeout: float) -> list[float]:
    latencies = []
    for i in range(requests):
        path = "/healthz" if i % 2 == 0 else "/v1/namespace"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        began = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            conn.getresponse().read()
            latencies.append(time.perf_counter() - began)
        except OSError:
            latencies.append(timeout)
        finally:
            conn.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser("bench.slow_clients", __doc__)
    parser.add_argument("--slow", type=int, default=64, help="Slow clients at once.")
    parser.add_argument("--requests", type=int, default=100, help="Measured requests per phase.")
    parser.add_argument("--timeout", type=float, default=2.0, help="Seconds before giving up.")
    args = parser.parse_args(argv)
    setup_django()
    from apikeys_app.services import create_token

    with bench_database(DATABASE):
        print_table(["", ""], machine_description(), title="Machine")
        _, token = create_token(name="bench", role="read-only")
        server = Server()
        rows = []
        try:
            measure(server.port, token, 20, args.timeout)  # warm every worker up
            baseline = measure(server.port, token, args.requests, args.timeout)
            rows.append(("none (baseline)", baseline))
            for mode in ("headers", "body"):
                stop = threading.Event()
                threads = [
                    threading.Thread(target=trickle, args=(server.port, mode, stop), daemon=True)
                    for _ in range(args.slow)
                ]
                for thread in threads:
                    thread.start()
                time.sleep(2)  # every slow client is connected and trickling
                rows.append(
                    (
                        f"{args.slow} sending {mode} a byte or line a second",
                        measure(server.port, token, args.requests, args.timeout),
                    )
                )
                stop.set()
                for thread in threads:
                    thread.join(5)
        finally:
            server.stop()
    base_p99 = percentile(baseline, 99) * 1000
    print_table(
        ["slow clients", "p50 ms", "p99 ms", "max ms", "p99 - baseline ms", "verdict"],
        [
            (
                label,
                percentile(values, 50) * 1000,
                percentile(values, 99) * 1000,
                max(values) * 1000,
                percentile(values, 99) * 1000 - base_p99,
                "-"
                if values is baseline
                else verdict(percentile(values, 99) * 1000 - base_p99 <= TARGET_EXTRA_P99_MS),
            )
            for label, values in rows
        ],
        title=f"Other requests' latency ({args.requests} requests per phase, "
        f"timeout {args.timeout:g} s)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
