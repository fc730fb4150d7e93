"""`webhook`: POST each transition (or the whole report) as JSON, signed with HMAC-SHA256.

The receiver checks `X-Fleetscan-Signature: sha256=<hex HMAC of the body>` with the shared
secret from FLEETSCAN_WEBHOOK_SECRET, so nobody else can forge or alter a finding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from scanner.sinks import SinkSpec, need
from scanner.sinks.http import request, session

EVENT_FIELDS = ("event", "host", "rule_id", "verdict", "previous_verdict", "fingerprint")
SIGNATURE_HEADER = "X-Fleetscan-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(payload: dict[str, Any]) -> bytes:
    if payload.get("kind") == "report":
        document = payload["report"]
    else:
        document = {name: payload.get(name) for name in EVENT_FIELDS}
        # Whose verdict: the hosts as they run (current), or a gate's prediction for a kernel.
        stream = str(payload.get("stream", "current"))
        document["mode"] = "candidate" if stream.startswith("candidate:") else "current"
        document["candidate"] = stream.partition(":")[2] or None
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class WebhookSink:
    name = "webhook"
    tickets = False

    def __init__(self, spec: SinkSpec, payload: str = "events") -> None:
        self.spec = spec
        self.key = spec.key
        self.payload = payload
        self._secret = need("FLEETSCAN_WEBHOOK_SECRET", "webhook")
        self._http = session(spec)

    def deliver(self, payload: dict[str, Any]) -> str:
        body = body_of(payload)
        request(
            self._http,
            self.spec,
            "POST",
            self.spec.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature(self._secret, body),
            },
        )
        return self.describe(payload).replace("would POST", "POSTed")

    def describe(self, payload: dict[str, Any]) -> str:
        if payload.get("kind") == "report":
            return f"would POST the report to {self.spec.where}"
        return (
            f"would POST {payload['event']} {payload['host']} {payload['rule_id']}"
            f" ({payload.get('previous_verdict')} -> {payload['verdict']}) to {self.spec.where}"
        )
