"""End to end in headless chromium: log in, work through the queue with the keyboard, edit, a
concurrent decision refused, an XSS payload inert, usable at 1280x800 and at a phone's width.

``SEMGRAD_UI_SCREENSHOTS=1`` also writes the screenshots the README shows into docs/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from semgrad_guard import SQLiteReviewQueue
from semgrad_guard.serve.review_ui import ReviewerTokens, create_review_app
from semgrad_guard.serve.server import BackgroundServer

ANA = "ana-token-0123456789"
BOB = "bob-token-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs"
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scorer():
    """Real scores from a tiny random model (no download), so the item page shows every field."""
    from semgrad_guard.testing import tiny_scorer

    return tiny_scorer()


@pytest.fixture
def queue(tmp_path, scorer):
    q = SQLiteReviewQueue(tmp_path / "review.db")
    rag = [
        {"role": "system", "content": "Answer only from the retrieved context; say so when it does not say."},
        {
            "role": "tool",
            "tool_call_id": "search",
            "content": "Refund policy (2026): items can be returned within 30 days with the receipt.",
        },
        {"role": "user", "content": "Can I return a jacket I bought 45 days ago?"},
    ]
    answer = "Yes, returns are accepted within 60 days."
    q.enqueue(rag, answer, result=scorer.score(rag, answer), confidence=0.48, rule="review_band")
    q.enqueue("Who wrote Hamlet?", "Christopher Marlowe wrote Hamlet.", confidence=0.41, rule="review_band")
    q.enqueue("What is 2 + 2?", "4", confidence=0.66, rule="review_band")
    q.enqueue(
        "Capital of Peru?", "Lima.", confidence=0.93, rule="audit", kind="audit", inclusion_probability=0.05
    )
    yield q
    q.close()


@pytest.fixture
def server(queue):
    app = create_review_app(
        queue,
        tokens=ReviewerTokens(named={"ana": ANA, "bob": BOB}),
        guidelines="Approve what the retrieved context supports. Edit a small slip. Reject the rest.",
    )
    with BackgroundServer(app) as s:
        yield s


def wait(driver, cond, timeout: float = 10):
    return WebDriverWait(driver, timeout).until(cond)


def log_in(driver, url: str, token: str) -> None:
    driver.get(url + "/")
    wait(driver, EC.presence_of_element_located((By.NAME, "token"))).send_keys(token, Keys.ENTER)
    wait(driver, EC.presence_of_element_located((By.ID, "queue")))


def press(driver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def on_item(driver, item_id: int) -> None:
    wait(driver, EC.url_matches(rf"/items/{item_id}$"))
    wait(driver, EC.presence_of_element_located((By.ID, "answer")))


def shot(driver, name: str) -> None:
    if os.environ.get("SEMGRAD_UI_SCREENSHOTS"):
        driver.save_screenshot(str(DOCS / name))


def test_log_in_and_work_through_the_queue_with_the_keyboard(browser, server, queue):
    log_in(browser, server.url, ANA)
    assert "signed in as ana" in browser.find_element(By.CLASS_NAME, "who").text
    assert browser.find_element(By.ID, "count-pending").text == "4"
    shot(browser, "review-ui-queue.png")
    press(browser, "j")
    press(browser, Keys.ENTER)
    on_item(browser, 1)
    assert "Refund policy (2026)" in browser.find_element(By.CLASS_NAME, "context").text
    shot(browser, "review-ui-item.png")
    press(browser, "j")  # next without deciding
    on_item(browser, 2)
    press(browser, "k")
    on_item(browser, 1)
    press(browser, "n")
    browser.switch_to.active_element.send_keys("the context says 30 days", Keys.ESCAPE)
    press(browser, "r")  # reject -> the next pending item opens
    on_item(browser, 2)
    press(browser, "e")
    edit = browser.switch_to.active_element
    assert edit.get_attribute("id") == "edit-answer"
    edit.clear()
    edit.send_keys("William Shakespeare wrote Hamlet.")
    edit.send_keys(Keys.CONTROL, Keys.ENTER)
    on_item(browser, 3)
    press(browser, "a")
    on_item(browser, 4)
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge.audit").text == "audit sample"
    press(browser, "c")
    wait(browser, EC.url_contains("cleared=1"))
    assert "No pending item left" in browser.page_source
    one, two, three = (queue.get(i) for i in (1, 2, 3))
    assert (one.status.value, one.reviewer, one.note) == ("rejected", "ana", "the context says 30 days")
    assert (two.status.value, two.final_answer) == ("edited", "William Shakespeare wrote Hamlet.")
    assert three.status.value == "approved" and three.reviewer == "ana"
    assert queue.get(4).status.value == "cannot_tell"


def test_a_concurrent_decision_is_refused_with_a_clear_page(browser, server, queue):
    log_in(browser, server.url, BOB)
    browser.get(server.url + "/items/1")
    on_item(browser, 1)
    queue.approve(1, reviewer="ana")  # another reviewer, elsewhere, while bob reads
    press(browser, "r")
    msg = wait(browser, EC.presence_of_element_located((By.ID, "message"))).text
    assert "already approved by ana at" in msg and "your reject was not recorded" in msg
    assert queue.get(1).status.value == "approved"
    browser.find_element(By.LINK_TEXT, "Back to item 1").click()
    decided = wait(browser, EC.presence_of_element_located((By.ID, "decided"))).text
    assert "approved by ana" in decided
    # Re-opening is an explicit, audited action.
    browser.find_element(By.ID, "reopen-note").send_keys("ana approved a wrong refund")
    browser.find_element(By.ID, "reopen").click()
    wait(browser, EC.presence_of_element_located((By.ID, "approve")))
    assert queue.get(1).audit[-1].actor == "bob"


def test_an_xss_payload_renders_as_inert_text(browser, server, queue):
    i = queue.enqueue([{"role": "user", "content": XSS}], XSS, rule="review_band", metadata={"source": XSS})
    log_in(browser, server.url, ANA)
    browser.get(f"{server.url}/items/{i}")
    on_item(browser, i)
    assert browser.find_element(By.ID, "answer").text == XSS  # shown literally
    assert browser.title != "pwned"
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    browser.get(server.url + "/")
    wait(browser, EC.presence_of_element_located((By.ID, "queue")))
    assert browser.title != "pwned"


def test_usable_at_a_phone_width(browser, server):
    browser.set_window_size(390, 844)
    log_in(browser, server.url, ANA)

    def no_sideways_scroll() -> bool:
        return bool(
            browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        )

    assert no_sideways_scroll()
    shot(browser, "review-ui-phone.png")
    browser.find_element(By.LINK_TEXT, "1").click()
    on_item(browser, 1)
    assert no_sideways_scroll()
    approve = browser.find_element(By.ID, "approve")
    assert approve.is_displayed() and approve.size["width"] >= 100
    approve.click()
    on_item(browser, 2)
