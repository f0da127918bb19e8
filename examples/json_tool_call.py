"""Tool calls with JSON-schema-constrained arguments, for several requests sharing the tool list.

The model picks a tool with `select`, then writes its arguments under the tool's JSON schema
(so they always parse and validate); Python runs the tool and the model answers from its
result. The long system prompt with the tool definitions is computed once and reused.

    python examples/json_tool_call.py [--url tcp://127.0.0.1:30001]
"""

from __future__ import annotations

import json

from _backend import backend, parse_args, print_cache_summary

import radixrt as sgl

TOOLS = {
    "get_weather": {
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "convert_currency": {
        "description": "Convert an amount of money between currencies.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "integer", "minimum": 0, "maximum": 1000000},
                "source": {"type": "string", "enum": ["USD", "EUR", "JPY"]},
                "target": {"type": "string", "enum": ["USD", "EUR", "JPY"]},
            },
            "required": ["amount", "source", "target"],
            "additionalProperties": False,
        },
    },
}

SYSTEM = "You are an assistant that calls tools. Available tools, with JSON schemas for their arguments:\n" + "\n".join(
    f"- {name}: {tool['description']} Arguments: {json.dumps(tool['parameters'])}" for name, tool in TOOLS.items()
)

REQUESTS = [
    "What's the weather like in Paris right now, in celsius?",
    "How much is 250 USD in EUR?",
    "Is it hot in Austin today? Use fahrenheit.",
    "Convert 10000 JPY to USD please.",
]

RATES = {"USD": 1.0, "EUR": 0.92, "JPY": 150.0}


def run_tool(name: str, args: dict) -> dict:
    if name == "get_weather":
        temp_c = 11 + len(args["city"]) % 7  # a stand-in for a weather service
        temp = temp_c if args["unit"] == "celsius" else round(temp_c * 9 / 5 + 32)
        return {"city": args["city"], "temperature": temp, "unit": args["unit"], "sky": "cloudy"}
    amount = args["amount"] / RATES[args["source"]] * RATES[args["target"]]
    return {"amount": round(amount, 2), "currency": args["target"]}


@sgl.function
def tool_call(s, request):
    s += sgl.system(SYSTEM)
    s += sgl.user(request)
    with s.assistant():
        s += "Tool: " + sgl.select("tool", choices=list(TOOLS)) + "\nArguments: "
        s += sgl.gen("arguments", max_tokens=64, json_schema=TOOLS[s["tool"]]["parameters"])
    result = run_tool(s["tool"], json.loads(s["arguments"]))
    s.set_var("result", result)
    s += sgl.user(f"Tool result: {json.dumps(result)}\nAnswer my request in one sentence.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=40, stop="\n"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    with backend(args) as b:
        states = tool_call.run_batch([{"request": r} for r in REQUESTS], backend=b, temperature=0, progress_bar=False)
        for request, state in zip(REQUESTS, states):
            report = state.cache_report()
            print(f"user: {request}")
            print(f"  call {state['tool']}({state['arguments']})")
            print(f"  result {json.dumps(state['result'])}")
            print(f"  answer: {state['answer'].strip()}")
            print(
                f"  [{report.cached_tokens}/{report.prompt_tokens} prompt tokens cached over "
                f"{len(report.records)} calls]\n"
            )
        print_cache_summary(states)


if __name__ == "__main__":
    main()
