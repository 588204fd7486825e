"""Waiting on the admin's pages in the browser tests."""

from collections.abc import Callable
from typing import TypeVar

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")


def wait_for(
    browser: Chrome, condition: Callable[[Chrome], T], message: str, timeout: float = 10
) -> T:
    # The dashboard swaps its HTML every few seconds: an element found just
    # before a swap is stale, and the condition is simply tried again.
    waiter = WebDriverWait(
        browser, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return waiter.until(condition, message)
