"""`make install` into a temporary DESTDIR, then the installed files run as installed: in a private mount namespace
(`unshare --mount`) the DESTDIR's /usr/local is bound over /usr/local, and an empty directory over the Swift
toolchain's library directory, so that the binary finds no Swift runtime but its own. It checks every installed
configuration (`kernel -t`) and serves a `return` and the installed demo model.

`make install` builds the release binary first (`swift build -c release --static-swift-stdlib`, incremental: a
no-op when `make bench` or `make run` built it already)."""
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import LISTENING, ROOT

PREFIX = "/usr/local"


def toolchain_library_directory():
    """The directory of the Swift runtime's shared libraries: `<toolchain>/usr/lib/swift/linux` of `swift` on PATH."""
    swift = shutil.which("swift")
    assert swift, "swift is not on PATH"
    directory = os.path.join(os.path.dirname(os.path.realpath(swift)), "..", "lib", "swift", "linux")
    directory = os.path.realpath(directory)
    assert os.path.exists(os.path.join(directory, "libswiftCore.so")), directory
    return directory


SWIFT_LIBRARIES = toolchain_library_directory()


@pytest.fixture(scope="module")
def destdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("destdir")
    result = subprocess.run(["make", "--no-print-directory", "install", f"DESTDIR={root}", f"PREFIX={PREFIX}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return str(root)


@pytest.fixture(scope="module")
def empty_directory(tmp_path_factory):
    return str(tmp_path_factory.mktemp("empty"))


def as_installed(destdir, empty, command):
    """`command` in a mount namespace of its own where DESTDIR/usr/local is /usr/local and the Swift toolchain's
    library directory is empty."""
    script = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            destdir + PREFIX, PREFIX, empty, SWIFT_LIBRARIES, *command]


def test_layout_is_a_packages(destdir):
    """The binary, the configuration (and its .default), examples, the demo model, the docs, the unit."""
    for path in ("bin/kernel", "etc/kernel/kernel.yaml", "etc/kernel/kernel.yaml.default", "etc/kernel/edge.yaml",
                 "etc/kernel/worker.yaml", "etc/kernel/examples/hello.yaml", "share/kernel/models/demo/1/model.onnx",
                 "share/doc/kernel/README.md", "share/doc/kernel/operations.md", "share/doc/kernel/configuration.md",
                 "share/doc/kernel/examples/kubernetes/edge.yaml", "lib/systemd/system/kernel.service",
                 "lib/kernel/libKernelOCRVision.so"):
        assert os.path.isfile(os.path.join(destdir + PREFIX, path)), path
    assert os.access(os.path.join(destdir + PREFIX, "bin/kernel"), os.X_OK)
    with open(os.path.join(destdir + PREFIX, "etc/kernel/kernel.yaml")) as f:
        config = f.read()
    # Installed, the configuration names the unit's RuntimeDirectory and the installed model, not the repository.
    assert "pid: /run/kernel/kernel.pid" in config and "path: /usr/local/share/kernel/models/demo/1/model.onnx" in config
    assert "../" not in config
    with open(os.path.join(destdir + PREFIX, "lib/systemd/system/kernel.service")) as f:
        unit = f.read()
    assert "ExecStart=/usr/local/bin/kernel --role both --config /usr/local/etc/kernel/kernel.yaml" in unit


def test_an_edited_configuration_survives_a_new_install(destdir):
    path = os.path.join(destdir + PREFIX, "etc/kernel/kernel.yaml")
    with open(path, "a") as f:
        f.write("# edited\n")
    result = subprocess.run(["scripts/install.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DESTDIR": destdir, "PREFIX": PREFIX})
    assert result.returncode == 0, result.stderr
    with open(path) as f:
        assert f.read().endswith("# edited\n")


def test_only_system_libraries_are_linked(destdir):
    """ldd: no Swift runtime library and nothing from the toolchain, and no OpenCV or Clipper: ONNX Runtime and the
    OCR vision library (lib/kernel/libKernelOCRVision.so) are opened with dlopen, the vision library only by a
    configuration with pipelines."""
    output = subprocess.run(["ldd", destdir + PREFIX + "/bin/kernel"], capture_output=True, text=True).stdout
    libraries = [line.split()[0] for line in output.splitlines() if line.strip()]
    vision = [name for name in libraries if name.startswith(("libopencv", "libpolyclipping", "libKernelOCRVision"))]
    assert not vision, output
    # Swift's own runtime libraries (libswiftCore, libdispatch, libFoundation).
    toolchain = [name for name in libraries
                 if "swift" in name.lower() or name.startswith("libdispatch") or "Foundation" in name]
    assert not toolchain, output
    assert os.path.dirname(SWIFT_LIBRARIES) not in output and "not found" not in output, output
    assert any(name.startswith("libyaml") for name in libraries) and any(name.startswith("libc.so") for name in libraries)


def test_the_namespace_hides_the_swift_runtime(destdir, empty_directory):
    """The check that the test can fail: a program linked to the toolchain's Swift runtime (the `swift` driver
    itself, as a dynamically linked kernel) does not start in the namespace."""
    result = subprocess.run(as_installed(destdir, empty_directory, [shutil.which("swift"), "--version"]),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "libswift" in result.stderr, result.stderr


def test_installed_configurations_pass_kernel_t(destdir, empty_directory):
    configs = sorted(glob.glob(destdir + PREFIX + "/etc/kernel/*.yaml") +
                     glob.glob(destdir + PREFIX + "/etc/kernel/examples/*.yaml"))
    assert len(configs) >= 4
    for config in configs:
        installed = PREFIX + config[len(destdir + PREFIX):]
        result = subprocess.run(as_installed(destdir, empty_directory, [PREFIX + "/bin/kernel", "-t", "--config", installed]),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "test is successful" in result.stderr, f"{installed}: {result.stderr}"



HELLO = """
kernel:
  pid: {dir}/kernel.pid
  error_log: {{path: stderr, level: notice}}
http:
  listen: 127.0.0.1:0
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""


def test_only_a_configuration_with_pipelines_opens_the_vision_library(destdir, empty_directory, tmp_path):
    """The installed kernel.yaml mounts /v1/parse: with KERNEL_OCR_VISION_LIBRARY naming nothing, `kernel -t`
    refuses it and names the path; a configuration without pipelines passes, since it never opens the library."""
    hello = tmp_path / "hello.yaml"
    hello.write_text(HELLO.format(dir=tmp_path))
    missing = str(tmp_path / "no-such-library.so")
    environment = dict(os.environ, KERNEL_OCR_VISION_LIBRARY=missing)
    result = subprocess.run(as_installed(destdir, empty_directory,
                                         [PREFIX + "/bin/kernel", "-t", "--config", PREFIX + "/etc/kernel/kernel.yaml"]),
                            capture_output=True, text=True, timeout=60, env=environment)
    assert result.returncode != 0, result.stderr
    assert "cannot open the OCR vision library" in result.stderr and missing + ": " in result.stderr, result.stderr
    result = subprocess.run(as_installed(destdir, empty_directory, [PREFIX + "/bin/kernel", "-t", "--config", str(hello)]),
                            capture_output=True, text=True, timeout=60, env=environment)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr

SERVE = """
kernel:
  pid: {dir}/kernel.pid
  error_log: {{path: stderr, level: notice}}
  event_loop_threads: 1
http:
  listen: 127.0.0.1:0
inference:
  models:
    - name: demo
      path: /usr/local/share/kernel/models/demo/1/model.onnx
routing:
  servers:
    - locations:
        - location: = /
          return: 200 "hello"
        - location: "^~ /v2"
          inference: {{}}
"""


def request(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer


def test_installed_binary_serves_without_the_toolchain(destdir, empty_directory, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(SERVE.format(dir=tmp_path))
    log_path = tmp_path / "kernel.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(as_installed(destdir, empty_directory,
                                                [PREFIX + "/bin/kernel", "--role", "both", "--config", str(config)]),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while "kernel started" not in log_path.read_text(errors="replace"):
            assert process.poll() is None and time.time() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        port = int(LISTENING.findall(log_path.read_text())[0][1].rsplit(":", 1)[1])
        assert request(port, "GET", "/") == (200, b"hello")
        # No pipelines: neither the master nor its worker has mapped the vision library or OpenCV.
        pids = [str(process.pid)] + open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        for pid in pids:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
            assert "libopencv" not in maps and "libKernelOCRVision" not in maps, pid
        assert request(port, "GET", "/v2/models/demo/ready")[0] == 200
        with open(os.path.join(ROOT, "etc", "examples", "demo-request.json"), "rb") as f:
            status, answer = request(port, "POST", "/v2/models/demo/infer", f.read())
        assert status == 200 and json.loads(answer)["outputs"], answer
        process.send_signal(signal.SIGQUIT)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
