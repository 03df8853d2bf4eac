"""A TCP proxy on 127.0.0.1 in front of an S3 server that breaks chosen responses mid-body
(connection reset after some bytes), to test reads that fail part-way through a shard."""
import re
import socket
import struct
import threading


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``. Of the GET requests whose request line
    contains ``match``, the first ``skip`` pass untouched and the next ``faults`` get their
    response cut (RST) after ``cut_after`` bytes (status line and headers included).

    ``requests`` records every matched GET, in the order the proxy saw them, as a dict:
    ``line`` (request line), ``headers`` (lower-cased names), ``range`` ((first, last) byte
    of a ``Range: bytes=first-[last]`` header, last None when open; None without one),
    ``cut`` (whether its response was cut) and, for cut ones, ``body_sent`` (body bytes
    forwarded before the cut) and ``cut_at`` (the object offset of the cut: range first +
    body_sent, once the response headers got through). ``cut`` counts the cut responses."""

    def __init__(self, upstream_port: int, match: bytes, faults: int, cut_after: int = 65536, skip: int = 0):
        self.upstream_port, self.match = upstream_port, match
        self.faults, self.cut_after, self.skip = faults, cut_after, skip
        self.cut = 0
        self.requests = []
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
            state = {"doomed": None, "sent": 0, "req": b"", "req_body": 0, "resp_head": None}
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
        """Parse the request heads in the client's byte stream (they may span reads; a
        request body is skipped by its Content-Length) before forwarding, so a doomed
        request is marked before its response can start."""
        state["req"] += data
        while True:
            if state["req_body"]:
                n = min(state["req_body"], len(state["req"]))
                state["req"], state["req_body"] = state["req"][n:], state["req_body"] - n
                if state["req_body"]:
                    break
            end = state["req"].find(b"\r\n\r\n")
            if end < 0:
                break
            head, state["req"] = state["req"][:end], state["req"][end + 4:]
            line, *fields = head.decode("latin-1").split("\r\n")
            headers = {}
            for f in fields:
                k, _, v = f.partition(":")
                headers[k.strip().lower()] = v.strip()
            state["req_body"] = int(headers.get("content-length", 0) or 0)
            if line.startswith("GET ") and self.match.decode("latin-1") in line:
                self._matched(line, headers, state)
        return data, False

    def _matched(self, line, headers, state):
        record = {"line": line, "headers": headers, "range": _parse_range(headers.get("range")), "cut": False}
        with self.lock:
            self.requests.append(record)
            if self.skip > 0:
                self.skip -= 1
            elif self.faults > 0:
                self.faults -= 1
                self.cut += 1
                record.update(cut=True, body_sent=0, cut_at=None)
                state["doomed"], state["sent"], state["resp_head"] = record, 0, b""

    def _response(self, data, state):
        record = state["doomed"]
        if record is None:
            return data, False
        room = self.cut_after - state["sent"]
        cut = len(data) >= room
        if cut:
            data = data[:room]
        state["sent"] += len(data)
        if state["resp_head"] is not None:  # count body bytes once the head has passed
            state["resp_head"] += data
            end = state["resp_head"].find(b"\r\n\r\n")
            if end >= 0:
                record["body_sent"] = len(state["resp_head"]) - end - 4
                state["resp_head"] = None
        else:
            record["body_sent"] += len(data)
        if cut and state["resp_head"] is None:
            first = record["range"][0] if record["range"] else 0
            record["cut_at"] = first + record["body_sent"]
        return data, cut

    def stop(self):
        self._stop = True
        _close(self.sock)


def _parse_range(value):
    """``bytes=first-[last]`` -> (first, last or None); None for no or another header."""
    m = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


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
