"""A FAKE OpenAI-compatible chat-completions endpoint standing for a remote generator server.

A validator in production points dataset_prep at a model server (vLLM, TGI... on a GPU,
GRADIENTS_DATASET_GENERATOR=openai); none can run on this machine. This fake answers each
request after `latency_s`, at most `slots` requests at a time (a server's batch; the others
queue), with a JSON object holding exactly the keys the request asks for, each value its
source's value with a marker of the request, so the rows pass dataset_prep's checks and are
never equal to a source row. What it stands for is the time a real server takes, not its text.

dataset_prep's real HTTP client (`OpenAICompatibleGenerator`: bounded concurrency, retries,
ordering) does the talking, over real sockets.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEYS_RE = re.compile(r"exactly these keys: (.*?)\.\n")
SOURCE_RE = re.compile(r"Original example \(JSON\):\n(.*)\Z", re.S)


def read_prompt(prompt: str) -> tuple[list[str], dict]:
    """The keys asked for and the source row shown, read back from a generators.user_prompt text
    (for fake endpoints: this one and the tests')."""
    keys = re.findall(r'"([^"]+)"', KEYS_RE.search(prompt).group(1))
    return keys, json.loads(SOURCE_RE.search(prompt).group(1))


def fake_answer(prompt: str) -> dict[str, str]:
    """The answer to one generation prompt (generators.user_prompt): every key asked for."""
    keys, source = read_prompt(prompt)
    mark = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    fallback = next(iter(source.values()), "")
    return {key: f"{source.get(key, fallback)} (variant {mark})" for key in keys}


class FakeGeneratorEndpoint:
    """`with FakeGeneratorEndpoint(latency_s=0.5) as endpoint:` serves at `endpoint.base_url`."""

    def __init__(self, latency_s: float = 0.5, slots: int = 32):
        self.latency_s = latency_s
        self.slots = threading.BoundedSemaphore(slots)
        self.requests = 0
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with endpoint.slots:
                    time.sleep(endpoint.latency_s)
                with endpoint._lock:
                    endpoint.requests += 1
                answer = fake_answer(body["messages"][-1]["content"])
                reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps(answer)}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet: the mesh's own logs are the record
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-generator", daemon=True)

    def __enter__(self) -> FakeGeneratorEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self) -> dict[str, str]:
        """dataset_prep settings that send synthetic generation here."""
        return {
            "GRADIENTS_DATASET_GENERATOR": "openai",
            "GRADIENTS_DATASET_OPENAI_BASE_URL": self.base_url,
            "GRADIENTS_DATASET_OPENAI_MODEL": "fake-remote-generator",
        }
