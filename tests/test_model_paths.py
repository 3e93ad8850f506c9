"""Local models load from inside the server's models directory only (after symlinks and
`..` are resolved), and a refusal says nothing about what exists elsewhere on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxen.inference.model_paths import ModelPathRefused, resolve_local_model


def _model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _refusal(model: str, models: Path) -> str:
    with pytest.raises(ModelPathRefused) as caught:
        resolve_local_model(model, models)
    return str(caught.value).replace(repr(model[:200]), "<model>")


def test_models_inside_the_directory_resolve(tmp_path: Path) -> None:
    models = tmp_path / "models"
    tiny = _model(models / "tiny")
    assert resolve_local_model(str(tiny), models) == tiny.resolve()
    assert resolve_local_model("./tiny", models) == tiny.resolve()
    assert resolve_local_model(str(models / "x" / ".." / "tiny"), models) == tiny.resolve()
    (models / "alias").symlink_to(tiny)
    assert resolve_local_model(str(models / "alias"), models) == tiny.resolve()


def test_paths_outside_are_refused_alike_whether_or_not_they_exist(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _model(models / "tiny")
    outside = _model(tmp_path / "elsewhere")
    (models / "escape").symlink_to(outside)
    refusals = {
        _refusal(model, models)
        for model in [
            str(outside),  # a real model directory outside
            str(tmp_path / "missing"),  # nothing there
            "/etc",  # exists, no config.json
            str(models / ".." / "elsewhere"),  # climbs out
            "../elsewhere",  # relative, climbs out
            str(models / "escape"),  # a symlink inside pointing outside
            str(models / "nothing"),  # missing inside
            str(models),  # the directory itself
            "~",
        ]
    }
    assert len(refusals) == 1, refusals
    (message,) = refusals
    assert str(tmp_path) not in message and "AUXEN_MODELS_DIR" in message
