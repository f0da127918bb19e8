"""A fake radixrt frontend: a ROUTER socket on a thread that answers by fixed rules.

One character is one token. Replies are exact, so tests can assert text, not shapes:
- generate: "" for max_new_tokens=0, "42" for the int regex, "2.5" float, "True" bool, else
  `<N>` with N = len(prompt); streamed in chunks of `chunk_size` characters.
- cached_tokens: longest common prefix with any earlier prompt (+output), like a radix cache.
- score: logprobs from `scores[continuation]` (default -1.0 per character).
- a prompt containing a key of `errors` gets ErrorReply(400, errors[key], "text").
- `hold` > 1 keeps generate replies until that many are pending (or 0.3 s pass), then answers
  them newest first, stream chunks round-robin: concurrent requests get interleaved replies.
- `control_hold` > 1 does the same for control replies (ModelInfo, Ack, StatsReply).
"""

from __future__ import annotations

import threading
import time

import msgspec
import zmq

from radixrt.lang.sampling import REGEX_BOOL, REGEX_FLOAT, REGEX_INT
from radixrt.runtime import protocol as p

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GARBAGE = b"\xc1\xc1 not msgpack"
WRONG_TYPE = msgspec.msgpack.encode({"type": "Bogus", "rid": "x"})


def reply_text(req: p.GenerateRequest) -> str:
    s = req.sampling
    if s.max_new_tokens == 0:
        return ""
    return {REGEX_INT: "42", REGEX_FLOAT: "2.5", REGEX_BOOL: "True"}.get(s.regex or "", f"<{len(req.text or '')}>")


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class FakeServer:
    def __init__(self, hold: int = 1, chunk_size: int = 2, chat_template: str | None = SMOL_TEMPLATE):
        self.hold, self.chunk_size, self.chat_template = hold, chunk_size, chat_template
        self.received: list[p.ClientMsg] = []
        self.scores: dict[str, list[float]] = {}
        self.unconditional_scores: dict[str, list[float]] = {}
        self.errors: dict[str, str] = {}
        self.garbage_before_replies = 0
        self.silent = False  # never answer generate requests (timeouts)
        self.stream_gap = 0.0  # seconds between the replies of a flush (slow streams)
        self.stats: dict = {}  # extra fields of the GetStats reply (e.g. radix_cache)
        self.control_hold = 1
        self._control_pending: list[tuple[bytes, p.ServerMsg]] = []
        self.max_in_flight = 0
        self._seen: list[str] = []
        self._pending: list[tuple[bytes, p.GenerateRequest]] = []
        self._last_arrival = 0.0
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        self._ctx.term()

    def of_type(self, cls: type) -> list:
        with self._lock:
            return [m for m in self.received if isinstance(m, cls)]

    # ---- server thread -------------------------------------------------------------------

    def _loop(self) -> None:
        decoder = p.decoder(p.ClientMsg)
        while not self._stop.is_set():
            if self._sock.poll(20):
                ident, frame = self._sock.recv_multipart()
                self._handle(ident, decoder.decode(frame))
            idle = time.monotonic() - self._last_arrival > 0.3
            if self._pending and (len(self._pending) >= self.hold or idle) and not self.silent:
                self._flush()

    def _handle(self, ident: bytes, msg: p.ClientMsg) -> None:
        with self._lock:
            self.received.append(msg)
        if isinstance(msg, p.GenerateRequest):
            self._last_arrival = time.monotonic()
            self._pending.append((ident, msg))
            self.max_in_flight = max(self.max_in_flight, len(self._pending))
        elif isinstance(msg, p.ScoreRequest):
            self._send(ident, self._score(msg))
        elif isinstance(msg, p.GetModelInfo):
            info = p.ModelInfo(
                model_path="fake",
                context_length=4096,
                vocab_size=256,
                chat_template=self.chat_template,
                bos_token="<|im_start|>",
                eos_token="<|im_end|>",
            )
            self._control(ident, info)
        elif isinstance(msg, p.FlushCache):
            self._seen.clear()
            self._control(ident, p.Ack())
        elif isinstance(msg, p.GetStats):
            self._control(ident, p.StatsReply(stats={"received": len(self.received), **self.stats}))
        elif isinstance(msg, p.AbortRequest):
            self._pending = [(i, r) for i, r in self._pending if r.rid != msg.rid]

    def _control(self, ident: bytes, reply: p.ServerMsg) -> None:
        self._control_pending.append((ident, reply))
        if len(self._control_pending) >= self.control_hold:
            for route, held in reversed(self._control_pending):
                self._send(route, held)
            self._control_pending = []

    def _flush(self) -> None:
        """Answer the held requests newest first, their stream chunks interleaved round-robin."""
        batch, self._pending = self._pending, []
        queues = [(ident, self._generate(req)) for ident, req in reversed(batch)]
        while queues:
            for ident, replies in queues:
                self._send(ident, replies.pop(0))
                time.sleep(self.stream_gap)
            queues = [(ident, replies) for ident, replies in queues if replies]

    def _generate(self, req: p.GenerateRequest) -> list[p.ServerMsg]:
        prompt = req.text or ""
        for key, message in self.errors.items():
            if key in prompt:
                return [p.ErrorReply(rid=req.rid, status=400, message=message, param="text")]
        text = reply_text(req)
        meta = self._meta(prompt, len(text))
        if req.return_logprob:
            meta["output_token_logprobs"] = [[-0.5, ord(c), None] for c in text]
        self._seen.append(prompt + text)
        out: list[p.ServerMsg] = []
        if req.stream:
            for i in range(0, len(text), self.chunk_size):
                piece = text[i : i + self.chunk_size]
                out.append(p.GenerateChunk(rid=req.rid, text=piece, output_ids=[ord(c) for c in piece]))
        out.append(p.GenerateResult(rid=req.rid, text=text, output_ids=[ord(c) for c in text], meta_info=meta))
        return out

    def _meta(self, prompt: str, completion: int) -> dict:
        cached = max((common_prefix(prompt, s) for s in self._seen), default=0)
        return {
            "prompt_tokens": len(prompt),
            "cached_tokens": cached,
            "completion_tokens": completion,
            "finish_reason": {"type": "length"},
        }

    def _score(self, req: p.ScoreRequest) -> p.ServerMsg:
        table = self.unconditional_scores if req.prefix == "" else self.scores
        scores = []
        for cont in req.continuations:
            full = req.prefix + cont
            cached = max((common_prefix(full, s) for s in self._seen), default=0)
            scores.append(
                p.ContinuationScore(
                    token_ids=[ord(c) for c in cont],
                    logprobs=table.get(cont, [-1.0] * len(cont)),
                    prompt_tokens=len(full),
                    cached_tokens=cached,
                )
            )
        self._seen.append(req.prefix)
        return p.ScoreResult(rid=req.rid, scores=scores)

    def _send(self, ident: bytes, msg: p.ServerMsg) -> None:
        while self.garbage_before_replies:
            self.garbage_before_replies -= 1
            self._sock.send_multipart([ident, GARBAGE])
            self._sock.send_multipart([ident, WRONG_TYPE])
        self._sock.send_multipart([ident, msgspec.msgpack.encode(msg)])
