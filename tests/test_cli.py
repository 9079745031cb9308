from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from hyperlapse.cli import build_parser, main
from hyperlapse.errors import ConfigError, OutputError
from hyperlapse.outputs import check_output_dir, check_output_file


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


# -- output locations are checked before the work starts --------------------------------------
_COMMANDS = {
    # the store / runs do not exist: had the output not been checked first, the error would be
    # about them (or, for predict fit, come after minutes of training)
    "analyze": lambda out: ["analyze", "missing.zarr", "--out", out],
    "watch": lambda out: ["watch", "missing.zarr", "--out", out, "--timeout", "0"],
    "sweep": lambda out: ["sweep", "missing.zarr", "--out", out],
    "zoo": lambda out: ["zoo", "sines", "--out", out, "--runs", "2"],
    "predict fit": lambda out: ["predict", "fit", "missing.zarr", "--target", "attr:x",
                                "--out", out],
    "demo": lambda out: ["demo", "--out", out, "--fast"],
}


def _run_main(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _blocking(tmp_path, command):
    """A path where the output cannot go: a file where a folder is expected, or a folder where
    the predictor file is expected."""
    if command == "predict fit":
        folder = tmp_path / "a-folder"
        folder.mkdir()
        return str(folder), "to be a file, but it is a folder"
    file = tmp_path / "a-file"
    file.write_text("keep me")
    return str(file), "to be a folder, but a file is there"


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_output_that_is_the_wrong_kind_fails_first_without_traceback(tmp_path, capsys, command):
    out, expected = _blocking(tmp_path, command)
    code, err = _run_main(capsys, _COMMANDS[command](out))
    assert code == 1
    assert expected in err and "--out" in err and "Traceback" not in err
    if command != "predict fit":
        assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_impossible_output_location_fails_first(capsys, command):
    out = "/proc/hyperlapse-out/x.pt" if command == "predict fit" else "/proc/hyperlapse-out"
    code, err = _run_main(capsys, _COMMANDS[command](out))
    assert code == 1
    assert "/proc" in err and "Choose another" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs as root")
@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_read_only_output_folder_fails_first(tmp_path, capsys, command):
    if os.geteuid() == 0:  # root writes into a chmod 555 folder; sysfs refuses even root
        ro, restore = "/sys/kernel", None
    else:
        ro, restore = tmp_path / "ro", tmp_path / "ro"
        restore.mkdir()
        restore.chmod(0o555)
    try:
        out = os.path.join(ro, "x.pt" if command == "predict fit" else "hyperlapse-out")
        code, err = _run_main(capsys, _COMMANDS[command](out))
    finally:
        if restore is not None:
            restore.chmod(0o755)
    assert code == 1 and "Traceback" not in err
    assert any(w in err for w in ("permission denied", "not permitted", "read-only")), err


def test_read_only_file_system_is_named(tmp_path, monkeypatch):
    # a read-only mount (EROFS) is said in words, whatever the permission bits (root too)
    import tempfile

    def readonly(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "probe"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", readonly)
    with pytest.raises(OutputError, match=r"read-only \[EROFS\]"):
        check_output_dir(tmp_path / "out", kind="the report folder (--out)")
    with pytest.raises(OSError):  # OutputError is also an OSError
        check_output_file(tmp_path / "model.pt", kind="the predictor file")


def test_output_checks_leave_nothing_behind(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", kind="x", create=False) == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "c" / "m.pt", kind="x") == tmp_path / "c" / "m.pt"
    assert list(tmp_path.iterdir()) == []
    assert check_output_dir(tmp_path / "a" / "b", kind="x").is_dir()
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == []  # the probe is removed
    nested = tmp_path / "f"
    nested.write_text("")
    with pytest.raises(OutputError, match="one of its parents"):
        check_output_dir(nested / "out", kind="x")


@pytest.mark.parametrize("bad", [b"out", bytearray(b"out"), 3, None])
def test_a_path_that_is_not_str_or_pathlike_is_a_config_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="str or pathlib.Path"):
        check_output_dir(bad, kind="the report folder")
    with pytest.raises(ConfigError, match="str or pathlib.Path"):
        check_output_file(bad, kind="the predictor file")


def test_python_entry_points_check_their_outputs(tmp_path):
    from hyperlapse.zoo.builders import build_zoo

    with pytest.raises(ConfigError, match="got bytes"):
        build_zoo("sines", b"zoo", runs=2)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="to be a folder"):
        build_zoo("sines", tmp_path / "file", runs=2)


def test_predictor_save_checks_its_path(tmp_path):
    pytest.importorskip("sklearn")
    from hyperlapse.predict.predictor import Predictor

    predictor = Predictor.__new__(Predictor)  # save checks the path before reading any field
    with pytest.raises(ConfigError, match="got bytes"):
        predictor.save(b"model.pt")
    with pytest.raises(OutputError, match="to be a file, but it is a folder"):
        predictor.save(tmp_path)


def test_cli_subprocess_prints_the_error_without_traceback(tmp_path):
    (tmp_path / "taken").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "hyperlapse.cli", "analyze", "missing.zarr", "--out",
         str(tmp_path / "taken")], capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("hyperlapse analyze: error: Expected the report folder")
    assert "Traceback" not in out.stderr


def test_an_os_error_in_a_command_is_reported_without_traceback(capsys, monkeypatch):
    import hyperlapse.cli as cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "x.zarr")

    monkeypatch.setattr(cli, "_cmd_info", full_disk)
    code = main(["info", "x.zarr"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "free space" in err
