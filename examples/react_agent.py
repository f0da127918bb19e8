"""A ReAct agent with two tools, run for several questions that share one long system prompt.

Each step the model thinks (free text), picks an action with `select` (so it is always a real
tool), and writes the tool's argument under a regex; Python runs the tool and appends the
observation. Every call extends the program's cached prefix, and all programs share the
system prompt, so almost every prompt token comes from the radix cache.

    python examples/react_agent.py [--url tcp://127.0.0.1:30001]
"""

from __future__ import annotations

import ast
import operator

from _backend import backend, parse_args, print_cache_summary

import radixrt as sgl

FACTS = {
    "france": "France: capital Paris, population 68 million.",
    "japan": "Japan: capital Tokyo, population 124 million.",
    "italy": "Italy: capital Rome, population 59 million.",
    "canada": "Canada: capital Ottawa, population 40 million.",
}

SYSTEM = f"""You are an agent that answers questions with tools. Tools:
- lookup[country]: facts about one of: {", ".join(FACTS)}.
- calculate[expression]: evaluates arithmetic such as 68 * 2.
- finish[answer]: gives the final answer.
Work in steps. Each step has a Thought line, then an Action line such as lookup[france].
An Observation line follows each action. Finish as soon as you know the answer.

Example 1. Question: What is the capital of Germany?
Thought: I should look up Germany.
Action: lookup[germany]
Observation: Germany: capital Berlin, population 84 million.
Thought: The capital of Germany is Berlin.
Action: finish[Berlin]

Example 2. Question: What is the population of Spain plus 1 million?
Thought: I need the population of Spain.
Action: lookup[spain]
Observation: Spain: capital Madrid, population 48 million.
Thought: Now I add 1 to 48.
Action: calculate[48 + 1]
Observation: 49
Thought: The answer is 49 million.
Action: finish[49 million]"""

QUESTIONS = [
    "What is the capital of France?",
    "How many people live in Japan and Italy together, in millions?",
    "Which country has the capital Ottawa?",
    "What is twice the population of Canada, in millions?",
]


def calculate(expression: str) -> str:
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("unsupported expression")

    try:
        return str(ev(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"


@sgl.function
def react(s, question, max_steps=3):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    with s.assistant():  # the whole trace is one assistant turn, observations included (as in ReAct)
        for step in range(max_steps):
            s += "Thought: " + sgl.gen(f"thought_{step}", max_tokens=24, stop="\n")
            s += "\nAction: " + sgl.select(f"action_{step}", choices=["lookup", "calculate", "finish"])
            action = s[f"action_{step}"]
            if action == "lookup":
                s += "[" + sgl.select(f"arg_{step}", choices=list(FACTS)) + "]"
            else:  # the closing bracket is part of the grammar, so the model decides where to stop
                arg_regex = r"[0-9+\-*/ .()]{1,24}\]" if action == "calculate" else r"[A-Za-z0-9 .]{1,30}\]"
                s += "[" + sgl.gen(f"arg_{step}", max_tokens=16, regex=arg_regex)
            arg = s[f"arg_{step}"].rstrip("]")
            if action == "finish":
                s.set_var("answer", arg.strip())
                return
            observation = FACTS[arg] if action == "lookup" else calculate(arg)
            s += f"\nObservation: {observation}\n"
    s.set_var("answer", "(no answer within the step limit)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    with backend(args) as b:
        states = react.run_batch([{"question": q} for q in QUESTIONS], backend=b, temperature=0, progress_bar=False)
        for question, state in zip(QUESTIONS, states):
            print(f"Q: {question}")
            for message in state.messages()[2:]:
                print(f"  {message['role']}: {message['content'].strip()}".replace("\n", "\n    "))
            report = state.cache_report()
            print(
                f"-> answer: {state['answer']}   [{report.cached_tokens}/{report.prompt_tokens} prompt tokens "
                f"cached over {len(report.records)} calls]\n"
            )
        print_cache_summary(states)


if __name__ == "__main__":
    main()
