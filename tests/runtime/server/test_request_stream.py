"""A request's Stream: bounded whatever the reader does, aborting when left early."""

from __future__ import annotations

import asyncio

from radixrt.runtime.protocol import ErrorReply, GenerateChunk, GenerateResult
from radixrt.runtime.server.request_stream import END, Stream


class Handler:
    worker_rids = ["ns/r"]
    finished = False


def new_stream(closed: list[Stream]) -> Stream:
    return Stream(closed.append, Handler(), "ns/r", "r")


def chunk(i: int) -> GenerateChunk:
    meta = {"completion_tokens": i + 1, "id": "ns/r"}
    return GenerateChunk(rid="ns/r", text=f"<{i}>", output_ids=[i], meta_info=meta)


async def read_all(stream: Stream) -> list:
    return [msg async for msg in stream]


def test_chunks_a_slow_reader_has_not_taken_merge_into_one():
    closed: list[Stream] = []
    stream = new_stream(closed)
    for i in range(1000):
        stream.put(chunk(i))
    assert stream.buffered == 1
    stream.put(GenerateResult(rid="ns/r", text="all", output_ids=list(range(1000))))
    stream.put(END)
    merged, result = asyncio.run(read_all(stream))
    assert merged.text == "".join(f"<{i}>" for i in range(1000)) and merged.output_ids == list(range(1000))
    assert merged.meta_info == {"completion_tokens": 1000, "id": "r"}  # the newest, under the client's rid
    assert merged.rid == "r" and result.text == "all" and stream.done and not closed


def test_a_reader_that_keeps_up_sees_every_chunk():
    async def run() -> list:
        stream = new_stream([])
        seen = []
        for i in range(3):
            stream.put(chunk(i))
            seen.append(await stream.__anext__())
        stream.put(ErrorReply(rid="ns/r", status=503, message="gone"))
        stream.put(END)
        return seen + await read_all(stream)

    msgs = asyncio.run(run())
    assert [m.text for m in msgs[:3]] == ["<0>", "<1>", "<2>"] and msgs[3].status == 503 and msgs[3].rid == "r"


def test_a_cancelled_reader_closes_the_stream_once():
    async def run(closed: list[Stream]) -> None:
        stream = new_stream(closed)
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stream.close()

    closed: list[Stream] = []
    asyncio.run(run(closed))
    assert len(closed) == 1
