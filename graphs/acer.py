"""ACER synthesis, one sample per run:

    acer_context (given, or retrieved for the question) → acer_read (chunk, rank, top-M, reason) → acer_assemble
"""

from langgraph.graph import END, START, StateGraph

from graphs import nodes
from graphs.context import SynthContext
from graphs.state import SampleInput, SampleOutput, SynthState


def build_graph():
    """Compile the ACER graph."""
    g = StateGraph(SynthState, context_schema=SynthContext, input_schema=SampleInput, output_schema=SampleOutput)
    g.add_node("acer_context", nodes.acer_context)
    g.add_node("acer_read", nodes.acer_read)
    g.add_node("acer_assemble", nodes.acer_assemble)
    g.add_edge(START, "acer_context")
    g.add_edge("acer_context", "acer_read")
    g.add_conditional_edges("acer_read", nodes.route("acer_assemble"), {"acer_assemble": "acer_assemble", "end": END})
    g.add_edge("acer_assemble", END)
    return g.compile()


graph = build_graph()
