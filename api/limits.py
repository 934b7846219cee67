"""Request heads of bounded size, refused at once: 414 for a long URL, 431 for long headers.

uvicorn's httptools protocol buffers a request head of any size before the app sees it: a
30 MB `Authorization` header stalled every other request of the process for seconds and a
50 MB one cost 200 MB (measured, issue 20). This protocol counts the head's bytes as they
arrive and answers before the head is complete, so neither time nor memory grows with what a
client sends. Limits come from `API_MAX_URL_BYTES` and `API_MAX_HEADER_BYTES`
(`configure_limits`, called where the app is built, in every uvicorn worker process).
"""

from __future__ import annotations

from typing import ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config import Settings
from pipeline import metrics

log = structlog.get_logger("api.limits")

LINGER_S = 2.0
STATUS = {
    414: b"HTTP/1.1 414 URI Too Long\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


class _HeadTooLargeError(Exception):
    """Raised inside the parser's callback to stop it; answered by `send_400_response`."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_url_bytes: ClassVar[int] = 8 * 1024
    max_header_bytes: ClassVar[int] = 16 * 1024

    url = b""  # until the parser's first message begins (uvicorn sets it then)
    _in_head = True
    _head_bytes = 0
    _header_bytes = 0
    _refusing: int | None = None
    _refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._header_bytes = True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.url) > self.max_url_bytes:
            self._refusing = 414
        elif self._header_bytes > self.max_header_bytes:
            self._refusing = 431
        if self._refusing is not None:
            raise _HeadTooLargeError  # the parser stops; uvicorn answers through send_400_response
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_url_bytes + self.max_header_bytes:
                # Still no end of the head: refuse before buffering more of it.
                self._refuse(414 if len(self.url) > self.max_url_bytes else 431)
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self._refusing is not None:
            self._refuse(self._refusing)
        else:
            super().send_400_response(msg)

    def _refuse(self, status: int) -> None:
        if self._refused:
            return
        self._refused = True
        metrics.API_REFUSED.labels(str(status)).inc()
        log.warning("request_head_too_large", status=status, received_bytes=self._head_bytes)
        reason = STATUS[status].split(b" ", 2)[2].strip()
        self.transport.write(
            STATUS[status]
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: "
            + str(len(reason)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + reason
        )
        # Lingering close (as nginx does): stop sending, keep reading (and dropping) what the
        # client still sends for a moment, so closing with unread data does not reset the
        # connection and destroy the answer before the client reads it.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def configure_limits(settings: Settings) -> None:
    BoundedHttpToolsProtocol.max_url_bytes = settings.api_max_url_bytes
    BoundedHttpToolsProtocol.max_header_bytes = settings.api_max_header_bytes
