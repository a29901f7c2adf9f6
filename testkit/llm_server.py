"""A loopback LLM server for tests and benchmarks: OpenAI and Anthropic wire formats, scripted faults.

It speaks `POST /v1/chat/completions` (OpenAI chat completions) and `POST /v1/messages` (Anthropic
Messages) well enough for the official SDKs, runs in a thread of the test process (stdlib
`ThreadingHTTPServer`, HTTP/1.1 keep-alive), and records every request: which prompt key it carried
(`[key:...]` in the prompt), when it arrived and finished, what it was answered, and how many requests
were in flight. Faults are scripted per key (consumed in order, then normal answers) or for the next
requests whatever their key: 429 with Retry-After, 5xx, hangs past the client's timeout, malformed JSON,
schema-invalid JSON, answers cut at max_tokens, 4xx. A fixed delay per request models a slow model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

KEY_PATTERN = re.compile(r"\[key:([^\]]+)\]")


@dataclass(frozen=True)
class Fault:
    """How to answer one request instead of normally."""

    kind: str  # rate_limit | server_error | hang | malformed | schema_invalid | truncated | client_error | ok
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0


def rate_limit(retry_after: str | None = "1") -> Fault:
    return Fault("rate_limit", status=429, retry_after=retry_after)


def server_error(status: int = 500) -> Fault:
    return Fault("server_error", status=status)


def hang(seconds: float) -> Fault:
    """Say nothing for `seconds` (set it past the client's timeout), then answer normally if still connected."""
    return Fault("hang", seconds=seconds)


def client_error(status: int = 400) -> Fault:
    return Fault("client_error", status=status)


MALFORMED = Fault("malformed")
SCHEMA_INVALID = Fault("schema_invalid")
TRUNCATED = Fault("truncated")
OK = Fault("ok")


@dataclass
class RequestRecord:
    api: str
    key: str
    model: str
    prompt: str
    auth: str | None
    arrived: float
    body: dict[str, Any]
    outcome: str = "pending"
    finished: float | None = None


def default_responder(key: str, prompt: str) -> str:
    """A valid label answer (spd.interp.schemas.LabelOutput) naming the key."""
    return json.dumps({"reasoning": f"seen {key}", "label": f"label of {key}", "confidence": "high"})


def default_usage(prompt: str, content: str) -> tuple[int, int]:
    """Token usage as a real tokenizer would roughly report it: ~4 bytes per token."""
    return len(prompt.encode()) // 4 + 1, len(content.encode()) // 4 + 1


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the default backlog of 5 would drop connections when 50 arrive at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that timed out and hung up are expected here


class LLMTestServer:
    """Start with `with LLMTestServer() as server:`; point the SDKs at `openai_base_url` / `anthropic_base_url`."""

    def __init__(
        self,
        *,
        responder: Callable[[str, str], str] = default_responder,
        usage: Callable[[str, str], tuple[int, int]] = default_usage,
        delay_s: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.responder = responder
        self.usage = usage
        self.delay_s = delay_s
        self.api_key = api_key
        self.fault_for: Callable[[str], Fault | None] | None = None
        self.counts: Counter[str] = Counter()
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._in_flight_area = 0.0
        self._last_change = time.monotonic()
        self._lock = threading.Lock()
        self._by_key: dict[str, deque[Fault]] = {}
        self._next: deque[Fault] = deque()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> LLMTestServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -----------------------------------------------------------------------------------------
    def script(self, key: str, *faults: Fault) -> None:
        """Answer the next requests carrying `key` with these faults, in order; then normally."""
        with self._lock:
            self._by_key.setdefault(key, deque()).extend(faults)

    def script_next(self, *faults: Fault) -> None:
        """Answer the next requests, whatever their key, with these faults (after any per-key script)."""
        with self._lock:
            self._next.extend(faults)

    def _fault(self, key: str) -> Fault:
        with self._lock:
            queue = self._by_key.get(key)
            if queue:
                return queue.popleft()
            if self._next:
                return self._next.popleft()
        if self.fault_for is not None:
            return self.fault_for(key) or OK
        return OK

    # -- accounting ----------------------------------------------------------------------------------------
    def _arrive(self, record: RequestRecord) -> None:
        with self._lock:
            self._account_area(record.arrived)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.counts[record.key] += 1
            self.records.append(record)

    def _leave(self, record: RequestRecord, outcome: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._account_area(now)
            self.in_flight -= 1
            record.outcome = outcome
            record.finished = now

    def _account_area(self, now: float) -> None:
        self._in_flight_area += self.in_flight * (now - self._last_change)
        self._last_change = now

    def reset_stats(self) -> None:
        """Forget records, counts and in-flight statistics (between benchmark phases)."""
        with self._lock:
            self.records.clear()
            self.counts.clear()
            self.max_in_flight = self.in_flight
            self._in_flight_area = 0.0
            self._last_change = time.monotonic()

    def mean_in_flight(self) -> float:
        """Time-averaged requests in flight from the first arrival to the last finish since the last reset."""
        with self._lock:
            done = [r for r in self.records if r.finished is not None]
            if not done:
                return 0.0
            start = min(r.arrived for r in self.records)
            end = max(r.finished for r in done if r.finished is not None)
            return self._in_flight_area / (end - start) if end > start else 0.0

    def arrivals(self) -> list[float]:
        with self._lock:
            return sorted(r.arrived for r in self.records)

    def stats(self) -> dict[str, Any]:
        """What a benchmark in another process needs: in-flight statistics and arrival times (monotonic s)."""
        return {
            "mean_in_flight": self.mean_in_flight(),
            "max_in_flight": self.max_in_flight,
            "n_requests": len(self.records),
            "arrivals": self.arrivals(),
        }

    def control(self, settings: dict[str, Any]) -> None:
        """`{"delay_s": s}` sets the fixed delay; `{"reset": true}` forgets the statistics."""
        if "delay_s" in settings:
            self.delay_s = float(settings["delay_s"])
        if settings.get("reset"):
            self.reset_stats()

    def wait(self, seconds: float) -> None:
        """Sleep that ends early when the server stops (so hanging handlers do not outlive a test)."""
        self._stopping.wait(seconds)


def _extract_prompt(api: str, body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):  # content blocks / parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _ok_body(api: str, model: str, content: str, usage: tuple[int, int], truncated: bool) -> dict[str, Any]:
    if api == "openai":
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }
    return {
        "id": "msg_loopback",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": content}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _error_body(api: str, status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_error", 400: "invalid_request_error", 401: "authentication_error"}.get(status, "api_error")
    if api == "openai":
        return {"error": {"message": message, "type": kind, "code": None, "param": None}}
    return {"type": "error", "error": {"type": kind, "message": message}}


def _make_handler(server: LLMTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the second waits ~40 ms for a delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._send(200, server.stats())
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            arrived = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.path == "/_control":
                server.control(body)
                self._send(200, {})
                return
            bearer = self.headers.get("Authorization")
            # Anthropic's SDK sends x-api-key (older releases) or a bearer token (newer ones).
            auth = self.headers.get("x-api-key") or (bearer.removeprefix("Bearer ") if bearer else None)
            if self.path.endswith("/chat/completions"):
                api = "openai"
            elif self.path.endswith("/messages"):
                api = "anthropic"
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            prompt = _extract_prompt(api, body)
            match = KEY_PATTERN.search(prompt)
            record = RequestRecord(
                api=api,
                key=match.group(1) if match else prompt,
                model=str(body.get("model")),
                prompt=prompt,
                auth=auth,
                arrived=arrived,
                body=body,
            )
            server._arrive(record)
            outcome = "error"
            try:
                outcome = self._answer(api, record, body)
            except (BrokenPipeError, ConnectionResetError):
                outcome = "client_gone"
            finally:
                server._leave(record, outcome)

        def _answer(self, api: str, record: RequestRecord, body: dict[str, Any]) -> str:
            if server.api_key is not None and record.auth != server.api_key:
                self._send(401, _error_body(api, 401, "bad api key"))
                return "unauthorized"
            fault = server._fault(record.key)
            if server.delay_s:
                server.wait(server.delay_s)
            if fault.kind in ("rate_limit", "server_error", "client_error"):
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send(fault.status, _error_body(api, fault.status, f"scripted {fault.kind}"), headers)
                return fault.kind
            if fault.kind == "hang":
                server.wait(fault.seconds)
            content = server.responder(record.key, record.prompt)
            if fault.kind == "malformed":
                content = content[: max(1, len(content) // 2)]
            elif fault.kind == "schema_invalid":
                content = json.dumps({"unexpected": "field"})
            usage = server.usage(record.prompt, content)
            self._send(200, _ok_body(api, record.model, content, usage, truncated=fault.kind == "truncated"))
            return fault.kind

    return Handler


class LLMServerProcess:
    """The server in a child process (`python -m testkit.llm_server`), driven over HTTP.

    Benchmarks use it so that the server's threads do not compete with the client for one GIL.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        root = Path(__file__).resolve().parent.parent
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "testkit.llm_server", str(delay_s)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"loopback server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.anthropic_base_url = f"http://127.0.0.1:{self.port}"
        self.openai_base_url = f"{self.anthropic_base_url}/v1"

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.anthropic_base_url}{path}", data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def control(self, **settings: Any) -> None:
        self._call("/_control", settings)

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # the child exits when its stdin closes
            try:
                self._proc.wait(timeout=10)
            except Exception:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> LLMServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_until_stdin_closes(delay_s: float) -> None:
    with LLMTestServer(delay_s=delay_s) as server:
        print(f"PORT {server.port}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve_until_stdin_closes(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
