"""Child process that compiles regexes into outlines-core indexes; run as a script, not imported.

It imports only the standard library and outlines-core so it starts fast. The parent can kill it at
the time limit, which is the only way to stop a compile running inside outlines-core.

Framing on stdin/stdout: every message is a 4-byte big-endian length and that many bytes.
  parent -> child: first the serialised Vocabulary, then one UTF-8 regex per request.
  child -> parent: b"O" + u32 number of states + serialised Index, or b"E" + UTF-8 error message.
argv: max_states, memory limit in bytes (0: none).
"""

from __future__ import annotations

import struct
import sys

import outlines_core


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


def compile_one(regex: str, vocabulary: outlines_core.Vocabulary, max_states: int) -> bytes:
    try:
        index = outlines_core.Index(regex, vocabulary)
    except (ValueError, RuntimeError, OverflowError) as exc:
        return b"E" + str(exc).encode()
    num_states = len(index.get_transitions())
    if num_states > max_states:
        return b"E" + f"the grammar has {num_states} states, more than the limit of {max_states}".encode()
    # NOTE: outlines-core exposes its byte serialisation only through __reduce__ (Index.from_binary, bytes).
    _, (binary,) = index.__reduce__()
    return b"O" + struct.pack(">I", num_states) + binary


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
            reply = compile_one(request.decode(), vocabulary, max_states)
        except MemoryError:
            reply = b"E" + b"the grammar needs more memory than the compile limit"
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
