"""One thread that runs transformers on batches of concurrent requests (a static-batching baseline).

Callers (the DSL's program threads) submit jobs; the thread takes the oldest job and every other
waiting job it can batch with it (same kind and sampling settings) up to `max_batch` rows and
`max_batch_tokens` padded tokens, left-pads them and runs one `generate` (or one forward for
scoring). Jobs that arrive meanwhile wait for the next batch. Nothing is reused across batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from radixrt.bench.hf_control import GrammarMask, RowControl, RowSpec


@dataclass
class GenJob:
    ids: list[int]
    spec: RowSpec
    future: Future = field(default_factory=Future)  # -> (output ids, finish reason)

    @property
    def rows(self) -> list[list[int]]:
        return [self.ids]

    @property
    def key(self) -> tuple:
        s = self.spec.sampling
        sampling = ("greedy",) if s.is_greedy else (s.temperature, s.top_p, s.top_k, s.min_p)
        return ("gen", s.ignore_eos, *sampling)


@dataclass
class ScoreJob:
    sequences: list[tuple[list[int], int]]  # (prefix + continuation ids, first continuation token)
    future: Future = field(default_factory=Future)  # -> one list of logprobs per sequence
    key: tuple = ("score",)

    @property
    def rows(self) -> list[list[int]]:
        return [ids for ids, _ in self.sequences]


class HFBatcher:
    """Runs jobs in batches on one thread, which also loads the model (`load()`): CPU ops run
    slower in a thread other than the one that ran the process's first parallel ops."""

    def __init__(self, load: Callable[[], Any], *, pad_id: int, eos_ids: set[int],
                 decode: Callable[[list[int]], str], max_batch: int = 64, max_batch_tokens: int = 32768):  # fmt: skip
        self.pad_id, self.eos_ids, self.decode = pad_id, eos_ids, decode
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.computed_tokens = 0  # prompt tokens run through the model (padding excluded)
        self.busy_s = 0.0  # time in batches
        self._jobs: list[GenJob | ScoreJob] = []
        self._cond = threading.Condition()
        self._closed = False
        loaded: Future = Future()
        self._thread = threading.Thread(target=self._loop, args=(load, loaded), name="radixrt-bench-hf", daemon=True)
        self._thread.start()
        self.model = loaded.result()
        self.vocab_size = self.model.config.vocab_size

    def submit(self, job: GenJob | ScoreJob) -> Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the transformers batcher is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _loop(self, load: Callable[[], Any], loaded: Future) -> None:
        try:
            self.model = load()
        except BaseException as e:  # noqa: BLE001 - raised in the constructor's thread
            loaded.set_exception(e)
            return
        loaded.set_result(self.model)
        while (batch := self._take()) is not None:
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    results = (self._run_score if batch[0].key == ("score",) else self._run_gen)(batch)
            except BaseException as e:  # noqa: BLE001 - a failed batch fails its jobs, not the thread
                results = None
                error = e
            # NOTE: counted before any job completes, so a caller that saw its result sees the time too
            self.busy_s += time.perf_counter() - start
            for i, job in enumerate(batch):
                if results is None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(results[i])

    def _take(self) -> list[GenJob | ScoreJob] | None:
        """The oldest job and the compatible jobs after it that fit the row and token limits."""
        with self._cond:
            self._cond.wait_for(lambda: self._jobs or self._closed)
            if self._closed:
                return None
            batch, rows, longest = [], 0, 0
            for job in list(self._jobs):
                if job.key != self._jobs[0].key and batch:
                    continue
                new_rows, new_longest = rows + len(job.rows), max([longest, *map(len, job.rows)])
                if batch and (new_rows > self.max_batch or new_rows * new_longest > self.max_batch_tokens):
                    continue
                batch.append(job)
                rows, longest = new_rows, new_longest
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [B, P]
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, P]
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        self.computed_tokens += sum(map(len, rows))
        return ids, mask

    def _run_gen(self, jobs: list[GenJob]) -> list[Any]:
        ids, mask = self._pad_left([job.ids for job in jobs])
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        control = RowControl([job.spec for job in jobs], ids.shape[1], self.eos_ids, self.decode)
        processors = LogitsProcessorList()
        if any(job.spec.matcher is not None for job in jobs):
            processors.append(GrammarMask(control, self.vocab_size))
        out = self.model.generate(
            ids,
            attention_mask=mask,
            generation_config=self._config(jobs),
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([control]),
        )
        generated = out[:, ids.shape[1] :]  # [B, n]
        kept = [control.kept(row, generated.shape[1]) for row in range(len(jobs))]
        return [(generated[row, :k].tolist(), control.reasons[row]) for row, k in enumerate(kept)]

    def _config(self, jobs: list[GenJob]) -> GenerationConfig:
        s = jobs[0].spec.sampling
        sampling: dict[str, Any] = {"do_sample": False}
        if not s.is_greedy:
            sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p,
                        "top_k": max(s.top_k, 0), "min_p": s.min_p or None}  # fmt: skip
        if s.ignore_eos:  # an id no token has: transformers fills a None eos from the model's config
            sampling["eos_token_id"] = [self.vocab_size]
        longest = max(job.spec.sampling.max_new_tokens for job in jobs)
        return GenerationConfig(max_new_tokens=longest, pad_token_id=self.pad_id, **sampling)

    def _run_score(self, jobs: list[ScoreJob]) -> list[Any]:
        sequences = [seq for job in jobs for seq in job.sequences]
        ids, mask = self._pad_left([row for row, _ in sequences])
        keep = min(max(len(row) - start for row, start in sequences) + 1, ids.shape[1])
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens
        logits = self.model(ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, keep, V]
        results = []
        for r, (row, start) in enumerate(sequences):
            # the logits predicting token j sit at window index keep - len(row) + j - 1
            js = range(max(start, 1), len(row))
            results.append([logprobs[r, keep - len(row) + j - 1, row[j]].item() for j in js])
        per_job = []
        for job in jobs:
            per_job.append(results[: len(job.sequences)])
            results = results[len(job.sequences) :]
        return per_job
