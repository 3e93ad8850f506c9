"""GPU providers behind one small interface (see `base.Provider`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the watchdog runs from this package and must start light
    from auxen.config import Settings
    from auxen.inference.providers.base import Provider


def build_provider(settings: Settings) -> Provider:
    if settings.provider == "local":
        from auxen.inference.providers.local import LocalVllmProvider

        return LocalVllmProvider(settings)
    if settings.provider == "runpod":
        from auxen.inference.providers.runpod import RunpodProvider

        return RunpodProvider(settings)
    raise ValueError(f"unknown provider {settings.provider!r}")
