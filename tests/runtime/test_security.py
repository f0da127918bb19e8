"""Security of `radixrt serve`: the API key stays out of `ps`, the ipc:// sockets live in a private
directory, nothing crosses a socket as pickle, and no client can read another's output."""

from __future__ import annotations

import argparse
import ast
import glob
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import radixrt
from radixrt.envs import API_KEY as API_KEY_ENV
from radixrt.runtime.config import ServerArgs
from tests.runtime.server_harness import ZmqClient, http_client, sse_events, start_server, stats, zmq_generate

GREEDY = {"temperature": 0, "max_new_tokens": 12}


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


# ---- no server -------------------------------------------------------------------------------


def parsed(argv: list[str], env: dict[str, str]) -> ServerArgs:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli(parser.parse_args(argv), env)


def test_the_api_key_comes_from_the_environment_unless_the_flag_gives_one():
    assert parsed([], {API_KEY_ENV: "from-env"}).api_key == "from-env"
    assert parsed(["--api-key", "flag"], {API_KEY_ENV: "from-env"}).api_key == "flag"
    assert parsed([], {}).api_key is None


def test_the_ipc_dir_must_be_a_private_directory_of_this_user(tmp_path):
    made = ServerArgs(ipc_dir=str(tmp_path / "ipc")).make_ipc_dir()
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    ServerArgs(ipc_dir=str(loose)).make_ipc_dir()
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700  # tightened
    (tmp_path / "link").symlink_to(loose)
    with pytest.raises(OSError, match="not a link"):
        ServerArgs(ipc_dir=str(tmp_path / "link")).make_ipc_dir()
    default = ServerArgs().make_ipc_dir()
    assert stat.S_IMODE(os.stat(default).st_mode) == 0o700
    os.rmdir(default)


FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def test_no_module_of_radixrt_unpickles_or_sends_python_objects():
    root = Path(radixrt.__file__).parent
    problems = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if FORBIDDEN_MODULES & set(names):
                problems.append(f"{path.relative_to(root)}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in ("send_pyobj", "recv_pyobj"):
                problems.append(f"{path.relative_to(root)}:{node.lineno} uses {node.attr}")
    assert problems == []


# ---- against a server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tiny_model_dir, tmp_path_factory):
    ipc_dir = tmp_path_factory.mktemp("sockets") / "ipc"
    handle = start_server(model=str(tiny_model_dir), api_key="s3cret-key", ipc_dir=str(ipc_dir), grammar_time_limit=5.0)
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def authed(keyed):
    with http_client(keyed, headers={"Authorization": "Bearer s3cret-key"}) as client:
        yield client


@pytest.mark.slow
def test_the_api_key_is_on_no_command_line_and_not_in_the_workers_environment(keyed, authed):
    worker = stats(authed)["worker_pid"]
    assert b"s3cret-key" not in cmdline(keyed.process.pid) and b"s3cret-key" not in cmdline(worker)
    assert f"{API_KEY_ENV}=s3cret-key".encode() in environ(keyed.process.pid)
    assert API_KEY_ENV.encode() not in environ(worker)
    with http_client(keyed) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/debug/cache").status_code == 401
    assert authed.get("/metrics").status_code == 200


@pytest.mark.slow
def test_the_worker_sockets_live_in_a_0700_directory(keyed):
    ipc_dir = Path(keyed.args.ipc_dir)
    assert stat.S_IMODE(ipc_dir.stat().st_mode) == 0o700 and ipc_dir.stat().st_uid == os.getuid()
    assert sorted(p.name for p in ipc_dir.iterdir()) == ["from_worker", "to_worker"]
    assert all(stat.S_ISSOCK(p.stat().st_mode) for p in ipc_dir.iterdir())


@pytest.mark.slow
def test_the_default_ipc_dir_is_private_and_removed_at_shutdown(tiny_model_dir):
    server = start_server(model=str(tiny_model_dir))
    (made,) = glob.glob(f"/tmp/radixrt-{server.process.pid}-*")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    assert server.shutdown() == 0 and not os.path.exists(made)


@pytest.mark.slow
def test_a_duplicate_http_rid_cannot_read_another_clients_stream(keyed, authed):
    prompts = ["The first client asks about apples", "The second client asks about rockets"]
    quiet = [authed.post("/generate", json={"text": p, "sampling_params": GREEDY}).json() for p in prompts]

    def stream(prompt: str) -> dict:
        body = {"text": prompt, "sampling_params": GREEDY, "rid": "same-rid", "stream": True}
        with authed.stream("POST", "/generate", json=body) as r:
            return sse_events(r)[-1]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(stream, prompts))
    assert [r["output_ids"] for r in results] == [q["output_ids"] for q in quiet]
    assert all(r["meta_info"]["id"] == "same-rid" for r in results)
    zmq = ZmqClient(keyed.zmq_address)
    zmq.send(zmq_generate("same-rid", prompts[1], api_key="s3cret-key", **GREEDY))
    with ThreadPoolExecutor(1) as pool:
        http_side = pool.submit(stream, prompts[0])
        assert zmq.until_end("same-rid")[-1].output_ids == quiet[1]["output_ids"]
        assert http_side.result()["output_ids"] == quiet[0]["output_ids"]
    zmq.close()


@pytest.mark.slow
def test_hostile_grammars_and_bodies_get_400_while_other_requests_run(authed):
    heavy = {"text": "Hi", "sampling_params": {**GREEDY, "regex": "(a|b|ab)*[a-z]{1,3000}x{1,3000}"}}
    with ThreadPoolExecutor(1) as pool:
        compiling = pool.submit(authed.post, "/generate", json=heavy)
        normal = authed.post("/generate", json={"text": "Hello", "sampling_params": GREEDY})
        # served while the grammar compiles (for 5 s: the normal request takes well under one)
        assert normal.status_code == 200 and not compiling.done()
        refused = compiling.result()
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "regex"
    deep = '{"type":"object","properties":{"a":' * 3000 + '{"type":"string"}' + "}}" * 3000
    body = '{"text":"Hi","sampling_params":{"json_schema":' + deep + "}}"
    assert authed.post("/generate", content=body.encode()).status_code == 400
    bad = authed.post("/generate", json={"text": "Hi", "sampling_params": {"json_schema": {"type": 5}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "json_schema"
