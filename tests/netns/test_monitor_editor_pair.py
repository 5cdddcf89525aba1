"""The monitor page's configuration editor on a pair file, in a real headless Chromium,
against the two real agents of tests/pair_file_lab.py: a change made on dir1's page
reaches both directors (dir2 first), is rolled back on both, and a director back with
its old file is shown in the banner and brought in line from it. Both files on disk and
both agents' status say what the page says."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from monitor_lab import ADMIN, chromium
from pair import VIP, Director, Lab, wait_for
from pair_file_lab import config_of, monitor_address, pair_file_lab_factory, pair_text

from hapair.config import version_of
from lab.config import service

pytestmark = pytest.mark.netns
__all__ = ["pair_file_lab_factory"]

SERVERS = [{"address": "10.77.0.21", "weight": 2}, {"address": "10.77.0.22", "weight": 1}]


def sections(weight: int = 1) -> dict[str, Any]:
    """A service whose second real server has `weight`."""
    servers = [SERVERS[0], {**SERVERS[1], "weight": weight}]
    return {"services": [service("web", VIP, 80, "dr", servers, scheduler="wrr")]}


def weight_of(d: Director, address: str) -> object:
    """The weight the agent's status gives the real server (None: not listed, or no
    answer)."""
    status: dict[str, Any] = dict(d.status() or {})
    for svc in status.get("services") or []:
        for rs in svc.get("real_servers") or []:
            if rs.get("address") == address:
                return rs.get("weight")
    return None


class Page:
    """dir1's monitor page in Chromium, with the helpers tests/netns/test_monitor_editor.py
    uses."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base = driver, base
        self.wait = WebDriverWait(driver, 30)

    def find(self, id_: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, id_)

    def log_in(self, user: tuple[str, str]) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        def at_login() -> bool:
            """The page asks for a login (the monitor may take a moment to answer)."""
            if self.driver.current_url == f"{self.base}/login":
                return True
            self.driver.get(f"{self.base}/")
            return False

        self.wait.until(lambda _: at_login())
        self.find("username").send_keys(user[0])
        self.find("password").send_keys(user[1])
        self.find("login").click()
        self.wait.until(ec.url_to_be(f"{self.base}/"))
        located = ec.visibility_of_element_located((By.CSS_SELECTOR, '[data-node="dir1"]'))
        self.wait.until(located)

    def open_editor(self) -> None:
        self.find("config-open").click()

    def editor_holds(self, text: str) -> None:
        self.wait.until(lambda _: self.find("config-editor").get_attribute("value") == text)

    def type_in(self, text: str) -> None:
        """The editor's text replaced as typing would (an input event)."""
        self.driver.execute_script(
            "const area = document.getElementById('config-editor');"
            "area.value = arguments[0];"
            "area.dispatchEvent(new Event('input', {bubbles: true}));",
            text,
        )

    def says(self, id_: str, text: str) -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait.until(ec.text_to_be_present_in_element((By.ID, id_), text))
        return str(self.find(id_).text)

    def confirm(self, says: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        assert says in self.find("confirm-text").text, self.find("confirm-text").text
        self.find("confirm-ok").click()

    def history(self) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, "#config-history li[data-version]"))


@pytest.fixture
def service_lab(pair_file_lab_factory: Callable[..., Lab]) -> Lab:
    return pair_file_lab_factory(sections())


