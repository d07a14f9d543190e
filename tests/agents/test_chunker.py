import tracemalloc

import pytest
from pydoc_data.topics import topics

from agents.chunker import TokenChunker, stitch
from agents.errors import InputError

TEXT = "\n\n".join(topics[k] for k in sorted(topics)[:12])


@pytest.fixture(scope="module")
def chunker(minilm_tokenizer):
    return TokenChunker(minilm_tokenizer, chunk_tokens=64, overlap_tokens=8)


def test_chunks_are_exact_overlapping_windows(chunker):
    chunks = list(chunker.chunks(TEXT))
    assert len(chunks) > 20
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur.index == prev.index + 1
        assert cur.token_start == prev.token_start + 56
        assert cur.start < prev.end  # they overlap
    for c in chunks:
        assert c.text == TEXT[c.start : c.end]
        # a window may start inside a word, which re-tokenizes a little differently on its own
        assert abs(c.n_tokens - chunker.count_tokens(c.text)) <= 3
    assert all(c.n_tokens == 64 for c in chunks[:-1]) and 0 < chunks[-1].n_tokens <= 64
    assert stitch(list(reversed(chunks))) == TEXT
    total = chunks[-1].token_start + chunks[-1].n_tokens
    assert total == chunker.count_tokens(TEXT)


def test_streaming_in_small_pieces_gives_the_same_chunks(minilm_tokenizer, chunker):
    streaming = TokenChunker(minilm_tokenizer, chunk_tokens=64, overlap_tokens=8, segment_chars=700)
    blocks = [TEXT[i : i + 333] for i in range(0, len(TEXT), 333)]
    assert list(streaming.chunks(blocks)) == list(chunker.chunks(TEXT))


def test_blank_text_has_no_chunks(chunker):
    assert list(chunker.chunks("   \n\n\t ")) == []
    assert list(chunker.chunks([])) == []


def test_a_short_text_is_one_chunk(chunker):
    (only,) = chunker.chunks("  Just a few words.  ")
    assert only.text == "  Just a few words.  " and only.n_tokens == 5


def test_memory_does_not_grow_with_the_document(minilm_tokenizer):
    chunker = TokenChunker(minilm_tokenizer, chunk_tokens=200, overlap_tokens=20, segment_chars=4096)

    def peak(copies: int) -> int:
        text = TEXT * copies
        blocks = (text[i : i + (1 << 14)] for i in range(0, len(text), 1 << 14))
        tracemalloc.start()
        n = sum(1 for _ in chunker.chunks(blocks))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert n > 0
        return top

    small, large = peak(10), peak(40)  # 0.4 MB and 1.6 MB of text
    assert large < 1.3 * small, (small, large)
    assert large < len(TEXT) * 40 / 4


def test_bad_settings_are_refused(minilm_tokenizer, tmp_path):
    with pytest.raises(InputError, match="overlap_tokens=64 must be"):
        TokenChunker(minilm_tokenizer, chunk_tokens=64, overlap_tokens=64)
    with pytest.raises(InputError, match="tokenizer path .*missing does not exist"):
        TokenChunker(str(tmp_path / "missing"))
