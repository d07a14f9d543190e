"""ACER synthesis, one sample per run:

    acer_context (given, or retrieved for the question) → acer_read (chunk, rank, top-M, reason) → acer_assemble

A retrieved sample's documents are fitted to the target less `synth.answer_max_tokens` for the reader, and the sample
refitted with the real answer in place (within 1% of the target, never over; rejected if a passage the reader saw
would be cut). A given context is never cut: laid out as labelled pieces, rejected if over a target it was given.
Any node may reject; the graph then ends.
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
    g.add_conditional_edges("acer_context", nodes.route("acer_read"), {"acer_read": "acer_read", "end": END})
    g.add_conditional_edges("acer_read", nodes.route("acer_assemble"), {"acer_assemble": "acer_assemble", "end": END})
    g.add_edge("acer_assemble", END)
    return g.compile()


graph = build_graph()
