"""The gunicorn worker class: uvicorn, with a bound on request heads.

uvicorn's httptools parser keeps whatever a client sends before the end of
its headers: one endless header line would grow a worker's memory without
limit. Here a head (request line and headers) over `MAX_HEAD_BYTES` is
answered 431 and the connection closed. Bodies are bounded by
taskq_project.asgi.
"""

import os
import signal
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

# gunicorn's defaults allowed 100 header fields of 8,190 bytes; real clients
# send a few hundred bytes.
MAX_HEAD_BYTES = 65_536

_TOO_LARGE = (
    b'{"detail": "Request head too large: at most 65536 bytes of request line and '
    b'headers.", "code": "request_header_fields_too_large"}'
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:
        self.head_bytes = 0
        self.in_head = True
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        self.in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing: bytes that completed the head are not held.
        # Between requests of a kept-alive connection, what arrives is a head.
        if self.in_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-type: application/json\r\n"
                    b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
                    b"connection: close\r\n\r\n" + _TOO_LARGE
                )
                self.transport.close()


class Worker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "uvloop", "http": BoundedHttpToolsProtocol}

    async def callback_notify(self) -> None:
        # gunicorn's own workers exit when their master dies; uvicorn's would
        # keep serving, and holding the port, without one. The check runs
        # with each heartbeat (every GUNICORN_TIMEOUT / 2 seconds).
        if os.getppid() != self.ppid:
            self.log.info("gunicorn master %s is gone; worker %s stops", self.ppid, self.pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await super().callback_notify()
