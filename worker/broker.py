"""The embedded single-node Apache Kafka broker (KRaft mode) for local runs and tests.

Runs the real broker from the jars Maven fetched (``make broker-jars``) as a Java
child process, with its data in a folder of the run.
"""

from __future__ import annotations

import base64
import random
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path


class BrokerError(RuntimeError):
    pass


_handed_out: set[int] = set()
_pick = random.SystemRandom()


def free_port() -> int:
    """A port nothing listens on, for a server that starts a little later.

    Picked below the kernel's ephemeral range: a port from bind(0) is also what the next
    outgoing connection may take as its local port before our server binds it.
    """
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_start = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    while True:
        port = _pick.randrange(ephemeral_start // 2, ephemeral_start)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
auto.create.topics.enable=true
log.retention.hours=168
"""

LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


class EmbeddedBroker:
    def __init__(self, libs: Path, workdir: Path, port: int | None = None,
                 heap: str = "512m") -> None:
        self.libs, self.workdir, self.heap = libs, workdir, heap
        self.port = port or free_port()
        self.controller_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        if not shutil.which("java"):
            raise BrokerError("Java 17+ is needed for the local Kafka broker (java not found); "
                              "or set NOTIFIER_KAFKA_BOOTSTRAP to an existing cluster")
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Kafka's jars are not in {self.libs}: run `make broker-jars` "
                              "(needs Maven), or set NOTIFIER_KAFKA_BOOTSTRAP to an existing cluster")
        if port_open(self.port):
            raise BrokerError(f"port {self.port} is already in use; choose another with --port")
        data = self.workdir / "data"
        self.workdir.mkdir(parents=True, exist_ok=True)
        properties = self.workdir / "server.properties"
        properties.write_text(SERVER_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, data=data))
        (self.workdir / "log4j2.properties").write_text(LOG4J2.format(log=self.workdir / "broker.log"))
        classpath = f"{self.libs}/*"
        jvm = ["java", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Xshare:auto",
               f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}", "-cp", classpath]
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                # "=": an id may start with "-", which would read as an option.
                [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                 "-c", str(properties)],
                capture_output=True, text=True,
            )
            if formatted.returncode != 0:
                raise BrokerError(f"formatting {data} failed: {formatted.stderr.strip()[-500:]}")
        with (self.workdir / "broker.out").open("ab") as out:  # the child keeps its own copy
            self.process = subprocess.Popen([*jvm, "kafka.Kafka", str(properties)],
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"Kafka exited with code {self.process.returncode}; "
                                  f"see {self.workdir / 'broker.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"Kafka did not open port {self.port} within {timeout:.0f} s")
            time.sleep(0.2)
        return self.bootstrap

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
