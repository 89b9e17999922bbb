"""A loopback TCP proxy whose connections a test can cut (RELIABILITY "How fault tests get
their faults"): processes talk to Redis through it, and ``cut()`` drops every open connection
at once, as a network blip or a load-balancer reset would. New connections are accepted again
right away."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.stack import free_port


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def cut(self) -> int:
        """Drop every open connection; returns how many sockets were cut."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._drop(sock)
        self.cuts += 1
        return len(sockets)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()
