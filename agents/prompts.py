"""Every prompt of the synthesis pipeline, as named constants. The fields each one needs are the
`{names}` in it; tests check that callers fill exactly those."""

# Marker a summarizer answers when a chunk holds nothing relevant; such summaries are dropped.
NOTHING_RELEVANT = "NOTHING_RELEVANT"

SYSTEM_PROMPT = "You are a careful, knowledgeable assistant."

# Step 1 (SelfLong §3.1): a random chunk of the corpus is prepended for diversity.
# Fields: random_chunk
INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library. Answering it must need information gathered from several different documents \
(a comparison, a synthesis, a survey or a chain of reasoning), not from this passage alone. Write \
it as the user would, without mentioning "the passage" or "the documents". Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Step 3: query-focused summarization of one chunk (and, recursively, of grouped summaries).
# Fields: instruction, text, nothing
QFS_PROMPT = """You are gathering material to answer this request:
<request>
{instruction}
</request>

Read the text below and write down everything in it that is relevant to the request: facts, \
figures, names, definitions and arguments, saying which document they come from when it is \
known. Leave out everything irrelevant. Be concise but complete, and do not answer the request yet.
If nothing in the text is relevant, reply exactly {nothing}

<text>
{text}
</text>"""

# Step 4: the answer, written from the final summaries only.
# Fields: notes, instruction
ANSWER_PROMPT = """Notes gathered from a large collection of documents:
<notes>
{notes}
</notes>

Using these notes, respond to the request below as a helpful expert. Write a complete, \
well-organised answer that brings together information from several documents. Do not mention \
the notes.

<request>
{instruction}
</request>"""

# Long-output data (SelfLong §3.1, instruction back-translation).
# Fields: document
BACKTRANSLATION_PROMPT = """Below is a piece of writing. Write the instruction a user could have \
given a writer so that this text is an excellent response to it: what to write, its topic and key \
points, its form, style and approximate length. Do not quote the text.

<text>
{document}
</text>

Reply with JSON only: {{"instruction": "..."}}"""

# ACER: answer from the top-ranked chunks with step-by-step reasoning.
# Fields: passages, question
ACER_PROMPT = """Passages retrieved from a long context (some may be irrelevant):
<passages>
{passages}
</passages>

Question: {question}

Think step by step: note which passages matter and what they say, then reason to the answer. \
Reply with JSON only: {{"reasoning": "...", "answer": "..."}}"""

# One re-ask after a reply that did not validate.
# Fields: error
REASK_PROMPT = """Your previous reply could not be used: {error}. Reply again with JSON only, \
matching the requested format exactly."""