def test_editor_changes_both_directors(service_lab: Lab, tmp_path: Path) -> None:
    lab = service_lab
    dir1, dir2 = lab.dirs
    old = dir1.config.read_text()
    new = pair_text(lab, sections=sections(4))
    assert old == pair_text(lab, sections=sections(1)) != new
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    # No IPVS on this kernel, or IPVS: the agents list the service and its weights.
    assert weight_of(dir1, "10.77.0.22") == weight_of(dir2, "10.77.0.22") == 1
    assert weight_of(dir1, "10.77.0.21") == 2

    driver = chromium(tmp_path)
    page = Page(driver, f"https://{monitor_address(1, lab.net)}:8443")
    try:
        page.log_in(ADMIN)
        page.open_editor()
        page.editor_holds(old)
        page.says("config-peer", "dir2 runs the same")

        # Check: the readable line, nothing written on either director.
        page.type_in(new)
        page.find("config-check").click()
        line = "service web: real server 10.77.0.22 weight: 1 -> 4"
        page.says("config-result", line)
        assert dir1.config.read_text() == dir2.config.read_text() == old

        # Apply, confirmed: dir2 takes it first, then dir1.
        page.find("config-apply").click()
        page.confirm(line)
        said = page.says("config-result", "applied")
        assert f"Apply: applied {version_of(new)[:12]} on dir2, dir1" in said, said
        wait_for(lambda: dir1.config.read_text() == dir2.config.read_text() == new, 10)
        wait_for(lambda: weight_of(dir1, "10.77.0.22") == 4, 10)
        wait_for(lambda: weight_of(dir2, "10.77.0.22") == 4, 10)
        assert weight_of(dir1, "10.77.0.21") == weight_of(dir2, "10.77.0.21") == 2
        wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
        assert config_of(dir1)["version"] == config_of(dir2)["version"] == version_of(new)
        page.editor_holds(new)

        # The history: the new version running, the old one below it.
        page.wait.until(lambda _: len(page.history()) == 2)
        top, first = page.history()
        assert top.get_attribute("data-version") == version_of(new)
        assert first.get_attribute("data-version") == version_of(old)
        assert "running" in top.text and line in top.text and ADMIN[0] in top.text, top.text

        # Roll back, confirmed: both files and both agents as before.
        from selenium.webdriver.common.by import By

        first.find_element(By.CSS_SELECTOR, "button.config-rollback").click()
        page.confirm(version_of(old)[:12])
        said = page.says("config-result", "applied")
        assert f"applied {version_of(old)[:12]} on dir2, dir1" in said, said
        wait_for(lambda: dir1.config.read_text() == dir2.config.read_text() == old, 10)
        wait_for(lambda: weight_of(dir1, "10.77.0.22") == 1, 10)
        wait_for(lambda: weight_of(dir2, "10.77.0.22") == 1, 10)
        wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
        page.editor_holds(old)
        page.wait.until(
            lambda _: page.history()[0].get_attribute("data-version") == version_of(old)
        )
        assert f"rollback to {version_of(old)[:12]}" in page.history()[0].text
    finally:
        driver.quit()


def test_banner_brings_a_returned_director_in_line(service_lab: Lab, tmp_path: Path) -> None:
    lab = service_lab
    dir1, dir2 = lab.dirs
    old = dir1.config.read_text()
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    # Out of sync for real: dir2 down while dir1's file changes by hand (and is reloaded),
    # then dir2 back with its old file.
    assert dir2.stop() == 0
    changed = pair_text(lab, (140, 100), sections=sections())
    dir1.config.write_text(changed)
    dir1.signal(signal.SIGHUP)
    wait_for(lambda: (dir1.status() or {}).get("priority") == 140, 10)
    dir2.start()
    wait_for(lambda: config_of(dir1).get("in_sync") is False, 20)
    assert dir2.config.read_text() == old

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = chromium(tmp_path)
    page = Page(driver, f"https://{monitor_address(1, lab.net)}:8443")
    ours, theirs = version_of(changed)[:12], version_of(old)[:12]
    try:
        page.log_in(ADMIN)
        page.open_editor()  # GET /api/config: a pair file, and what dir2 runs
        page.editor_holds(changed)
        banner = page.wait.until(ec.visibility_of_element_located((By.ID, "config-banner")))
        assert ours in banner.text and "configurations differ" in banner.text, banner.text

        def names_both() -> bool:
            """dir2's version, once its monitor answers dir1's (reloading the page's
            view of the config until then)."""
            if theirs in page.find("config-banner").text:
                return True
            page.find("config-reload").click()
            return False

        page.wait.until(lambda _: names_both())
        text = page.find("config-banner").text
        assert f"This director runs {ours}, dir2 runs {theirs}" in text, text
        assert dir2.config.read_text() == old  # nothing changed by looking

        driver.execute_script("window.scrollTo(0, 0)")  # below the sticky bar, not under it
        page.find("config-push").click()
        page.confirm(f"Make dir2 run this director's config {ours}?")
        page.says("notice", f"dir2 now runs {ours} (applied on dir2, dir1)")
        wait_for(lambda: dir2.config.read_text() == changed, 10)
        assert dir1.config.read_text() == changed
        wait_for(lambda: config_of(dir1).get("in_sync") is True, 20)
        assert config_of(dir2)["version"] == version_of(changed)
        wait_for(lambda: (dir2.status() or {}).get("priority") == 100, 10)
        page.wait.until(ec.invisibility_of_element_located((By.ID, "config-banner")))
    finally:
        driver.quit()
