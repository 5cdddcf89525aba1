"""The monitor page's configuration editor in a real headless Chromium, against the real
agents of tests/monitor_lab.py: dir1's one-director file is checked, applied, rolled back
and changed behind the page's back (a 409), and the file on disk and the running agent
say what the page says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from monitor_lab import (
    ADMIN,
    VIEWER,
    chromium,
    monitor_address,
    monitor_lab,
)
from pair import Lab, wait_for

pytestmark = pytest.mark.netns


__all__ = ["monitor_lab"]  # the fixture


FAKE_PAIR_OUT_OF_SYNC = """
window.realFetch = window.fetch;
window.fetch = async (path, options) => {
  const response = await window.realFetch(path, options);
  const get = !options || !options.method || options.method === "GET";
  if (!get || (path !== "/api/status" && path !== "/api/config")) return response;
  const body = await response.json();
  const other = "ab".repeat(32);
  if (path === "/api/status") body.config = {...body.config, in_sync: false, peer_version: other};
  else Object.assign(body, {pair: true, peer: {node: "dir2", version: other, in_sync: false}});
  return new Response(JSON.stringify(body), {status: response.status, headers: response.headers});
};
"""


def test_browser_edits_checks_applies_and_rolls_back(monitor_lab: Lab, tmp_path: Path) -> None:
    driver = chromium(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dir1 = monitor_lab.dirs[0]
    original = dir1.config.read_text()
    assert "priority = 150\n" in original
    base = f"https://{monitor_address(1)}:8443"
    wait = WebDriverWait(driver, 30)

    def find(id_: str) -> Any:
        return driver.find_element(By.ID, id_)

    def log_in(user: tuple[str, str]) -> None:
        driver.get(f"{base}/")
        wait.until(ec.url_to_be(f"{base}/login"))
        find("username").send_keys(user[0])
        find("password").send_keys(user[1])
        find("login").click()
        wait.until(ec.url_to_be(f"{base}/"))
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '[data-node="dir1"]')))

    def editor_holds(text: str) -> None:
        wait.until(lambda _: find("config-editor").get_attribute("value") == text)

    def type_in(text: str) -> None:
        """The editor's text replaced as typing would (an input event)."""
        driver.execute_script(
            "const area = document.getElementById('config-editor');"
            "area.value = arguments[0];"
            "area.dispatchEvent(new Event('input', {bubbles: true}));",
            text,
        )

    def result_says(text: str) -> str:
        wait.until(ec.text_to_be_present_in_element((By.ID, "config-result"), text))
        return str(find("config-result").text)

    def confirm(says: str) -> None:
        wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        assert says in find("confirm-text").text, find("confirm-text").text
        find("confirm-ok").click()

    def history() -> list[Any]:
        return list(driver.find_elements(By.CSS_SELECTOR, "#config-history li[data-version]"))

    def priority() -> object:
        status = dir1.status()
        return None if status is None else status.get("priority")

    try:
        log_in(ADMIN)
        # One click opens it; it holds the file the agent runs, at the version it runs.
        find("config-open").click()
        editor_holds(original)
        # Nothing kept yet: the first change keeps the file as found.
        wait.until(ec.text_to_be_present_in_element((By.ID, "config-history"), "none kept yet"))
        assert not history()
        wait.until(lambda _: find("config-version").text not in ("", "-"))
        running = find("config-version").text

        # Check: what would change, nothing written.
        edited = original.replace("priority = 150\n", "priority = 140\n")
        type_in(edited)
        find("config-check").click()
        result_says("node.priority: 150 -> 140")
        assert dir1.config.read_text() == original

        # An invalid edit: every error, and Apply writes nothing either.
        type_in(edited + "\n[x]\n")
        find("config-check").click()
        result_says("x: unknown key (a typo?)")
        # Each error says its line; its button selects that line in the editor.
        at = len((edited + "\n[x]\n").splitlines())
        button = driver.find_element(By.CSS_SELECTOR, "#config-result button.at-line")
        assert button.text == f"line {at}" and button.get_attribute("data-line") == str(at)
        button.click()
        chosen = driver.execute_script(
            "const a = document.getElementById('config-editor');"
            "return a.value.slice(a.selectionStart, a.selectionEnd);"
        )
        assert chosen == "[x]", chosen
        type_in(edited.replace("[cluster]", "[cluster", 1))  # a TOML syntax error
        find("config-check").click()
        result_says("toml: syntax error")
        broken = edited.splitlines().index("[cluster]") + 1
        button = driver.find_element(By.CSS_SELECTOR, "#config-result button.at-line")
        assert button.text == f"line {broken}", button.text
        type_in(edited + "\n[x]\n")
        find("config-check").click()
        result_says("x: unknown key (a typo?)")
        find("config-apply").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "config-result"), "Invalid"))
        assert "x: unknown key (a typo?)" in find("config-result").text
        assert not find("confirm").is_displayed()
        assert dir1.config.read_text() == original and priority() == 150

        # Apply asks first, listing the changes; cancelling changes nothing.
        type_in(edited)
        find("config-apply").click()
        wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        assert "node.priority: 150 -> 140" in find("confirm-text").text
        find("confirm-cancel").click()
        result_says("Not applied")
        assert dir1.config.read_text() == original

        # Apply: the file and the running agent have 140; the page reloads the running
        # config and the history.
        find("config-apply").click()
        confirm("node.priority: 150 -> 140")
        said = result_says("applied")
        assert "on dir1" in said, said
        wait_for(lambda: dir1.config.read_text() == edited, 10)
        wait_for(lambda: priority() == 140, 10)
        editor_holds(edited)
        wait.until(lambda _: len(history()) == 2)
        second = history()[0].get_attribute("data-version")
        first = history()[1].get_attribute("data-version")
        assert first[:12] == running and second != first and second[:12] in said
        assert "running" in history()[0].text
        assert "node.priority: 150 -> 140" in history()[0].text and "alice" in history()[0].text
        wait.until(ec.text_to_be_present_in_element((By.ID, "config-version"), second[:12]))
        # Only the older entries can be rolled back to.
        assert not history()[0].find_elements(By.CSS_SELECTOR, "button.config-rollback")

        # Roll back to the first: the original file and priority again.
        history()[1].find_element(By.CSS_SELECTOR, "button.config-rollback").click()
        confirm(first[:12])
        result_says("applied")
        wait_for(lambda: dir1.config.read_text() == original, 10)
        wait_for(lambda: priority() == 150, 10)
        editor_holds(original)
        # The version rolled back to is the newest again (kept once).
        wait.until(lambda _: history()[0].get_attribute("data-version") == first)
        assert len(history()) == 2
        assert f"rollback to {first[:12]}" in history()[0].text
        assert history()[1].find_elements(By.CSS_SELECTOR, "button.config-rollback")

        # Changed behind the page's back (the CLI): the page's Apply is refused (409)
        # and nothing of its edit is written; it offers the running config.
        type_in(original.replace("priority = 150\n", "priority = 130\n"))
        cli = tmp_path / "cli.toml"
        cli.write_text(original.replace("priority = 150\n", "priority = 120\n"))
        sock = ["--socket", str(dir1.socket)]
        subprocess.run(
            [sys.executable, "-m", "hapair", "config", "apply", str(cli), *sock],
            check=True,
            timeout=60,
            capture_output=True,
        )
        wait_for(lambda: priority() == 120, 10)
        wait.until(ec.visibility_of_element_located((By.ID, "config-stale")))
        find("config-apply").click()
        confirm("node.priority: 120 -> 130")
        result_says("someone else changed the running config")
        assert "Nothing was changed" in find("config-result").text
        assert dir1.config.read_text() == cli.read_text() and priority() == 120
        find("config-load-running").click()
        editor_holds(cli.read_text())
        wait.until(ec.invisibility_of_element_located((By.ID, "config-stale")))

        # A pair whose directors run different files (the page's view of it faked in
        # the browser: this lab's files are one-director ones): the banner says so, and
        # its button PUTs the running config's own text and version (here: no change).
        driver.execute_script(FAKE_PAIR_OUT_OF_SYNC)
        find("config-reload").click()
        banner = wait.until(ec.visibility_of_element_located((By.ID, "config-banner")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "config-banner"), "abababababab"))
        assert "the directors' configurations differ" in banner.text
        driver.execute_script("window.scrollTo(0, 0)")  # below the sticky bar, not under it
        find("config-push").click()
        confirm("Make dir2 run this director's config")
        wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), "applied on dir1"))
        wait.until(lambda _: "no change" in history()[0].text)
        assert len(history()) == 3 and dir1.config.read_text() == cli.read_text()
        driver.execute_script("window.fetch = window.realFetch;")

        # On a phone the page with the editor open fits the width.
        driver.set_window_size(390, 844)
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        driver.set_window_size(1280, 900)

        # A viewer sees the config and may check it, but cannot change it.
        find("logout").click()
        wait.until(ec.url_to_be(f"{base}/login"))
        log_in(VIEWER)
        find("config-open").click()
        editor_holds(cli.read_text())
        assert find("config-editor").get_attribute("readonly") is not None
        assert not driver.find_elements(By.ID, "config-apply")
        wait.until(lambda _: len(history()) == 3)
        assert not driver.find_elements(By.CSS_SELECTOR, "button.config-rollback")
        type_in(original)
        find("config-check").click()
        result_says("node.priority: 120 -> 150")
        assert dir1.config.read_text() == cli.read_text()
    finally:
        driver.quit()
