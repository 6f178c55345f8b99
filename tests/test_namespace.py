"""strop installs as one namespace: strop.index, strop.trainer, strop.service, strop.client, and no
top-level ``index``, ``trainer`` or ``service`` module that would shadow (or be shadowed by) other
distributions' packages of those names."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rooms_import_under_strop_only(tmp_path) -> None:
    ok = _run("import strop.index, strop.trainer, strop.service, strop.client, strop.trainer.contract; "
              "import strop.service.cli; print('ok')", str(tmp_path))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    for name in ("index", "trainer", "service"):
        r = _run(f"import {name}", str(tmp_path))  # outside the repository: only what is installed
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (name, r.stdout, r.stderr)


def test_the_console_script_points_into_the_namespace() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "strop"]
    assert script.value == "strop.service.cli:main"
