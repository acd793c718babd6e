"""Flags > WHISPER_* environment > defaults; the original's flag names and defaults."""

from __future__ import annotations

import pytest

from whisper_stt.cli import parse


def test_defaults_match_the_original(monkeypatch):
    for name in ("ADMIN_KEY", "WHISPER_MODE", "WHISPER_WS_PORT", "WHISPER_MAX_CONNECTIONS"):
        monkeypatch.delenv(name, raising=False)
    s, gen = parse([])
    assert (s.mode, s.ws_port, s.wss_port) == ("both", 8765, 8766)
    assert (str(s.ssl_key), str(s.ssl_cert), str(s.debug_dir)) == ("key.pem", "cert.pem", "debug_audio")
    assert s.debug is False and s.auth_enabled and s.admin_key is None and gen is None
    assert (s.model, s.device, s.compute_type, str(s.models_dir)) == ("base", "auto", "auto", "models")
    assert (s.max_connections, s.max_upload_bytes, s.max_audio_buffer_s, s.idle_timeout_s) == \
        (200, 100 * 1024 * 1024, 300, 600)


def test_flags_beat_environment_beats_defaults(monkeypatch):
    monkeypatch.setenv("WHISPER_WS_PORT", "9001")
    monkeypatch.setenv("WHISPER_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("WHISPER_MODEL", "small")
    monkeypatch.setenv("ADMIN_KEY", "from-env")
    s, _ = parse(["--ws-port", "8000", "--mode", "ws"])
    assert s.ws_port == 8000 and s.mode == "ws"
    assert s.max_connections == 50 and s.model == "small"
    assert s.admin_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(s)  # secrets stay out of reprs and logs
    s, _ = parse(["--admin-key", "from-flag", "--no-auth", "--debug", "--debug-dir", "/tmp/d"])
    assert s.admin_key.get_secret_value() == "from-flag" and not s.auth_enabled and s.debug


def test_generate_key_flag():
    assert parse(["--generate-key"])[1] == "generated"
    assert parse(["--generate-key", "mobile"])[1] == "mobile"


@pytest.mark.parametrize("argv", [["--ws-port", "0"], ["--mode", "udp"], ["--max-connections", "-1"],
                                  ["--ws-port", "abc"], ["--log-level", "loud"]])
def test_bad_values_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_admin_key_from_a_secret_file(tmp_path, monkeypatch, capsys):
    """Containers mount secrets as files: WHISPER_ADMIN_KEY_FILE / --admin-key-file name one."""
    for name in ("ADMIN_KEY", "WHISPER_ADMIN_KEY", "ADMIN_KEY_FILE", "WHISPER_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    secret = tmp_path / "admin_key"
    secret.write_text("sk-from-file\n")  # `echo key > file` leaves a newline
    s, _ = parse(["--admin-key-file", str(secret)])
    assert s.admin_key.get_secret_value() == "sk-from-file"
    assert "sk-from-file" not in repr(s)
    monkeypatch.setenv("WHISPER_ADMIN_KEY_FILE", str(secret))
    assert parse([])[0].admin_key.get_secret_value() == "sk-from-file"

    (tmp_path / "empty").write_text(" \n")
    for argv, expect in ((["--admin-key", "sk-other"], "not both"),
                         (["--admin-key-file", str(tmp_path / "missing")], "cannot read"),
                         (["--admin-key-file", str(tmp_path / "empty")], "is empty")):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expect in err and "admin-key-file" in err, err
        assert "sk-from-file" not in err and "Traceback" not in err
