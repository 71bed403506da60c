"""systemd integration: the unit file verifies, sysusers/tmpfiles apply, and
sd_notify talks to a real datagram socket."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from renderd import sdnotify

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "renderd-py.service"
SYSUSERS = ROOT / "systemd" / "renderd-py.sysusers"
TMPFILES = ROOT / "systemd" / "renderd-py.tmpfiles"
INSTALLED = "/usr/local/bin/renderd-py"


def _renderd_py() -> str:
    exe = Path(sys.executable).parent / "renderd-py"
    if exe.exists():
        return str(exe)
    found = shutil.which("renderd-py")
    if not found:
        pytest.skip("renderd-py is not installed (pip install -e .)")
    return found


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="cat")
    return subprocess.run(["systemd-analyze", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def unit_text() -> str:
    return UNIT.read_text()


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with ExecStart pointing at this checkout's renderd-py
    (verify checks that the binary exists and is executable)."""
    text = unit_text()
    assert INSTALLED in text
    path = tmp_path / "renderd-py.service"
    path.write_text(text.replace(INSTALLED, _renderd_py()))
    return path


def test_unit_verifies(unit_copy):
    # Works offline: verify loads the unit in a private manager and needs no
    # running systemd (PID 1 may be anything); --man=no skips man pages.
    r = _analyze("verify", "--man=no", unit_copy.name, cwd=unit_copy.parent)
    assert r.returncode == 0, r.stderr
    # Unknown keys and bad values are only warnings: a clean unit says nothing.
    noise = [ln for ln in r.stderr.splitlines() if "renderd-py.service" in ln]
    assert noise == [], r.stderr


def test_verify_catches_mistakes(unit_copy):
    """The check is not vacuous: a typo and a missing binary are noticed."""
    typo = unit_copy.with_name("typo.service")
    typo.write_text(unit_copy.read_text().replace("ProtectHome=", "ProtectHom="))
    r = _analyze("verify", "--man=no", typo.name, cwd=typo.parent)
    assert "Unknown key 'ProtectHom'" in r.stderr
    missing = unit_copy.with_name("missing.service")
    missing.write_text(unit_copy.read_text().replace(_renderd_py(), "/nonexistent/renderd-py"))
    r = _analyze("verify", "--man=no", missing.name, cwd=missing.parent)
    assert r.returncode != 0 and "/nonexistent/renderd-py" in r.stderr


def test_unit_contract():
    d = directives(unit_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{INSTALLED} serve -c /etc/renderd-py/renderd-py.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["User"] == "renderd-py" and "DynamicUser" not in one
    assert one["RuntimeDirectory"] == "renderd-py"
    assert one["CacheDirectory"] == "renderd-py"
    assert one["ProtectSystem"] == "strict"
    assert "ReadWritePaths" not in one  # only the cache and run directories
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces"):
        assert one[key] == "yes", key
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one["Restart"] == "on-failure"
    assert "3" in one["RestartPreventExitStatus"].split()  # a style that cannot load
    assert "2" in one["RestartPreventExitStatus"].split()  # a bad configuration
    assert int(one["TimeoutStopSec"]) > 30  # [daemon] shutdown_timeout + margin


def test_exit_status_for_a_broken_style_matches_the_daemon():
    from renderd.daemon import EXIT_STYLE
    assert str(EXIT_STYLE) in directives(unit_text())["RestartPreventExitStatus"][-1].split()


def test_hardening_exposure(unit_copy):
    r = _analyze("security", "--offline=true", "--no-pager", unit_copy.name, cwd=unit_copy.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="sysusers/tmpfiles --root need root")
def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path):
    if not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")):
        pytest.skip("systemd-sysusers/systemd-tmpfiles are not installed")
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    line = next(ln for ln in passwd.splitlines() if ln.startswith("renderd-py:"))
    uid = int(line.split(":")[2])
    assert line.endswith(":/var/cache/renderd-py:/usr/sbin/nologin")
    group = (tmp_path / "etc/group").read_text()
    assert re.search(r"^renderd-py:x:\d+:www-data$", group, re.M)
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(TMPFILES)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    st = (tmp_path / "var/cache/renderd-py").stat()
    assert st.st_uid == uid and oct(st.st_mode & 0o777) == "0o750"


