"""paho's MQTT client on the event loop: its socket watched by the loop, read in chunks.

paho 2.x can run without its network thread when a program calls ``loop_read``,
``loop_write`` and ``loop_misc`` itself and learns of its socket through the ``on_socket_*``
callbacks. ``LoopDriver`` does that for one client on the running loop; only the blocking
TCP connect and TLS handshake (``open_in_thread``) leave it. One thread means no lock and no
GIL hand-over per message. ``ChunkedClient`` reads the socket in large chunks instead of
paho's two to four ``recv`` calls per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors.base import ConnectorAuthError, ConnectorConfigError, ConnectorNotReady
from connectors.mqtt.config import MqttConfig

AUTH_REFUSALS = frozenset({134, 135, 138, 140})  # bad credentials, not authorized, banned
CONFIG_REFUSALS = frozenset({129, 130, 132, 133, 153})  # malformed, protocol, client id

RECV_CHUNK = 256 * 1024
"""Bytes read from the socket at once (paho reads each packet in two to four small calls)."""
READ_BUDGET = 2000
"""Packets read per turn of the event loop before other tasks get their turn."""


def connack_error(reason: ReasonCode, host: str) -> Exception:
    """The connector error for a refused CONNECT (fatal for credentials and configuration)."""
    text = f"broker {host} refused the connection: {reason} ({reason.value})"
    if reason.value in AUTH_REFUSALS:
        return ConnectorAuthError(text)
    if reason.value in CONFIG_REFUSALS:
        return ConnectorConfigError(text)
    return ConnectorNotReady(text)


def release_wakeup_sockets(client: mqtt.Client) -> None:
    """Close the socket pair ``loop_start()`` opened to wake its thread.

    paho 2.2 closes it only in ``Client.__del__``; a client caught in a reference cycle is
    finalised by the garbage collector after its sockets, which then warn "unclosed
    socket". Call this after ``loop_stop()``.
    """
    reset = getattr(client, "_reset_sockets", None)
    if callable(reset):
        reset(sockpair_only=True)


class ChunkedClient(mqtt.Client):
    """paho's client, reading its socket in chunks of ``RECV_CHUNK`` bytes.

    paho 2.x reads a packet's type byte, its length bytes and its body with separate
    ``_sock_recv`` calls; this override serves those reads from one large read, so a burst of
    messages costs a system call per chunk instead of several per message. ``buffered`` says
    whether bytes are waiting that the socket will no longer signal as readable.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._chunk_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        pos, chunk = self._chunk_pos, self._chunk
        if pos >= len(chunk):
            chunk = super()._sock_recv(RECV_CHUNK)  # BlockingIOError when nothing is there
            if not chunk:
                return chunk  # the broker closed the connection
            self._chunk, pos = chunk, 0
        self._chunk_pos = pos + bufsize
        return chunk[pos : pos + bufsize]

    def discard_buffer(self) -> None:
        """Forget unread bytes (a new connection starts clean)."""
        self._chunk, self._chunk_pos = b"", 0

    def buffered(self) -> bool:
        if self._chunk_pos < len(self._chunk):
            return True
        sock = self.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def make_client(cfg: MqttConfig) -> ChunkedClient:
    """A client for ``cfg``: a persistent session (``clean_session=False`` on MQTT 3.1.1; on
    MQTT 5, ``clean_start=False`` at connect), manual acknowledgement, credentials, TLS."""
    v5 = cfg.protocol == "5"
    client = ChunkedClient(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        clean_session=None if v5 else False,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=True,
    )
    client.connect_timeout = cfg.connect_timeout
    if cfg.username is not None:
        password = cfg.password.get_secret_value() if cfg.password else None
        client.username_pw_set(cfg.username, password)
    if cfg.tls is not None:
        client.tls_set_context(cfg.tls.context())
        client.tls_insecure_set(cfg.tls.insecure)
    return client


async def open_in_thread(client: mqtt.Client, cfg: MqttConfig, first: bool) -> None:
    """Run paho's ``connect`` (the first time) or ``reconnect`` - TCP, TLS handshake, CONNECT
    queued - in a worker thread; failures become connector errors (a refused certificate is
    fatal)."""
    opening: Callable[[], Any] = client.reconnect
    if first:
        kwargs: dict[str, Any] = {"host": cfg.host, "port": cfg.port, "keepalive": cfg.keepalive}
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry
            props.ReceiveMaximum = cfg.receive_maximum
            kwargs |= {"clean_start": False, "properties": props}
        opening = functools.partial(client.connect, **kwargs)
    host, port = cfg.host, cfg.port
    try:
        await asyncio.get_running_loop().run_in_executor(None, opening)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectorAuthError(f"broker certificate refused: {exc}") from exc
    except ssl.SSLError as exc:
        if "CERTIFICATE" in str(exc).upper():
            raise ConnectorAuthError(f"TLS certificate refused: {exc}") from exc
        raise ConnectorNotReady(f"TLS handshake with {host}:{port}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ConnectorNotReady(f"cannot reach broker {host}:{port}: {exc}") from exc


class LoopDriver:
    """Reads and writes one client's socket from the event loop.

    ``full`` says when whoever takes the messages has no room: reading then pauses (TCP holds
    the rest at the broker) until ``resume``. paho's socket callbacks may come from the thread
    that opened the connection; they are passed to the loop.
    """

    def __init__(
        self,
        client: ChunkedClient,
        loop: asyncio.AbstractEventLoop,
        full: Callable[[], bool],
    ) -> None:
        self.client, self.loop, self.full = client, loop, full
        self.sock: Any = None
        """The socket the loop watches (None between connections)."""
        self.closed = asyncio.Event()
        """Set when that socket is closed."""
        self.paused = False
        self.stopped = False
        self._thread = threading.get_ident()
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Call ``callback`` now on the loop's thread, or soon from another thread."""
        if threading.get_ident() == self._thread:
            callback(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(callback, *args)

    def attach(self) -> bool:
        """Watch the client's new socket; False when there is none (or the driver stopped)."""
        sock = self.client.socket()
        if sock is None or self.stopped:
            return False
        self.sock = sock
        self.closed.clear()
        self.loop.add_reader(sock, self._readable)
        if self.client.want_write():
            self.loop.add_writer(sock, self._writable)
        return True

    def forget(self, sock: Any) -> None:
        """Stop watching ``sock`` (closed or about to be)."""
        if sock is None:
            return
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        if sock is self.sock:
            self.sock = None
            self.closed.set()

    def pause(self) -> None:
        if not self.paused and self.sock is not None:
            self.paused = True
            self.loop.remove_reader(self.sock)

    def resume(self) -> None:
        self.paused = False
        if self.sock is not None and not self.stopped:
            self.loop.add_reader(self.sock, self._readable)
            self.loop.call_soon(self._readable)  # what is already buffered

    async def close(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for paho to close the socket, then close it."""
        if self.sock is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), grace)
        sock = self.client.socket()
        if sock is not None:
            self.forget(sock)
            sock.close()

    def _readable(self) -> None:
        client = self.client
        for _ in range(READ_BUDGET):
            if self.full():
                self.pause()
                return
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or not client.buffered():
                return
        self.loop.call_soon(self._readable)  # bytes left in the buffer: after the others

    def _writable(self) -> None:
        self.client.loop_write()

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.client.discard_buffer()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.in_loop(self.forget, sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # From the opening thread, ``attach`` registers the writer once it has the socket.
        if threading.get_ident() == self._thread and sock is self.sock:
            self.loop.add_writer(sock, self._writable)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.in_loop(self._stop_writing, sock)

    def _stop_writing(self, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            self.loop.remove_writer(sock)
