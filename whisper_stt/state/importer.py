"""``whisper_server.py --import-keys api_keys.json --state-url redis://...``: move to Redis without
re-issuing keys. Copies the hashes, names, limits and usage totals, and the admin key's hash when Redis has
none yet; keys already in Redis are left as they are, so running it twice is harmless."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..keys import KeyStore, KeyStoreError

log = logging.getLogger(__name__)


async def import_keys(path: Path, state_url: str) -> tuple[int, int, bool]:
    """Returns (keys copied, keys already there, admin hash copied)."""
    from .redis_backend import RedisState

    store = KeyStore.open(path)
    target = RedisState(state_url)
    copied = skipped = 0
    try:
        for digest, rec in store.records():
            record = {"preview": rec.preview, "name": rec.name, "created_at": rec.created_at,
                      "limits": dict(rec.limits)}
            if await target.import_record(digest, record, (rec.usage or {}).get("total")):
                copied += 1
            else:
                skipped += 1
        admin = await target.import_admin_hash(store.admin_hash) if store.admin_hash else False
    finally:
        await target._redis.aclose()
    return copied, skipped, admin


def import_keys_main(file: str, state_url: str) -> int:
    from ..serve import configure_logging
    from .base import StateUnavailable

    configure_logging("info")
    path = Path(file)
    if not path.is_file():
        log.error("No key file at %s.", path)
        return 1
    try:
        copied, skipped, admin = asyncio.run(import_keys(path, state_url))
    except (KeyStoreError, StateUnavailable) as exc:
        log.error("%s", exc)
        return 1
    log.info("Imported %d key(s) from %s (%d already present)%s.", copied, path, skipped,
             "; the admin key too" if admin else "")
    return 0
