"""Growing a trained LM keeps what it computes, and the grown network trains."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model.unified.grow import deepen, widen


@pytest.fixture
def lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=True, rms_norm_eps=1e-6)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a trained-looking network: no zero weights anywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("grow", [lambda m: deepen(m), lambda m: deepen(m, every=2),
                                  lambda m: widen(m, 96, 192), lambda m: deepen(widen(m, 96, 160))])
def test_a_grown_lm_computes_what_it_did_and_trains(lm, grow):
    ids = torch.randint(0, 50, (3, 20))
    big = grow(lm).eval()
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in lm.parameters())
    assert torch.allclose(logits(big, ids), logits(lm, ids), atol=1e-5)
    assert big.lm_head.weight.data_ptr() == big.model.embed_tokens.weight.data_ptr()  # still tied
    big.train()
    opt = torch.optim.SGD(big.parameters(), lr=0.5)
    before = big(ids, labels=ids).loss
    before.backward()
    grads = {k: p.grad.abs().sum().item() for k, p in big.named_parameters() if p.grad is not None}
    assert all(g > 0 for k, g in grads.items() if "o_proj" in k or "down_proj" in k)  # the zero writes learn
    opt.step()
    assert big(ids, labels=ids).loss < before


def test_widen_refuses_what_it_cannot_keep(lm):
    with pytest.raises(ValueError, match="multiple of the head size"):
        widen(lm, 70, 128)
    with pytest.raises(ValueError, match="hidden 32 must be >= 64"):
        widen(lm, 32, 128)


def test_the_recipe_grows_the_lm_before_the_round_it_names_and_resumes_grown(tmp_path):
    from transformers import AutoModelForCausalLM

    from model.unified.config import GrowConfig, SelfPlayConfig
    from model.unified.train import train_unified
    from tests.test_unified import TINY

    grown = TINY.model_copy(update={"selfplay": TINY.selfplay.model_copy(update={
        "rounds": 2, "grow": GrowConfig(round=1, every=1, hidden_size=48, intermediate_size=80)})})
    out = train_unified(grown, tmp_path / "work", tmp_path / "model", "cpu", log=lambda m: None)
    cfg = AutoModelForCausalLM.from_pretrained(out).config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (4, 48, 80, 3)
    first = (out / "model.safetensors").read_bytes()
    again = train_unified(grown, tmp_path / "work", tmp_path / "again", "cpu", log=lambda m: None)
    assert (again / "model.safetensors").read_bytes() == first  # resumed: every stage's saved state, grown
    with pytest.raises(ValueError, match="selfplay.grow.round is 2"):
        SelfPlayConfig(rounds=2, grow=GrowConfig(round=2, every=1))
    with pytest.raises(ValueError, match="needs `every`"):
        GrowConfig(round=0)
