"""Time to the first batch: a fresh Ray instance per run, the reference corpus, the same
work as scripts/bench_e2e.py (log-mel 80, 2 frequency + 2 time masks, batches of 64 through
``TrainStream``), featurize fused into the read tasks.

    python scripts/bench_first_batch.py /tmp/corpus --reps 3
    python scripts/bench_first_batch.py /tmp/corpus --src /path/to/older/checkout   # before/after

Each run starts Ray in a new process (so no worker is warm), builds the pipeline, waits
``--setup`` seconds (what a trainer does between building its data and asking for the
first batch: building the model, starting Ray Train workers; 0 = iterate at once) and
times ``build_pipeline`` and the wait for the first batch. Within a set-up wait it also
times, from the end of the build, the ledger actor's first answer (its process start) and
the prestart tasks' completion (the read workers' imports and stage objects). Variants: the config as it is
(``default``) and ``decode.prestart`` off and on. ``--src``: run against another checkout
of specstream (its package first on the path); variants its config does not know are
reported as such. Prints the median over ``--reps`` of each variant and setup, and the
ratio to ``prestart off``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

RUN = r'''
import json, os, sys, time
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray
corpus, variant, setup = sys.argv[1], sys.argv[2], float(sys.argv[3])
t = time.perf_counter()
ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ray.data.DataContext.get_current().enable_progress_bars = False
ray_s = time.perf_counter() - t
from specstream.config import ConfigError
from specstream.pipeline import TrainStream, build_pipeline
decode = {"mode": "full"}
if variant != "default":
    decode["prestart"] = variant == "prestart on"
cfg = {"source": {"shards": os.path.join(corpus, "*.tar")}, "labels": {"num_classes": 10}, "decode": decode,
       "features": {"n_mels": 80}, "actors": {"compute": "tasks", "batch_size": 64, "num_cpus": 1},
       "augment": {"ops": [{"op": "freq_mask", "max_width": 27, "count": 2, "fill": "zero"},
                           {"op": "time_mask", "max_width": 20, "count": 2, "fill": "zero"}]}}
try:
    t = time.perf_counter()
    pipe = build_pipeline(cfg)
    build_s = time.perf_counter() - t
except ConfigError as e:
    print(json.dumps({"unsupported": str(e)}))
    os._exit(0)
# what the set-up wait covers (measured only when there is one, so the timed wait is untouched):
# the ledger actor's first answer, and the prestart tasks' imports and stage objects
ledger_s = prestart_s = None
t = time.perf_counter()
if setup > 0:
    ray.get(pipe.ledger.report.remote())
    ledger_s = time.perf_counter() - t
    if getattr(pipe, "prestarted", None):
        ray.get(pipe.prestarted)
        prestart_s = time.perf_counter() - t
time.sleep(max(0.0, setup - (time.perf_counter() - t)))
stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger, batch_size=64, device="cpu")
t = time.perf_counter()
for batch in stream:
    first_s = time.perf_counter() - t
    break
import specstream
print(json.dumps({"ray_s": ray_s, "build_s": build_s, "first_s": first_s, "rows": len(batch["key"]),
                  "ledger_s": ledger_s, "prestart_s": prestart_s,
                  "package": os.path.dirname(specstream.__file__)}))
sys.stdout.flush()
os._exit(0)  # the iteration is left part-way: no need to drain it
'''


def one(corpus: str, variant: str, setup: float, src) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src)] + [p for p in [env.get("PYTHONPATH")] if p])
    # run from a neutral folder: Ray's workers put the driver's working directory on their path
    out = subprocess.run([sys.executable, "-c", RUN, corpus, variant, str(setup)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tempfile.gettempdir())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help="folder of shard-*.tar (../shared/bench/make_corpus.py OUT 20 500)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--setup", type=float, nargs="+", default=[0.0, 3.0], help="seconds between build and iterate")
    p.add_argument("--variants", nargs="+", default=["default", "prestart off", "prestart on"])
    p.add_argument("--src", help="another specstream checkout to measure (its package first on the path)")
    p.add_argument("--json", help="write the runs here")
    args = p.parse_args(argv)
    import specstream

    src_label = os.path.abspath(args.src) if args.src else os.path.dirname(os.path.dirname(specstream.__file__))
    runs = {}
    for rep in range(args.reps):  # interleaved: the machine's noise falls on every variant alike
        for setup in args.setup:
            for variant in args.variants:
                runs.setdefault((variant, setup), []).append(one(args.corpus, variant, setup, args.src))
    print(f"specstream at {src_label}; {os.cpu_count()} CPUs; medians of {args.reps} runs, each in a fresh Ray")
    print(f"{'variant':14s} {'setup':>6s} {'ray start':>10s} {'build':>7s} {'first batch':>12s} {'vs prestart off':>16s}")
    table = {}
    for (variant, setup), rs in runs.items():
        if any("unsupported" in r for r in rs):
            print(f"{variant:14s} {setup:5.1f}s  not in this version's config ({rs[0]['unsupported'][:60]})")
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in ("ray_s", "build_s", "first_s")}
        for k in ("ledger_s", "prestart_s"):
            med[k] = statistics.median(r[k] for r in rs) if all(r.get(k) is not None for r in rs) else None
        table[f"{variant} @ {setup:g}s"] = dict(med, runs=[r["first_s"] for r in rs], package=rs[0]["package"])
        base = runs.get(("prestart off", setup))
        ratio = ""
        if base and not any("unsupported" in r for r in base):
            ratio = f"{med['first_s'] / statistics.median(r['first_s'] for r in base):15.2f}x"
        print(f"{variant:14s} {setup:5.1f}s {med['ray_s']:9.2f}s {med['build_s']:6.2f}s {med['first_s']:11.2f}s {ratio}")
        if med["ledger_s"] is not None:
            extra = f", prestart tasks done {med['prestart_s']:.2f} s" if med["prestart_s"] is not None else ""
            print(f"{'':21s}  after build: the ledger answers in {med['ledger_s']:.2f} s{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"src": src_label, "reps": args.reps, "results": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
