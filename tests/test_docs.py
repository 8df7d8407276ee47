"""Documentation that tests enforce: every command and every knowledge key is documented, and the deployment
examples are valid configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import run_bot
from bot import config as configlib
from bot import flows, knowledge

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_documented_in_cli_md():
    cli = (ROOT / "docs/cli.md").read_text()
    for command in run_bot.COMMANDS:
        assert f"`{command}" in cli, command


def test_every_knowledge_key_is_in_schema_md():
    schema = (ROOT / "knowledge/SCHEMA.md").read_text()
    keys = (knowledge.TOPIC_KEYS | knowledge.WORD_KEYS | knowledge.CITY_KEYS | knowledge.OFFICE_NAMES
            | knowledge.OFFICE_KEYS | knowledge.HOLIDAY_KEYS | flows.FLOW_KEYS | flows.STEP_KEYS | flows.OPTION_KEYS | knowledge.OUTSIDE_KEYS)
    missing = sorted(k for k in keys if f"`{k}`" not in schema)
    assert missing == []


def test_every_config_key_is_in_deploy_md():
    deploy = (ROOT / "docs/deploy.md").read_text()
    missing = sorted(k for k in configlib.KEYS | configlib.DELIVERY_KEYS if f"`{k}`" not in deploy)
    assert missing == []


EXAMPLES = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs/deploy.md").read_text(), re.S)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_the_deployment_examples_are_valid(example, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(example)
    env = {name: "x" * 20 for name in re.findall(r"\$\{(\w+)\}", example)}
    cfg = configlib.load(path, env)
    assert cfg.city in ("amsterdam", "barcelona", "nyc")
    from adapters.inboxes.registry import build

    build(dict(cfg.inboxes), tmp_path)
    assert len(EXAMPLES) == 3
