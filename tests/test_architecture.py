"""The core stays pure: bot/ imports nothing from adapters/, telegram or nio, and does no network I/O."""

from __future__ import annotations

import ast
from pathlib import Path

BOT = Path(__file__).resolve().parents[1] / "bot"
FORBIDDEN = ("adapters", "telegram", "nio", "aiohttp", "httpx", "socket", "smtplib", "urllib.request", "requests")


def test_bot_imports_no_adapter_or_network_module():
    offenders = []
    for path in BOT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
