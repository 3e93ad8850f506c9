"""A small REST client for the CLI (AUXEN_URL + AUXEN_API_KEY)."""

from __future__ import annotations

import os
from typing import Any

import httpx2


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str, param: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class AuxenClient:
    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self.url = (url or os.environ.get("AUXEN_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("AUXEN_API_KEY")
        if not key:
            raise ApiError(
                0,
                "set AUXEN_API_KEY (an auxen_live_/auxen_test_ key; `auxen init` prints one)",
                None,
            )
        self.http = httpx2.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            raise ApiError(0, f"cannot reach Auxen at {self.url}: {exc}", None) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiError(response.status_code, error["message"], error.get("param"))
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, response.text[:500], None) from None
        return response.json()
