"""The unified recipe on several processes: torchrun, gloo, each process its share of every batch."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from model.ranks import Ranks


def test_the_processes_shares_make_up_the_batch_once():
    from test_unified import TINY

    from model.unified.sequences import Layout
    from model.unified.train_lm import synthetic_batch
    from model.unified.vocab import build_tokenizer, corpus
    from model.unified.vq import build_vq

    tok = build_tokenizer(TINY.vq.num_codes, corpus(50))
    layout, vq = Layout(tok), build_vq(TINY.vq).eval()
    cfg = TINY.lm.model_copy(update={"batch_size": 6, "prompt_dropout": 0.0})

    def rows(batch):
        return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    for step in range(4):
        whole = rows(synthetic_batch(0, step, cfg, vq, layout))
        shares = [rows(synthetic_batch(0, step, cfg, vq, layout, Ranks(r, 2))) for r in range(2)]
        assert len(shares[0]) == len(shares[1]) == 3
        assert [shares[k % 2][k // 2] for k in range(6)] == whole
    assert Ranks().share([1, 2, 3]) == [1, 2, 3] and Ranks().wrap(vq) is vq


@pytest.mark.slow
def test_torchrun_trains_the_recipe_on_two_processes(tmp_path):
    """Two CPU processes through the CLI: one log, one writer, a folder the libraries load."""
    from test_unified import TINY

    from model.unified.bundle import UnifiedModel
    from tests.two_processes import torchrun_cli

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY.model_dump(mode="json")))
    code, out, err = torchrun_cli("world", "train", "unified", "--config", str(tmp_path / "tiny.yaml"), "--work",
                                  str(tmp_path / "work"), "--export", str(tmp_path / "model"), "--device", "cpu")
    assert code == 0, out[-3000:] + err[-3000:]
    assert out.count("training on 2 process(es)") == 1 and out.count("wrote ") == 1  # rank 0 logs
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["stages"]["lm"]["processes"] == 2 and record["stages"]["lm"]["steps"] == TINY.lm.steps
    assert record["stages"]["selfplay1"]["processes"] == 2 and "decoding" in record["stages"]
    assert torch.load(tmp_path / "work" / "lm.pt", weights_only=False)["step"] == TINY.lm.steps
    model = UnifiedModel.load(tmp_path / "model")
    assert len(model.draw(["a red circle"], [0])) == 1
    assert not list((tmp_path / "work").glob(".*.tmp"))  # every write finished
