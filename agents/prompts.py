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

# Step 1, one template per task type (`synth.task_types` draws one per sample; INSTRUCTION_PROMPT above is
# the "open" type). Each keeps the passage and "Write one realistic request" (the scripted test server
# recognises the instruction step by them).
# Fields: random_chunk
QA_INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library: a question with a definite, checkable answer that can only be found by combining facts \
stated in two or more different documents (for example, a fact in one document that leads to the \
answer in another). Ask it as the user would, without mentioning "the passage" or "the documents". \
Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Fields: random_chunk
SUMMARY_INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library: a request for a summary or overview of a topic that several different documents each \
cover in part, asking for the main points of all of them brought together in one well-organised text. \
Write it as the user would, without mentioning "the passage" or "the documents". Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Fields: random_chunk
COMPARISON_INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library: a request to compare or contrast two or more things (tools, functions, approaches, \
versions or ideas) that are described in different documents: their similarities, their differences, \
their trade-offs and when each is the better choice. Write it as the user would, without mentioning \
"the passage" or "the documents". Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Fields: random_chunk
AGGREGATION_INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library: a request to list, count or collect every instance of something that is scattered over \
many different documents (for example, every function that accepts a given option, or how many \
components share some property), so that an answer missing one document would be wrong. Write it as \
the user would, without mentioning "the passage" or "the documents". Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Fields: random_chunk
TIMELINE_INSTRUCTION_PROMPT = """Here is a random passage from a large library, for inspiration only:
<passage>
{random_chunk}
</passage>

Write one realistic request that a user might give to an assistant able to read many documents of \
this library: a request to put events, versions, changes or steps that are described in different \
documents into order (the order in which they happened, or in which they happen or must be done) and \
to explain how each one leads to the next. Write it as the user would, without mentioning "the \
passage" or "the documents". Use 10 to 80 words.

Reply with JSON only: {{"instruction": "..."}}"""

# Task type (the names `synth.task_types` weighs) -> its instruction template.
INSTRUCTION_TEMPLATES = {
    "qa": QA_INSTRUCTION_PROMPT,
    "summary": SUMMARY_INSTRUCTION_PROMPT,
    "comparison": COMPARISON_INSTRUCTION_PROMPT,
    "aggregation": AGGREGATION_INSTRUCTION_PROMPT,
    "timeline": TIMELINE_INSTRUCTION_PROMPT,
    "open": INSTRUCTION_PROMPT,
}

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

# Step 4: the answer, written from the final summaries only, confined to them.
# Fields: notes, instruction, citations (CITE_RULE filled in, or "" with synth.cite=false)
ANSWER_PROMPT = """Notes gathered from a large collection of documents:
<notes>
{notes}
</notes>

Using these notes, respond to the request below as a helpful expert. Write a complete, \
well-organised answer that brings together information from several documents. Use only what the \
notes say: where they do not cover part of the request, say so instead of adding outside knowledge. \
Do not mention the notes.{citations}

<request>
{instruction}
</request>"""

# Appended to ANSWER_PROMPT with synth.cite=true: citations in the sample's own document labels.
# Fields: label (a label as the sample shows it, e.g. "Document 3")
CITE_RULE = """ Point to the documents each statement draws on by the labels the notes give them, \
for example ({label})."""

# synth.verify=true: a judge call on the answer against the notes it was written from.
# Fields: notes, answer
VERIFY_PROMPT = """You are checking an answer against the notes it had to be written from.
<notes>
{notes}
</notes>

<answer>
{answer}
</answer>

Is every factual statement of the answer supported by the notes? Reply with JSON only: \
{{"supported": true or false, "reason": "the first unsupported statement, or why it is supported"}}"""

# Long-output data (SelfLong §3.1, instruction back-translation).
# Fields: document
BACKTRANSLATION_PROMPT = """Below is a piece of writing. Write the instruction a user could have \
given a writer so that this text is an excellent response to it: what to write, its topic and key \
points, its form, style and approximate length. Do not quote the text.

<text>
{document}
</text>

Reply with JSON only: {{"instruction": "..."}}"""

# ACER: answer from the top-ranked chunks with step-by-step reasoning. Each passage is a <passage> block whose first
# line is the header of the document it comes from, as the training input heads that document (agents/acer.py).
# Fields: passages, question
ACER_PROMPT = """Passages retrieved from a long context (some may be irrelevant). Each passage starts with \
the label of the document it comes from; several passages may come from the same document:
<passages>
{passages}
</passages>

Question: {question}

Think step by step: note which passages matter and what they say, citing each by its document's label exactly \
as written above (never by a passage number), then reason to the answer. \
Reply with JSON only: {{"reasoning": "...", "answer": "..."}}"""

# synth.verify=true for back-translation: does the instruction ask for this kind of text?
# Fields: instruction, document
INSTRUCTION_FIT_PROMPT = """You are checking an instruction given to a writer against the text written for it.
<instruction>
{instruction}
</instruction>

<text>
{document}
</text>

Would this text be a fitting, complete response to the instruction (its topic, kind of text and scope)? \
Reply with JSON only: {{"supported": true or false, "reason": "why"}}"""

# One re-ask after a reply that did not validate.
# Fields: error
REASK_PROMPT = """Your previous reply could not be used: {error}. Reply again with JSON only, \
matching the requested format exactly."""
