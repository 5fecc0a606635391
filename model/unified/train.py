"""`refloop world train unified`: the whole recipe, stage by stage, each resumable from its
checkpoint in the work folder (rerun the same command after a kill):

1. the VQ image tokenizer on rendered scenes;
2. the word tokenizer and the LM on the synthetic task stream (draw, reflect, revise, edit);
3. the VQ decoder sharpened on fixed codes (independent of 2: `--only decoder` runs it in a second
   process meanwhile, and the main run then finds it done);
4. rounds of self-play: the model's own drawings labelled by the verifier, mixed back in;
   then (own_decoder.steps) the decoder continued on the model's own drawings and rendered scenes;
5. the drawing settings (guidance, temperature), then the verdict gate's threshold, both chosen on its
   own drawings of train prompts (no state: a rerun chooses again).

On several processes (`torchrun --nproc_per_node 2 -m agent.cli world train unified ...`) the LM and
self-play steps are data parallel, each process rendering and training on its share of every batch;
the other stages run on rank 0 with every process's threads while the rest wait.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from model.ranks import Ranks, init_ranks
from model.recipe import pick_device, pin_config, training_record
from model.unified.bundle import DEFAULT_MODEL, Sampling, UnifiedModel
from model.unified.calibrate import calibrate, choose_sampling
from model.unified.config import UnifiedConfig
from model.unified.flaws import flawed_rows
from model.unified.grow import grow
from model.unified.own_decoder import decoder_on_own
from model.unified.selfplay import balance_verdicts, mixed_batch, own_rows, save_rows
from model.unified.sequences import Layout
from model.unified.train_lm import build_lm, synthetic_batch, train_lm
from model.unified.vocab import build_tokenizer, corpus, own_words, with_words
from model.unified.vq import sharpen_decoder, train_vq

STAGES = ("vq", "decoder")  # the stages that can run alone (--only)


def train_unified(cfg: UnifiedConfig, work: Path, export: Path | None = None, device: str | None = None,
                  log=print, only: str | None = None) -> Path | None:
    """The folder written (None on the other processes of a torchrun: rank 0 writes it)."""
    from transformers import AutoTokenizer

    ranks = init_ranks()  # one process, or one of torchrun's (the LM stages are data parallel)
    log = log if ranks.main else (lambda *_: None)
    log(f"training on {ranks.world} process(es)")
    dev = pick_device(device)
    work.mkdir(parents=True, exist_ok=True)
    with ranks.alone() as mine:
        if mine:
            pin_config(work / "config.json", cfg)
            torch.manual_seed(cfg.seed)
            train_vq(cfg.vq, cfg.seed, work, dev, log)
            if only == "decoder":
                sharpen_decoder(cfg.vq, cfg.seed, train_vq(cfg.vq, cfg.seed, work, dev, log)[0], work, dev, log)
            if not only and not (work / "tokenizer" / "tokenizer.json").is_file():
                build_tokenizer(cfg.vq.num_codes, corpus()).save_pretrained(work / "tokenizer")
    if only:
        return work if ranks.main else None
    vq, vq_record = train_vq(cfg.vq, cfg.seed, work, dev, log)  # trained by now: its saved state
    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    layout = Layout(tok)
    torch.manual_seed(cfg.seed)
    lm = build_lm(cfg.lm, len(tok), tok)
    synthetic = lambda k: synthetic_batch(cfg.seed, k, cfg.lm, vq, layout, ranks)  # noqa: E731
    lm_cfg = cfg.lm
    stages = {"vq": vq_record}
    stages["lm"] = train_lm(lm, synthetic, steps=lm_cfg.steps, lr=lm_cfg.lr, warmup=lm_cfg.warmup, ranks=ranks,
                            weight_decay=lm_cfg.weight_decay, state=work / "lm.pt", name="lm", device=dev, log=log)
    with ranks.alone() as mine:
        if mine:
            stages["decoder"] = sharpen_decoder(cfg.vq, cfg.seed, vq, work, dev, log)
    sp = cfg.selfplay
    grown = with_words(tok, own_words())  # a work folder whose tokenizer predates a label's words
    if sp.rounds and grown is not tok:
        torch.manual_seed(cfg.seed)
        lm.resize_token_embeddings(len(grown))  # new rows at the old ones' mean; the old ids keep theirs
        log(f"tokenizer: {len(grown) - len(tok)} words of own-drawing reflections added")
        tok, layout = grown, Layout(grown)
    for r in range(sp.rounds):
        if sp.grow is not None and r == sp.grow.round:
            lm = grow(lm, sp.grow, cfg.seed)  # computes what it did: round r's own drawings are the same
            log(f"grown before self-play round {r + 1}: {sum(p.numel() for p in lm.parameters()):,} parameters")
        data = work / f"selfplay{r}-data.pt"
        with ranks.alone() as mine:
            if mine and not data.is_file():
                guidance, temperature = sp.drawing(r)
                model = UnifiedModel(lm, tok, vq, Sampling(guidance=guidance, temperature=temperature))
                rows, stats = own_rows(model, sp.images, guidance, cfg.seed + r, log=log,
                                       regenerate_unmade=sp.regenerate_unmade_edits,
                                       revise_tries=sp.per_round("revise_tries", r))
                if sp.flawed:
                    more, flawed = flawed_rows(model, sp.flawed, cfg.seed + r)
                    rows, stats = rows + more, stats | flawed
                    log(f"flawed drawings: {flawed}")
                save_rows(data, rows, stats)
        saved = torch.load(data, weights_only=False)
        if sp.per_round("balance_verdicts", r):
            saved["rows"] = balance_verdicts(saved["rows"], layout)
        offset = lm_cfg.steps + sp.steps_before(r)  # fresh synthetic batches, never the ones seen before
        stream = round_stream(cfg, r, vq, layout, ranks)
        batches = lambda k, rows=saved["rows"], offset=offset, r=r, stream=stream: mixed_batch(  # noqa: E731
            rows, sp.own_share, cfg.seed + r, k, lambda j: stream(offset + j), layout, lm_cfg.batch_size, ranks)
        record = train_lm(lm, batches, steps=sp.per_round("steps", r), lr=sp.lr, warmup=0,
                          weight_decay=lm_cfg.weight_decay, state=work / f"selfplay{r}.pt", name=f"self-play {r + 1}",
                          device=dev, log=log, ranks=ranks)
        stages[f"selfplay{r + 1}"] = {**record, **saved["stats"]}
    if cfg.own_decoder.steps:
        with ranks.alone() as mine:
            if mine:
                drawn = Sampling(*sp.drawing(sp.rounds - 1)) if sp.rounds else None
                stages["own_decoder"] = decoder_on_own(cfg.own_decoder, cfg.seed, cfg.vq.batch_size, cfg.vq.ink_weight,
                                                       UnifiedModel(lm, tok, vq, drawn), work, dev, log)
    out = export or DEFAULT_MODEL
    if ranks.main:
        choose_and_export(cfg, UnifiedModel(lm, tok, vq), stages, out, log)
    ranks.wait()
    return out if ranks.main else None


def round_stream(cfg: UnifiedConfig, r: int, vq, layout: Layout, ranks: Ranks):
    """Synthetic batch k of self-play round r: the LM's stream, or round r's own task mix (selfplay.mix)."""
    mix = cfg.selfplay.per_round("mix", r)
    lm_cfg = cfg.lm if mix is None else cfg.lm.model_copy(update={"mix": mix, "late_mix": None})
    return lambda k: synthetic_batch(cfg.seed, k, lm_cfg, vq, layout, ranks)


def choose_and_export(cfg: UnifiedConfig, model: UnifiedModel, stages: dict, out: Path, log) -> None:
    """The drawing settings, then the verdict gate on drawings made with them; the folder and its record."""
    if cfg.decoding.images:
        t0 = time.time()
        model.chosen, model.choice = choose_sampling(model, cfg.decoding, cfg.seed, log=log)
        model.choice["seconds"] = round(time.time() - t0)
        stages["decoding"] = {**model.choice, "guidance": model.chosen.guidance,
                              "temperature": model.chosen.temperature}
    model.calibrated_votes = cfg.selfplay.verdict_votes  # the gate is chosen on the scores it will cut
    if cfg.selfplay.calibration_images:
        t0 = time.time()
        model.calibration = calibrate(model, cfg.selfplay.calibration_images, cfg.seed, log=log)
        model.calibration["seconds"] = round(time.time() - t0)
        model.calibrated_threshold = model.calibration["right_threshold"]
        stages["calibration"] = model.calibration
    model.save(out)
    training_record(out / "training.json", cfg, stages)


def build_untrained(cfg: UnifiedConfig, corpus_size: int = 50) -> UnifiedModel:
    """A random model of the recipe's architecture (tests, and trying a config before training it)."""
    from model.unified.vq import build_vq

    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(cfg.vq.num_codes, corpus(corpus_size))
    return UnifiedModel(build_lm(cfg.lm, len(tok), tok), tok, build_vq(cfg.vq))