# --- sd_notify --------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_one_datagram(notify_socket):
    assert sdnotify.notify("READY=1\nSTATUS=serving 2 workers") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving 2 workers"
    assert sdnotify.ready("up") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"
    assert sdnotify.reloading() is True
    msg = notify_socket.recv(4096).decode()
    assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and msg.split("=")[-1].isdigit()
    assert sdnotify.stopping() is True
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert sdnotify.status("x") and notify_socket.recv(4096) == b"STATUS=x"
    assert sdnotify.watchdog() and notify_socket.recv(4096) == b"WATCHDOG=1"


def test_notify_abstract_namespace(monkeypatch):
    name = f"renderd-py-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert sock.recv(100) == b"READY=1"


def test_notify_outside_systemd_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False


@pytest.mark.parametrize("value", ["/nonexistent/dir/notify", "@no-such-abstract-socket-xyz",
                                   "vsock:2:1234", "relative/path"])
def test_notify_never_raises(monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_notify_to_a_closed_socket(monkeypatch, tmp_path):
    path = tmp_path / "gone"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.notify("READY=1") is False


def test_notify_from_a_child_process(notify_socket):
    """What the daemon does: the variable is inherited, the module is used
    by a fresh interpreter."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from renderd import sdnotify; "
                        "sys.exit(0 if sdnotify.ready('child') else 1)"],
                       cwd=ROOT, env=dict(os.environ), timeout=30)
    assert r.returncode == 0
    assert notify_socket.recv(100) == b"READY=1\nSTATUS=child"


# --- the daemon speaks Type=notify ------------------------------------------

def _messages(sock: socket.socket, until: str, timeout: float = 60.0) -> list[str]:
    """Datagrams received until one contains ``until``."""
    import time
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if until in msg.split("\n"):
            return got
    raise AssertionError(f"no {until} from the daemon; got {got}")


def test_serve_notifies_ready_reloading_stopping(renderd_daemon, notify_socket):
    """What systemd sees with Type=notify: READY=1 once the workers are up,
    RELOADING=1 then READY=1 on HUP (ExecReload), STOPPING=1 on TERM."""
    import signal
    d = renderd_daemon(workers=1)  # inherits NOTIFY_SOCKET
    _messages(notify_socket, "READY=1")
    d.proc.send_signal(signal.SIGHUP)
    after_hup = _messages(notify_socket, "READY=1")
    assert any("RELOADING=1" in m.split("\n") for m in after_hup), after_hup
    d.proc.send_signal(signal.SIGTERM)
    _messages(notify_socket, "STOPPING=1")
    assert d.proc.wait(60) == 0


def test_serve_exits_3_when_a_style_cannot_load(tmp_path, notify_socket):
    """The exit status the unit's RestartPreventExitStatus= names."""
    broken = tmp_path / "broken.xml"
    broken.write_text("<Map><Layer name='x'><Datasource><Parameter name='type'>nosuchplugin"
                      "</Parameter></Datasource></Layer></Map>")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    addr = port.getsockname()[1]
    port.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nbroker = "tcp://127.0.0.1:{addr}"\nworkers = 1\n'
                   f'[store]\npath = "{tmp_path}/store"\n[[layer]]\nname = "b"\nstyle = "{broken}"\n')
    r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    want = directives(unit_text())["RestartPreventExitStatus"][-1].split()
    assert str(r.returncode) in want and r.returncode == 3, r.stderr
    assert "cannot load style" in r.stderr
    notify_socket.settimeout(0.3)
    sent: list[str] = []
    while True:
        try:
            sent += notify_socket.recv(4096).decode().split("\n")
        except socket.timeout:
            break
    assert "READY=1" not in sent, sent


def test_serve_exits_2_on_a_bad_configuration(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\nworkers = "many"\n')
    r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["renderd-py: error: daemon.workers: must be a whole number, not 'many'"]
