"""Tree of thought with fork/join: plans, answers for each plan, a score for each answer.

`fork` commits the shared prefix once, then the branches run concurrently and each one's
prompt is served from the cache; the scores pick the best branch.

    python examples/tree_of_thought.py [--url tcp://127.0.0.1:30001]
"""

from __future__ import annotations

from _backend import backend, parse_args, print_cache_summary

import radixrt as sgl

QUESTION = "A farmer has 3 fields with 12 sheep each and sells 7 sheep. How many sheep are left?"


@sgl.function
def tree_of_thought(s, question, width=3):
    s += sgl.system("You solve word problems step by step, briefly.")
    s += sgl.user(question)
    plans = s.fork(width)
    for i, plan in enumerate(plans):
        with plan.assistant():
            plan += f"Plan {i + 1}: " + sgl.gen("plan", max_tokens=32, stop="\n", temperature=0.8)
        answers = plan.fork(2)
        for answer in answers:
            answer += sgl.user("Carry out the plan and give the final number.")
            answer += sgl.assistant("Answer: " + sgl.gen_int("answer"))
            answer += sgl.user("Rate that answer from 1 (wrong) to 9 (surely right).")
            answer += sgl.assistant("Rating: " + sgl.gen("score", max_tokens=2, regex="[1-9]"))
        plan["candidates"] = [(int(a["score"]), a["answer"], plan["plan"].strip()) for a in answers]
    candidates = [c for plan in plans for c in plan["candidates"]]
    s["best"] = max(candidates, key=lambda c: c[0])
    s["candidates"] = candidates


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    with backend(args) as b:
        state = tree_of_thought.run(question=QUESTION, backend=b)
        print(f"question: {QUESTION}\n")
        for score, answer, plan in state["candidates"]:
            print(f"  score {score}  answer {answer:<6} plan: {plan}")
        score, answer, plan = state["best"]
        print(f"\nbest answer: {answer} (score {score})")
        print(state.cache_report())
        print_cache_summary([state])


if __name__ == "__main__":
    main()
