"""The example plugin package: its kind works in a worker and its entry point is found."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tests.procs import ROOT
from tests.worker.conftest import Rig
from worker.kinds import KindCatalog

EXAMPLE = ROOT / "examples" / "bot-kind-example"


def declared_kinds() -> dict[str, str]:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    return dict(project["project"]["entry-points"]["chat_gateway.bot_kinds"])


@pytest.fixture
def shout(monkeypatch: pytest.MonkeyPatch) -> type:
    """The example's kind class, loaded through the entry point it declares."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    [(name, target)] = declared_kinds().items()
    assert name == "shout"
    return EntryPoint(name, target, "chat_gateway.bot_kinds").load()


async def test_example_kind_streams_and_answers(rig: Rig, shout: type) -> None:
    """The shout kind reports thinking, streams words as deltas and answers in capitals."""
    assert shout.validate_config({}) == {"suffix": "!"}
    with pytest.raises(ValueError, match=r"config\.suffix"):
        shout.validate_config({"suffix": 5})
    await rig.worker(catalog=KindCatalog(extra={"shout": shout}))
    bot = await rig.bot("shout", {"suffix": "!!"})
    message = await rig.send(bot, "quiet words")
    await rig.wait_finished(bot, message)
    assert [r["text"] for r in rig.replies(bot)] == ["QUIET WORDS!!"]
    assert "".join(d["text"] for d in rig.of(bot, "delta")) == "QUIET WORDS"
    assert rig.states(bot, message) == ["processing", "thinking", "done"]


def test_installed_example_is_discovered(tmp_path: Path) -> None:
    """Once its distribution metadata is on the path, gateway and worker both know the new kind."""
    shutil.copytree(EXAMPLE / "chat_shout", tmp_path / "chat_shout")
    info = tmp_path / "chat_shout-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chat-shout\nVersion: 0.1.0\n")
    lines = [f"{name} = {target}" for name, target in declared_kinds().items()]
    (info / "entry_points.txt").write_text("[chat_gateway.bot_kinds]\n" + "\n".join(lines) + "\n")
    script = (
        "from shared.kinds import available_kinds, validate_config\n"
        "from worker.kinds import KindCatalog\n"
        "print(available_kinds(), validate_config('shout', {}), type(KindCatalog().get('shout')).__name__)\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['echo', 'openai', 'shout', 'webhook'] {'suffix': '!'} ShoutKind"
