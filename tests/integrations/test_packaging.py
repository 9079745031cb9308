"""The adapters install as ``hyperlapse.integrations`` from the repo-root ``integrations/``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from hyperlapse.errors import MissingDependencyError

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_under_src_is_listed():
    # The package-dir mapping forces an explicit package list: a package missing from it would
    # import in an editable install and silently vanish from the wheel.
    src = ROOT / "src"
    found = {
        ".".join(p.parent.relative_to(src).parts) for p in src.glob("hyperlapse/**/__init__.py")
    }
    listed = set(_setuptools_config()["packages"])
    missing = sorted(found - listed)
    assert not missing, (
        f"Packages under src/ missing from [tool.setuptools] packages in pyproject.toml: "
        f"{missing}. Add them to the list."
    )


def test_integrations_mapping_points_at_the_repo_folder():
    config = _setuptools_config()
    assert config["package-dir"]["hyperlapse.integrations"] == "integrations"
    assert "hyperlapse.integrations" in config["packages"]
    assert (ROOT / "integrations" / "__init__.py").is_file()


@pytest.mark.parametrize(
    "name, hidden",
    [
        (
            "lightning",
            [
                "lightning",
                "lightning.pytorch",
                "lightning.pytorch.callbacks",
                "pytorch_lightning",
                "pytorch_lightning.callbacks",
            ],
        ),
        ("transformers", ["transformers"]),
    ],
)
def test_adapter_without_its_trainer_names_the_extra(monkeypatch, name, hidden):
    pytest.importorskip(hidden[0])
    assert hasattr(importlib.import_module(f"hyperlapse.integrations.{name}"), "HyperlapseCallback")
    for module in hidden:  # make the trainer package unimportable for this test
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, f"hyperlapse.integrations.{name}")
    with pytest.raises(MissingDependencyError, match=rf"pip install -e '\.\[{name}\]'"):
        importlib.import_module(f"hyperlapse.integrations.{name}")


def test_adapters_build_the_recorders_config():
    """One option list: the adapters take and validate the recorder's RecorderConfig."""
    from hyperlapse.integrations._sync import build_config

    from hyperlapse import RecorderConfig
    from hyperlapse.errors import ConfigError

    config = build_config("r.zarr", 5, None, {"dtype": "bfloat16", "mode": "overwrite"})
    assert isinstance(config, RecorderConfig)
    assert (config.every, config.dtype, config.mode) == (5, "bfloat16", "overwrite")
    with pytest.raises(ConfigError, match="unknown"):
        build_config("r.zarr", None, None, {"evry": 5})
