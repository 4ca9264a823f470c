"""The ``nasbert`` command: a thin layer over the Python API, one sub-command per verb.

Bad input prints one line, ``nasbert: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from nasbert.errors import ConfigError
from nasbert.io import writable_output


def _space_show(args: argparse.Namespace) -> None:
    from nasbert.space import SearchSpace

    if args.examples < 0:
        raise ConfigError(f"must be 0 or more, not {args.examples}", source="--examples")
    space = SearchSpace.from_yaml(args.space)
    lo, hi = space.param_range()
    dims = space.dims
    print(f"search space  {space.name}  ({args.space})")
    print(f"teacher       hidden {dims.hidden_size}, "
          f"{sum(b.teacher_layers for b in space.blocks)} layers; vocab {dims.vocab_size}")
    print(f"operations    {', '.join(space.ops)}  (identity: {space.identity})")
    print(f"embedding     {', '.join(map(str, space.embed_sizes))}")
    for i, b in enumerate(space.blocks):
        print(f"block {i}       {b.layers} layers for {b.teacher_layers} teacher layers, "
              f"hidden {', '.join(map(str, b.hidden_sizes))}, heads "
              f"{', '.join(str(dims.num_heads(h)) for h in b.hidden_sizes)}; "
              f"{space.block_size(i):,} paths")
    print(f"size          {space.size():,} architectures ({space.size():.3e})")
    print(f"parameters    {lo / 1e6:.2f}M .. {hi / 1e6:.2f}M")
    print(f"smallest      {space.min_arch()}")
    print(f"largest       {space.max_arch()}")
    for i in range(args.examples):
        arch = space.sample(args.seed + i)
        print(f"example       {arch}  ({arch.num_params(dims) / 1e6:.2f}M params)")


def _space_sample(args: argparse.Namespace) -> None:
    import random

    from nasbert.space import SearchSpace

    if args.n < 1:
        raise ConfigError(f"must be at least 1, not {args.n}", source="-n")
    space = SearchSpace.from_yaml(args.space)
    rng = random.Random(args.seed)
    for _ in range(args.n):
        arch = space.sample(rng)
        print(f"{arch}\t{arch.num_params(space.dims)}" if args.params else arch)


def _extract(args: argparse.Namespace) -> None:
    import torch

    from nasbert.extract import save_subnet
    from nasbert.space import SearchSpace
    from nasbert.supernet import Supernet

    writable_output(args.out)
    space = SearchSpace.from_yaml(args.space)
    arch = space.parse(args.arch) if args.arch is not None else space.sample(args.seed)
    torch.manual_seed(args.seed)
    report = save_subnet(Supernet(space), arch, args.out,
                         info={"weights": f"random initialisation, seed {args.seed}"})
    print(f"architecture  {report.arch}")
    print(f"parameters    {report.params:,}")
    print(f"FLOPs         {report.flops:.3e} (sequence 128)")
    print(f"check         supernet vs reloaded model: max |diff| {report.max_abs_diff:.2e} "
          "(with padding)")
    print(f"wrote         {report.path}/ (config.json, model.safetensors, README.md, "
          "nasbert.json)")


def _export(args: argparse.Namespace) -> None:
    from nasbert.export import export_onnx

    writable_output(args.onnx, flag="--onnx", folder=False)
    report = export_onnx(args.model_dir, args.onnx, opset=args.opset, atol=args.atol,
                         optimize=not args.no_optimize)
    for b, t, d in report.checks:
        print(f"check         batch {b}, sequence {t}: max |onnx - torch| {d:.2e}")
    if report.fusions:
        print("fused         " + ", ".join(f"{n} {op}" for op, n in report.fusions))
    print(f"wrote         {report.path}  (opset {report.opset}, dynamic batch and sequence)")


def _train_supernet(args: argparse.Namespace) -> None:
    from nasbert.recipe import load_recipe, updated
    from nasbert.run import RunDir
    from nasbert.train import train_supernet

    recipe = updated(load_recipe(args.recipe, args.set), {
        "scaling.workers": args.workers, "scaling.address": args.address,
        "scaling.use_gpu": args.gpu or None, "train.max_steps": args.max_steps,
        "train.batch_size": args.batch_size, "train.lr": args.lr, "train.seed": args.seed})
    run = RunDir(args.run)
    summary = train_supernet(recipe, run, progress=not args.quiet)
    start, end = summary["dev_loss_start"], summary["dev_loss_end"]
    print(f"trained       {summary['steps']} steps on {summary['workers']} worker(s)")
    for key in sorted(end):
        print(f"{key:<13} dev loss {start.get(key, float('nan')):.4f} -> {end[key]:.4f} "
              "(mean over reference paths)")
    print(f"wrote         {run.final}/ (supernet), {run.shrink}/ (shrink tables), "
          f"{run.summary}")


def _distill(args: argparse.Namespace) -> None:
    from nasbert.recipe import ScalingConfig
    from nasbert.run import RunDir
    from nasbert.schema import apply_overrides, parse
    from nasbert.train import DistillConfig, distill

    source = "nasbert distill"
    given = apply_overrides({}, args.set, source=source)
    if args.tokens is not None:
        given["tokens"] = args.tokens
    if args.freeze_embeddings:
        given["freeze_embeddings"] = True
    config = parse(DistillConfig, given, source=source)
    scaling = parse(ScalingConfig, {"workers": args.workers or 1, "address": args.address,
                                    "use_gpu": args.gpu}, source=source)
    run = RunDir(args.run_dir)
    records = distill(run, args.subnet, config, scaling=scaling, progress=not args.quiet)
    for model_id, r in records.items():
        a, b = r["dev_loss_start"], r["dev_loss_end"]
        terms = ", ".join(f"{k} {a[k]:.4f} -> {b[k]:.4f}" for k in b if k != "loss")
        print(f"{model_id:<24} dev loss {a['loss']:.4f} -> {b['loss']:.4f} ({terms}; "
              f"{r['tokens']:,} tokens)")
    for model_id in records:
        print(f"wrote         {run.distilled_dir(model_id)}/")


def _protocol(args: argparse.Namespace):
    from nasbert.latency.measure import Protocol

    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("torch sees no CUDA GPU here; measure without --gpu",
                              source="--gpu")

    return Protocol(batch=args.batch, seq=args.seq, threads=args.threads, warmup=args.warmup,
                    repeats=args.repeats, rounds=args.rounds, dtype=args.precision,
                    device="cuda" if args.gpu else "cpu")


def _latency_profile(args: argparse.Namespace) -> None:
    from nasbert.latency.stage import profile

    folder = profile(args.run_dir, _protocol(args), samples=args.samples, seed=args.seed,
                     progress=not args.quiet)
    print(f"wrote         {folder}/table_raw.json, {folder}/samples.jsonl")


def _latency_fit(args: argparse.Namespace) -> None:
    from nasbert.latency.stage import fit
    from nasbert.run import RunDir

    for kind, predictor in fit(args.run_dir, _protocol(args), seed=args.seed).items():
        e = predictor.error
        print(f"{kind:<8} held-out MAPE {e['mape']:.2f} %, RMSE {e['rmse']:.3f} ms, "
              f"Kendall tau {e['tau']:.3f} (n={e['n']})")
    folder = RunDir(args.run_dir).latency_dir(_protocol(args))
    print(f"wrote         {folder}/table.json, {folder}/learned.json, {folder}/best.json")


def _budgets(args: argparse.Namespace):
    from nasbert.search.searchers import Budget

    def floats(text: str | None, flag: str) -> list[float]:
        if not text:
            return []
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"{text!r} is not a comma-separated list of numbers",
                              source=flag) from None

    lat, par = floats(args.latency_ms, "--latency-ms"), floats(args.params_m, "--params-m")
    return [Budget(latency_ms=v) for v in lat] + [Budget(params_m=v) for v in par]


def _search(args: argparse.Namespace) -> None:
    from nasbert.run import RunDir
    from nasbert.search.stage import search

    run = RunDir(args.run_dir)
    chosen = search(run, _budgets(args), backend=args.backend, trials=args.trials,
                    predictor=args.predictor, top_k=args.top_k, protocol=_protocol(args),
                    allow_foreign=args.any_device, export=not args.no_export,
                    refine=args.refine)
    print(f"wrote         {run.search}/ (candidates.json, front.json, pareto.json, pareto.png, "
          "chosen.json)")
    if not args.no_export:
        for name in chosen:
            print(f"wrote         {run.subnet_dir(name)}/")


def _query(args: argparse.Namespace) -> None:
    from nasbert.run import RunDir
    from nasbert.search.searchers import Budget
    from nasbert.search.stage import query

    run = RunDir(args.run_dir)
    if args.export:
        writable_output(args.export, inputs=(run.path,), flag="--export")
    if args.task:
        return _query_deployment(args, run)
    budget = Budget(latency_ms=args.latency_ms, params_m=args.params_m)
    c = query(run, budget)
    print(f"architecture  {c.arch}")
    print(f"parameters    {c.params / 1e6:.2f}M")
    print(f"latency       predicted {c.latency_ms:.2f} ms"
          + (f", measured {c.measured_ms:.2f} ms" if c.measured_ms else ""))
    print(f"score         {c.score:.4f} (approximated)"
          + (f", end-to-end dev loss {c.full_loss:.4f}" if c.full_loss is not None else "")
          + (f" ({c.origin})" if c.origin else ""))
    if args.export:
        from nasbert.extract import save_subnet

        report = save_subnet(run.supernet(), c.arch, args.export, info={"budget": budget.name})
        print(f"wrote         {report.path}/")


def _query_deployment(args: argparse.Namespace, run) -> None:
    from nasbert.compress.deploy import choose, export
    from nasbert.data.tasks import task_spec
    from nasbert.latency.stage import teacher_ms

    spec = task_spec(args.task)
    if args.params_m is not None:
        raise ConfigError("with --task, a budget is --latency-ms alone (the deployable family "
                          "is chosen by measured latency); drop --params-m",
                          source="nasbert query")
    if args.latency_ms is None:
        raise ConfigError("with --task, give --latency-ms (the deployable family is chosen by "
                          "measured latency)", source="nasbert query")
    protocol = _protocol(args)
    c = choose(run, spec.name, args.latency_ms, protocol)
    base = teacher_ms(run, protocol)
    print(f"model         {c.model_id}  ({c.folder})")
    if c.kind == "ngram":
        print(f"kind          a sparse n-gram student: task-specific, it classifies "
              f"{spec.name} only")
    print(f"precision     {c.precision}")
    print("runtime       " + ("ONNX Runtime (the exported graph)" if c.runtime == "onnxruntime"
                              else "PyTorch"))
    print("length        " + ("every token" if c.length_config is None else
                              ", ".join(f"{r:g}" for r in c.length_config) + " (kept per block)"))
    print(f"dev {spec.metric:<9} {c.metric:.4f}")
    print(f"latency       measured {c.ms:.2f} ms (batch {protocol.batch}, sequence "
          f"{protocol.seq}): {base / c.ms:.2f}x the float32 teacher's {base:.2f} ms")
    print(f"bound         {c.ms_bound:.2f} ms (the budget was checked against it: a high "
          "quantile of rounds in several processes)")
    if args.export:
        written = export(run, c, args.export)
        print(f"wrote         {written['model']}/")
        if written.get("onnx"):
            print(f"wrote         {written['onnx']}")


def _deploy(args: argparse.Namespace) -> None:
    from nasbert.compress.deploy import RUNTIMES, BoundConfig, prepare_deployment
    from nasbert.compress.length import LengthSearchConfig
    from nasbert.compress.qat import QatConfig
    from nasbert.data.tasks import load_task

    data = load_task(args.task, args.data_dir)
    qat = args.quantisation_aware
    rows = prepare_deployment(
        args.run_dir, data, models=args.subnet, protocol=_protocol(args),
        lengths=LengthSearchConfig(trials=args.trials) if args.length_adaptive else None,
        qat=None if qat is None else QatConfig(threshold=qat / 100),
        bounds=BoundConfig(processes=args.bound_processes, rounds=args.bound_rounds),
        runtimes=("pytorch",) if args.no_onnxruntime else RUNTIMES, progress=not args.quiet)
    print(f"{'deployable':<52} {data.spec.metric:>9} {'ms':>8} {'bound':>8}")
    for c in sorted(rows, key=lambda c: c.ms_bound):
        print(f"{c.describe():<52} {c.metric:>9.4f} {c.ms:>8.2f} {c.ms_bound:>8.2f}")


def _ngram(args: argparse.Namespace) -> None:
    from nasbert.compress.ngram import MiningConfig
    from nasbert.compress.ngram_distill import (
        NgramStudentConfig,
        measure_ngram,
        train_ngram_student,
    )
    from nasbert.data.tasks import load_task
    from nasbert.finetune.augment import AugmentConfig

    data = load_task(args.task, args.data_dir)
    config = NgramStudentConfig(
        mining=MiningConfig(max_n=args.max_n, min_count=args.min_count,
                            max_ngrams=args.max_ngrams),
        hidden_size=args.dim, texts=tuple(args.text or ()), max_texts=args.max_texts,
        augment=AugmentConfig(per_example=args.augment), unlabelled_epochs=args.unlabelled_epochs,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    record = train_ngram_student(args.run_dir, data, config, progress=not args.quiet)
    deploy = measure_ngram(args.run_dir, data.spec.name, _protocol(args))
    split, metric = data.spec.dev_splits[0], data.spec.metric
    print(f"n-gram student  {args.run_dir}/finetune/{data.spec.name}/ngram/  "
          f"({record['rows']:,} n-grams, table {record['memory_mb']['table']:,} MB)")
    print(f"{split} {metric:<11} {record[split][metric]:.4f}")
    print(f"latency         {deploy['candidates'][0]['ms']:.3f} ms (batch {args.batch}, "
          f"{args.seq} words)")


_FINETUNE_FLAGS = (("epochs", float), ("lr", float), ("batch-size", int), ("alpha", float),
                   ("temperature", float), ("hidden-epochs", float), ("teacher-epochs", float),
                   ("teacher-lr", float), ("teacher-batch-size", int), ("max-seq-len", int),
                   ("max-train-examples", int), ("max-dev-examples", int), ("seed", int),
                   ("student-seed", int))


def _finetune_config(args: argparse.Namespace):
    from nasbert.finetune.config import FinetuneConfig
    from nasbert.schema import parse

    given = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_"))
             for flag, _ in _FINETUNE_FLAGS}
    return parse(FinetuneConfig, {k: v for k, v in given.items() if v is not None},
                 source=f"nasbert {args.command}")


def _models(args: argparse.Namespace) -> list[str] | None:
    if args.subnet and args.all:
        raise ConfigError("give --subnet or --all, not both", source=f"nasbert {args.command}")
    return args.subnet or None


def _finetune(args: argparse.Namespace) -> None:
    from nasbert.data.tasks import task_spec
    from nasbert.finetune.stage import finetune
    from nasbert.run import RunDir

    spec, run = task_spec(args.task), RunDir(args.run_dir)
    results = finetune(run, args.task, data_dir=args.data_dir, models=_models(args),
                       config=_finetune_config(args), progress=not args.quiet)
    print(f"{'model':<24} {'parameters':>10}  " + "  ".join(
        f"{split} {m}" for split in spec.dev_splits for m in spec.metrics))
    for model_id, r in results.items():
        print(f"{model_id:<24} {r['params'] / 1e6:>9.2f}M  " + "  ".join(
            f"{r[split][m]:.4f}".rjust(len(split) + len(m) + 1)
            for split in spec.dev_splits for m in spec.metrics))
    for model_id in results:
        print(f"wrote         {run.finetune_dir(spec.name, model_id)}/")


def _sweep(args: argparse.Namespace) -> None:
    from nasbert.finetune.config import SweepConfig
    from nasbert.finetune.sweep import sweep

    config = SweepConfig(trials=args.trials, cpus_per_trial=args.cpus_per_trial,
                         address=args.address, seed=args.seed or 0)
    records = sweep(args.run_dir, args.task, data_dir=args.data_dir, models=_models(args),
                    base=_finetune_config(args), config=config, progress=not args.quiet)
    for model_id, r in records.items():
        stopped = sum(t["stopped_early"] for t in r["trials"])
        print(f"{model_id:<24} {len(r['trials'])} trials ({stopped} stopped early by ASHA); "
              f"best {r['metric']} {r['best']['score']:.4f}")
    for r in records.values():
        print(f"wrote         {r['path']}")


def _compress(args: argparse.Namespace) -> None:
    from nasbert.compress.offline import OfflineConfig, compress
    from nasbert.schema import parse

    writable_output(args.out, inputs=(args.model_dir,))
    given = {"method": args.method, "ratio": args.ratio, "params_m": args.params_m,
             "calibration": args.calibration, "tune": not args.no_tune}
    config = parse(OfflineConfig, {k: v for k, v in given.items() if v is not None},
                   source="nasbert compress")
    texts = source = None
    if args.task:
        from nasbert.data.tasks import load_task

        data = load_task(args.task, args.data_dir, seed=config.seed)
        texts, source = data.split("train"), data.source
    record = compress(args.model_dir, args.out, config, texts=texts, source=source)
    b, a = record["before"], record["after"]
    print(f"{config.method}: {b['params'] / 1e6:.2f}M -> {a['params'] / 1e6:.2f}M parameters "
          f"(encoder layers {b['layer_params'] / 1e6:.2f}M -> {a['layer_params'] / 1e6:.2f}M, "
          f"{record['ratio']:.2f}x) in {record['seconds']:.0f} s")
    print(f"wrote         {args.out}/")


def _quickstart(args: argparse.Namespace) -> None:
    from nasbert.data.tasks import task_spec
    from nasbert.pipeline import QuickstartConfig, quickstart, render
    from nasbert.run import RunDir

    run = RunDir(args.run)
    spec = task_spec(args.task)
    rows = quickstart(run, QuickstartConfig(task=args.task, data_dir=args.data_dir,
                                            gpu=args.gpu), progress=not args.quiet)
    print()
    print(render(rows, spec.name, spec.metric))
    print(f"\nwrote         {run.results}; models in {run.subnets}/, fine-tuned in "
          f"{run.finetune_dir(spec.name)}/")


def _add_protocol(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before the timed ones")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="profile: measurements per subnet")
    p.add_argument("--gpu", action="store_true", help="measure on CUDA (events)")
    p.add_argument("--precision", choices=("float32", "int8"), default="float32",
                   help="int8: dynamic quantisation of the linear layers (CPU)")


def _add_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--task", required=True, help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, "
                   "wnli, or tweets (the embedded default)")
    p.add_argument("--data-dir", help="a local GLUE folder (e.g. glue/SST-2); default: the hub")


def _add_finetune(p: argparse.ArgumentParser) -> None:
    _add_task(p)
    p.add_argument("--subnet", action="append", help="a model under RUN_DIR/subnets/ "
                   "(repeatable; default: all of them)")
    p.add_argument("--all", action="store_true", help="every model under RUN_DIR/subnets/")
    for flag, kind in _FINETUNE_FLAGS:
        p.add_argument(f"--{flag}", type=kind)
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasbert", description="Compress BERT-family models by neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    space = sub.add_parser("space", help="inspect a search space").add_subparsers(
        dest="space_command", required=True, metavar="ACTION")
    p = space.add_parser("show", help="size, parameter range and example architectures")
    p.add_argument("space", help="a shipped search space (minilm_l6, nasbert_base, tiny) or a "
                   "YAML path")
    p.add_argument("--examples", type=int, default=3, help="example architectures to print")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_space_show)
    p = space.add_parser("sample", help="print N random architectures")
    p.add_argument("space")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", action="store_true", help="also print the parameter count")
    p.set_defaults(func=_space_sample)

    p = sub.add_parser("extract", help="extract a subnet to a model folder and check it")
    p.add_argument("space", help="a shipped search space or a YAML path")
    p.add_argument("--arch", help="architecture string (default: a random one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the weights")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(func=_extract)

    p = sub.add_parser("train-supernet", help="block-wise distillation of the supernet "
                       "with progressive shrinking (resumes when re-run)")
    p.add_argument("recipe", help="a shipped recipe (quickstart, minilm_wiki, bert_base_paper) "
                   "or a YAML path")
    p.add_argument("--run", required=True, help="run directory (created, or resumed)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: one process)")
    p.add_argument("--address", help="an existing Ray cluster to join (e.g. 'auto')")
    p.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field, e.g. --set shrink.bins=4 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_supernet)

    p = sub.add_parser("distill", help="stage one: distil extracted models end to end on the "
                       "run's corpus, one token budget for all (resumes when re-run)")
    p.add_argument("run_dir")
    p.add_argument("--subnet", action="append", help="a model under RUN_DIR/subnets/ "
                   "(repeatable; default: all of them)")
    p.add_argument("--tokens", type=int, help="the token budget of each model (default 2M)")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the word embeddings as extracted")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: one process)")
    p.add_argument("--address", help="an existing Ray cluster to join (e.g. 'auto')")
    p.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any stage-one field, e.g. --set lr=2e-4 --set attention_weight=0 "
                        "(repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_distill)

    latency = sub.add_parser("latency", help="latency lookup table and predictor").add_subparsers(
        dest="latency_command", required=True, metavar="ACTION")
    p = latency.add_parser("profile", help="measure the table and random subnets (resumable)")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_protocol(p)
    p.set_defaults(func=_latency_profile)
    p = latency.add_parser("fit", help="fit the predictors; report held-out error")
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=0)
    _add_protocol(p)
    p.set_defaults(func=_latency_fit)

    p = sub.add_parser("search", help="best subnet per budget (exact; or Optuna, Ray Tune)")
    p.add_argument("run_dir")
    p.add_argument("--latency-ms", help="comma-separated budgets, e.g. 4,8,16")
    p.add_argument("--params-m", help="comma-separated budgets in millions, e.g. 5,10")
    p.add_argument("--backend", choices=["exact", "optuna", "ray"], default="exact",
                   help="exact: dynamic programming on the latency table (default); optuna "
                        "(NSGA-II) and ray take --trials and any predictor")
    p.add_argument("--trials", type=int, default=300, help="optuna and ray only")
    p.add_argument("--predictor", choices=["best", "table", "learned"], default="best",
                   help="the latency predictor of optuna and ray (exact: the table)")
    p.add_argument("--top-k", type=int, default=10, help="re-scored end to end per budget")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="then N more architectures per budget from the whole space, by a "
                        "local search on the end-to-end loss that starts from the best "
                        "re-scored or hand-designed one (default 0: none)")
    p.add_argument("--any-device", action="store_true",
                   help="use a latency predictor measured on another device")
    p.add_argument("--no-export", action="store_true", help="do not write subnets/")
    _add_protocol(p)
    p.set_defaults(func=_search)

    p = sub.add_parser("query", help="the best stored subnet within a budget, at once")
    p.add_argument("run_dir")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--params-m", type=float)
    p.add_argument("--export", help="also extract it to this folder")
    p.add_argument("--task", help="choose among the task's fine-tuned models in every precision "
                   "and length configuration `nasbert deploy` measured")
    _add_protocol(p)
    p.set_defaults(func=_query)

    p = sub.add_parser("deploy", help="measure a task's fine-tuned models in float32 and int8, "
                       "on PyTorch and ONNX Runtime, optionally length-adaptive, for "
                       "`query --task`")
    _add_task(p)
    p.add_argument("--subnet", action="append", help="a fine-tuned model (repeatable; default: "
                   "every subnet's)")
    p.add_argument("--length-adaptive", action="store_true",
                   help="LengthDrop training and a search over length configurations")
    p.add_argument("--trials", type=int, default=60, help="length configurations tried")
    p.add_argument("--quantisation-aware", type=float, metavar="POINTS", nargs="?", const=1.0,
                   help="fine-tune quantisation-aware each model whose int8 form loses more "
                   "than POINTS of the task's metric (default 1)")
    p.add_argument("--bound-processes", type=int, default=3, help="fresh processes that time "
                   "every form again for its latency bound, the 90th percentile of their "
                   "rounds (what query checks a budget against)")
    p.add_argument("--bound-rounds", type=int, default=9, help="rounds in each of them")
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="PyTorch forms only (default: NAS-BERT students also as their "
                   "exported ONNX graphs, float32 and int8, on ONNX Runtime)")
    p.add_argument("--quiet", action="store_true")
    _add_protocol(p)
    p.set_defaults(func=_deploy)

    p = sub.add_parser("ngram", help="distil a task's fine-tuned teacher into a sparse n-gram "
                       "student (far below any transformer's latency; task-specific)")
    _add_task(p)
    p.add_argument("--text", action="append", help="in-domain unlabelled text the teacher "
                   "labels: a file, a folder or hf:NAME (repeatable)")
    p.add_argument("--max-texts", type=int, default=100_000,
                   help="sentences of that text labelled (default 100,000)")
    p.add_argument("--augment", type=int, default=0,
                   help="perturbed copies of each training example, teacher-labelled")
    p.add_argument("--max-ngrams", type=int, default=1_000_000, help="rows of the table, at most")
    p.add_argument("--min-count", type=int, default=2, help="times an n-gram must occur")
    p.add_argument("--max-n", type=int, default=4, help="n-grams of 1 to N words")
    p.add_argument("--dim", type=int, default=128, help="embedding width")
    p.add_argument("--unlabelled-epochs", type=float, default=2.0,
                   help="stage one: the teacher's soft targets on all the text")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="stage two: the labelled training set")
    p.add_argument("--lr", type=float, default=0.1, help="Adagrad's learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_protocol(p)
    p.set_defaults(func=_ngram)

    p = sub.add_parser("finetune", help="fine-tune the teacher, then subnets with distillation")
    _add_finetune(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("sweep", help="hyper-parameter sweep per subnet (Ray Tune, Optuna, ASHA)")
    _add_finetune(p)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--address", help="an existing Ray cluster to join (e.g. 'auto')")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("compress", help="offline compression of a fine-tuned BERT classifier "
                       "(autoencoder, SVD or pruning; no training)")
    p.add_argument("model_dir",
                   help="a fine-tuned model folder, e.g. RUN/finetune/sst2/teacher/model")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--method", required=True, choices=["autoencoder", "svd", "prune"])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--ratio", type=float, help="divide the encoder layers' parameters by R")
    size.add_argument("--params-m", type=float, help="the whole model's parameters, millions")
    p.add_argument("--task", help="calibration text: the task's training sentences")
    p.add_argument("--data-dir", help="the task's folder (default: the hub)")
    p.add_argument("--calibration", type=int, help="calibration sequences (default 256)")
    p.add_argument("--no-tune", action="store_true",
                   help="prune: keep the scales (no least-squares refit)")
    p.set_defaults(func=_compress)

    p = sub.add_parser("quickstart", help="every stage on the embedded default, in minutes")
    p.add_argument("--run", default="runs/quickstart", help="run directory (resumed if present)")
    p.add_argument("--task", default="tweets")
    p.add_argument("--data-dir")
    p.add_argument("--gpu", action="store_true",
                   help="train the supernet and stage one on a CUDA GPU")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("export", help="export a model folder to ONNX and check it")
    p.add_argument("model_dir")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--no-optimize", action="store_true",
                   help="write the graph as exported, without ONNX Runtime's fusions")
    p.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # one line per fact, not a bar per file loaded (read by transformers when it loads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except ConfigError as e:
        print(f"nasbert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasbert: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
