"""A throwaway MariaDB (or MySQL) server for tests: its own data directory, a free port on
127.0.0.1, a socket in the same folder, started by `start()` and stopped by `stop()`.

Debian's `mariadb-server` package gives `mariadbd` and `mariadb-install-db`; `.ci/run` installs it
in the project environment when it is missing. `find_server()` says why none can be used.

The server runs as the current user (`--user=root` when that is root, which mariadbd otherwise
refuses). An admin account `root` over the socket (no password) creates the test accounts.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
CLIENT_NAMES = ("mariadb", "mysql")
DUMP_NAMES = ("mariadb-dump", "mysqldump")


def _which(names, dirs=("/usr/sbin", "/usr/bin")) -> str | None:
    for name in names:
        found = shutil.which(name) or next((os.path.join(d, name) for d in dirs
                                            if os.access(os.path.join(d, name), os.X_OK)), None)
        if found:
            return found
    return None


def find_server() -> tuple[dict | None, str]:
    """({"server", "install", "client"} paths, "") or (None, why not)."""
    paths = {"server": _which(SERVER_NAMES), "install": _which(INSTALL_NAMES), "client": _which(CLIENT_NAMES),
             "dump": _which(DUMP_NAMES)}
    missing = [k for k, v in paths.items() if v is None]
    if missing:
        return None, (f"no MariaDB server here (missing {', '.join(missing)}: "
                      f"{' / '.join(SERVER_NAMES + INSTALL_NAMES + CLIENT_NAMES + DUMP_NAMES)}); "
                      "install Debian's mariadb-server in the project environment (`make test` as root does)")
    return paths, ""


def _free_space(path: str) -> str:
    st = os.statvfs(path)
    return f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB free there"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDB:
    """One server in `folder` (data/, sock, err.log); `port` on 127.0.0.1; `options`: more mariadbd
    options (e.g. TLS: --ssl-ca=... --require-secure-transport=ON)."""

    def __init__(self, folder: str, paths: dict, options: tuple[str, ...] = ()):
        self.folder, self.paths, self.options = str(folder), paths, tuple(options)
        self.port = free_port()
        self.socket = os.path.join(self.folder, "sock")
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen | None = None

    def _user(self) -> list[str]:
        return ["--user=root"] if os.getuid() == 0 else []

    def start(self) -> "MariaDB":
        data = os.path.join(self.folder, "data")
        os.makedirs(data, exist_ok=True)
        made = subprocess.run([self.paths["install"], "--no-defaults", f"--datadir={data}", "--skip-test-db",
                               "--auth-root-authentication-method=socket", *self._user()],
                              capture_output=True, text=True)
        if made.returncode != 0:     # e.g. a full disk: say so, not only the exit status
            raise RuntimeError(f"{self.paths['install']} exited with {made.returncode} for {data} "
                               f"({_free_space(data)}): {(made.stderr or made.stdout).strip()[-2000:]}")
        self._proc = subprocess.Popen(
            [self.paths["server"], "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
             f"--port={self.port}", f"--bind-address={self.host}", f"--pid-file={self.folder}/pid",
             f"--log-error={self.folder}/err.log", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
             *self.options, *self._user()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not self._ready():   # a server that dies says so; one that hangs is pytest's timeout's
            if self._proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self._proc.returncode}: {self.error_log()[-2000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        return subprocess.run([self.paths["client"], "--no-defaults", f"--socket={self.socket}", "-uroot",
                               "-e", "SELECT 1"], capture_output=True).returncode == 0

    def sql(self, statement: str, database: str = "") -> str:
        """Run SQL as the admin over the socket; its output (tab-separated, no header)."""
        r = subprocess.run([self.paths["client"], "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B",
                            *([database] if database else [])],
                           input=statement, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"SQL failed: {statement!r}: {r.stderr.strip()}")
        return r.stdout

    def dump(self, database: str) -> str:
        """Every row of `database` as SQL text."""
        r = subprocess.run([self.paths["dump"], "--no-defaults", f"--socket={self.socket}", "-uroot", database],
                           capture_output=True, text=True, check=True)
        return r.stdout

    def add_user(self, user: str, password: str) -> None:
        """An account that may use (and create) every database, from 127.0.0.1. The password goes
        to the client on stdin, never in argv."""
        self.sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; GRANT ALL ON *.* TO '{user}'@'%';")

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.folder, "err.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()     # SIGTERM: mariadbd shuts down cleanly
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
