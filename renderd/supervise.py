"""Run a set of programs in the foreground under supervisord (PyPI
``supervisor``), for ``renderd-py up``.

supervisord owns the processes (restarts, log files, stopping in order);
this module writes its configuration, starts it in a session of its own,
starts the programs one by one through its XML-RPC socket and waits until
each answers (a port opens, the broker pongs), so that a program that cannot
start is reported as one line with the last line of its log.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import RenderdError

#: supervisor process states (supervisor.states.ProcessStates)
RUNNING, BACKOFF, STOPPED, EXITED, FATAL = "RUNNING", "BACKOFF", "STOPPED", "EXITED", "FATAL"
SOCKET_MAX = 100   # AF_UNIX paths are limited to 107 bytes
_STRONG = re.compile(r"\[(emerg|alert|crit|error)\]|\berror:|\bERROR\b|\bfatal\b|\bFATAL\b", re.I)
_WEAK = re.compile(r"\b(failed|could not|cannot|denied|refused)\b", re.I)


def why_line(lines: list[str]) -> str:
    """The most telling of a log's last lines: an error line if there is one
    (not a traceback's continuation), else the last line."""
    lines = [ln for ln in lines[-60:] if ln.strip() and not ln[:1].isspace()
             and ln.strip() != "stack traceback:"]
    lines = [ln.strip() for ln in lines if "line above" not in ln]
    for pattern in (_STRONG, _WEAK):
        for ln in reversed(lines):
            if pattern.search(ln):
                return ln
    return lines[-1] if lines else ""


class StartError(RenderdError):
    """A program of the stack could not start."""


@dataclass
class Program:
    name: str
    command: list[str]
    #: returns True once the program serves (a port answers...); None: RUNNING is enough
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 30.0
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    directory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


def supervisord_command() -> list[str]:
    exe = Path(sys.executable).with_name("supervisord")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "supervisor.supervisord"]


def _ini_value(value: str) -> str:
    # supervisor reads values with ConfigParser interpolation: % must be doubled
    return value.replace("%", "%%")


