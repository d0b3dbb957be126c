"""`umdev serve` and `umdev daemon` as the vfio-user spec's "Backend Program
Conventions" and a service manager expect: --socket-path, --fd (listening
or connected), --print-capabilities against the documented schema, SIGTERM,
READY=1 on $NOTIFY_SOCKET and socket activation ($LISTEN_FDS), with this
test playing the service manager's side as systemd documents it."""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

import jsonschema
import pytest

from conftest import ROOT, umdev_path, wait_for

SCHEMA = json.load(open(os.path.join(ROOT, "Protocol", "vfio-user-backend.schema.json")))
UMDEV = umdev_path()
HEADER = struct.Struct("<HHIII")
QEMU_CAPS = (b'{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, '
             b'"max_data_xfer_size": 1048576, "write_multiple": true}}')


def types():
    return subprocess.run([UMDEV, "types", "--names"], check=True, capture_output=True, text=True).stdout.split()


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="umdev-backend-")
    yield d
    subprocess.run(["rm", "-rf", d])


def exchange(conn, msg_id, command, payload=b""):
    """One request and its reply on a connected vfio-user socket."""
    conn.sendall(HEADER.pack(msg_id, command, 16 + len(payload), 0, 0) + payload)
    head = b""
    while len(head) < 16:
        chunk = conn.recv(16 - len(head))
        assert chunk, "the server closed the connection"
        head += chunk
    rid, rcommand, size, flags, error = HEADER.unpack(head)
    body = b""
    while len(body) < size - 16:
        body += conn.recv(size - 16 - len(body))
    assert (rid, rcommand) == (msg_id, command)
    return flags, error, body


