"""Multi-turn RAG: several users chat about the same documents under one system prompt.

Every conversation's prompt starts with the same system prompt and retrieved documents, and
each turn extends the previous one, so the first turn of each user reuses the shared prefix
and later turns reuse the whole conversation so far.

    python examples/rag_multi_turn.py [--url tcp://127.0.0.1:30001]
"""

from __future__ import annotations

from _backend import backend, parse_args, print_cache_summary

import radixrt as sgl

DOCUMENTS = [
    "The Aurora line is a train that runs between Lumen and Harrow every 20 minutes from 6:00 to 23:00. "
    "A single ticket costs 4 credits; a day pass costs 10 credits.",
    "Lumen's central library opens at 9:00 and closes at 18:00 on weekdays and at 14:00 on Saturdays. "
    "It is closed on Sundays. Members may borrow up to 8 books for three weeks.",
    "Harrow market sells fruit, fish and bread every Tuesday and Friday morning. Stalls open at 7:00. "
    "The fish stalls close first, usually by 11:00.",
]

SYSTEM = (
    "You answer questions about the town guide below. Use only the guide; answer in one sentence.\n\n"
    + "\n\n".join(f"[Document {i + 1}] {doc}" for i, doc in enumerate(DOCUMENTS))
)

CONVERSATIONS = [
    ["How often does the Aurora line run?", "How much is a day pass?", "When is the last train?"],
    ["When does the library close on Saturday?", "How many books can I borrow?"],
    ["On which days is Harrow market open?", "What closes first there?", "When do the stalls open?"],
]


@sgl.function
def chat(s, turns):
    s += sgl.system(SYSTEM)
    for i, question in enumerate(turns):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen(f"answer_{i}", max_tokens=32, stop="\n"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    with backend(args) as b:
        states = chat.run_batch([{"turns": t} for t in CONVERSATIONS], backend=b, temperature=0, progress_bar=False)
        for turns, state in zip(CONVERSATIONS, states):
            for i, question in enumerate(turns):
                meta = state.get_meta_info(f"answer_{i}")
                print(f"user: {question}")
                print(f"  assistant: {state[f'answer_{i}'].strip()}")
                print(f"  [turn {i + 1}: {meta['cached_tokens']}/{meta['prompt_tokens']} prompt tokens cached]")
            print()
        print_cache_summary(states)


if __name__ == "__main__":
    main()
