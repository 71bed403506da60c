"""Shared fixtures. Server fixtures (redis-server, PostgreSQL, nginx, the
daemon) live in tests/fixtures/, one module each, and start the real
programs on loopback random ports; every module there is loaded here."""

import os
import pkgutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest_plugins = [
    f"tests.fixtures.{m.name}"
    for m in pkgutil.iter_modules([os.path.join(ROOT, "tests", "fixtures")])
]
