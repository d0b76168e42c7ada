"""etc/deploy: the systemd unit (`systemd-analyze verify`, and sd_notify readiness from the real binary), and the
Kubernetes manifests (the Kubernetes schemas through `kubernetes-validate`, their kernel YAML through `kernel -t`,
and that YAML serving: two workers behind a name, an edge resolving it, as the headless Service makes them)."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import dnslib
import kubernetes_validate
import pytest
import yaml
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from conftest import KERNEL_BIN, ROOT, Kernel, with_core_section

DEPLOY = os.path.join(ROOT, "etc", "deploy")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
KUBERNETES_VERSION = "1.33.0"


def manifests():
    """Every document of etc/deploy/kubernetes/*.yaml, by (kind, name)."""
    found = {}
    for name in sorted(os.listdir(KUBERNETES)):
        with open(os.path.join(KUBERNETES, name)) as f:
            for document in yaml.safe_load_all(f):
                found[(document["kind"], document["metadata"]["name"])] = document
    return found


def config_map():
    return manifests()[("ConfigMap", "kernel-config")]["data"]


# --- systemd ---------------------------------------------------------------------------------------------------

def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` reads the unit as systemd would (it needs the binaries to exist: the unit's
    /usr/local/bin is pointed at the build). Unknown keys and bad values are only warnings there, so any output
    fails the test too."""
    unit = tmp_path / "kernel.service"
    text = open(os.path.join(DEPLOY, "kernel.service")).read()
    unit.write_text(text.replace("/usr/local/bin/kernel", KERNEL_BIN))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    settings = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w+=", line))
    assert settings["Type"] == "notify"
    assert settings["ExecReload"] == "/usr/local/bin/kernel -s reload --config /usr/local/etc/kernel/kernel.yaml"
    assert settings["KillSignal"] == "SIGQUIT" and int(settings["LimitNOFILE"]) >= 65536


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket, in the abstract namespace (`@name`, as
    systemd's own is) or at a path."""

    def __init__(self, address):
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages = []

    def wait_for(self, line, timeout=60):
        """The messages received until one holds `line`."""
        deadline = time.time() + timeout
        while not any(line in message.split("\n") for message in self.messages):
            remaining = deadline - time.time()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} on the notify socket, got {self.messages}")
            self.socket.settimeout(remaining)
            self.messages.append(self.socket.recv(4096).decode())
        return self.messages


HELLO = """
http:
  listen: 127.0.0.1:0
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_sd_notify_ready_reloading_stopping(tmp_path, kernel_bin, kind):
    """READY=1 (with MAINPID) once the listener answers, RELOADING=1 with MONOTONIC_USEC then READY=1 around a
    reload, STOPPING=1 on a graceful stop."""
    address = f"@kernel-test-notify-{os.getpid()}-{time.monotonic_ns()}" if kind == "abstract" else str(tmp_path / "notify")
    notify = NotifySocket(address)
    config = tmp_path / "kernel.yaml"
    config.write_text(with_core_section(HELLO, str(tmp_path)))
    kernel = Kernel(str(config), "both", str(tmp_path), env={**os.environ, "NOTIFY_SOCKET": address})
    try:
        messages = notify.wait_for("READY=1")
        assert messages == [f"READY=1\nMAINPID={kernel.pid}"], messages
        connection = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"hello"
        connection.close()

        notify.messages.clear()
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        kernel.process.send_signal(signal.SIGHUP)
        messages = notify.wait_for("READY=1")
        kernel.wait_for_log("configuration reloaded")
        reloading = dict(line.split("=", 1) for line in messages[0].split("\n"))
        assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"} and reloading["RELOADING"] == "1", messages
        assert before <= int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert messages[1:] == [f"READY=1\nMAINPID={kernel.pid}"], messages

        notify.messages.clear()
        kernel.process.send_signal(signal.SIGQUIT)
        assert notify.wait_for("STOPPING=1") == ["STOPPING=1"]
        assert kernel.wait_exit() == 0
    finally:
        kernel.stop()
        notify.socket.close()


MASTER = """
kernel:
  pid: {dir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  processes: 2
http:
  listen: 127.0.0.1:0
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""


def senders(notify):
    """(pid, message) of every datagram waiting on the socket (SO_PASSCRED: the kernel stamps the sender's pid)."""
    found = []
    notify.socket.setblocking(False)
    while True:
        try:
            data, ancillary, _, _ = notify.socket.recvmsg(4096, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return found
        pid = next(int.from_bytes(d[:4], "little") for level, kind, d in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        found.append((pid, data.decode()))


def test_worker_processes_never_notify(tmp_path, kernel_bin):
    """systemd takes STOPPING=1 from a process of the service for the service's own stop: a worker that is
    replaced (SIGHUP to it, as uWSGI reloads one worker) or stops with the master must send nothing; the master
    sends READY=1 once its workers serve, RELOADING=1 and READY=1 around its reload, and STOPPING=1."""
    address = f"@kernel-test-workers-{os.getpid()}"
    notify = NotifySocket(address)
    notify.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    config = tmp_path / "kernel.yaml"
    config.write_text(MASTER.format(dir=tmp_path))
    kernel = Kernel(str(config), "both", str(tmp_path), env={**os.environ, "NOTIFY_SOCKET": address})
    try:
        workers = [int(pid) for pid in re.findall(r"start worker process (\d+)", kernel.log_text())]
        assert len(workers) == 2, kernel.log_text()
        os.kill(workers[0], signal.SIGHUP)
        text = kernel.wait_for_log(f"worker process {workers[0]} exited with code 0")
        workers += [int(pid) for pid in re.findall(r"start worker process (\d+)", text)[2:]]
        assert len(workers) == 3, text
        kernel.process.send_signal(signal.SIGHUP)   # the master's reload: a new set of workers
        kernel.wait_for_log("configuration reloaded")
        kernel.process.send_signal(signal.SIGQUIT)
        assert kernel.wait_exit() == 0
        received = senders(notify)
        from_workers = [(pid, message) for pid, message in received if pid != kernel.pid]
        assert from_workers == [], f"workers {workers} sent {from_workers}"
        # The master is the service's main process: ready once its workers serve, around its reload, stopping.
        from_master = [message.split("\n")[0] for pid, message in received if pid == kernel.pid]
        assert from_master == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], received
        assert f"READY=1\nMAINPID={kernel.pid}" in [message for _, message in received]
    finally:
        kernel.stop()
        notify.socket.close()


def test_a_binary_upgrade_hands_the_main_pid_to_the_new_master(tmp_path, kernel_bin):
    """After USR2 the new master tells systemd it is the main process (READY=1 with its MAINPID) once its workers
    serve, and the old master's QUIT sends no STOPPING=1: the service goes on."""
    address = f"@kernel-test-upgrade-{os.getpid()}"
    notify = NotifySocket(address)
    notify.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    config = tmp_path / "kernel.yaml"
    config.write_text(MASTER.format(dir=tmp_path))
    pid_file = tmp_path / "kernel.pid"
    kernel = Kernel(str(config), "both", str(tmp_path), env={**os.environ, "NOTIFY_SOCKET": address})
    new_master = None
    try:
        old = kernel.pid
        os.kill(old, signal.SIGUSR2)
        deadline = time.time() + 60
        while time.time() < deadline:
            if kernel.log_text().count("kernel started: master process") == 2:
                break
            time.sleep(0.05)
        assert kernel.log_text().count("kernel started: master process") == 2, kernel.log_text()
        with open(pid_file) as f:
            new_master = int(f.read())
        assert new_master != old
        os.kill(old, signal.SIGQUIT)
        assert kernel.wait_exit() == 0
        received = senders(notify)
        from_old = [message.split("\n")[0] for pid, message in received if pid == old]
        assert from_old == ["READY=1"], received
        assert (new_master, f"READY=1\nMAINPID={new_master}") in received, received
        assert all(pid in (old, new_master) for pid, _ in received), received
    finally:
        kernel.stop()
        if new_master:
            os.kill(new_master, signal.SIGTERM)
            deadline = time.time() + 30
            while os.path.exists(f"/proc/{new_master}") and time.time() < deadline:
                try:
                    with open(f"/proc/{new_master}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except OSError:
                    break
                time.sleep(0.05)
        notify.socket.close()


def test_without_notify_socket_nothing_is_sent_and_a_dead_socket_is_logged(tmp_path, kernel_bin):
    """NOTIFY_SOCKET naming nobody: the kernel serves anyway and logs what failed, in nginx's words."""
    address = f"@kernel-test-nobody-{os.getpid()}"
    config = tmp_path / "kernel.yaml"
    config.write_text(with_core_section(HELLO, str(tmp_path)))
    kernel = Kernel(str(config), "both", str(tmp_path), env={**os.environ, "NOTIFY_SOCKET": address})
    try:
        text = kernel.wait_for_log("sd_notify:")
        assert f'[crit]' in text and f'sd_notify: sendto() "{address}" failed (111: Connection refused)' in text, text
        connection = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"hello"
        connection.close()
    finally:
        kernel.stop()


# --- Kubernetes ------------------------------------------------------------------------------------------------

def test_manifests_validate_against_the_kubernetes_schemas():
    found = manifests()
    assert {kind for kind, _ in found} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                                           "HorizontalPodAutoscaler"}
    for (kind, name), document in found.items():
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{kind}/{name}: {error.message} at {'.'.join(map(str, error.path))}")


def test_a_misspelt_field_fails_validation():
    """The validation is strict: a field Kubernetes does not know is an error, not ignored."""
    deployment = manifests()[("Deployment", "kernel-workers")]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def duration_seconds(text):
    value, unit = re.fullmatch(r"(\d+)(ms|s|m)", text).groups()
    return int(value) * {"ms": 0.001, "s": 1, "m": 60}[unit]


def test_manifests_fit_together():
    """What the manifests say about each other: the ConfigMap files the Deployments mount and start, the probes on
    the kernel's health endpoints and ports, the headless Service and port the edge resolves, a
    PodDisruptionBudget per Deployment, and a grace period that covers shutdown_delay plus shutdown_timeout."""
    found = manifests()
    data = config_map()
    workers_service = found[("Service", "kernel-workers")]
    assert workers_service["spec"]["clusterIP"] == "None"
    edge_config = yaml.safe_load(data["edge.yaml"])
    server = edge_config["upstreams"]["workers"]["servers"][0].split()
    assert server[0] == f"kernel-workers.${{POD_NAMESPACE}}.svc.cluster.local:{workers_service['spec']['ports'][0]['port']}"
    assert server[-1] == "resolve"
    for name, role in (("kernel-edge", "edge"), ("kernel-workers", "worker")):
        deployment = found[("Deployment", name)]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == ["--role", role, "--config", f"/etc/kernel/{role}.yaml"]
        assert pod["volumes"][0]["configMap"]["items"] == [{"key": f"{role}.yaml", "path": f"{role}.yaml"}]
        config = yaml.safe_load(data[f"{role}.yaml"])
        http_port = int(config["http"]["listen"].rsplit(":", 1)[1])
        assert [p["containerPort"] for p in container["ports"] if p["name"] == "http"] == [http_port]
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        # SIGTERM waits shutdown_delay, then drains within shutdown_timeout: the grace period covers both.
        assert pod["terminationGracePeriodSeconds"] >= \
            duration_seconds(config["kernel"]["shutdown_delay"]) + duration_seconds(config["kernel"]["shutdown_timeout"])
        budget = found[("PodDisruptionBudget", name)]
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert found[("Service", "kernel-workers")]["spec"]["selector"] == \
        found[("Deployment", "kernel-workers")]["spec"]["selector"]["matchLabels"]


def manifest_environment():
    """What the Deployments' env and the image give the kernel YAML."""
    return {**os.environ, "POD_NAMESPACE": "default", "KERNEL_RESOLVER": "127.0.0.1",
            "KERNEL_MODELS": os.path.join(ROOT, "models")}


@pytest.mark.parametrize("role", ["edge", "worker"])
def test_configmap_yaml_passes_kernel_t(tmp_path, kernel_bin, role):
    path = tmp_path / f"{role}.yaml"
    path.write_text(config_map()[f"{role}.yaml"])
    result = subprocess.run([kernel_bin, "-t", "--role", role, "--config", str(path)], capture_output=True, text=True,
                            env=manifest_environment(), timeout=60)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


class HeadlessService(BaseResolver):
    """The cluster DNS for the headless Service: one A record per ready worker pod, TTL 1 s."""

    NAME = "kernel-workers.default.svc.cluster.local"

    def __init__(self):
        self.lock = threading.Lock()
        self.addresses = []

    def set(self, *addresses):
        with self.lock:
            self.addresses = list(addresses)

    def resolve(self, request, handler):
        reply = request.reply()
        with self.lock:
            addresses = list(self.addresses)
        if str(request.q.qname).rstrip(".").lower() != self.NAME:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif request.q.qtype == dnslib.QTYPE.A:
            for address in addresses:
                reply.add_answer(dnslib.RR(request.q.qname, dnslib.QTYPE.A, ttl=1, rdata=dnslib.A(address)))
        return reply


def pod_config(text, tmp_path, name, replacements, delay="1s"):
    """The ConfigMap's YAML as a pod on this machine runs it: its own pid file, loopback addresses, and a shorter
    shutdown_delay (the test's stops wait for it)."""
    text = text.replace("pid: /run/kernel/kernel.pid", f"pid: {tmp_path}/{name}.pid")
    text = re.sub(r"shutdown_delay: \d+s", f"shutdown_delay: {delay}", text)
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def get(port, path, body=None, host="127.0.0.1"):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("POST" if body else "GET", path, body=body,
                       headers={"Content-Type": "application/json"} if body else {})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer


def test_the_configmap_serves_an_edge_in_front_of_workers_found_by_name(tmp_path, kernel_bin):
    """The manifests' two configurations on loopback: two workers (two pod addresses, one port), an edge whose
    `resolve` server is the headless Service's name. Inference goes through the edge to both; a pod leaving the
    DNS answer stops getting requests, without a reload; with none left the edge is not ready but still alive."""
    records = HeadlessService()
    dns = DNSServer(records, address="127.0.0.1", port=0,
                    logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"))
    dns.start_thread()
    started = []
    try:
        env = {**manifest_environment(), "KERNEL_RESOLVER": f"127.0.0.1:{dns.server.server_address[1]}"}
        data = config_map()
        first = Kernel(pod_config(data["worker.yaml"], tmp_path, "w1", {
            "0.0.0.0:8000": "127.0.0.2:0", "0.0.0.0:6666": "127.0.0.2:0"}), "worker", str(tmp_path), env=env)
        started.append(first)
        port = first.port("uwsgi")
        second = Kernel(pod_config(data["worker.yaml"], tmp_path, "w2", {
            "0.0.0.0:8000": "127.0.0.3:0", "0.0.0.0:6666": f"127.0.0.3:{port}"}, delay="3s"), "worker", str(tmp_path),
            env=env)
        started.append(second)
        records.set("127.0.0.2", "127.0.0.3")
        edge = Kernel(pod_config(data["edge.yaml"], tmp_path, "edge", {
            "0.0.0.0:8080": "127.0.0.1:0", "level: notice": "level: info", "svc.cluster.local:6666": f"svc.cluster.local:{port}"}), "edge",
            str(tmp_path), env=env)
        started.append(edge)
        edge_port = edge.port()
        assert get(edge_port, "/v2/health/live") == (200, b"")
        assert get(edge_port, "/v2/health/ready")[0] == 200
        with open(os.path.join(ROOT, "etc", "examples", "demo-request.json"), "rb") as f:
            request = f.read()
        for _ in range(20):
            status, answer = get(edge_port, "/v2/models/demo/infer", request)
            assert status == 200 and json.loads(answer)["model_name"] == "demo", answer
        for worker in (first, second):
            assert "POST /v2/models/demo/infer" in worker.log_text(), worker.log_text()

        records.set("127.0.0.3")  # the first pod is no longer ready: the Service's answer leaves it out
        edge.wait_for_log(f"peer 127.0.0.2:{port} of {HeadlessService.NAME}:{port} removed", timeout=15)
        served_before = first.log_text().count("POST /v2/models/demo/infer")
        for _ in range(4):
            assert get(edge_port, "/v2/models/demo/infer", request)[0] == 200
        assert first.log_text().count("POST /v2/models/demo/infer") == served_before

        # Kubernetes stops the second pod with SIGTERM: during shutdown_delay it still answers, then exits cleanly.
        worker_port = second.port("http")
        second.process.send_signal(signal.SIGTERM)
        second.wait_for_log("SIGTERM: reporting not ready")
        assert get(worker_port, "/v2/health/live", host="127.0.0.3")[0] == 200
        assert get(worker_port, "/v2/models/demo/infer", request, host="127.0.0.3")[0] == 200
        assert second.wait_exit() == 0

        # No ready worker at all: the edge is not ready (its readiness is a worker's), but it is still alive.
        records.set()
        edge.wait_for_log(f"peer 127.0.0.3:{port} of {HeadlessService.NAME}:{port} removed", timeout=15)
        assert get(edge_port, "/v2/health/ready")[0] == 502
        assert get(edge_port, "/v2/health/live") == (200, b"")
    finally:
        for kernel in reversed(started):
            kernel.stop()
        dns.stop()
        dns.server.server_close()
