"""Train a small CTC speech recogniser through Ray Train on the specstream pipeline, then
score it on real human speech.

The whole example (synthetic training speech, real test speech, training, scoring):

    python scripts/make_asr_corpus.py asr-data/train --count 3000
    python scripts/make_asr_testset.py asr-data/test
    python pipelines/train_ctc.py --config configs/asr-example.yaml --train-shards asr-data/train \\
        --test-shards asr-data/test --epochs 8 --out asr-out

Training: the config's stream (whole utterances, transcripts as ``char`` tokens, waveform
and spectrogram augmentation, mixup with partner transcripts; shuffled, duration-bucketed
batches with the same number of steps on every rank) feeds a TorchTrainer with
``--workers`` CPU (or ``--gpu``) workers; the model (specstream.asr.CTCModel: two stride-2
convolutions, a 2-layer bidirectional GRU, a linear layer to the tokenizer's vocabulary)
learns with specstream.losses.mixed_ctc_loss. Rank 0 prints each epoch's mean loss.

Scoring: each set folder under --test-shards (e.g. cards, tidigits, librivox, asterisk) is
featurised by the same pipeline with no augmentation, decoded greedily (best CTC path) and
scored by character error rate (edits / reference characters, spaces included) and word
error rate, per set. ``--out DIR`` gets results.json (loss history, error rates per set,
example transcripts, the reconciliation totals, wall times) and the model weights.

``--quick``: a tiny model and few epochs, for CI and a first try (minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from typing import Any, Dict, List


def train_loop(config: Dict[str, Any]) -> None:
    """Ray Train worker function: CTC training on this worker's piece of the stream."""
    import ray.train
    import ray.train.torch
    import torch

    from specstream.asr import CTCModel
    from specstream.losses import mixed_ctc_loss
    from specstream.pipeline import TrainStream
    from specstream.tokenizers import build_tokenizer
    from specstream.trainer import report_checkpoint

    torch.manual_seed(config["seed"])
    cfg = config["pipeline_config"]
    vocab = build_tokenizer(cfg["labels"]["tokenizer"]).vocab_size
    model = ray.train.torch.prepare_model(CTCModel(cfg["features"]["n_mels"], vocab, **config["model"]))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=1e-2)
    warmup, epochs = config["warmup_steps"], config["epochs"]
    shard = ray.train.get_dataset_shard("train")
    ctx = ray.train.get_context()
    # shuffled, duration-bucketed batches, the same number of steps on every rank
    stream = TrainStream(shard, config["pipeline_config"], ledger=config["ledger"])
    history: List[dict] = []
    step = 0
    for epoch in range(epochs):
        # cosine decay over epochs after a linear warm-up over the first steps
        base = config["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        t0, seen, losses, mixed = time.perf_counter(), 0, [], 0
        model.train()
        for batch in stream:
            for g in opt.param_groups:
                g["lr"] = base * min(1.0, (step + 1) / warmup)
            log_probs, out_len = model(batch["features"], batch["length"])
            loss = mixed_ctc_loss(log_probs, out_len, batch, zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            seen += len(batch["key"])
            if "mix_lambda" in batch:
                mixed += int((batch["mix_lambda"] < 1).sum())
        dt = time.perf_counter() - t0
        history.append({
            "epoch": epoch, "batches": len(losses), "samples": seen, "seconds": round(dt, 2),
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "loss_first_batch": losses[0] if losses else float("nan"),
            "loss_last_batch": losses[-1] if losses else float("nan"),
            "mixed_rows": mixed, "padding_fraction": stream.last_epoch["padding_fraction"],
            "data_wait_fraction": stream.last_epoch["data_wait_s"] / dt if dt else 0.0, "lr": base,
        })
        metrics = {"epoch": epoch, "rank": ctx.get_world_rank(), "loss": round(history[-1]["loss"], 4)}
        report_checkpoint(model, history, stream.state_dict(), metrics)  # weights, history, stream state


def test_sets(root: str) -> Dict[str, List[str]]:
    """{set name: shard paths}: each folder under ``root`` holding shards is a set; shards
    directly in ``root`` form a set named after it."""
    sets = {}
    for d in sorted(glob.glob(os.path.join(root, "*"))):
        shards = sorted(glob.glob(os.path.join(d, "shard-*.tar*")))
        if os.path.isdir(d) and shards:
            sets[os.path.basename(d)] = shards
    direct = sorted(glob.glob(os.path.join(root, "shard-*.tar*")))
    if direct:
        sets[os.path.basename(os.path.normpath(root))] = direct
    return sets


def evaluate(state_dict, train_cfg: Dict[str, Any], model_kwargs: Dict[str, Any], sets: Dict[str, List[str]],
             batch_size: int = 16, examples: int = 3) -> Dict[str, Any]:
    """Greedy CTC decoding and error rates per set; the test audio goes through the same
    pipeline (decode, log-mel) without augmentation or sampling."""
    import copy

    import torch

    from specstream.asr import CTCModel, error_rate, greedy_decode
    from specstream.pipeline import build_pipeline, torch_batches
    from specstream.tokenizers import build_tokenizer

    tok = build_tokenizer(train_cfg["labels"]["tokenizer"])
    model = CTCModel(train_cfg["features"]["n_mels"], tok.vocab_size, **model_kwargs)
    model.load_state_dict(state_dict)
    model.eval()
    cfg = copy.deepcopy(train_cfg)
    shard_set = {os.path.abspath(s): name for name, shards in sets.items() for s in shards}
    cfg["source"] = dict(cfg["source"], shards=sorted(shard_set), shuffle_shards=False)
    cfg.pop("sources", None)
    cfg["sampling"] = {}
    cfg["augment"] = None
    cfg["log_params"] = False
    cfg["actors"] = dict(cfg["actors"], count=1, max_count=None)
    pipe = build_pipeline(cfg)
    refs: Dict[str, List[str]] = {name: [] for name in sets}
    hyps: Dict[str, List[str]] = {name: [] for name in sets}
    keys: Dict[str, List[str]] = {name: [] for name in sets}
    with torch.no_grad():
        for batch in torch_batches(pipe.dataset, batch_size=batch_size, device="cpu", ledger=pipe.ledger):
            log_probs, out_len = model(batch["features"], batch["length"])
            decoded = greedy_decode(log_probs, out_len)
            for i, ids in enumerate(decoded):
                name = shard_set[os.path.abspath(batch["shard"][i])]
                n = int(batch["token_length"][i])
                refs[name].append(tok.decode(batch["tokens"][i, :n].tolist()))
                hyps[name].append(tok.decode(ids))
                keys[name].append(batch["key"][i])
    totals = pipe.report()["totals"]
    out: Dict[str, Any] = {"sets": {}, "report": totals}
    for name in sets:
        cer, edits, chars = error_rate(refs[name], hyps[name], "char")
        wer, wedits, words = error_rate(refs[name], hyps[name], "word")
        order = sorted(range(len(keys[name])), key=lambda i: keys[name][i])
        out["sets"][name] = {
            "utterances": len(refs[name]), "cer": cer, "char_edits": edits, "ref_chars": chars,
            "wer": wer, "word_edits": wedits, "ref_words": words,
            "examples": [{"key": keys[name][i], "ref": refs[name][i], "hyp": hyps[name][i]}
                         for i in order[:examples]],
        }
    all_refs = [r for n in sets for r in refs[n]]
    all_hyps = [h for n in sets for h in hyps[n]]
    out["all"] = dict(zip(("cer", "char_edits", "ref_chars"), error_rate(all_refs, all_hyps, "char")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "asr-example.yaml"),
                   help="pipeline YAML (default configs/asr-example.yaml)")
    p.add_argument("--train-shards", help="training shards: folder, glob or brace pattern (default: the config's)")
    p.add_argument("--test-shards", help="folder of test sets, one sub-folder of shards per set "
                                         "(scripts/make_asr_testset.py writes one); none: no scoring")
    p.add_argument("--dev-shards", help="optional extra scored set (e.g. held-out synthetic speech)")
    p.add_argument("--epochs", type=int, help="default 8 (--quick: 4)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, help="GRU width (default 128; --quick: 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model, 4 epochs, small batches: for CI")
    p.add_argument("--out", help="write results.json and model.pt here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML), e.g. sampling.bucketing.max_duration_s=60")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    epochs = args.epochs if args.epochs is not None else (4 if args.quick else 8)
    if epochs < 1:
        p.error("--epochs must be at least 1")
    hidden = args.hidden or (48 if args.quick else 128)
    model_kwargs = {"channels": 16 if args.quick else 32, "hidden": hidden, "layers": 2}

    import ray

    from specstream.config import config_data
    from specstream.config import ConfigError, load_config
    from specstream.pipeline import build_pipeline, stream_data_config

    t_start = time.perf_counter()
    sets_given = []
    if args.train_shards:
        sets_given.append(f"source.shards={args.train_shards}")
    if args.quick:
        sets_given += ["sampling.bucketing.max_duration_s=16", "sampling.shuffle_buffer=100", "deliver.batch_size=8"]
    try:
        data = config_data(args.config, sets_given + args.set)
        cfg = load_config(data)
        if not cfg.sequence_targets:
            raise ConfigError("labels.tokenizer: this example trains on transcripts; set labels.tokenizer "
                              "(e.g. char) and labels.field: txt")
        sets = test_sets(args.test_shards) if args.test_shards else {}
        if args.test_shards and not sets:
            raise ConfigError(f"--test-shards: no shards under {args.test_shards} "
                              f"(expected <set>/shard-*.tar; scripts/make_asr_testset.py writes them)")
        if args.dev_shards:
            dev = sorted(glob.glob(os.path.join(args.dev_shards, "shard-*.tar*"))) if os.path.isdir(args.dev_shards) \
                else sorted(glob.glob(args.dev_shards))
            if not dev:
                raise ConfigError(f"--dev-shards: no shards at {args.dev_shards}")
            sets["dev"] = dev
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        # under `ray job submit` RAY_ADDRESS names the cluster; alone, start a new local one
        # (address="local": never attach to another process's cluster on this machine)
        ray.init() if os.environ.get("RAY_ADDRESS") else ray.init(address="local", include_dashboard=False)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    try:
        pipe = build_pipeline(data, reserved_cpus=args.workers * args.cpus_per_worker,
                              reserved_gpus=args.workers if args.gpu else 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg_dict = pipe.config.to_dict()
    storage = os.path.abspath(os.path.join(args.out, "ray_results")) if args.out else None
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"pipeline_config": cfg_dict, "ledger": pipe.ledger, "epochs": epochs, "lr": args.lr,
                           "warmup_steps": 5 if args.quick else 100, "seed": args.seed, "model": model_kwargs},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker,
                                                           **({"GPU": 1} if args.gpu else {})}),
        datasets={"train": pipe.dataset},
        dataset_config=stream_data_config(),  # split without truncating: TrainStream equalises the steps
        run_config=RunConfig(storage_path=storage, name="asr-ctc"),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    train_s = time.perf_counter() - t0
    import torch

    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "model.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    report = pipe.report()
    for h in history:
        print(f"epoch {h['epoch']} rank 0: loss {h['loss']:.3f} (first batch {h['loss_first_batch']:.3f}, last "
              f"{h['loss_last_batch']:.3f})  {h['batches']} batches, {h['samples']} utterances, "
              f"{h['samples'] / max(h['seconds'], 1e-9):.1f} utt/s, padding {100 * h['padding_fraction']:.0f}%, "
              f"mixed rows {h['mixed_rows']}, waiting for data {100 * h['data_wait_fraction']:.0f}%")
    t = report["totals"]
    print(f"training: {train_s:.0f} s; read {t['read']}  delivered {t['delivered']}  quarantined {t['quarantined']}  "
          f"carried {t['carried']}  "
          f"balanced {t['balanced']}")

    results: Dict[str, Any] = {
        "config": args.config, "epochs": epochs, "workers": args.workers, "model": model_kwargs,
        "quick": args.quick, "history_rank0": history, "train_report": t, "train_seconds": round(train_s, 1),
    }
    if sets:
        t1 = time.perf_counter()
        scores = evaluate(state, cfg_dict, model_kwargs, sets)
        results["eval_seconds"] = round(time.perf_counter() - t1, 1)
        results["test"] = scores["sets"]
        results["test_all"] = scores["all"]
        results["test_report"] = scores["report"]
        print(f"greedy decoding, {results['eval_seconds']:.0f} s:")
        for name, s in scores["sets"].items():
            print(f"  {name:10s} {s['utterances']:4d} utterances  CER {100 * s['cer']:5.1f}% "
                  f"({s['char_edits']}/{s['ref_chars']} chars)  WER {100 * s['wer']:5.1f}%")
            for ex in s["examples"][:2]:
                print(f"      ref: {ex['ref']}\n      hyp: {ex['hyp']}")
        tr = scores["report"]
        if not tr["balanced"] or tr["quarantined"]:
            print(f"  test report: read {tr['read']} delivered {tr['delivered']} quarantined {tr['quarantined']} "
                  f"balanced {tr['balanced']}")
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"total {results['total_seconds']:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        torch.save(state, os.path.join(args.out, "model.pt"))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"results: {os.path.join(args.out, 'results.json')}")
    return 0 if t["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
