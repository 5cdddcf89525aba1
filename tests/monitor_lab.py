"""The pair of tests/pair.py with a service and the web monitor: dir1 has a users file,
dir2's is missing (its monitor stays off while the agent runs on); each director's
monitor is reachable from this namespace over a veth at 10.79.N.2, so that tests and a
real headless Chromium reach it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hapair_cli import hapair
from pair import VIP, Lab, started
from topology import unique_name

from lab.shell import sh

ADMIN, VIEWER = ("alice", "correct horse"), ("victor", "viewer pass")
SERVING, SILENT = "10.77.0.10:80", "10.77.0.11:80"  # the client serves HTTP; nothing at .11
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

EXTRA = f"""
[[services]]
name = "web"
protocol = "tcp"
address = "{VIP}"
port = 80
scheduler = "wlc"
forward = "dr"

[services.probe]
type = "tcp"
interval = "300ms"
timeout = "300ms"
rise = 1
fall = 1

[[services.real_servers]]
address = "10.77.0.10"

[[services.real_servers]]
address = "10.77.0.11"

[monitor]
listen = "@LISTEN@"
tls_cert = "monitor.crt"
tls_key = "monitor.key"
users_file = "@USERS@"
"""


def monitor_address(index: int) -> str:
    return f"10.79.{index}.2"


def delete_link(name: str) -> None:
    sh("ip", "link", "del", name, check=False)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def attach_monitor(lab: Lab, tmp_path: Path) -> Lab:
    """Give the lab (made with EXTRA in its config) its certificate, users and veths;
    the directors are not started yet."""
    hapair("gen-cert", str(tmp_path / "monitor.crt"), str(tmp_path / "monitor.key"), check=True)
    users = tmp_path / "users"
    for (user, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        hapair("passwd", "-f", str(users), user, "--role", role, stdin=password + "\n", check=True)
    for i, d in enumerate(lab.dirs, 1):
        users_file = users if i == 1 else tmp_path / "no-users-here"
        text = d.config.read_text().replace("@LISTEN@", f"{monitor_address(i)}:8443")
        d.config.write_text(text.replace("@USERS@", str(users_file)))
        outside = unique_name("mon")
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", "mon0", "netns", d.ns.name)
        lab.extra.append(lambda name=outside: delete_link(name))
        sh("ip", "addr", "add", f"10.79.{i}.1/24", "dev", outside)
        sh("ip", "link", "set", outside, "up")
        d.ns.ip("addr", "add", f"{monitor_address(i)}/24", "dev", "mon0")
        d.ns.ip("link", "set", "mon0", "up")
    web = subprocess.Popen(
        ["ip", "netns", "exec", lab.client.name, sys.executable, "-m", "http.server", "80"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.extra.append(lambda: stop(web))
    return lab


class Monitor:
    def __init__(self, address: str, cert: Path) -> None:
        self.address = address
        self.context = ssl.create_default_context(cafile=str(cert))
        self.context.check_hostname = False  # the lab certificate names localhost

    def request(
        self, method: str, path: str, auth: tuple[str, str] | None = ADMIN, body: Any = None
    ) -> tuple[int, Any]:
        headers = {}
        if auth is not None:
            token = base64.b64encode(":".join(auth).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        return self.raw(method, path, data, headers)

    def raw(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        """(status, JSON or text) of a request with these bytes and headers, as sent."""
        conn = http.client.HTTPSConnection(self.address, 8443, context=self.context, timeout=20)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        ctype = response.headers.get_content_type()
        return response.status, json.loads(raw) if ctype == "application/json" else raw.decode()

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/api/status")
        assert code == 200, body
        return dict(body)


def server(status: dict[str, Any] | None, address: str) -> dict[str, Any]:
    """The real server's status; {} when it is not (or no longer) a real server."""
    assert status is not None
    for svc in status["services"]:
        for rs in svc["real_servers"]:
            if f"{rs['address']}:{rs['port']}" == address:
                return dict(rs)
    return {}


@pytest.fixture
def monitor_lab(lab_factory: Callable[..., Lab], tmp_path: Path) -> Iterator[Lab]:
    """The pair with a service and [monitor]; each director reachable at 10.79.N.2."""
    yield started(attach_monitor(lab_factory(EXTRA), tmp_path))


def chromium(tmp_path: Path) -> Any:
    """A headless Chromium driven by Selenium (skipped, or failed with
    HAPAIR_REQUIRE_LAYERS=1, without Debian's chromium and chromium-driver)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        why = "needs Debian's chromium and chromium-driver (scripts/setup installs them)"
        if os.environ.get("HAPAIR_REQUIRE_LAYERS") == "1":
            pytest.fail(f"HAPAIR_REQUIRE_LAYERS=1 but this test cannot run here: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--ignore-certificate-errors",  # the lab's self-signed certificate
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.accept_insecure_certs = True
    # An explicit driver path: Selenium Manager downloads nothing.
    return webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
        options=options,
    )
