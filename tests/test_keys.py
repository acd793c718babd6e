"""Key store and the auth rules of REST and admin routes."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from whisper_stt.keys import KeyStore, KeyStoreError, hash_key


def test_first_start_creates_admin_and_default_key(tmp_path):
    store = KeyStore.open(tmp_path / "api_keys.json")
    created = store.bootstrap()
    assert set(created) == {"admin", "api"}
    for key in created.values():
        assert key.startswith("sk-") and len(key) == 51 and int(key[3:], 16) >= 0
    raw = (tmp_path / "api_keys.json").read_text()
    # only hashes on disk, never the key values
    assert created["api"] not in raw and created["admin"] not in raw
    assert hash_key(created["api"]) in raw and hash_key(created["admin"]) in raw
    assert stat.S_IMODE(os.stat(tmp_path / "api_keys.json").st_mode) == 0o600
    # a second start creates nothing and still knows both keys
    again = KeyStore.open(tmp_path / "api_keys.json")
    assert again.bootstrap() == {}
    assert again.verify(created["api"]) and again.verify_admin(created["admin"])
    assert not again.verify(created["admin"]) and not again.verify_admin(created["api"])


def test_given_admin_key_is_not_stored(tmp_path):
    store = KeyStore.open(tmp_path / "k.json")
    created = store.bootstrap(admin_key="my-admin-secret")
    assert "admin" not in created and "api" in created
    assert store.verify_admin("my-admin-secret") and not store.verify_admin("my-admin-secre")
    assert "my-admin-secret" not in (tmp_path / "k.json").read_text()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"keys": 5}', '{"keys": [{"sha256": "abc", "preview": "x"}]}', ""])
def test_corrupt_file_refuses_to_start(tmp_path, content):
    path = tmp_path / "api_keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore.open(path)
    assert path.read_text() == content  # never overwritten


def test_plain_text_file_is_migrated_to_hashes(tmp_path):
    path = tmp_path / "api_keys.json"
    old_key = "sk-" + "1" * 48
    path.write_text(json.dumps({"admin_key": "sk-" + "2" * 48,
                                "keys": {old_key: {"name": "legacy", "created_at": "2025-01-01"}}}))
    store = KeyStore.open(path)
    assert store.verify(old_key) and store.verify_admin("sk-" + "2" * 48)
    assert old_key not in path.read_text()
    assert store.list()[0]["name"] == "legacy" and store.list()[0]["preview"] == "sk-1111...1111"


def test_concurrent_generation_loses_no_key(tmp_path):
    store = KeyStore.open(tmp_path / "k.json")
    store.bootstrap()
    keys: list[str] = []

    def work():
        for _ in range(10):
            keys.append(store.generate("t"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reloaded = KeyStore.open(tmp_path / "k.json")
    assert len(reloaded) == 81
    assert all(reloaded.verify(k) for k in keys)
    assert not list(tmp_path.glob(".k.json.*"))  # no temp files left behind


def test_usage_counts_are_persisted_on_flush(tmp_path):
    store = KeyStore.open(tmp_path / "k.json", flush_interval=3600)
    key = store.bootstrap()["api"]
    for _ in range(3):
        assert store.verify(key)
    store.flush()
    rec = KeyStore.open(tmp_path / "k.json").list()[0]
    assert rec["request_count"] == 3 and rec["last_used"]


# --- over HTTP ---------------------------------------------------------------------------------

def test_rest_auth_rules(client, app_handle):
    assert client.get("/stats").status_code == 401
    assert client.get("/stats", headers={"X-API-Key": "sk-" + "0" * 48}).status_code == 403
    assert client.get("/stats", headers=app_handle.auth).status_code == 200
    assert client.get("/stats", headers={"Authorization": f"Bearer {app_handle.api_key}"}).status_code == 200
    assert client.get("/stats", headers={"Authorization": "Bearer sk-nope"}).status_code == 403
    r = client.post("/transcribe", files={"file": ("a.wav", b"x")})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = client.post("/transcribe/base64", json={"audio": "AAAA"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 403
    # open endpoints
    assert client.get("/").status_code == 200 and client.get("/health").status_code == 200


def test_no_auth_mode(make_app):
    handle = make_app(no_auth=True)
    with handle.client() as c:
        assert c.get("/stats").status_code == 200
        assert c.get("/").json()["auth_enabled"] is False
        assert c.get("/admin/keys").status_code == 403  # admin stays protected


def test_admin_endpoints(client, app_handle):
    admin = app_handle.admin
    assert client.get("/admin/keys").status_code == 403
    assert client.get("/admin/keys", headers={"X-Admin-Key": app_handle.api_key}).status_code == 403
    assert client.post("/admin/keys/generate?name=x", headers={"X-Admin-Key": "bad"}).status_code == 403

    r = client.post("/admin/keys/generate?name=mobile-app", headers=admin)
    assert r.status_code == 200
    new = r.json()["api_key"]
    assert r.json()["name"] == "mobile-app" and new.startswith("sk-") and len(new) == 51
    assert client.get("/stats", headers={"X-API-Key": new}).status_code == 200

    listing = client.get("/admin/keys", headers=admin).json()
    assert listing["total"] == 2 == len(listing["keys"])
    text = json.dumps(listing)
    assert new not in text and app_handle.api_key not in text  # masked
    entry = next(k for k in listing["keys"] if k["name"] == "mobile-app")
    assert entry["preview"] == f"{new[:7]}...{new[-4:]}"
    assert {"name", "preview", "created_at", "last_used", "request_count"} <= set(entry)
    assert entry["request_count"] == 1

    assert client.delete(f"/admin/keys/{new}", headers=admin).status_code == 200
    assert client.get("/stats", headers={"X-API-Key": new}).status_code == 403
    assert client.delete(f"/admin/keys/{new}", headers=admin).status_code == 404
    # revoke by the id shown in the list (for a key whose value was lost)
    other = client.get("/admin/keys", headers=admin).json()["keys"][0]
    assert client.delete(f"/admin/keys/{other['id']}", headers=admin).status_code == 200
    assert client.get("/admin/keys", headers=admin).json()["total"] == 0
