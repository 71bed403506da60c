"""luacheck over lua/ (std = "ngx_lua", see lua/.luacheckrc)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_luacheck_clean():
    if not shutil.which("luacheck"):
        pytest.skip("luacheck is not installed (run scripts/setup)")
    r = subprocess.run(["luacheck", "--no-color", "--codes", "--config", "lua/.luacheckrc", "lua/"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 warnings / 0 errors" in r.stdout
