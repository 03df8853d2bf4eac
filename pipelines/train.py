"""Train a small CNN through Ray Train on the specstream pipeline.

Submit to a cluster:
    ray job submit --working-dir . -- python pipelines/train.py --config configs/reference-corpus.yaml
or run locally:
    python pipelines/train.py --config configs/reference-corpus.yaml --workers 2 --epochs 2

Prints per-epoch loss and samples/s of rank 0 and the reconciliation totals; writes the
full per-shard report (with the quarantine list) to --report, and with --metrics rank 0's
per-epoch history (losses, accuracy, samples/s) and the totals as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--report", default="specstream-report.json")
    p.add_argument("--metrics", help="write rank 0's per-epoch history and the totals here (JSON)")
    p.add_argument("--storage-path", help="Ray Train results/checkpoints folder (default: Ray's, ~/ray_results)")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint (weights + stream state) every STEPS steps within an epoch")
    p.add_argument("--resume-from", metavar="CHECKPOINT_DIR",
                   help="continue from a checkpoint of this script (its model.pt and stream_state.json): the rest "
                        "of that epoch, then the epochs left of --epochs; --workers may differ")
    p.add_argument("--keys-out", metavar="DIR",
                   help="each rank appends the keys it trained on to DIR/keys-rank{R}.txt (one 'epoch step key' "
                        "line per sample, flushed every step)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines (they go to its log files otherwise)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML), e.g. source.shards=s3://bucket/train/*.tar")
    args = p.parse_args(argv)

    import os

    from specstream.config import config_data
    from specstream.pipeline import build_pipeline, init_ray, write_report
    from specstream.runner import throughput_line
    from specstream.pipeline.stages import vocab_from_config
    from specstream.trainer import run_training

    # under `ray job submit` RAY_ADDRESS names the cluster; alone, a new local instance (never
    # another job's Ray running on this machine); Ray's own messages to its log files
    init_ray(verbose=args.verbose)
    from specstream.config import ConfigError, load_config

    resume, model_path, optimizer_path, epochs = None, None, None, args.epochs
    try:
        data = config_data(args.config, args.set)
        if args.resume_from:
            resume = os.path.join(args.resume_from, "stream_state.json")
            model_path = os.path.join(args.resume_from, "model.pt")
            optimizer_path = os.path.join(args.resume_from, "optimizer.pt")
            if not os.path.exists(optimizer_path):  # a checkpoint written before optimizer states were kept
                optimizer_path = None
            if not (os.path.exists(resume) and os.path.exists(model_path)):
                raise ConfigError(f"--resume-from {args.resume_from}: expected model.pt and stream_state.json there "
                                  f"(a checkpoint this script wrote)")
        pipe = build_pipeline(data, reserved_cpus=args.workers * args.cpus_per_worker,
                              reserved_gpus=args.workers if args.gpu else 0, resume=resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if resume:  # the epochs already done count against --epochs
        epochs = args.epochs - (pipe.config.epoch - load_config(data).epoch)
        print(f"resuming epoch {pipe.config.epoch} from {args.resume_from}; {epochs} epoch(s) to go")
        if epochs <= 0:
            print(f"nothing to do: the checkpoint is past the {args.epochs} epoch(s) asked for")
            return 0
    num_classes = len(vocab_from_config(pipe.config))
    if args.keys_out:
        os.makedirs(args.keys_out, exist_ok=True)
    t0 = time.perf_counter()
    result = run_training(pipe.dataset, num_classes=num_classes, ledger=pipe.ledger,
                          num_workers=args.workers, epochs=epochs, lr=args.lr,
                          checkpoint_every=args.checkpoint_every, resume_model=model_path,
                          resume_optimizer=optimizer_path, keys_dir=args.keys_out,
                          batch_size=pipe.config.deliver.batch_size, use_gpu=args.gpu,
                          cpus_per_worker=args.cpus_per_worker,
                          multi_label=pipe.config.labels.multi_label, storage_path=args.storage_path,
                          pipeline_config=pipe.config)
    wall = time.perf_counter() - t0
    report = pipe.report()
    history = json.loads(result.metrics["history"])
    training = sum(h["seconds"] for h in history)
    steady = sum(h["seconds"] - (h.get("first_batch_s") or 0.0) for h in history)
    report["throughput"] = {
        "startup_s": round(wall - training + (history[0].get("first_batch_s") or 0.0), 3) if history else None,
        "training_s": round(training, 3),
        # rank 0's, from its first batch of each epoch on
        "steady_samples_per_s": round(sum(h["samples"] for h in history) / steady, 2) if steady > 0 else None,
        "steady_audio_hours_per_s": round(sum(h.get("audio_hours", 0.0) for h in history) / steady, 6)
        if steady > 0 else None,
        "data_wait_fraction": [round(h["data_wait_fraction"], 4) for h in history],  # rank 0, per epoch
        "stages": report.get("stages", {}),
    }
    write_report(report, args.report)
    if args.metrics:
        with open(args.metrics, "w") as f:
            json.dump({"history_rank0": history, "totals": report["totals"], "throughput": report["throughput"]},
                      f, indent=2)
    for h in history:
        first = h.get("first_batch_s") or 0.0
        rate = h["samples"] / (h["seconds"] - first) if h["seconds"] > first else 0.0
        print(f"epoch {h['epoch']} rank 0: loss {h['loss_first_quarter']:.3f} -> {h['loss_last_quarter']:.3f}  "
              f"acc {h['accuracy']:.3f}  first batch after {first:.1f} s, then {rate:.0f} samples/s  "
              f"waiting for data {100 * h['data_wait_fraction']:.0f}% of the time")
    print(throughput_line(report["throughput"], what="trained on by rank 0"))
    t = report["totals"]
    print(f"read {t['read']}  delivered {t['delivered']}  quarantined {t['quarantined']}  carried {t['carried']}  "
          f"balanced {t['balanced']}  |  start-up {report['throughput']['startup_s']:.1f} s, training "
          f"{training:.1f} s  |  report: {args.report}")
    return 0 if t["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
