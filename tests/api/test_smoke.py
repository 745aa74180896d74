"""The walking skeleton through the real HTTP stack: login, upload, release, download."""

from __future__ import annotations

import json

import httpx

from tests.conftest import PASSWORD, MultipartFiles, World


def _token(client: httpx.Client, user: str) -> dict[str, str]:
    reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_upload_release_download_over_http(world: World, live_server: str) -> None:
    with httpx.Client(base_url=live_server) as client:
        uz = _token(client, "uz.officer")
        files: MultipartFiles = [
            ("metadata", (None, json.dumps({"title": "Seizure at Oybek"}), "application/json")),
            ("file", ("report.txt", b"15 kg heroin", "text/plain")),
        ]
        up = client.post("/packages", files=files, headers=uz)
        assert up.status_code == 201, up.text
        package = up.json()["package"]
        assert int(up.headers["X-Vault-Receipt"]) == up.json()["receipt"]

        kz = _token(client, "kz.officer")
        assert client.get(f"/packages/{package['id']}", headers=kz).status_code == 404
        rel = client.post(f"/packages/{package['id']}/releases", json={"country": "KZ"}, headers=uz)
        assert rel.status_code == 201, rel.text
        file_id = package["files"][0]["id"]
        got = client.get(f"/packages/{package['id']}/files/{file_id}", headers=kz)
        assert got.status_code == 200
        assert got.content == b"15 kg heroin"
        assert got.headers["X-Content-SHA256"] == package["files"][0]["sha256"]
