"""Headless Chromium (Debian's /usr/bin/chromium) driving the ComfyUI front end, for tests and scripts.

Never `playwright install`: Playwright only drives the system browser here.
"""

from __future__ import annotations

import os
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def launch(playwright: Any):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} not found: install it with `apt-get install -y chromium` (or set CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)


def open_app(page: Any, url: str, timeout_ms: int = 120_000) -> None:
    """Loads the graph editor and closes what opens over it on a first visit (the template browser)."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_function(
        "() => window.app && window.app.graph && window.app.extensionManager && document.querySelector('canvas')",
        timeout=timeout_ms,
    )
    close_dialogs(page)
    dismiss_banner(page)


def dismiss_banner(page: Any) -> None:
    """Closes the front end's announcement bar (its last button), which would cover screenshots."""
    page.evaluate(
        """() => {
            for (const button of document.querySelectorAll('button')) {
                if (button.textContent.trim()) continue;  // the close button is an icon
                let box = button.parentElement;
                for (let level = 0; box && level < 4; level++, box = box.parentElement) {
                    if (box.textContent.includes('Introducing ')) { button.click(); return; }
                }
            }
        }"""
    )


def toasts(page: Any) -> list[str]:
    """Texts of the notifications currently shown (validation alerts, errors)."""
    return page.locator(".p-toast-message").all_inner_texts()


def close_dialogs(page: Any, settle_ms: int = 1500, rounds: int = 20) -> None:
    """Closes dialogs until none has been open for `settle_ms` (the template browser opens late)."""
    quiet = 0
    for _ in range(rounds):
        dialogs = page.locator(".p-dialog:visible")
        if dialogs.count() == 0:
            quiet += 250
            if quiet >= settle_ms:
                return
            page.wait_for_timeout(250)
            continue
        quiet = 0
        # Only a visible button: newer front ends keep a hidden close button in some dialogs.
        close = dialogs.first.locator(
            "button[aria-label='Close'], .p-dialog-close-button, .p-dialog-header-close, button:has(> i.pi-times)"
        ).locator("visible=true")
        if close.count():
            close.first.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(300)
