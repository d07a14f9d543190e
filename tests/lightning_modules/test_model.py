"""Loading a stage's model: from a saved folder through from_pretrained, with a new RoPE base that
really reaches the rotary tables (transformers 5 keeps θ in config.rope_parameters)."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_modules.model import build_model, set_rope_theta

CONFIG = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0)


def test_a_new_rope_base_changes_the_rotary_tables_like_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(tmp_path)
    model = build_model(str(tmp_path), None, rope_theta=40000.0, max_position_embeddings=1024, attention="sdpa")
    fresh = LlamaForCausalLM(LlamaConfig(**{**CONFIG, "rope_theta": 40000.0}))
    assert model.config.rope_parameters["rope_theta"] == 40000.0 and model.config.max_position_embeddings == 1024
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)
    torch.testing.assert_close(model.model.rotary_emb.original_inv_freq, fresh.model.rotary_emb.inv_freq)
    # the weights are the saved ones, and the output changes with θ (positions > 0 rotate differently)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(model.model.embed_tokens.weight, saved.model.embed_tokens.weight)
    ids = torch.arange(40).unsqueeze(0) % 97
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, saved(input_ids=ids).logits, atol=1e-4)
        set_rope_theta(saved, 40000.0, 1024)
        torch.testing.assert_close(model(input_ids=ids).logits, saved(input_ids=ids).logits)
