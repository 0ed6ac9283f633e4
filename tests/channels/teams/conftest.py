"""The Teams fixtures (tests/channels/teams/harness.py) for every test in this folder."""
from tests.channels.teams.harness import make_teams  # noqa: F401 - a fixture
