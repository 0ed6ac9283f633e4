"""What a new user and CI rely on: the README's two commands, .ci/run, the Dockerfile, .env.example."""
import re
from pathlib import Path

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip().startswith("```") is False and line.strip()]
    commands = re.findall(r"^\s*(\./scripts/.*|bash scripts/.*)$", (ROOT / "README.md").read_text(), re.M)
    assert commands[0] == "./scripts/try"
    assert commands[1] == "bash scripts/install-test-deps.sh && .venv/bin/python -m pytest"
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
    assert (ROOT / "scripts" / "try").stat().st_mode & 0o111  # runnable as written
    assert lines[0].startswith("# ")


def test_every_setting_is_documented():
    source = "".join(p.read_text() for p in sorted((ROOT / "bot" / "settings").glob("*.py")))
    names = set(re.findall(r'r\.\w+\("([A-Z_]+)"', source))
    assert {"VPN_PROVIDER", "VPN_USERS", "VPN_ADMINS", "VPN_SESSION_MINUTES", "VPN_DATA_DIR", "HOST", "PORT", "WG_INTERFACE", "WG_ENDPOINT", "WG_POOL"} <= names
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"{name} missing from README"
        assert re.search(rf"^#?\s*{name}=", example, re.M), f"{name} missing from .env.example"


def test_env_example_defaults_are_valid():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z_]+)=(.*)$", line)
        if m and m.group(2):
            values[m.group(1)] = m.group(2)
    values.pop("VPN_PROVIDER", None)
    Settings.from_env(values)


def test_dockerfile_runs_serve_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["python", "app.py", "serve"]' in text
    assert "HOST=0.0.0.0" in text


def test_only_the_edges_import_platform_sdks():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", "bench/", ".", "venv/")):  # .venv and other tools' folders are not ours
            continue
        text = path.read_text()
        if re.search(r"^\s*(from|import) botbuilder", text, re.M):
            assert rel.startswith("bot/channels/teams/"), rel
        if re.search(r"^\s*(from|import) azure", text, re.M):
            assert rel in ("provisioner/azure.py", "bot/store/tables.py"), rel
        if re.search(r"^\s*(from|import) azure\.data\.tables", text, re.M):
            assert rel == "bot/store/tables.py", rel
        if rel.startswith("provisioner/"):
            assert not re.search(r"^\s*(from|import) (bot|cards)\b", text, re.M), rel
        if rel.startswith("cards/"):
            assert not re.search(r"^\s*(from|import) (bot|provisioner)\b", text, re.M), rel


def test_azure_settings_are_validated():
    import pytest

    from bot.settings import SettingsError

    with pytest.raises(SettingsError, match="AZURE_SUBSCRIPTION_ID is required"):
        Settings.from_env({"VPN_PROVIDER": "azure"})
    with pytest.raises(SettingsError, match="AZURE_RESOURCE_GROUP is required"):
        Settings.from_env({"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "s"})
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "g", "AZURE_SSH_PUBLIC_KEY": "k"})
    with pytest.raises(SettingsError, match="AZURE_ARM_ENDPOINT"):
        Settings.from_env({"AZURE_ARM_ENDPOINT": "http://arm.example.org"})
    with pytest.raises(SettingsError, match="AZURE_ALLOWED_LOCATIONS"):
        Settings.from_env({"AZURE_ALLOWED_LOCATIONS": "west europe!"})
    s = Settings.from_env({"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "g", "AZURE_ALLOWED_LOCATIONS": "WestEurope, uksouth"})
    assert s.azure.allowed_locations == ("westeurope", "uksouth") and s.azure.location == "eastus"


def test_role_definition_covers_what_the_provider_calls():
    import json

    role = json.loads((ROOT / "docs" / "azure-role.json").read_text())
    actions = set(role["Actions"])
    for rtype in ("Microsoft.Network/publicIPAddresses", "Microsoft.Network/networkInterfaces", "Microsoft.Compute/virtualMachines"):
        assert {f"{rtype}/read", f"{rtype}/write", f"{rtype}/delete"} <= actions
    assert not any(a.endswith("/*") or a == "*" for a in actions)
    assert role["AssignableScopes"][0].count("/resourceGroups/") == 1


def test_no_merge_conflict_markers_are_left_in_the_tree():
    """Parallel branches merge here; a README with `<<<<<<<` in it once landed unnoticed."""
    marker = re.compile(r"^(<{7}|>{7}) |^={7}$", re.M)
    suffixes = {".py", ".md", ".txt", ".sh", ".bicep", ".json", ".js", ".html", ".css", ".ini", ".example", ""}
    skip = {".git", ".venv", "node_modules", "__pycache__", "data", "out", "test-artifacts", ".hypothesis", ".pytest_cache"}
    hits = []
    for path in ROOT.rglob("*"):
        if any(part in skip for part in path.relative_to(ROOT).parts) or not path.is_file() or path.suffix not in suffixes:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}" for m in marker.finditer(text)]
    assert hits == []


def test_nothing_starts_a_bare_python():
    """Everything that imports our packages (or theirs) runs under sys.executable: a bare `python3`
    is the system's interpreter, without .venv's packages, on a fresh machine (issue 21). A command is
    a list or tuple whose first item is the program, or the first argument of a call."""
    import ast

    bare = re.compile(r"^python(3(\.\d+)?)?$")

    def program(node: ast.AST) -> ast.AST | None:
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            return node.elts[0]
        if isinstance(node, ast.Call) and node.args:
            return node.args[0]
        return None

    hits = []
    paths = [ROOT / "app.py"] + [p for folder in ("bot", "provisioner", "cards", "tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py")]
    for path in paths:
        if path.is_relative_to(ROOT / "tests" / "infra"):
            continue  # asserts the container image's own command (`python` inside the image is right)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            first = program(node)
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and bare.match(first.value):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hits == [], f"a bare python started at {hits}; use sys.executable"


def test_the_test_dependencies_include_what_playwrights_driver_links():
    script = (ROOT / "scripts" / "install-test-deps.sh").read_text()
    assert "missing+=(libatomic1)" in script and "libatomic.so.1" in script
