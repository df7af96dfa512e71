"""The import rules of the product, read from the source with ``ast`` (nothing is imported).

Data flows one way (gateway -> Redis -> worker -> Redis -> gateway), so neither side may import
the other; ``shared`` is the leaf both stand on. The pure modules are the ones unit tests drive
without a loop, a socket or a Redis: they must not pull aiohttp or redis in, not even through
another product module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("gateway", "worker", "shared")
NEVER = ("bench", "tests")  # the product runs without its benchmarks and tests installed
IO = frozenset({"aiohttp", "redis"})

# The pure modules and what each may not import. Keep every pure module here, in one place.
# An entry whose file does not exist yet is skipped; a typo is caught by test_pure_modules_exist.
PURE: dict[str, frozenset[str]] = {
    "shared/protocol.py": IO,
    "shared/client_frames.py": IO,
    "shared/packets.py": IO,
    "shared/control.py": IO,
    "shared/models.py": IO,
    "shared/errors.py": IO,
    "shared/keys.py": IO,
    "shared/redis_url.py": IO,
    "gateway/principal.py": IO,
    "gateway/claims.py": IO,
    "gateway/session.py": IO | {"asyncio"},  # sans-I/O: timers are effects the connection carries out
    "gateway/memberships.py": IO | {"asyncio"},  # the session's rooms: as pure as the session
    "gateway/events.py": IO | {"asyncio"},  # what goes into and comes out of the session
    "shared/server_frames.py": IO,
    "gateway/ratelimit.py": IO,
    "gateway/typing_timers.py": IO,
}
NOT_WRITTEN_YET = frozenset({"shared/redis_url.py"})  # Redis URL parsing moves there (issue 10)


class Import(NamedTuple):
    module: str  # dotted name, relative imports resolved
    line: int
    names: tuple[str, ...] = ()  # of ``from module import ...``: each may be a submodule

    def candidates(self) -> list[str]:
        """The modules this import may load: ``a`` and, for ``from a import b``, ``a.b``."""
        return [self.module, *(f"{self.module}.{name}" for name in self.names)]


def module_name(path: str) -> str:
    """``gateway/app.py`` -> ``gateway.app``; a package's ``__init__.py`` is the package."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: str, source: str) -> Iterator[Import]:
    """Every module ``source`` imports, anywhere in it: top level, functions, TYPE_CHECKING blocks.

    A call of ``import_module``
    or ``__import__`` with a literal name counts too, so the rules cannot be dodged by a string.
    """
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            yield from (Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(base, node.lineno, tuple(alias.name for alias in node.names if alias.name != "*"))
        elif isinstance(node, ast.Call) and _called_name(node.func) in ("import_module", "__import__"):
            name = _literal(node.args[0]) if node.args else None
            if name is not None:
                yield Import(name, node.lineno)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _top(module: str) -> str:
    return module.split(".")[0]


def forbidden_tops(path: str) -> frozenset[str]:
    """Top-level packages the file at ``path`` may not import, by the layering rules."""
    own = path.split("/")[0]
    banned = set(NEVER)
    if own == "gateway" and path != "gateway/__main__.py":  # __main__ is the composition root
        banned.add("worker")
    elif own == "worker":
        banned.add("gateway")
    elif own == "shared":
        banned |= {"gateway", "worker"}
    return frozenset(banned)


def layer_violations(path: str, source: str) -> list[str]:
    """``file:line imports module`` for each import breaking the layering rules."""
    banned = forbidden_tops(path)
    found = {f"{path}:{i.line} imports {i.module}" for i in imports_of(path, source) if _top(i.module) in banned}
    return sorted(found)


def purity_violations(path: str, sources: dict[str, str]) -> list[str]:
    """For a pure module: each forbidden import it makes, directly or through product modules.

    ``sources`` maps product file paths to their text; an indirect hit names the chain of files.
    """
    banned = PURE[path]
    files = {module_name(p): p for p in sources}
    found: list[str] = []
    seen = {path}
    todo = [(path, [path])]
    while todo:
        current, chain = todo.pop()
        for i in imports_of(current, sources[current]):
            via = " -> ".join(chain)
            if _top(i.module) in banned:
                found.append(f"{via}:{i.line} imports {i.module}")
            for target in (files[name] for name in i.candidates() if name in files):
                if target not in seen:
                    seen.add(target)
                    todo.append((target, [*chain[:-1], f"{chain[-1]}:{i.line}", target]))
    return sorted(set(found))


def product_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for package in PRODUCT for p in (ROOT / package).rglob("*.py"))


def product_sources() -> dict[str, str]:
    return {path: (ROOT / path).read_text(encoding="utf-8") for path in product_files()}


@pytest.mark.parametrize("path", product_files())
def test_layers(path: str) -> None:
    """Gateway and worker never import each other, shared neither, and nobody imports bench or tests."""
    assert layer_violations(path, (ROOT / path).read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", [path for path in PURE if (ROOT / path).exists()])
def test_pure_module(path: str) -> None:
    """A pure module imports neither aiohttp nor redis (nor asyncio for the session), even indirectly."""
    assert purity_violations(path, product_sources()) == []


def test_pure_modules_exist() -> None:
    """Every listed pure module is a real file, except those announced as not written yet."""
    missing = {path for path in PURE if not (ROOT / path).exists()}
    assert missing <= NOT_WRITTEN_YET


def test_layer_check_catches_a_forbidden_import() -> None:
    """The checker names file and line of worker imports in the gateway, hidden in a function or a string."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from worker.runner import Worker\n"
        "def start():\n"
        "    import worker.embedded\n"
        "    return importlib.import_module('worker.embedded')\n"
        "from . import node\n"
    )
    assert layer_violations("gateway/app.py", source) == [
        "gateway/app.py:3 imports worker.runner",
        "gateway/app.py:5 imports worker.embedded",
        "gateway/app.py:6 imports worker.embedded",
    ]
    assert layer_violations("gateway/__main__.py", source) == []
    assert layer_violations("shared/keys.py", "from ..gateway import app\nimport tests.conftest\n") != []
    assert layer_violations("worker/runner.py", "from gateway.auth import mint_token\n") == [
        "worker/runner.py:1 imports gateway.auth"
    ]


def test_purity_check_follows_product_imports() -> None:
    """A pure module importing a product module that imports aiohttp fails, naming the chain."""
    sources = {
        "shared/keys.py": "from shared import helper\n",
        "shared/helper.py": "import os\n\ndef f():\n    from redis.asyncio import Redis\n",
    }
    assert purity_violations("shared/keys.py", sources) == [
        "shared/keys.py:1 -> shared/helper.py:4 imports redis.asyncio"
    ]
    assert purity_violations("gateway/session.py", {"gateway/session.py": "import asyncio\n"}) == [
        "gateway/session.py:1 imports asyncio"
    ]
