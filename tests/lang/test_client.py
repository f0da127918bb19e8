from __future__ import annotations

import logging
import threading

import pytest

from radixrt.errors import InternalError, InvalidRequest, Unauthorized
from radixrt.lang.backends.client import ClientClosed, RuntimeClient, error_from_reply
from radixrt.runtime import protocol as p

from .fake_server import FakeServer


def gen_request(rid: str, text: str, stream: bool = False) -> p.GenerateRequest:
    return p.GenerateRequest(rid=rid, text=text, sampling=p.SamplingParams(max_new_tokens=8), stream=stream)


def test_concurrent_requests_get_their_own_replies_when_answered_out_of_order():
    with FakeServer(hold=4) as server, RuntimeClient(server.address, timeout=10) as client:
        results: dict[str, str] = {}

        def ask(i: int) -> None:
            results[f"r{i}"] = client.call(gen_request(f"r{i}", "x" * (i + 1))).text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # the server held all four and answered newest first; each caller still got its own
    assert server.max_in_flight == 4
    assert results == {f"r{i}": f"<{i + 1}>" for i in range(4)}


def test_interleaved_streams_are_routed_by_rid():
    with FakeServer(hold=2, chunk_size=1) as server, RuntimeClient(server.address, timeout=10) as client:
        out: dict[str, list] = {}

        def consume(rid: str, prompt: str) -> None:
            out[rid] = list(client.stream(gen_request(rid, prompt, stream=True)))

        threads = [threading.Thread(target=consume, args=(rid, "y" * n)) for rid, n in (("a", 10), ("b", 100))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for rid, expected in (("a", "<10>"), ("b", "<100>")):
        chunks, final = out[rid][:-1], out[rid][-1]
        assert all(isinstance(c, p.GenerateChunk) and c.rid == rid for c in chunks)
        assert "".join(c.text for c in chunks) == expected
        assert isinstance(final, p.GenerateResult) and final.text == expected


def test_garbage_frames_are_logged_and_dropped(caplog):
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        server.garbage_before_replies = 1
        with caplog.at_level(logging.WARNING, logger="radixrt.lang.backends.client"):
            reply = client.call(gen_request("g", "hello"))
        assert reply.text == "<5>"
        assert sum("malformed frame" in r.message for r in caplog.records) == 2
        assert client.call(gen_request("h", "hi")).text == "<2>"  # still serving


def test_error_reply_raises_with_the_server_message_status_and_param():
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        server.errors["BOOM"] = "prompt is too long: 9000 > 4096"
        with pytest.raises(InvalidRequest) as info:
            client.call(gen_request("e", "BOOM"))
        assert str(info.value) == "prompt is too long: 9000 > 4096"
        assert info.value.status == 400 and info.value.param == "text"
        assert client.call(gen_request("ok", "fine")).text == "<4>"


def test_error_reply_maps_status_to_error_class():
    assert isinstance(error_from_reply(p.ErrorReply(rid="r", status=401, message="bad key")), Unauthorized)
    err = error_from_reply(p.ErrorReply(rid="r", status=500, message="worker died"))
    assert type(err) is InternalError and err.status == 500 and str(err) == "worker died"


def test_control_requests_are_answered_in_order():
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        info = client.call(p.GetModelInfo())
        ack = client.call(p.FlushCache())
        stats = client.call(p.GetStats())
    assert isinstance(info, p.ModelInfo) and info.context_length == 4096
    assert isinstance(ack, p.Ack) and ack.ok
    assert isinstance(stats, p.StatsReply) and stats.stats["received"] == 3


def test_timeout_aborts_the_request_on_the_server():
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        server.silent = True
        with pytest.raises(TimeoutError):
            client.call(gen_request("slow", "zzz"), timeout=0.2)
        server.silent = False
        assert client.call(gen_request("next", "abc")).text == "<3>"
    assert [m.rid for m in server.of_type(p.AbortRequest)] == ["slow"]


def test_closing_a_stream_early_aborts_it():
    with FakeServer(chunk_size=1) as server, RuntimeClient(server.address, timeout=10) as client:
        server.stream_gap = 0.2  # the request is still running when the client closes the stream
        stream = client.stream(gen_request("s", "x" * 1000, stream=True))
        first = next(stream)
        stream.close()
        assert isinstance(first, p.GenerateChunk) and first.text == "<"
        client.call(p.GetStats())  # a round trip: the abort has been sent before it
    assert [m.rid for m in server.of_type(p.AbortRequest)] == ["s"]


def test_close_fails_waiting_callers():
    with FakeServer() as server:
        server.silent = True
        client = RuntimeClient(server.address)
        errors = []

        def wait() -> None:
            try:
                client.call(gen_request("w", "q"))
            except ClientClosed as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        while not server.of_type(p.GenerateRequest):
            threading.Event().wait(0.01)
        client.close()
        t.join(timeout=5)
    assert len(errors) == 1
    with pytest.raises(ClientClosed):
        client.call(p.GetStats())


def test_many_requests_keep_flowing_through_the_wakeup_channel():
    # each request wakes the I/O thread once; thousands must not fill the wake-up socket
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        for i in range(1500):
            assert client.call(p.GetStats()).stats["received"] == i + 1


def test_control_replies_out_of_order_reach_the_right_caller():
    with FakeServer() as server, RuntimeClient(server.address, timeout=10) as client:
        server.control_hold = 3  # answers the three newest first
        out: dict[str, object] = {}

        def ask(name: str, msg: p.ClientMsg) -> None:
            out[name] = client.call(msg)

        threads = [
            threading.Thread(target=ask, args=args)
            for args in (("info", p.GetModelInfo()), ("ack", p.FlushCache()), ("stats", p.GetStats()))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert isinstance(out["info"], p.ModelInfo)
    assert isinstance(out["ack"], p.Ack)
    assert isinstance(out["stats"], p.StatsReply)


def test_api_key_is_stamped_on_every_message_kind():
    with FakeServer() as server:
        server.silent = True
        with RuntimeClient(server.address, timeout=0.2, api_key="k") as client:
            client.call(p.GetStats())
            client.call(p.GetModelInfo())
            client.call(p.FlushCache())
            with pytest.raises(TimeoutError):  # the timeout sends an AbortRequest
                client.call(gen_request("r", "x"))
            client.call(p.ScoreRequest(rid="s", prefix="a", continuations=["b"]))
    kinds = {type(m).__name__: m.api_key for m in server.received}
    assert kinds == dict.fromkeys(
        ["GetStats", "GetModelInfo", "FlushCache", "GenerateRequest", "AbortRequest", "ScoreRequest"], "k"
    )
