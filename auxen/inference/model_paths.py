"""Which model directories on this host an instance may load: only those inside the
server's models directory (`AUXEN_MODELS_DIR`), after resolving symlinks and `..`.

A caller names a local model by path (`/...`, `./...`, `../...`, `~...`; relative paths
are taken from the models directory); anything else is a Hugging Face id, checked
elsewhere. The refusal reads the same whether the path is outside the directory, missing,
or not a model, so no answer tells a caller what exists elsewhere on the host.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_PREFIXES = ("/", "./", "../", "~")


class ModelPathRefused(ValueError):
    """Not a model directory inside the models directory (the message is safe to show)."""


def is_local_path(model: str) -> bool:
    return model.startswith(LOCAL_PREFIXES)


def resolve_local_model(model: str, models_dir: Path) -> Path:
    """The real directory `model` names inside `models_dir`, or ModelPathRefused."""
    root = models_dir.resolve()
    try:
        named = Path(model).expanduser() if model.startswith("~") else Path(model)
        path = (named if named.is_absolute() else root / named).resolve()
        inside = path.is_relative_to(root) and path != root
        found = inside and (path / "config.json").is_file()
    except (OSError, RuntimeError, ValueError):
        found = False
    if not found:
        raise ModelPathRefused(
            f"model {model[:200]!r} is not a model directory (with a config.json) inside "
            "this server's models directory (AUXEN_MODELS_DIR); local models are served "
            "from there only, or use a Hugging Face id like 'org/name'"
        )
    return path
