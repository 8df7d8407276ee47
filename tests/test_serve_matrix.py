"""`serve` with a config whose Matrix homeserver is a local Synapse: it answers a resident, /mydata and /forget
work over Matrix, and after a restart it does not answer old messages again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_matrix import Bot, Resident, bounded, new_user, synapse  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]


def start_serve(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "MATRIX_PASSWORD": cfg.with_suffix(".pw").read_text(), "MATRIX_PICKLE_KEY": "pickle",
           "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.Popen([sys.executable, str(ROOT / "run_bot.py"), "--config", str(cfg), "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stop_serve(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_serve_on_a_local_synapse(synapse, tmp_path):  # noqa: F811
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    cfg = tmp_path / "city.yaml"
    cfg.with_suffix(".pw").write_text(bot_password)
    cfg.write_text(f"city: amsterdam\ndata: data\nchannels:\n  matrix:\n    homeserver: {synapse.url}\n"
                   f"    user_id: \"{bot_id}\"\n    password: ${{MATRIX_PASSWORD}}\n"
                   "    pickle_key: ${MATRIX_PICKLE_KEY}\n")
    timings: list[float] = []
    rooms: list[str] = []

    async def scenario() -> None:
        placeholder = Bot(synapse, tmp_path / "unused", bot_id, bot_password)  # only names the bot's id
        serve = start_serve(cfg)
        try:
            async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", placeholder) as res:
                rooms.append(await res.open_direct_chat())
                await res.wait_for_join()
                await res.say("/language en")
                started = time.monotonic()
                await res.replies(1)
                timings.append(time.monotonic() - started)
                await res.say("/mydata")
                got = await res.replies(3)  # the note, the summary, the data as an encrypted JSON file
                assert got[2]["msgtype"] == "m.file" and got[2]["body"] == "my-data.json"
                assert "url" not in got[2] and got[2]["file"]["url"].startswith("mxc://")  # ciphertext on the server
                export = json.loads(got[2]["data"])
                assert export["profile"]["language"] == "en" and export["conversation"]
                stop_serve(serve)

                serve = start_serve(cfg)  # a restart: nothing old is answered again
                await res.say("/help")
                (help_reply,) = await res.replies(1)
                assert "/menu" in help_reply["body"]
                await asyncio.sleep(2)  # bounded: give a wrongly repeated answer the time to show up
                assert res.inbox.empty(), "the restarted bot answered an old message again"

                await res.say("/forget")
                await res.replies(1)
                await res.say("1")
                (done,) = await res.replies(1)
                assert "erased everything" in done["body"]
        finally:
            if serve.poll() is None:
                stop_serve(serve)

    asyncio.run(scenario())
    files = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("rightsdesk.db*"))
    assert rooms[0].encode() not in files  # after /forget nothing names the resident's conversation
    print(f"first answer after {timings[0]:.2f} s")  # a figure for the notes, not an assertion
