"""Every ApiClient method that puts an id in a URL path refuses one that would change the path
(``..``, ``/``, ``?``, ``#``) before anything is sent: a command can't be steered to another
route by the id it was given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from blo_vault.cli.client import ApiClient
from tests.conftest import free_port
from vault.errors import InvalidInput, StorageUnavailable

PLAIN = "0123456789abcdef0123456789abcdef"

CALLS: dict[str, Callable[[ApiClient, str], Any]] = {
    "show": lambda c, i: c.show(i),
    "release": lambda c, i: c.release(i, country="KZ"),
    "request_release": lambda c, i: c.request_release(i, country="KZ"),
    "approve_release": lambda c, i: c.approve_release(i),
    "reject_release": lambda c, i: c.reject_release(i),
    "revoke_release (package)": lambda c, i: c.revoke_release(i, PLAIN),
    "revoke_release (release)": lambda c, i: c.revoke_release(PLAIN, i),
    "acknowledge": lambda c, i: c.acknowledge(i),
    "audit": lambda c, i: c.audit(i),
    "file_chunks (package)": lambda c, i: list(c.file_chunks(i, PLAIN)),
    "file_chunks (file)": lambda c, i: list(c.file_chunks(PLAIN, i)),
}


@pytest.fixture
def client() -> ApiClient:
    """A client of a loopback port nothing listens on: a request that is sent fails to connect."""
    return ApiClient(f"http://127.0.0.1:{free_port()}", "token", timeout=2.0)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("bad_id", ["..", "a/b", "../auth/logout", "x?limit=1", "x#y", ""])
def test_an_id_that_would_change_the_path_is_refused_before_sending(
    client: ApiClient, call: Callable[[ApiClient, str], Any], bad_id: str
) -> None:
    with client, pytest.raises(InvalidInput, match="not a valid id"):
        call(client, bad_id)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_plain_id_is_sent(client: ApiClient, call: Callable[[ApiClient, str], Any]) -> None:
    # The control: the same call with a plain id does reach the network (and finds no server).
    with client, pytest.raises(StorageUnavailable):
        call(client, PLAIN)


def test_the_client_reads_responses_in_pieces_of_256_kib() -> None:
    """httpcore's 64 KiB reads made a 1 GiB download some 16,000 reads and h11 events."""
    import httpcore

    import blo_vault.cli.client  # noqa: F401 - sets the read size on import

    assert httpcore.HTTP11Connection.READ_NUM_BYTES == 256 * 1024
