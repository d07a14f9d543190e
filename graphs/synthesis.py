"""Long-input synthesis (SelfLong §3.1), one sample per run:

    instruction → retrieve → plan_qfs → [summarize]* → collect ⟲ (next level) → answer → assemble

`graph` is what langgraph.json hands to LangGraph Studio.
"""

from langgraph.graph import END, START, StateGraph

from graphs import nodes
from graphs.context import SynthContext
from graphs.state import SampleInput, SampleOutput, SynthState


def build_graph():
    """Compile the long-input synthesis graph."""
    g = StateGraph(SynthState, context_schema=SynthContext, input_schema=SampleInput, output_schema=SampleOutput)
    g.add_node("instruction", nodes.instruction)
    g.add_node("retrieve", nodes.retrieve)
    g.add_node("plan_qfs", nodes.plan_qfs)
    g.add_node("summarize", nodes.summarize_piece)
    g.add_node("collect", nodes.collect)
    g.add_node("answer", nodes.answer)
    g.add_node("assemble", nodes.assemble)
    g.add_edge(START, "instruction")
    g.add_conditional_edges("instruction", nodes.route("retrieve"), {"retrieve": "retrieve", "end": END})
    g.add_conditional_edges("retrieve", nodes.route("plan_qfs"), {"plan_qfs": "plan_qfs", "end": END})
    g.add_conditional_edges("plan_qfs", nodes.fan_out, ["summarize"])
    g.add_edge("summarize", "collect")
    g.add_conditional_edges("collect", nodes.after_collect, {"answer": "answer", "end": END, "summarize": "summarize"})
    g.add_conditional_edges("answer", nodes.route("assemble"), {"assemble": "assemble", "end": END})
    g.add_edge("assemble", END)
    return g.compile()


graph = build_graph()
