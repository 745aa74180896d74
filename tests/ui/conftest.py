"""Fixtures for the pages: a browser-like client (cookies, CSRF token read from the form) on
the in-process app, signed in as one of the world's users."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import PASSWORD, World

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: the httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

from blo_vault.api.app import create_app

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """One browser: its own cookie jar, following no redirects, reading CSRF tokens from the
    pages it gets."""

    def __init__(self, client: TestClient, language: str = "en") -> None:
        self.client = client
        self.client.headers["Accept-Language"] = language

    def csrf(self, path: str = "/ui/signin") -> str:
        """The CSRF token of the session, as a page's form carries it."""
        page = self.client.get(path)
        found = CSRF.search(page.text)
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    def sign_in(self, username: str, password: str = PASSWORD) -> None:
        """Sign in through the form; asserts it worked."""
        token = self.csrf()
        answer = self.client.post(
            "/ui/signin",
            data={"csrf": token, "username": username, "password": password},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        assert "/signin" not in answer.headers["location"]

    def post(self, path: str, data: dict[str, str], *, csrf_from: str) -> httpx.Response:
        """Post a form with the session's CSRF token (read from ``csrf_from``)."""
        answer: httpx.Response = self.client.post(
            path, data={"csrf": self.csrf(csrf_from), **data}, follow_redirects=False
        )
        return answer


@pytest.fixture
def app_client(world: World) -> Iterator[TestClient]:
    """The app of the world's vault, in process (served over http://testserver)."""
    with TestClient(create_app(vault=world.vault)) as client:
        yield client


@pytest.fixture
def browser(world: World) -> Iterator[Browser]:
    """A fresh browser on the world's app (each its own cookies)."""
    with TestClient(create_app(vault=world.vault)) as client:
        yield Browser(client)
