"""A small HTTP/1.1 client for streamed answers whose every read carries the time the kernel received it.

Why not aiohttp (or any client built on asyncio transports): a transport reads with recv(), so the earliest a
caller can stamp a token is when its task runs, after every other stream's bytes that arrived in the same instant
were parsed. A server that batches (TGI, vLLM) sends the tokens of all its sequences at once, so at 500 streams
the last token of such a burst would be stamped milliseconds late by the generator's own work. Here each socket
is read with recvmsg() and SO_TIMESTAMPNS: the kernel's receive time comes with the bytes, and the generator's
speed matters only on average (it must keep up with the tokens per second), not per token.

The kernel's stamp is wall-clock time (CLOCK_REALTIME); each read converts it to perf_counter time with the
offset between the two clocks read at that moment, so a clock step or NTP slew moves it only by what happens
between the packet's arrival and its read. Without the socket option (not Linux), or with a stamp that is
not plausible (in the future, or older than a second), the read is stamped when it is read.

HTTP framing is httptools' (llhttp, the parser uvicorn uses): status, headers, chunked or sized bodies,
keep-alive. TLS goes through an ssl.SSLObject over memory buffers, so the raw reads keep their stamps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it only on some builds
ANCILLARY_BYTES = socket.CMSG_SPACE(16)
READ_BYTES = 256 * 1024
PLAUSIBLE_NS = 1_000_000_000
USER_AGENT = "llmdeploy-loadgen"


class HTTPFailure(Exception):
    """The connection failed (`kind` "connection") or the server spoke something that is not HTTP/1.1
    ("protocol")."""

    def __init__(self, message: str, kind: str = "connection") -> None:
        super().__init__(message)
        self.kind = kind


class Connection:
    """One keep-alive connection: a request at a time; the body comes as (stamp_ns, bytes) pieces."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None, incoming: ssl.MemoryBIO | None) -> None:
        self.sock, self.tls, self.incoming = sock, tls, incoming
        self.outgoing: ssl.MemoryBIO | None = None  # TLS: what the SSLObject wrote, to send
        self.loop = asyncio.get_running_loop()
        self.kernel_stamps = True
        self.reused = False
        self.closed = False
        self._raw: collections.deque[tuple[int, bytes]] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._error: BaseException | None = None

    # -- raw reads, stamped -------------------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(READ_BYTES, ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._wake(error=exc)
            return
        now = time.perf_counter_ns()
        stamp = now
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                seconds, nanoseconds = struct.unpack("qq", payload[:16])
                kernel = seconds * 1_000_000_000 + nanoseconds - (time.time_ns() - now)
                if now - PLAUSIBLE_NS <= kernel <= now:
                    stamp = kernel
        if not data:
            self._wake(eof=True)
            return
        self._raw.append((stamp, data))
        self._wake()

    def _wake(self, *, eof: bool = False, error: BaseException | None = None) -> None:
        self._eof = self._eof or eof
        self._error = self._error or error
        if eof or error:
            self.loop.remove_reader(self.sock.fileno())
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> tuple[int, bytes]:
        """The next piece of the decrypted byte stream with the stamp of the read that completed it; b"" at the end."""
        while True:
            if self._raw:
                stamp, data = self._raw.popleft()
                if self.tls is None:
                    return stamp, data
                self.incoming.write(data)
                plain = self._decrypt()
                if plain:
                    return stamp, plain
                continue
            if self._error is not None:
                raise HTTPFailure(f"{type(self._error).__name__}: {self._error}")
            if self._eof:
                return time.perf_counter_ns(), b""
            self._waiter = self.loop.create_future()
            await self._waiter
            self._waiter = None

    def _decrypt(self) -> bytes:
        pieces = []
        while True:
            try:
                piece = self.tls.read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)

    async def send(self, data: bytes) -> None:
        if self.tls is None:
            await self.loop.sock_sendall(self.sock, data)
            return
        self.tls.write(data)
        await self._flush_tls()

    async def _flush_tls(self) -> None:
        pending = self.outgoing.read()
        if pending:
            await self.loop.sock_sendall(self.sock, pending)

    def watch(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def open_connection(host: str, port: int, *, tls: ssl.SSLContext | None, server_name: str) -> Connection:
    """A connected socket (TLS handshake done) with the kernel's receive times asked for; HTTPFailure if not."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    try:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HTTPFailure(f"cannot resolve {host}: {exc}") from exc
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamps = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            stamps = False
        if tls is None:
            connection = Connection(sock, None, None)
        else:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            connection = Connection(sock, tls.wrap_bio(incoming, outgoing, server_hostname=server_name), incoming)
            connection.outgoing = outgoing
        connection.kernel_stamps = stamps
        connection.watch()
        if tls is not None:
            try:
                await _handshake(connection)
            except (ssl.SSLError, HTTPFailure) as exc:
                connection.close()
                raise HTTPFailure(f"TLS with {host}:{port}: {exc}") from exc
        return connection
    raise HTTPFailure(f"cannot connect to {host}:{port}: {last}")


async def _handshake(connection: Connection) -> None:
    while True:
        try:
            connection.tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await connection._flush_tls()
            if not connection._raw:
                if connection._eof or connection._error:
                    raise HTTPFailure("the server closed the connection during the TLS handshake") from None
                connection._waiter = connection.loop.create_future()
                await connection._waiter
                connection._waiter = None
            while connection._raw:
                connection.incoming.write(connection._raw.popleft()[1])
    await connection._flush_tls()


class Response:
    """Status and headers of an answer, then its body as stamped pieces (`body()`)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
        self._headers_done = False
        self._body: collections.deque[bytes] = collections.deque()
        self._stamp = 0
        self._parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is complete

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise HTTPFailure(f"not an HTTP/1.1 answer: {exc}", "protocol") from exc

    async def _read_head(self) -> bool:
        """Until the headers are in; False when the connection ended before any byte of an answer."""
        received = False
        while not self._headers_done:
            self._stamp, data = await self.connection.read()
            if not data:
                if not received:
                    return False
                raise HTTPFailure("the server closed the connection in the middle of the headers")
            received = True
            self._feed(data)
        return True

    async def body(self) -> AsyncIterator[tuple[int, bytes]]:
        """The body in pieces, each with the stamp of the read that brought it."""
        while True:
            if self._body:
                pieces = list(self._body)
                self._body.clear()
                yield self._stamp, b"".join(pieces)
                continue
            if self.complete:
                return
            self._stamp, data = await self.connection.read()
            if not data:
                # Only a body without a length or chunks ends with the connection; any other is cut short.
                framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")
                if framed:
                    raise HTTPFailure("the server closed the connection in the middle of the body")
                self.complete = True
                return
            self._feed(data)

    async def text(self, limit: int) -> str:
        parts, size = [], 0
        async for _, data in self.body():
            parts.append(data)
            size += len(data)
            if size >= limit:
                break
        return b"".join(parts)[:limit].decode("utf-8", errors="replace")

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.connection._eof


class Pool:
    """Keep-alive connections to one origin, for any number of concurrent requests."""

    def __init__(self, base_url: str, *, tls_verify: bool = True) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.context: ssl.SSLContext | None = None
        if self.tls:
            self.context = ssl.create_default_context()
            if not tls_verify:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self.idle: list[Connection] = []
        self.kernel_stamps = True  # False once a connection could not ask for the kernel's receive times

    async def _connection(self) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if not (connection.closed or connection._eof or connection._error):
                connection.reused = True
                return connection
            connection.close()
        connection = await open_connection(self.host, self.port, tls=self.context, server_name=self.host)
        self.kernel_stamps = self.kernel_stamps and connection.kernel_stamps
        return connection

    def _request_bytes(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}", f"User-Agent: {USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    @contextlib.asynccontextmanager
    async def post(self, path: str, headers: dict[str, str], body: bytes) -> AsyncIterator[Response]:
        """POST and yield the response once its headers are in; the connection goes back to the pool when the
        answer was read to its end and the server keeps it open, else it is closed."""
        request = self._request_bytes(path, headers, body)
        for attempt in (1, 2):
            connection = await self._connection()
            response = Response(connection)
            try:
                await connection.send(request)
                answered = await response._read_head()
            except (OSError, HTTPFailure) as exc:
                connection.close()
                if connection.reused and attempt == 1:
                    continue  # a kept connection the server had closed: once more on a new one
                raise exc if isinstance(exc, HTTPFailure) else HTTPFailure(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                connection.close()
                raise
            if answered:
                break
            connection.close()
            if not connection.reused or attempt == 2:
                raise HTTPFailure("the server closed the connection without answering")
        try:
            yield response
        except BaseException:
            connection.close()
            raise
        if response.reusable:
            self.idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
