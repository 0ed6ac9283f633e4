"""`python tests/support/azure_app.py <app.py arguments>`: the real app with a fake Azure credential injected.

Tests must never build DefaultAzureCredential (its managed-identity probe calls 169.254.169.254).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import provisioner.azure as azure  # noqa: E402
from tests.fakes.arm import FakeCredential  # noqa: E402

azure.default_credential = FakeCredential

import app  # noqa: E402

sys.exit(app.main(sys.argv[1:]))
