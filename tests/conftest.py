"""Shared fixtures. Server fixtures (redis-server, PostgreSQL, nginx, the
daemon) live in tests/fixtures/, one module each, and start the real
programs on loopback random ports; every module there is loaded here."""

import os
import pkgutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (servers first: other fixture modules import it, and pytest rewrites the
# asserts of a plugin module only if it loads it before anyone imports it)
pytest_plugins = sorted(
    (f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules([os.path.join(ROOT, "tests", "fixtures")])),
    key=lambda name: not name.endswith(".servers"))
