"""Long-output synthesis (instruction back-translation), one sample per run:

    pick_document → backtranslate
"""

from langgraph.graph import END, START, StateGraph

from graphs import nodes
from graphs.context import SynthContext
from graphs.state import SampleInput, SampleOutput, SynthState


def build_graph():
    """Compile the back-translation graph."""
    g = StateGraph(SynthState, context_schema=SynthContext, input_schema=SampleInput, output_schema=SampleOutput)
    g.add_node("pick_document", nodes.pick_document)
    g.add_node("backtranslate", nodes.backtranslate)
    g.add_edge(START, "pick_document")
    g.add_conditional_edges(
        "pick_document", nodes.route("backtranslate"), {"backtranslate": "backtranslate", "end": END}
    )
    g.add_edge("backtranslate", END)
    return g.compile()


graph = build_graph()
