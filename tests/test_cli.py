from __future__ import annotations

import subprocess
import sys

import pytest

from hyperlapse.cli import build_parser, main


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: hyperlapse" in capsys.readouterr().out


def test_every_subcommand_has_helpful_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"info", "demo"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, f"'{name}' has no description"
        assert "usage: hyperlapse " + name in text


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("hyperlapse ")


def test_console_script_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "hyperlapse.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "Record, encode and report" in out.stdout
