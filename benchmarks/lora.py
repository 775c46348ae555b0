#!/usr/bin/env python
"""Federated LoRA fine-tuning of a small language model, with nothing downloaded.

1. **A base model, built here**: the speaking roles of half of the offline
   Shakespeare build's 37 plays (alphabetically the first half: ``fedhpc data
   prepare shakespeare``; each role's text is rebuilt from its LEAF windows)
   train a byte-level BPE tokenizer (``fedhpc.models.hf.train_tokenizer``) and
   a Llama-style causal LM (2 layers, hidden 128, 4 heads, ~0.5M parameters)
   trained centrally with AdamW for a fixed number of steps, saved in the
   Hugging Face format. That base has never seen the other plays.
2. **Federated LoRA**: the largest roles of the other plays are the clients
   (one ``.txt`` file each, ``data.partition = "natural"``, at most 64 blocks of
   64 tokens each), ``model.name = "hf:BASE"``, LoRA r 8 on q_proj and v_proj,
   Adam lr 3e-3, 1 local epoch.
3. **Local-only LoRA**: three of those clients, each fine-tuning alone for as
   many local epochs in all as it trains in the federation.

The table gives each model's perplexity on the pooled test blocks of all the
clients and on each of the three clients' own test blocks; then what travels:
bytes per client and round for LoRA against full fine-tuning of the same
model, and the round time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

import _jobs

SIZES = {
    "full": {"pretrain_steps": 600, "clients": 40, "per_round": 10, "rounds": 30, "local_clients": 3},
    "tiny": {"pretrain_steps": 5, "clients": 4, "per_round": 2, "rounds": 2, "local_clients": 1},
}
BLOCK = 64
LORA = ["lora.r=8", "local.optimizer=adam", "local.lr=0.003", "local.epochs=1", "local.batch_size=16",
        f"data.block={BLOCK}", "data.max_client_samples=64", "eval.max_samples=400", "tracking.tensorboard=false"]


def role_texts(leaf: Path) -> dict[str, tuple[str, str]]:
    """Each LEAF role's text (its first window and every next character after it) and its play."""
    blob = json.loads((leaf / "train" / "shakespeare_train.json").read_text())
    return {user: (blob["user_data"][user]["x"][0] + "".join(blob["user_data"][user]["y"]), play)
            for user, play in zip(blob["users"], blob["hierarchies"])}


def build_base(texts: list[str], out: Path, steps: int) -> dict:
    """Train the tokenizer and the base LM centrally on ``texts``; save both to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedhpc.models.hf import train_tokenizer

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=512)
    ids = np.concatenate([np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
                          for t in texts])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=BLOCK,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(ids) - BLOCK, 32)
        batch = torch.from_numpy(np.stack([ids[s : s + BLOCK] for s in starts]))
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels by one itself
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  pretraining step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "tokens": int(len(ids)), "steps": steps,
            "seconds": time.perf_counter() - t0, "final_loss": float(loss.item())}


def perplexity(base: Path, lora_sets: list[str], weights: np.ndarray | None, data_root: Path) -> float:
    """The perplexity on ``data_root``'s test blocks of the base with the adapters ``weights``
    (None: the adapters as initialised, which leave the base unchanged: LoRA's B starts at zero)."""
    from fedhpc.config import load_config
    from fedhpc.data import load_dataset
    from fedhpc.models import Layout, build_model
    from fedhpc.runtime.training import evaluate

    cfg = load_config(None, [f"model.name=hf:{base}", "data.name=text", f"data.root={data_root}",
                             "data.partition=iid", "clients.total=1", "clients.per_round=1", *lora_sets])
    data = load_dataset(cfg.data_source())
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed, cfg.lora)
    if weights is not None:
        Layout(model).load(model, weights)
    _, loss = evaluate(model, data.x_test, data.y_test)
    return math.exp(loss)


