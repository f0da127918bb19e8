"""Child process that compiles grammars into outlines-core indexes (run as a script by compile_process).

It imports only the standard library and outlines-core so it starts fast. The parent kills it at the
time limit, the only way to stop work running inside outlines-core. `build_regex` is shared with the
parent (sources.to_regex) so both convert schemas the same way.

Framing on stdin/stdout: every message is a 4-byte big-endian length and that many bytes.
  parent -> child: first the serialised Vocabulary, then one JSON compile request per grammar
                   ({"regex": ...} or {"schema": ..., "whitespace": ..., "placeholders": {...}}).
  child -> parent: b"O" + u32 states + u32 regex length + regex + serialised Index,
                   or b"E" + UTF-8 error message.
argv: max_states, memory limit in bytes (0: none).
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import outlines_core
from outlines_core.json_schema import build_regex_from_schema


def read_frame(stream) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    data = stream.read(length)
    return data if len(data) == length else None


def write_frame(stream, payload: bytes) -> None:
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def build_regex(request: dict[str, Any]) -> str:
    """The regex of a compile request; ValueError for a schema outlines-core cannot convert."""
    if "regex" in request:
        return request["regex"]
    regex = build_regex_from_schema(request["schema"], request["whitespace"])
    for token, pattern in request["placeholders"].items():
        regex = regex.replace(f'"{token}"', f"({pattern})")
    return regex


def compile_one(request: bytes, vocabulary: outlines_core.Vocabulary, max_states: int) -> bytes:
    try:
        regex = build_regex(json.loads(request))
    except ValueError as exc:
        return b"E" + f"invalid JSON schema: {str(exc).splitlines()[0]}".encode()
    try:
        # NOTE: the NUL sentinel is spelled only by the end token (see vocabulary.END_SENTINEL).
        index = outlines_core.Index(f"(?:{regex})\\x00", vocabulary)
    except (ValueError, RuntimeError, OverflowError) as exc:
        return b"E" + str(exc).encode()
    num_states = len(index.get_transitions())
    if num_states > max_states:
        return b"E" + f"the grammar has {num_states} states, more than the limit of {max_states}".encode()
    # NOTE: outlines-core exposes its byte serialisation only through __reduce__ (Index.from_binary, bytes).
    _, (binary,) = index.__reduce__()
    encoded = regex.encode()
    return b"O" + struct.pack(">II", num_states, len(encoded)) + encoded + binary


def main() -> None:
    max_states, memory_limit = int(sys.argv[1]), int(sys.argv[2])
    if memory_limit > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    vocabulary_bytes = read_frame(stdin)
    if vocabulary_bytes is None:
        return
    vocabulary = outlines_core.Vocabulary.from_binary(vocabulary_bytes)
    while (request := read_frame(stdin)) is not None:
        try:
            reply = compile_one(request, vocabulary, max_states)
        except MemoryError:
            reply = b"E" + b"the grammar needs more memory than the compile limit"
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
