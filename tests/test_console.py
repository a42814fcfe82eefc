"""The web console (/console) in a real headless Chromium driven by selenium, against
`python run.py`: sign in (and the default admin's forced password change), a key made and
shown once, used over HTTP, revoked in the page; usage drawn; a job followed to its end; an
XSS-shaped name shown as text; nothing asked of any other host; no errors in the console.
Each page is saved as a screenshot under the test's temporary directory.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from inference_server.client import Client
from tests.live import CHROMIUM, CHROMIUM_FLAGS, live_server

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as shown  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

NEW_PASSWORD = "console-admin-password-9"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        *CHROMIUM_FLAGS,
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _fill(browser, form: str, **values: str) -> None:
    for name, value in values.items():
        field = browser.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        field.clear()
        field.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, f"{form} button[type=submit]").click()


def _until(browser, condition, seconds: float = 30):
    return WebDriverWait(browser, seconds, poll_frequency=0.2).until(condition)


def test_the_console_in_a_real_browser(tmp_path, browser):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    polling = {"INFERENCE_RATE_LIMITS__ROLES": "{admin: 100000000/minute}"}
    with live_server(tmp_path / "data", env=polling) as server:
        browser.get(server.url("/console"))
        browser.save_screenshot(str(shots / "sign-in.png"))
        _fill(browser, "#sign-in-form", username="admin", password="admin123")
        _until(browser, shown.visibility_of_element_located((By.ID, "change-password")))
        browser.save_screenshot(str(shots / "change-password.png"))
        _fill(
            browser,
            "#change-password-form",
            current_password="admin123",
            new_password=NEW_PASSWORD,
        )
        _until(browser, shown.visibility_of_element_located((By.ID, "keys")))

        # A key: shown once, used over HTTP, its XSS-shaped name shown as text, revoked.
        _fill(browser, "#create-key-form", name=XSS)
        _until(browser, shown.visibility_of_element_located((By.ID, "new-key")))
        key = browser.find_element(By.ID, "new-key-value").text
        assert key.startswith("sk_")
        browser.save_screenshot(str(shots / "keys.png"))
        answer = requests.post(
            server.url("/predict"), json={"data": [[1, 2, 3]]}, headers={"X-API-Key": key}
        )
        assert answer.status_code == 200, answer.text
        row = _until(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#keys-table tbody tr"))
        assert row.find_element(By.CSS_SELECTOR, "td").text == XSS
        assert browser.find_elements(By.CSS_SELECTOR, "#keys-table img") == []
        row.find_element(By.XPATH, ".//button[text()='Revoke']").click()
        _until(browser, shown.text_to_be_present_in_element((By.ID, "keys-table"), "revoked"))
        answer = requests.post(
            server.url("/predict"), json={"data": [[1, 2, 3]]}, headers={"X-API-Key": key}
        )
        assert answer.status_code == 401

        # Usage, drawn after predictions; a job submitted by the client, followed to its end.
        with Client.login(server.base, "admin", NEW_PASSWORD) as admin:
            for _ in range(3):
                admin.predict([[1, 2, 3], [4, 5, 6]])
            browser.find_element(By.CSS_SELECTOR, "nav [data-view=usage]").click()
            _until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#usage-by-day rect"))
            assert browser.find_elements(By.CSS_SELECTOR, "#usage-by-model rect")
            browser.save_screenshot(str(shots / "usage.png"))
            browser.find_element(By.CSS_SELECTOR, "nav [data-view=jobs]").click()
            job = admin.jobs.submit([[[1, 2, 3]]] * 50, project="console")
        done = f"#jobs-table tr[data-job='{job['id']}'][data-status=completed]"
        _until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, done), seconds=60)
        browser.save_screenshot(str(shots / "jobs.png"))

        browser.find_element(By.CSS_SELECTOR, "nav [data-view=users]").click()
        _until(browser, shown.text_to_be_present_in_element((By.ID, "users-table"), "admin"))
        browser.save_screenshot(str(shots / "users.png"))

        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        sent = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
        asked = [  # what the console's page asked for (not the browser's own new tab page)
            message["params"]["request"]["url"]
            for message in sent
            if message["method"] == "Network.requestWillBeSent"
            and message["params"].get("documentURL", "").startswith(server.base)
        ]
    assert problems == []
    assert server.url("/console/console.js") in asked and server.url("/auth/me") in asked
    assert all(url.startswith((server.base + "/", "data:")) for url in asked), asked
    assert sorted(p.name for p in shots.iterdir()) == [
        "change-password.png",
        "jobs.png",
        "keys.png",
        "sign-in.png",
        "usage.png",
        "users.png",
    ]
