"""tools/function_sizes.py flags long and wide library functions and exempts the commands."""

import subprocess
import sys
import textwrap
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "function_sizes.py"


def _tree(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "cli").mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (pkg / "long.py").write_text(f"def long_one():\n{body}\n\n\ndef short(a, b):\n    return a\n")
    (pkg / "wide.py").write_text(
        "class K:\n    def method(self, a, b, c, d, e, f, g, h):\n        return a\n\n\n"
        "def wide(a, b, c, d, e, f, g, *args, k=1, **kw):\n    return a\n"
    )
    many = ", ".join(f"o{i}: int = 0" for i in range(12))
    (pkg / "cli" / "cmd.py").write_text(
        textwrap.dedent(
            f"""\
            import typer
            app = typer.Typer()

            @app.command("go")
            def go({many}):
                pass

            def registered({many}):
                pass

            app.command("reg")(guarded({{}})(registered))

            def helper({many}):
                pass
            """
        )
    )
    return pkg


def _run(pkg: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), str(pkg), *extra], capture_output=True, text=True
    )


def test_it_flags_a_long_and_a_wide_function_and_exempts_commands(tmp_path):
    result = _run(_tree(tmp_path))
    assert result.returncode == 0, result.stderr  # without --check it only reports
    out = result.stdout
    assert "long.py:1 long_one" in out and "short" not in out
    assert "10 params wide.py:6 wide" in out
    assert "method" not in out  # self is not counted: 8 parameters are allowed
    assert "12 params cli/cmd.py:13 helper" in out  # a plain function in cli/ is not exempt
    assert " go" not in out and "registered" not in out
    assert "commands exempt: 2" in out
    assert "longest function: long.py:1 long_one (62 lines)" in out
    assert "cli/ lines: 14" in out


def test_check_fails_past_the_limits_and_passes_within_them(tmp_path):
    pkg = _tree(tmp_path)
    assert _run(pkg, "--check").returncode == 1
    for name in ("long.py", "wide.py"):
        (pkg / name).unlink()
    (pkg / "cli" / "cmd.py").write_text("def helper(a):\n    return a\n")
    assert _run(pkg, "--check").returncode == 0
