"""The arrows point one way (issue 17): read every module's imports from its syntax tree, then check
the rules. A new import that breaks one fails here, with the module and the import named."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "provisioner", "cards")
PLATFORM_SDKS = ("aiohttp", "botbuilder", "botframework", "azure", "aiobotocore", "botocore", "boto3", "msal", "msrest")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, runtime_only: bool) -> set[str]:
    """Absolute module names imported anywhere in the file (functions included); with `runtime_only`,
    not those under `if TYPE_CHECKING:` (they never run, so they make no cycle and load no SDK)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _ours(imported: set[str]) -> set[str]:
    return {name for name in imported if name in MODULES}


def _is_under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_tree_was_read():
    assert {"bot.engine.service", "bot.engine.policy", "bot.store.ports", "bot.settings", "provisioner.base", "cards.model"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_under(m, "bot.engine", "bot.store.ports", "bot.store.model", "bot.settings")))
def test_the_engine_store_ports_and_settings_load_no_platform_sdk(module):
    """Not directly, and not through any module of ours they load (imports inside TYPE_CHECKING do not run)."""
    seen, todo, sdks = {module}, [module], set()
    while todo:
        current = todo.pop()
        imported = _imports(MODULES[current], runtime_only=True)
        sdks |= {f"{name} (via {current})" for name in imported if name.split(".")[0] in PLATFORM_SDKS}
        for name in _ours(imported) - seen:
            seen.add(name)
            todo.append(name)
    assert not sdks, f"{module} loads {sorted(sdks)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_under(m, "bot.channels")))
def test_channels_never_import_each_other(module):
    parts = module.split(".")
    if len(parts) < 3:
        return  # bot.channels itself
    own = ".".join(parts[:3])  # bot.channels.teams / bot.channels.console / bot.channels.deps
    others = {name for name in _ours(_imports(MODULES[module], runtime_only=False))
              if _is_under(name, "bot.channels") and not _is_under(name, own, "bot.channels.deps")}
    assert not others, f"{module} imports another channel: {sorted(others)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_under(m, "provisioner", "cards")))
def test_provisioner_and_cards_import_nothing_from_bot(module):
    names = {n for n in _imports(MODULES[module], runtime_only=False) if _is_under(n, "bot")}
    assert not names, f"{module} imports {sorted(names)}"
    if _is_under(module, "cards"):
        assert not {n for n in _imports(MODULES[module], runtime_only=False) if _is_under(n, "provisioner")}, module


def test_no_import_cycle():
    graph = {m: {n for n in _ours(_imports(p, runtime_only=True)) if n != m} for m, p in MODULES.items()}
    # `import a.b` also runs a/__init__: an edge to a module implies its packages' __init__ too — except
    # the importer's own packages, which are already running (a/__init__ importing a.b is no cycle).
    for m, deps in graph.items():
        for n in list(deps):
            parts = n.split(".")
            deps.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in MODULES and not _is_under(m, p))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_edges_import_platform_sdks():
    """botbuilder only in the Teams package; the Azure management SDKs only in provisioner/azure.py;
    the AWS SDK only in provisioner/aws.py; the Table Storage SDK only in bot/store/tables.py."""
    allowed = {
        "botbuilder": lambda m: _is_under(m, "bot.channels.teams"),
        "botframework": lambda m: _is_under(m, "bot.channels.teams"),
        "azure.mgmt": lambda m: m == "provisioner.azure",
        "azure.data.tables": lambda m: m == "bot.store.tables",
        "aiobotocore": lambda m: m == "provisioner.aws",
        "botocore": lambda m: m == "provisioner.aws",
        "boto3": lambda m: m == "provisioner.aws",
    }
    bad = []
    for module, path in MODULES.items():
        for name in _imports(path, runtime_only=False):
            for sdk, ok in allowed.items():
                if _is_under(name, sdk) and not ok(module):
                    bad.append(f"{module} imports {name}")
    assert not bad, bad
