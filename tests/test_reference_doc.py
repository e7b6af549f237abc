"""docs/reference.md against the code: every config key, command, MLLOG key, performance
variable and perflog column the code defines is documented.

The config key tables are generated from the schema; ``python3 tests/test_reference_doc.py``
rewrites them in place after a key was added, removed or changed.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

from benchmarks.cli import BENCHMARKS, build_parser, load_spec  # noqa: E402
from benchmarks.core import constants  # noqa: E402
from benchmarks.core.config import (  # noqa: E402
    SECTIONS,
    ConfigSchema,
    DataConfig,
    config_keys,
    section_types,
)
from perflogs_parsers import formats  # noqa: E402

REFERENCE = REPO / "docs" / "reference.md"
BEGIN, END = "<!-- config keys: generated -->", "<!-- config keys: end -->"


def _default(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _table(keys: list) -> list[str]:
    rows = ["| key | type | accepts | default |", "|---|---|---|---|"]
    rows += [f"| `{k.key}` | {k.type} | {k.accepts} | {_default(k.default)} |" for k in keys]
    return rows


def config_tables() -> str:
    """The markdown of every config key: the common sections once, then per benchmark the
    keys it adds to ``data`` and its ``model`` section."""
    common = ConfigSchema(data=DataConfig)
    lines = ["### Keys of every benchmark", ""]
    lines += _table([key for section, cls in section_types(common).items() if cls is not dict
                     for key in config_keys(cls(), section)])
    shared = {f"data.{f.name}" for f in dataclasses.fields(DataConfig)}
    for name in BENCHMARKS:
        schema = load_spec(name).schema
        keys = [key for key in config_keys(schema.data(), "data") if key.key not in shared]
        keys += config_keys(schema.model(), "model")
        lines += ["", f"### `{name}`", ""] + _table(keys)
    return "\n".join(lines)


def _generated_block(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def test_config_tables_match_the_schema():
    assert _generated_block(REFERENCE.read_text()) == config_tables(), (
        "docs/reference.md is out of date: run python3 tests/test_reference_doc.py")


def test_every_section_is_described():
    text = REFERENCE.read_text()
    assert all(f"`{section}`" in text for section in SECTIONS)


def test_every_command_and_exit_code_is_documented():
    text = REFERENCE.read_text()
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, subparser in commands.choices.items():
        assert f"mlbench {name}" in text
        for action in subparser._actions:
            if action.dest == "perflogs_action":
                assert all(f"mlbench perflogs {a}" in text for a in action.choices)
            assert all(option in text for option in action.option_strings if option != "-h"
                       and option != "--help")
    for code in range(4):
        assert re.search(rf"^\| {code} \|", text, re.MULTILINE)


def test_every_project_mllog_key_is_documented():
    text = REFERENCE.read_text()
    keys = [value for name, value in vars(constants).items()
            if name.isupper() and isinstance(value, str)
            and (value.startswith("mlbench_") or value.startswith("staging_"))]
    assert keys and [key for key in keys if f"`{key}`" not in text] == []
    assert all(f"`{field}`" in text for field in constants.ENVIRONMENT_FIELDS)


def test_every_performance_variable_and_perflog_column_is_documented():
    text = REFERENCE.read_text()
    missing = [name for name in (*formats.PERFORMANCE_VARIABLES, *formats.PERFLOG_LEADING_COLUMNS)
               if f"`{name}`" not in text]
    assert missing == []


if __name__ == "__main__":
    text = REFERENCE.read_text()
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    REFERENCE.write_text(f"{before}{BEGIN}\n{config_tables()}\n{END}{after}")
    print(f"rewrote the config key tables of {REFERENCE}")
