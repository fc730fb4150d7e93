"""One HTTP session per sink: timeouts, retries with backoff, Retry-After honoured.

requests + urllib3's Retry do the work. The one rule added: a POST (which may create a
ticket) is retried only when the server said it did not act (429, 503), never after a 500 or
a dropped connection, where it may have; the next run's search finds such a ticket instead of
creating a second one.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scanner import __version__
from scanner.sinks import SinkError, SinkSpec

# Retry-After above this is not waited for: the item stays in the outbox for the next run.
MAX_RETRY_AFTER = 120.0
NOT_ACTED = frozenset({429, 503})


class _Retry(Retry):
    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in NOT_ACTED:
            return bool(self.total)
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        if after is not None and after > MAX_RETRY_AFTER:
            raise SinkError(f"server asks to retry after {after:.0f} s; left for the next run")
        return after


def session(spec: SinkSpec, retries: int = 3, backoff: float = 0.5) -> requests.Session:
    retry = _Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    http = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    http.headers["User-Agent"] = f"fleetscan/{__version__}"
    http.headers["Accept"] = "application/json"
    # Never pick up credentials from ~/.netrc: they come from the environment only.
    http.trust_env = False
    return http


def timeout(spec: SinkSpec) -> tuple[float, float]:
    read = float(spec.options.get("timeout", "30"))
    return (min(read, 10.0), read)


WORDS = {
    "ReadTimeoutError": "timed out waiting for an answer",
    "ConnectTimeoutError": "timed out connecting",
    "NewConnectionError": "cannot connect",
    "ProtocolError": "connection dropped without an answer",
    "ResponseError": "too many error answers",
}


def why(exc: requests.RequestException) -> str:
    """The last underlying failure (after urllib3's retries), in words; no URL, no header."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    last = getattr(inner, "reason", None) or inner
    name = type(last).__name__
    retried = " (after retries)" if type(inner).__name__ == "MaxRetryError" else ""
    return f"{WORDS.get(name, 'request failed')}{retried}: {name}"


def request(
    http: requests.Session, spec: SinkSpec, method: str, url: str, **kwargs: Any
) -> requests.Response:
    """One call; any failure becomes a SinkError naming the method and path, never a secret."""
    path = url[len(spec.url) :] if url.startswith(spec.url) else url
    try:
        response = http.request(method, url, timeout=timeout(spec), **kwargs)
    except SinkError:
        raise
    except requests.RequestException as exc:
        raise SinkError(f"{spec.name}: {method} {path}: {why(exc)}") from None
    if not response.ok:
        raise SinkError(f"{spec.name}: {method} {path}: HTTP {response.status_code}")
    return response
