"""The ``specstream`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_make_shards(args) -> int:
    from .io.make_shards import make_shards

    summary = make_shards(args.src, args.out, manifest=args.manifest, max_count=args.max_count,
                          max_bytes=int(args.max_mb * (1 << 20)), reencode=args.format,
                          prefix=args.prefix, shuffle=not args.no_shuffle, seed=args.seed,
                          progress=not args.quiet)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specstream", description=__doc__)
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
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
