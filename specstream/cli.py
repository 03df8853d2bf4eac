"""The ``specstream`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_make_shards(args) -> int:
    from .io.make_shards import make_shards

    summary = make_shards(args.src, args.out, manifest=args.manifest, max_count=args.max_count,
                          max_bytes=int(args.max_mb * (1 << 20)), reencode=args.format,
                          prefix=args.prefix, shuffle=not args.no_shuffle, seed=args.seed,
                          progress=not args.quiet, compress=args.compress)
    print(summary.to_text())
    if summary.skipped:
        print("skipped by reason: " + ", ".join(f"{k}: {v}" for k, v in summary.skipped_by_reason().items()))
    return 0 if summary.samples_written else 1


def _cmd_demo(args) -> int:
    from .demo import format_summary, run_demo

    summary = run_demo(per_class=args.per_class, epochs=args.epochs, workers=args.workers,
                       seed=args.seed, report_path=args.report, progress=not args.quiet)
    print(format_summary(summary))
    return 0 if summary["balanced"] else 1


def _cmd_make_rir_bank(args) -> int:
    from .rirs import make_rir_bank

    rooms = make_rir_bank(args.out, args.count, seed=args.seed, sample_rate=args.sample_rate,
                          rt60=(args.rt60_min, args.rt60_max), max_seconds=args.max_seconds,
                          max_order=args.max_order)
    t60 = sorted(r.rt60 for r in rooms)
    print(f"wrote {len(rooms)} RIRs to {args.out} (RT60 {t60[0]:.2f}..{t60[-1]:.2f} s, "
          f"{args.sample_rate} Hz) + manifest.jsonl")
    return 0


def _cmd_run(args) -> int:
    from .config import config_data
    from .runner import run

    summary = run(config_data(args.config, args.set), epochs=args.epochs, report_path=args.report,
                  progress=not args.quiet, batch_size=args.batch_size, stop_after=args.stop_after_samples,
                  state_out=args.state_out, resume=args.resume, keys_out=args.keys_out)
    print(summary["text"])
    return 0 if summary["report"]["totals"]["balanced"] or summary["stopped"] else 1


def _cmd_preview(args) -> int:
    from .config import config_data
    from .preview import preview

    info = preview(config_data(args.config, args.set), args.out, n=args.n, epoch=args.epoch)
    print(f"wrote {args.out}: {len(info)} samples before/after augmentation")
    for s in info:
        print(f"  {s['key']} ({s['label']}): {json.dumps(s['params'])[:300]}")
    return 0


def _cmd_stats(args) -> int:
    import yaml

    from .config import config_data
    from .runner import feature_stats

    st = feature_stats(config_data(args.config, args.set), max_samples=args.max_samples, progress=not args.quiet)
    text = yaml.safe_dump({"features": {"normalize": "global", "global_mean": st["global_mean"],
                                        "global_std": st["global_std"]}}, default_flow_style=None, width=100)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"# {st['samples']} samples, {st['frames']} frames" + (f" -> {args.out}" if args.out else ""))
    print(text if not args.out else "", end="")
    return 0


def _cmd_inspect(args) -> int:
    from .io.inspect import format_inspection, inspect_shards, to_json
    from .io.shards import Storage

    storage = Storage(endpoint_url=args.endpoint_url, region=args.region)
    summary = inspect_shards(args.shards, storage, label_field=args.label_field)
    print(to_json(summary) if args.json else format_inspection(summary))
    return 1 if summary["unread_shards"] or summary["corrupt_shards"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specstream", description=__doc__)
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own messages (otherwise they go to its log files, /tmp/ray/session_latest/logs)")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("make-shards", help="a folder of audio files (+ CSV/JSONL manifest) -> WebDataset shards")
    m.add_argument("src", help="folder of audio files (any format soundfile decodes)")
    m.add_argument("out", help="output folder for shard-NNNNNN.tar")
    m.add_argument("--manifest", help="CSV (header row) or JSONL with path, label, optional text and other fields")
    m.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    m.add_argument("--max-mb", type=float, default=1024.0, help="megabytes per shard (default 1024)")
    m.add_argument("--format", choices=["keep", "flac"], default="keep",
                   help="keep audio bytes as they are (default) or re-encode everything to FLAC")
    m.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
    m.add_argument("--compress", choices=["gz"], default=None,
                   help="write gzip-compressed shards (.tar.gz; read by specstream, webdataset and tar)")
    m.add_argument("--no-shuffle", action="store_true",
                   help="keep the folder/manifest order (default: seeded shuffle, so shards mix classes)")
    m.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_cmd_make_shards)

    d = sub.add_parser("demo", help="procedural corpus -> shards -> pipeline -> 2-worker Ray Train run")
    d.add_argument("--per-class", type=int, default=200, help="clips per class (10 classes; default 200)")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--report", help="write the reconciliation report (JSON) here")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("make-rir-bank", help="simulate a seeded bank of room impulse responses "
                                             "(pyroomacoustics image-source method) for the reverb op")
    r.add_argument("out", help="output folder (rir-NNNNNN.wav + manifest.jsonl)")
    r.add_argument("--count", type=int, default=100)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sample-rate", type=int, default=16000)
    r.add_argument("--rt60-min", type=float, default=0.2, help="seconds (default 0.2)")
    r.add_argument("--rt60-max", type=float, default=0.9, help="seconds (default 0.9)")
    r.add_argument("--max-seconds", type=float, default=1.0, help="RIR length kept after the direct path")
    r.add_argument("--max-order", type=int, default=40, help="cap on the image-source order (speed)")
    r.set_defaults(func=_cmd_make_rir_bank)

    overrides = dict(action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value (YAML), e.g. source.shards=data/*.tar or augment.ops.0.p=0.5")
    run = sub.add_parser("run", help="stream a config's pipeline to the end: live samples/s, JSON report")
    run.add_argument("config", help="pipeline YAML (see configs/)")
    run.add_argument("--set", **overrides)
    run.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    run.add_argument("--batch-size", type=int, help="delivery batch size (default: deliver.batch_size)")
    run.add_argument("--report", default="specstream-report.json", help="reconciliation report (JSON) path")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--stop-after-samples", type=int, metavar="N",
                     help="stop once N samples are consumed (mid-epoch); with --state-out, resumable")
    run.add_argument("--state-out", metavar="FILE", help="write the stream state (JSON) at the end or the stop")
    run.add_argument("--resume", metavar="FILE", help="continue from a stream state written by --state-out")
    run.add_argument("--keys-out", metavar="FILE", help="write the delivered sample keys, one per line")
    run.set_defaults(func=_cmd_run)

    pv = sub.add_parser("preview", help="N samples before/after augmentation, with their parameters (PNG)")
    pv.add_argument("config")
    pv.add_argument("--out", required=True, help="output image, e.g. preview.png")
    pv.add_argument("-n", type=int, default=4, help="samples (default 4)")
    pv.add_argument("--epoch", type=int, help="epoch to draw augmentation for (default: the config's)")
    pv.add_argument("--set", **overrides)
    pv.set_defaults(func=_cmd_preview)

    st = sub.add_parser("stats", help="per-mel-bin mean/std of the clean features, for features.normalize: global")
    st.add_argument("config")
    st.add_argument("--max-samples", type=int, help="stop after this many samples (default: all)")
    st.add_argument("--out", help="write the features: YAML snippet here")
    st.add_argument("--set", **overrides)
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(func=_cmd_stats)

    ins = sub.add_parser("inspect", help="counts, durations, labels, sample rates and problems of shards")
    ins.add_argument("shards", nargs="+", help="paths, globs, brace patterns, folders or s3:// URLs")
    ins.add_argument("--label-field", default="cls", help="cls, txt or json:<name> (default cls)")
    ins.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// shards")
    ins.add_argument("--region")
    ins.add_argument("--json", action="store_true", help="print the full summary as JSON")
    ins.set_defaults(func=_cmd_inspect)
    return p


_RAY_COMMANDS = ("run", "demo", "stats")  # commands that start (or join) Ray


def main(argv: Optional[List[str]] = None) -> int:
    from .config import ConfigError
    from .io.shards import StorageAccessError

    args = build_parser().parse_args(argv)
    user_errors = (ConfigError, StorageAccessError, FileNotFoundError)
    try:
        if args.command in _RAY_COMMANDS:
            from .pipeline import init_ray

            init_ray(verbose=args.verbose)
        return args.func(args)
    except Exception as e:  # noqa: BLE001 - only the user's mistakes become one line; the rest re-raise
        # a user's mistake (config, credentials, a pattern matching nothing): one readable line, also
        # when it was raised inside a Ray task (the RayTaskError carries it as its cause)
        cause = e if isinstance(e, user_errors) else getattr(e, "cause", None)
        if not isinstance(cause, user_errors):
            raise
        print(f"specstream {args.command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
