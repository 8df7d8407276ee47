"""`run_bot.py serve` as a deployment runs it: a config file, a channel, SIGTERM for a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .peers.telegram_api import BotAPI

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "123456:TEST-token"


def config(tmp_path: Path, api: BotAPI, token: str = "${TG_TOKEN}") -> Path:
    path = tmp_path / "rightsdesk.yaml"
    path.write_text(f"city: barcelona\ndata: data\nchannels:\n  telegram:\n    token: \"{token}\"\n"
                    f"    base_url: {api.base_url}\n")
    return path


def start(cfg: Path, env_token: str | None = TOKEN) -> subprocess.Popen:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "RIGHTSDESK_LOG_LEVEL": "INFO"}
    if env_token is not None:
        env["TG_TOKEN"] = env_token
    return subprocess.Popen([sys.executable, str(ROOT / "run_bot.py"), "--config", str(cfg), "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def api():
    with BotAPI(TOKEN) as server:
        yield server


def test_serve_answers_on_telegram_and_stops_cleanly_on_sigterm(tmp_path, api):
    proc = start(config(tmp_path, api))
    try:
        api.text(42, "/start")
        api.wait(lambda: len(api.sent(42)) >= 1, timeout=60)
        assert "Barcelona" in api.sent(42)[0].params["text"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "/start" not in err  # logs carry no message text
    assert (tmp_path / "data" / "rightsdesk.db").exists()


def test_serve_refuses_a_missing_secret_naming_the_key_and_the_variable(tmp_path, api):
    proc = start(config(tmp_path, api), env_token=None)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "channels.telegram.token: environment variable TG_TOKEN is not set" in err


def test_serve_stops_with_a_clear_error_on_a_bad_token(tmp_path, api):
    proc = start(config(tmp_path, api, token="999:wrong"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "channels.telegram.token" in err and "999:wrong" not in err


def test_serve_without_channels_points_to_chat(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("city: nyc\n")
    out = subprocess.run([sys.executable, str(ROOT / "run_bot.py"), "--config", str(path), "serve"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "has no channels" in out.stderr and "chat" in out.stderr
