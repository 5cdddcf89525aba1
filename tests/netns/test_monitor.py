"""The web monitor of real agents (tests/pair.py, tests/monitor_lab.py) in namespaces,
over a veth from this namespace into each director's, so that both these tests and a real
headless Chromium reach it. dir1 has a users file; dir2's is missing, so its monitor
stays off while the agent itself runs on."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from monitor_lab import (
    ADMIN,
    SERVING,
    SILENT,
    VIEWER,
    Monitor,
    chromium,
    monitor_address,
    monitor_lab,
    server,
)
from pair import VIP, Lab, wait_for
from prometheus_client.parser import text_string_to_metric_families
from samples import conforms

pytestmark = pytest.mark.netns


__all__ = ["monitor_lab"]  # the fixture


def test_monitor_of_a_real_agent(monitor_lab: Lab, tmp_path: Path) -> None:
    dir1, dir2 = monitor_lab.dirs
    monitor = Monitor(monitor_address(1), tmp_path / "monitor.crt")

    def probed() -> bool:
        s = monitor.status()
        silent, serving = server(s, SILENT), server(s, SERVING)
        return bool(serving and silent and not silent["healthy"] and silent["history"])

    wait_for(probed, 15)
    s = monitor.status()
    # The status a real agent sends has exactly the shape of hapair/status.py, the one
    # the CLI, the metrics and the tests' sample are checked against.
    assert conforms(s) == [], conforms(s)
    assert conforms(dir1.status()) == []
    assert (s["node"], s["state"], s["peer"]["node"], s["peer"]["state"]) == (
        "dir1",
        "MASTER",
        "dir2",
        "BACKUP",
    )
    assert s["peer"]["alive"] and s["peer"]["priority"] == 100 and s["peer"]["since"] > 0
    assert server(s, SERVING)["healthy"] is True
    assert server(s, SILENT)["history"][-1]["up"] is False

    # Nothing without credentials, nothing over plain HTTP, nothing a viewer may change.
    assert monitor.request("GET", "/api/status", auth=None)[0] == 401
    assert monitor.request("GET", "/api/status", auth=("alice", "wrong password"))[0] == 401
    conn = http.client.HTTPConnection(monitor.address, 8443, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/api/status")
        conn.getresponse()
    conn.close()
    drain = f"/api/servers/web/{SERVING}/drain"
    assert monitor.request("POST", drain, auth=VIEWER)[0] == 403
    assert server(dir1.status(), SERVING)["admin"] == "enabled"

    # Through the agent's own control path: the control socket sees the same.
    assert monitor.request("POST", drain) == (
        200,
        {"ok": True, "result": f"{SERVING} of web drained"},
    )
    assert server(dir1.status(), SERVING)["admin"] == "drained"
    assert monitor.request("POST", f"/api/servers/web/{SERVING}/enable")[0] == 200
    assert server(dir1.status(), SERVING)["admin"] == "enabled"
    code, reply = monitor.request("POST", "/api/servers/web", body={"server": "10.77.0.12:80"})
    assert code == 200, reply
    assert server(dir1.status(), "10.77.0.12:80")
    assert monitor.request("DELETE", "/api/servers/web/10.77.0.12:80")[0] == 200
    assert not server(dir1.status(), "10.77.0.12:80")
    code, reply = monitor.request("POST", "/api/servers/mail/10.77.0.12:80/drain")
    assert (code, reply["ok"]) == (409, False) and "mail" in reply["error"]

    code, text = monitor.request("GET", "/metrics", auth=VIEWER)
    assert code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("hapair_node_state", (("state", "MASTER"),))] == 1
    assert samples[("hapair_peer_alive", ())] == 1
    assert samples[("hapair_real_server_healthy", (("server", SILENT), ("service", "web")))] == 0

    # dir2 has no users file: no monitor, and it says why, but it fails over all the same.
    wait_for(lambda: "web monitor not started: no users file" in dir2.log.read_text(), 5)
    assert monitor.request("POST", "/api/release") == (
        200,
        {"ok": True, "result": "released: the peer takes the VIPs"},
    )
    wait_for(lambda: monitor_lab.holders() == ["dir2"] and dir2.state() == "MASTER", 10)
    wait_for(lambda: monitor.status()["peer"]["state"] == "MASTER", 5)


def test_browser_logs_in_drains_and_logs_out(monitor_lab: Lab, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dir1 = monitor_lab.dirs[0]
    driver = chromium(tmp_path)
    base = f"https://{monitor_address(1)}:8443"
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(f"{base}/")
        wait.until(ec.url_to_be(f"{base}/login"))
        driver.find_element(By.ID, "username").send_keys(ADMIN[0])
        driver.find_element(By.ID, "password").send_keys(ADMIN[1])
        driver.find_element(By.ID, "login").click()
        wait.until(ec.url_to_be(f"{base}/"))

        # Both directors and the service with its real servers.
        own = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '[data-node="dir1"]')))
        peer = driver.find_element(By.CSS_SELECTOR, '[data-node="dir2"]')
        assert "MASTER" in own.text and "holds the VIPs" in own.text
        assert "BACKUP" in peer.text and "100" in peer.text
        row = f'[data-server="web/{SERVING}"]'
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, row)))
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, f'[data-server="web/{SILENT}"] .health'), "down"
            )
        )
        assert "udp eth1" in driver.find_element(By.ID, "links").text
        assert VIP in driver.find_element(By.ID, "vips").text

        # Drain one server: the page and the agent both say so.
        driver.find_element(By.CSS_SELECTOR, f'{row} button[data-action="drain"]').click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} .admin"), "drained"))
        assert server(dir1.status(), SERVING)["admin"] == "drained"

        # Release asks first; cancelling changes nothing.
        driver.find_element(By.ID, "release").click()
        wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        driver.find_element(By.ID, "confirm-cancel").click()
        assert dir1.state() == "MASTER"

        # On a phone the page fits the width (wide tables scroll inside their panel).
        driver.set_window_size(390, 844)
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )

        driver.find_element(By.ID, "logout").click()
        wait.until(ec.url_to_be(f"{base}/login"))
        driver.get(f"{base}/")
        wait.until(ec.url_to_be(f"{base}/login"))
    finally:
        driver.quit()