class Supervisor:
    """supervisord for ``programs``, with everything under ``prefix``."""

    def __init__(self, prefix: str | os.PathLike[str], programs: list[Program]):
        self.prefix = Path(prefix)
        self.programs = programs
        self.logs = self.prefix / "logs"
        self.conf = self.prefix / "supervisord.conf"
        sock = self.prefix / "supervisor.sock"
        if len(str(sock)) > SOCKET_MAX:
            sock = Path(tempfile.mkdtemp(prefix="rpy-sv-")) / "supervisor.sock"
        self.socket = sock
        self.proc: subprocess.Popen | None = None
        self.pids: dict[str, int] = {}
        self._rpc: xmlrpc.client.ServerProxy | None = None
        self._unanswered = 0   # polls of supervisord in a row that got no answer

    # --- configuration -----------------------------------------------------
    def render(self) -> str:
        lines = [
            "; written by renderd-py up; regenerated at each start",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={_ini_value(str(self.logs / 'supervisord.log'))}",
            "logfile_maxbytes=10MB",
            "logfile_backups=2",
            "loglevel=info",
            f"pidfile={_ini_value(str(self.prefix / 'supervisord.pid'))}",
            f"childlogdir={_ini_value(str(self.logs))}",
            f"directory={_ini_value(str(self.prefix))}",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        lines += [
            "",
            "[unix_http_server]",
            f"file={_ini_value(str(self.socket))}",
            "chmod=0700",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_ini_value(str(self.socket))}",
        ]
        for i, prog in enumerate(self.programs):
            lines += [
                "",
                f"[program:{prog.name}]",
                f"command={_ini_value(shlex.join(prog.command))}",
                f"priority={10 * (i + 1)}",
                "autostart=false",
                "autorestart=unexpected",
                "exitcodes=0",
                "startsecs=1",
                "startretries=2",
                f"stopsignal={prog.stopsignal}",
                f"stopwaitsecs={prog.stopwaitsecs}",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={_ini_value(str(self.log_of(prog.name)))}",
                "stdout_logfile_maxbytes=10MB",
                "stdout_logfile_backups=2",
            ]
            if prog.directory:
                lines.append(f"directory={_ini_value(prog.directory)}")
            if prog.environment:
                env = ",".join(f'{k}="{_ini_value(v)}"' for k, v in prog.environment.items())
                lines.append(f"environment={env}")
        return "\n".join(lines) + "\n"

    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def last_line(self, name: str) -> str:
        """The line of a program's log that says why it stopped, for a one-line error."""
        try:
            with open(self.log_of(name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                raw = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return why_line(raw)

    # --- running -------------------------------------------------------------
    def rpc(self) -> xmlrpc.client.ServerProxy:
        if self._rpc is None:
            from supervisor.xmlrpc import SupervisorTransport
            transport = SupervisorTransport(None, None, f"unix://{self.socket}")
            self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._rpc

    def start(self, on_started: Callable[[Program], None] | None = None) -> None:
        """Start supervisord, then each program in order; raise StartError
        naming the first program that does not come up (nothing is left running)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.render())
        out = open(self.logs / "supervisord.out", "ab")
        try:
            self.proc = subprocess.Popen(supervisord_command() + ["-n", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(self.prefix))
        finally:
            out.close()
        try:
            self._wait_supervisord(15.0)
            for prog in self.programs:
                self._start_one(prog)
                if on_started:
                    on_started(prog)
        except BaseException:
            self.stop()
            raise

    def _wait_supervisord(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                why = _last_nonempty(self.logs / "supervisord.out") or f"exit status {self.proc.returncode}"
                raise StartError(f"supervisord failed to start: {why}")
            try:
                if self.rpc().supervisor.getState()["statename"] == "RUNNING":
                    return
            except Exception:   # not listening yet: start over with a fresh connection
                self._rpc = None
            if time.monotonic() > deadline:
                raise StartError(f"supervisord did not answer on {self.socket} in {timeout:g}s")
            time.sleep(0.1)

    def _start_one(self, prog: Program) -> None:
        rpc = self.rpc()
        try:
            rpc.supervisor.startProcess(prog.name, False)
        except xmlrpc.client.Fault as e:
            raise StartError(self._why(prog, e.faultString)) from None
        deadline = time.monotonic() + prog.ready_timeout
        while True:
            info = rpc.supervisor.getProcessInfo(prog.name)
            state = info["statename"]
            if info.get("pid"):
                self.pids[prog.name] = info["pid"]
            if state in (BACKOFF, FATAL, EXITED, STOPPED):
                raise StartError(self._why(prog, f"exited ({state.lower()})"))
            if state == RUNNING and (prog.ready is None or _probe(prog.ready)):
                return
            if time.monotonic() > deadline:
                raise StartError(self._why(prog, f"did not become ready in {prog.ready_timeout:g}s"))
            time.sleep(0.1)

    def _why(self, prog: Program, fallback: str) -> str:
        time.sleep(0.2)   # let supervisord flush the child's last output
        line = self.last_line(prog.name)
        return f"{prog.name} failed to start: {line or fallback} (log: {self.log_of(prog.name)})"

    def failed(self) -> str | None:
        """A one-line reason if a program has given up (FATAL) or supervisord died."""
        if self.proc is None or self.proc.poll() is not None:
            return "supervisord exited"
        try:
            infos = self.rpc().supervisor.getAllProcessInfo()
        except Exception as e:
            # one unanswered poll is no failure (a busy machine); three in a row are
            self._rpc = None
            self._unanswered += 1
            if self._unanswered < 3:
                return None
            return f"supervisord does not answer: {e!r}"
        self._unanswered = 0
        for info in infos:
            if info["statename"] in (FATAL, EXITED, STOPPED):
                line = self.last_line(info["name"])
                return f"{info['name']} stopped: {line or info['statename'].lower()}"
        return None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every program (supervisord stops them in reverse order)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # supervisord hangs: kill it and the process group of each program
                for pgid in [proc.pid, *self.pids.values()]:
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except OSError:
                        pass
                proc.wait()
        if self.socket.parent != self.prefix:
            try:
                self.socket.unlink()
                self.socket.parent.rmdir()
            except OSError:
                pass


def _probe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def _last_nonempty(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
