"""Helpers of the browser tests: pages signed in as users, each in a browser of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from clienthelpers import NodeProcess

#: Screenshots of the main views (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


@attrs.define
class Browsers:
    """Opens pages signed in as users of one node; each in a context (a browser) of its own.

    Page errors (uncaught exceptions) and dialogs are recorded: a test ends with none.
    """

    browser: Any
    node: NodeProcess
    contexts: list[Any] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)
    dialogs: list[str] = attrs.Factory(list)

    def page(self, token: str, *, init_script: str | None = None) -> Any:
        context = self.browser.new_context()
        if init_script is not None:
            context.add_init_script(init_script)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", lambda dialog: self._on_dialog(dialog))
        page.goto(f"http://127.0.0.1:{self.node.port}/#token={token}")
        return page

    def blank(self) -> Any:
        context = self.browser.new_context()
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def screenshot(self, page: Any, name: str) -> None:
        """Save the page as test-artifacts/web/NAME.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def close(self) -> None:
        for context in self.contexts:
            context.close()
