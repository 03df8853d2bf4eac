"""A TCP proxy on 127.0.0.1 in front of an S3 server that breaks chosen responses mid-body
(connection reset after some bytes), to test reads that fail part-way through a shard."""
import socket
import struct
import threading


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``. Of the GET requests whose request line
    contains ``match``, the first ``skip`` pass untouched and the next ``faults`` get their
    response cut (RST) after ``cut_after`` bytes."""

    def __init__(self, upstream_port: int, match: bytes, faults: int, cut_after: int = 65536, skip: int = 0):
        self.upstream_port, self.match = upstream_port, match
        self.faults, self.cut_after, self.skip = faults, cut_after, skip
        self.cut = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"doomed": False, "sent": 0}
            threading.Thread(target=self._pump, args=(client, upstream, self._request, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self._response, state), daemon=True).start()

    @staticmethod
    def _pump(src, dst, forward, state):
        """Copy src -> dst; ``forward(data, state)`` returns the bytes to send and whether to
        cut the connection (RST) after them."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                data, cut = forward(data, state)
                dst.sendall(data)
                if cut:
                    _reset(dst)
                    _close(src)
                    return
        except OSError:
            pass
        finally:
            _close(dst)

    def _request(self, data, state):
        if data.startswith(b"GET ") and self.match in data.split(b"\r\n", 1)[0]:
            with self.lock:
                if self.skip > 0:
                    self.skip -= 1
                elif self.faults > 0:
                    self.faults -= 1
                    self.cut += 1
                    state["doomed"], state["sent"] = True, 0
        return data, False

    def _response(self, data, state):
        if not state["doomed"]:
            return data, False
        room = self.cut_after - state["sent"]
        if len(data) >= room:
            return data[:room], True
        state["sent"] += len(data)
        return data, False

    def stop(self):
        self._stop = True
        _close(self.sock)


def _reset(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(s)


def _close(s):
    # shutdown first: close() alone does not wake the other pump thread blocked in recv()
    # on the same socket, and the connection would stay open until the client times out
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