def device_info_over(conn):
    """VERSION then DEVICE_GET_INFO: (flags, regions, irqs)."""
    flags, error, body = exchange(conn, 1, 1, struct.pack("<HH", 0, 0) + QEMU_CAPS + b"\0")
    assert error == 0 and body[:4] == b"\0\0\0\0" and body.endswith(b"\0")
    flags, error, body = exchange(conn, 2, 4, struct.pack("<IIII", 16, 0, 0, 0))
    assert error == 0
    _, dflags, regions, irqs = struct.unpack("<IIII", body)
    return dflags, regions, irqs


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def serve(*args, env=None, pass_fds=(), preexec_fn=None):
    return subprocess.Popen([UMDEV, "serve", *args, "--log-level", "notice"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, pass_fds=pass_fds, preexec_fn=preexec_fn)


def stop(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    return p.returncode, out, err


# --- --print-capabilities and the description files

@pytest.mark.parametrize("type_", types())
def test_print_capabilities_follows_the_schema(type_):
    p = subprocess.run([UMDEV, "serve", "--type", type_, "--print-capabilities", "--socket-path", "/nonexistent/x"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    caps = json.loads(p.stdout)
    jsonschema.validate(caps, SCHEMA)
    assert set(caps) == {"type", "features", "device"}
    assert caps["type"] == "pci" and caps["device"]["device_api"] == "vfio-pci"
    display = {"mdpy": "region", "mbochs": "dmabuf"}.get(type_.split("-")[0], "none")
    assert caps["device"]["display"] == display
    assert ("display-" + display in caps["features"]) == (display != "none")


def test_backend_descriptions_follow_the_schema_one_file_per_type(tmp):
    out = os.path.join(tmp, "vfio-user")
    subprocess.run([UMDEV, "backend-json", "--binary", "/usr/bin/umdev", "--output", out], check=True)
    names = sorted(os.listdir(out))
    assert names == sorted(f"50-umdev-{t}.json" for t in types())
    for name in names:
        d = json.load(open(os.path.join(out, name)))
        jsonschema.validate(d, SCHEMA)
        t = name[len("50-umdev-"):-len(".json")]
        assert d["binary"] == "/usr/bin/umdev" and d["arguments"] == ["serve", "--type", t]
        # The description says what --print-capabilities says.
        caps = json.loads(subprocess.run([UMDEV, "serve", "--type", t, "--print-capabilities"],
                                         check=True, capture_output=True, text=True).stdout)
        assert {k: d[k] for k in ("type", "features", "device")} == caps


def test_the_schema_refuses_what_it_should():
    caps = json.loads(subprocess.run([UMDEV, "serve", "--type", "mtty-2", "--print-capabilities"],
                                     check=True, capture_output=True, text=True).stdout)
    for broken in ({**caps, "type": "net"}, {**caps, "features": ["teleport"]},
                   {**caps, "device": {**caps["device"], "vendor_id": 70000}}, {k: caps[k] for k in ("type", "features")}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


# --- --socket-path, the QEMU option, SIGTERM

def test_socket_path_prints_the_qemu_option_and_sigterm_exits_cleanly(tmp):
    path = os.path.join(tmp, "it's a \"dev\".sock")
    p = serve("--type", "mtty-2", f"--socket-path={path}")
    line = p.stdout.readline().strip()
    # The exact option for a shell: single-quoted, the path JSON-escaped inside.
    expected = "-device '" + json.dumps({"driver": "vfio-user-pci", "socket": {"type": "unix", "path": path}},
                                        separators=(",", ":")).replace("'", "'\\''") + "'"
    assert line == expected
    assert os.path.exists(path)
    with connect(path) as c:
        assert device_info_over(c)[1] == 9
    started = time.time()
    code, _, err = stop(p)
    assert code == 0 and time.time() - started < 5, err
    assert not os.path.exists(path), "the socket file stays after SIGTERM"


def test_a_file_that_is_not_a_socket_is_refused_and_left_alone(tmp):
    path = os.path.join(tmp, "regular")
    open(path, "w").write("keep me")
    p = subprocess.run([UMDEV, "serve", "--socket-path", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "not a socket" in p.stderr and "regular file" in p.stderr, p.stderr
    assert open(path).read() == "keep me"


# --- --fd

def test_fd_listening_socket_bound_by_another_process(tmp):
    path = os.path.join(tmp, "bound-elsewhere.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    fd = listener.fileno()
    p = serve("--type", "test", f"--fd={fd}", pass_fds=(fd,))
    listener.close()
    # The bound path is known from the socket itself: the option names it.
    assert path in p.stdout.readline()
    for _ in range(2):   # one client after another on the inherited listener
        with connect(path) as c:
            flags, regions, irqs = device_info_over(c)
            assert regions == 9 and irqs == 5
    code, _, err = stop(p)
    assert code == 0, err
    assert os.path.exists(path), "a socket umdev did not create is not its to remove"


def test_fd_connected_socket_serves_that_client_then_exits(tmp):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    p = serve("--type", "mtty-1", "--fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    flags, regions, irqs = device_info_over(ours)
    assert regions == 9 and flags & 2   # PCI
    # A 1-byte REGION_READ of config space: the vendor id's low byte (0x48 for WCH).
    _, error, body = exchange(ours, 3, 9, struct.pack("<QII", 0, 7, 1))
    assert error == 0 and body[16:] == b"\x48"
    ours.close()
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "serves no one else" in err


@pytest.mark.parametrize("kind", ["regular file", "pipe", "datagram socket", "unconnected stream socket", "closed", "inet socket"])
def test_fd_of_the_wrong_kind_is_refused(tmp, kind):
    keep = []
    if kind == "regular file":
        f = open(os.path.join(tmp, "f"), "w"); keep.append(f); fd = f.fileno()
    elif kind == "pipe":
        r, w = os.pipe(); keep += [r, w]; fd = r
    elif kind == "datagram socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); keep.append(s); fd = s.fileno()
    elif kind == "unconnected stream socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); keep.append(s); fd = s.fileno()
    elif kind == "inet socket":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); s.listen(1); keep.append(s); fd = s.fileno()
    else:
        fd = 57
    p = subprocess.run([UMDEV, "serve", "--fd", str(fd)], capture_output=True, text=True, timeout=30,
                       pass_fds=() if kind == "closed" else (fd,))
    assert p.returncode == 1, p.stderr
    assert f"--fd {fd}: descriptor {fd}" in p.stderr, p.stderr
    expected = {"regular file": "is a regular file", "pipe": "is a pipe", "datagram socket": "not a stream socket",
                "unconnected stream socket": "neither listens nor is connected", "closed": "is not open",
                "inet socket": "not an AF_UNIX socket"}[kind]
    assert expected in p.stderr, p.stderr


def test_fd_and_socket_path_conflict():
    p = subprocess.run([UMDEV, "serve", "--fd", "3", "--socket-path", "/tmp/x"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "conflict" in p.stderr


# --- the service manager's side: READY=1 and socket activation

class Manager:
    """The notification socket a service manager listens on ($NOTIFY_SOCKET)."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(30)

    def next(self):
        data, ancillary, _, _ = self.socket.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
        return dict(line.split("=", 1) for line in data.decode().split("\n") if line)


def activated(listener_fd, env, program):
    """Starts `program` as systemd's socket activation does: the socket at
    fd 3, LISTEN_FDS=1, LISTEN_FDNAMES, and LISTEN_PID naming the process
    itself (set by the shell that then execs it; bash, since dash takes no fd above 9)."""
    fd = listener_fd
    move = f" 3<&{fd} {fd}<&-" if fd != 3 else ""
    shell = "LISTEN_PID=$$ exec " + " ".join(f"'{a}'" for a in program) + move
    return subprocess.Popen(["bash", "-c", shell], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=(fd,))


def test_serve_by_socket_activation_notifies_ready(tmp):
    manager = Manager(tmp)
    path = os.path.join(tmp, "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    env = {**os.environ, "NOTIFY_SOCKET": manager.path, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "device"}
    p = activated(listener.fileno(), env, [UMDEV, "serve", "--type", "mtty-2", "--log-level", "notice"])
    listener.close()
    try:
        note = manager.next()
    except TimeoutError:
        p.kill()
        raise AssertionError(f"no notification; umdev said: {p.communicate()}")
    assert note.get("READY") == "1", note
    assert "serving mtty-2 on inherited descriptor 3" in note.get("STATUS", ""), note
    # Ready means ready: a client is served the moment READY=1 arrives.
    with connect(path) as c:
        assert device_info_over(c)[1] == 9
    code, _, err = stop(p)
    assert code == 0, err


def test_daemon_by_socket_activation_notifies_ready_and_answers(tmp):
    manager = Manager(tmp)
    run = os.path.join(tmp, "run")
    os.mkdir(run, 0o700)
    control = os.path.join(run, "control.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(control)
    listener.listen(8)
    env = {**os.environ, "NOTIFY_SOCKET": "@" + manager.path.replace("/", "_")}
    # The abstract namespace too, as systemd uses for user managers.
    manager.socket.close()
    manager.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.socket.bind("\0" + manager.path.replace("/", "_"))
    manager.socket.settimeout(30)
    env.update({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "control"})
    p = activated(listener.fileno(), env, [UMDEV, "daemon", "--run-dir", run, "--config-dir", os.path.join(tmp, "config"),
                                           "--log-level", "notice"])
    listener.close()
    note = manager.next()
    assert note.get("READY") == "1" and "control socket inherited descriptor 3" in note.get("STATUS", ""), note
    out = subprocess.run([UMDEV, "start", "--type", "mtty-1", "--run-dir", run], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "uuid:" in out.stdout
    listed = subprocess.run([UMDEV, "list", "--run-dir", run], capture_output=True, text=True, timeout=30).stdout
    assert "mtty-1" in listed
    code, _, err = stop(p)
    assert code == 0, err
    assert os.path.exists(control), "the activated control socket belongs to the manager"


# --- installing

def run_install(*args):
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh"), "--configuration", "debug", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_install_into_a_prefix_runs_verifies_and_uninstalls(tmp):
    prefix = os.path.join(tmp, "usr")
    run_install("--prefix", prefix)
    umdev = os.path.join(prefix, "bin", "umdev")
    listed = subprocess.run([umdev, "types"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "mtty-2" in listed.stdout and "mbochs-large" in listed.stdout
    caps = json.loads(subprocess.run([umdev, "serve", "--print-capabilities"], check=True, capture_output=True,
                                     text=True, timeout=60).stdout)
    jsonschema.validate(caps, SCHEMA)
    assert os.access(os.path.join(prefix, "bin", "vfio-user-conformance"), os.X_OK)
    # The backend descriptions name the installed binary.
    described = os.path.join(prefix, "share", "vfio-user", "50-umdev-mtty-2.json")
    assert json.load(open(described))["binary"] == umdev
    # Man pages from swift-argument-parser's plugin, one per subcommand.
    man1 = os.path.join(prefix, "share", "man", "man1")
    for page in ("umdev.1", "umdev.serve.1", "umdev.daemon.1"):
        assert os.path.getsize(os.path.join(man1, page)) > 200, page
    # The units point at the installed binary and pass systemd's own check.
    units = os.path.join(prefix, "lib", "systemd", "system")
    assert f"ExecStart={umdev} daemon" in open(os.path.join(units, "umdev.service")).read()
    verify = subprocess.run(["systemd-analyze", "verify", "umdev.service", "umdev.socket", "umdev-serve@mtty-2.service",
                             "umdev-serve@mtty-2.socket"], cwd=units, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MANPATH": os.path.join(prefix, "share", "man")})
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    run_install("--prefix", prefix, "--uninstall")
    left = [os.path.join(d, f) for d, _, files in os.walk(prefix) for f in files]
    assert left == [], left


def test_install_with_destdir_stages_for_a_package(tmp):
    stage = os.path.join(tmp, "stage")
    run_install("--prefix", "/usr", "--destdir", stage, "--no-build")
    umdev = os.path.join(stage, "usr", "bin", "umdev")
    assert subprocess.run([umdev, "types", "--names"], check=True, capture_output=True, text=True).stdout.split() == types()
    # Inside the files, the paths are the final ones, not the staging area's.
    assert "ExecStart=/usr/bin/umdev serve --type %i" in open(
        os.path.join(stage, "usr", "lib", "systemd", "system", "umdev-serve@.service")).read()
    assert json.load(open(os.path.join(stage, "usr", "share", "vfio-user", "50-umdev-test.json")))["binary"] == "/usr/bin/umdev"
    manifest = open(os.path.join(stage, "usr", "share", "umdev", "install-manifest")).read().split()
    assert "bin/umdev" in manifest and "share/vfio-user/50-umdev-mbochs-small.json" in manifest


def test_every_sample_unit_passes_systemd_analyze_verify(tmp):
    """The units as shipped in Samples/, with the binary they name made to exist."""
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir)
    os.symlink(UMDEV, os.path.join(bindir, "umdev"))
    names = sorted(f for f in os.listdir(os.path.join(ROOT, "Samples")) if f.endswith((".service", ".socket")))
    assert set(names) >= {"umdev.service", "umdev.socket", "umdev-serve@.service", "umdev-serve@.socket"}
    for name in names:
        text = open(os.path.join(ROOT, "Samples", name)).read().replace("/usr/local/bin/umdev", os.path.join(bindir, "umdev"))
        open(os.path.join(tmp, name), "w").write(text)
    check = [n.replace("@.", "@mtty-2.") for n in names]
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *check], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
