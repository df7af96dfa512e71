"""The reference docs stay in step with the code they describe."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from shared import protocol
from shared.errors import CloseCode, ErrorCode
from shared.keys import Keys
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
STALE = "docs/configuration.md is out of date: run python scripts/gen_config_doc.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """scripts/gen_config_doc.py loaded as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "scripts" / "gen_config_doc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of one ``## heading`` section."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_configuration_doc_matches_settings(generator: ModuleType) -> None:
    """docs/configuration.md holds exactly the settings table the generator writes from the code."""
    current = _read("configuration.md")
    assert generator.render(current) == current, STALE


def test_settings_table_lists_each_setting_once(generator: ModuleType) -> None:
    """The generated table has one row per setting, named by its environment variable."""
    table = generator.settings_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`CHAT_" in line]
    assert len(rows) == len(Settings.options())
    for _, option in Settings.options():
        assert table.count(f"`{option.env}`") == 1, option.env


def test_render_replaces_only_the_marked_table(generator: ModuleType) -> None:
    """The generator rewrites the text between its markers and keeps the prose around them."""
    document = f"intro\n{generator.BEGIN}\nstale rows\n{generator.END}\noutro\n"
    rendered = generator.render(document)
    assert rendered.startswith(f"intro\n{generator.BEGIN}\n| flag |")
    assert rendered.endswith(f"\n{generator.END}\noutro\n")
    assert "stale rows" not in rendered
    assert generator.render(rendered) == rendered


def test_protocol_doc_covers_frames_and_codes() -> None:
    """docs/protocol.md documents every client frame type, error code and close code."""
    text = _read("protocol.md")
    missing = [kind for kind in protocol.CLIENT_TYPES if f"`{kind}`" not in text]
    missing += [code.value for code in ErrorCode if f"`{code.value}`" not in _section(text, "Error codes")]
    closes = _section(text, "Close codes")
    missing += [str(int(code)) for code in CloseCode if str(int(code)) not in closes]
    assert missing == []


def test_architecture_doc_lists_every_redis_name() -> None:
    """docs/architecture.md names every key and channel that shared/keys.py builds."""
    keys = Keys("chat")
    names = []
    for attribute, function in inspect.getmembers(Keys, inspect.isfunction):
        if attribute.startswith("_"):
            continue
        parameters = list(inspect.signature(function).parameters)[1:]
        names.append(getattr(keys, attribute)(*(f"<{p}>" for p in parameters)))
    section = _section(_read("architecture.md"), "Redis keys")
    assert [name for name in names if f"`{name}`" not in section] == []