def main(args: argparse.Namespace) -> int:
    from paper import shakespeare_source

    size = SIZES[args.size]
    args.out.mkdir(parents=True, exist_ok=True)
    roles = role_texts(shakespeare_source(args.shakespeare))
    plays = sorted({play for _, play in roles.values()})
    pretrain_plays = set(plays[: len(plays) // 2])
    base = args.out / "base"
    if not (base / "config.json").exists() or not args.reuse:
        info = build_base([t for t, p in roles.values() if p in pretrain_plays], base, size["pretrain_steps"])
        (args.out / "base.json").write_text(json.dumps(info))
    info = json.loads((args.out / "base.json").read_text())
    # the federation: the largest roles of the other plays, one file each
    others = sorted(((len(t), u, t) for u, (t, p) in roles.items() if p not in pretrain_plays), reverse=True)
    clients = sorted(others[: size["clients"]], key=lambda c: c[1])
    fed_root = args.out / "roles"
    fed_root.mkdir(exist_ok=True)
    for _, user, text in clients:
        (fed_root / f"{user}.txt").write_text(text + "\n")
    rounds, per_round = size["rounds"], size["per_round"]
    common = [f"model.name=hf:{base}", "data.name=text", *LORA]
    jobs = [{"out": str(args.out / "federated"), "sets": [
        *common, f"data.root={fed_root}", "data.partition=natural", f"clients.total={len(clients)}",
        f"clients.per_round={per_round}", f"rounds={rounds}", f"eval.every={max(1, rounds // 5)}"]}]
    # a local-only client trains as many epochs in all as it does in the federation (per_round / clients
    # of the rounds), in one run of that many rounds
    local_rounds = max(1, round(rounds * per_round / len(clients)))
    picked = [clients[i][1] for i in np.linspace(0, len(clients) - 1, size["local_clients"]).round().astype(int)]
    for user in picked:
        jobs.append({"out": str(args.out / f"local-{user}"), "sets": [
            *common, f"data.root={fed_root / (user + '.txt')}", "data.partition=iid", "clients.total=1",
            "clients.per_round=1", f"rounds={local_rounds}", f"eval.every={local_rounds}"]})
    _jobs.run_plan(jobs, args.out / "plan.json", 3, reuse=args.reuse)
    fed_metrics, _ = _jobs.read_run(args.out / "federated")
    fed_w = np.load(args.out / "federated" / "final_weights.npy")
    rows = {"pooled": {"base": perplexity(base, LORA, None, fed_root),
                       "federated": perplexity(base, LORA, fed_w, fed_root)}}
    for user in picked:
        own = fed_root / f"{user}.txt"
        local_w = np.load(args.out / f"local-{user}" / "final_weights.npy")
        rows[user] = {"base": perplexity(base, LORA, None, own), "federated": perplexity(base, LORA, fed_w, own),
                      "local": perplexity(base, LORA, local_w, own)}
        rows["pooled"][f"local {user}"] = perplexity(base, LORA, local_w, fed_root)
    adapters = int(fed_w.size)
    traffic = {"adapter_params": adapters, "base_params": info["params"],
               "lora_bytes_up": float(np.mean([m["bytes_up"] for m in fed_metrics]) / per_round),
               "full_bytes": 4 * info["params"],
               "round_s": float(np.mean([m["round_seconds"] for m in fed_metrics])),
               "accuracy": fed_metrics[-1]["accuracy"]}
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "size": args.size, "base": info, "clients": len(clients),
               "rounds": rounds, "per_round": per_round, "local_rounds": local_rounds, "perplexity": rows,
               "traffic": traffic, "curve": [(m["round"], m["perplexity"]) for m in fed_metrics if m["perplexity"]]}
    _jobs.publish(table(results), results, args.json, args.readme, "lora")
    return 0


def table(res: dict) -> str:
    b, t = res["base"], res["traffic"]
    lines = [f"Base: {b['params']:,} parameters, pretrained centrally for {b['steps']} steps ({b['seconds']:.0f} s, "
             f"final loss {b['final_loss']:.2f}) on {b['tokens']:,} tokens of half the plays. Federation: the "
             f"{res['clients']} largest roles of the other plays, {res['per_round']} a round, {res['rounds']} rounds; "
             f"local-only: each client alone for {res['local_rounds']} rounds (as many epochs as it trains in the "
             f"federation).", "",
             "| test blocks of | base | federated LoRA | local-only LoRA |", "|---|---:|---:|---:|"]
    pooled = res["perplexity"]["pooled"]
    for user, row in res["perplexity"].items():
        if user == "pooled":
            continue
        lines.append(f"| {user} | {row['base']:.2f} | {row['federated']:.2f} | {row['local']:.2f} |")
    local = [v for k, v in pooled.items() if k.startswith("local ")]
    lines.append(f"| all {res['clients']} clients, pooled | {pooled['base']:.2f} | {pooled['federated']:.2f} | "
                 f"{min(local):.2f} to {max(local):.2f} (each local model) |")
    lines += ["", "Federated perplexity by round: " + ", ".join(f"{r}: {p:.2f}" for r, p in res["curve"]) + ".", "",
              f"What a client sends a round: {t['lora_bytes_up'] / 1e3:.1f} kB with LoRA ({t['adapter_params']:,} "
              f"adapter parameters) against {t['full_bytes'] / 1e6:.2f} MB for full fine-tuning of the "
              f"{t['base_params']:,} parameters ({t['full_bytes'] / t['lora_bytes_up']:.0f}x less); "
              f"{t['round_s']:.2f} s a round on 2 trainer ranks; next-token accuracy {t['accuracy']:.3f}."]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _jobs.add_run_arguments(p, SIZES, "full (about 3 minutes), tiny", "lora", shakespeare=True)


if __name__ == "__main__":
    _jobs.script(__doc__, add_arguments, main)
