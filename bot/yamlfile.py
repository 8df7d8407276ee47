"""YAML files read safely, with the line of every key and list item, so that errors can point staff to a line.

Only `yaml.SafeLoader` is used (no tags, no code). Mappings come back as `LineDict` and lists as `LineList`,
which behave as dict and list and also know where each key or item stands in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A mapping read from YAML that remembers its own line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list read from YAML that remembers its own line and each item's line (1-based)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a knowledge or config file, phrased for the person who edits it."""

    file: str
    line: int
    where: str
    what: str
    fix: str
    level: str = "error"  # error | warning

    def __str__(self) -> str:
        tag = "" if self.level == "error" else "warning: "
        where = f"{self.where}: " if self.where else ""
        return f"{self.file}:{self.line}: {where}{tag}{self.what} ({self.fix})"


# libyaml's parser where PyYAML was built with it (8x faster on the FAQ: docs/performance.md); both are safe
# loaders (no tags, no code) and both give nodes their line marks.
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeBase):  # type: ignore[misc, valid-type]
    """A safe loader that records lines and refuses duplicate keys instead of silently keeping the last."""

    def __init__(self, stream: str, file: str, problems: list[Problem]) -> None:
        super().__init__(stream)
        self.file = file
        self.problems = problems


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            loader.problems.append(
                Problem(loader.file, line, "", "a key must be a plain word", "write the key as text")
            )
            continue
        if key in result:
            loader.problems.append(
                Problem(
                    loader.file,
                    line,
                    str(key),
                    f"key '{key}' appears twice in the same block (first on line {result.key_lines[key]})",
                    "keep one and delete the other",
                )
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def read(path: Path, shown_as: str, problems: list[Problem]) -> Any:
    """Read one YAML file; append every problem found to `problems` and return None when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(
            Problem(shown_as, 1, "", f"the file is not UTF-8 text ({exc.reason})", "save the file as UTF-8")
        )
        return None
    except OSError as exc:
        problems.append(Problem(shown_as, 1, "", f"cannot read the file: {exc.strerror}", "check the path"))
        return None
    tab_lines = [n for n, line in enumerate(text.splitlines(), 1) if "\t" in line[: len(line) - len(line.lstrip())]]
    for n in tab_lines:
        problems.append(
            Problem(shown_as, n, "", "tab character in the indentation", "YAML allows spaces only: use spaces")
        )
    loader = _Loader(text, shown_as, problems)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        if tab_lines:
            return None  # the tab is the cause; one clear message is better than two
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(filter(None, [exc.context, exc.problem]))
        problems.append(
            Problem(
                shown_as,
                line,
                "",
                f"YAML syntax error: {what}",
                "check indentation, a missing ':' or '-', and quote text that contains ': ' or starts with '{['",
            )
        )
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(shown_as, 1, "", f"YAML error: {exc}", "fix the file's YAML"))
        return None
    finally:
        loader.dispose()
