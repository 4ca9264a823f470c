"""The deployable family of a task, and the joint choice: the most accurate (model,
precision, length configuration, runtime) the run has measured within a latency budget.

:func:`prepare_deployment` measures, for each fine-tuned student of a task, its float32
and int8 forms at full length: dev metrics (int8 evaluated after quantisation) and
latency, every model of the call in both precisions side by side in one clean process;
and a NAS-BERT student's exported graph on ONNX Runtime, float32 and int8, the same way
(``<id>/onnx/``; results/runtimes.md: fused, up to 1.26x faster than PyTorch in float32
here, though not on the deploy run's small students at batch 1).
Each model's figures go to ``finetune/<task>/<id>/deploy.json``. Where int8 loses more
than a threshold, quantisation-aware fine-tuning (:mod:`~nasbert.compress.qat`) gives a
second int8 form (``finetune/<task>/<id>-qat/deploy.json``). The length-adaptive
candidates come from :func:`~nasbert.compress.length.search_lengths`
(``finetune/<task>/<id>-lat/lengths.json``), measured the same way. Every latency is
rescaled against the run's teacher as profiled (the latency stage's reference), so the
figures of separate calls, and a later measurement of the answer, compare.

One clean process says little about the next: on a shared machine a form's median over
three rounds moved by up to 18 % from one process to another, and a budget answered on
one such figure missed 1.05 x on re-measurement a quarter of the time (18 MRPC forms,
6 processes). So, last, :func:`measure_bounds` times every form of the task side by
side in several fresh processes (default 3 x 9 rounds) and keeps a high quantile of the
rounds (default the 90th percentile) as the form's latency *bound*
(``finetune/<task>/latency.json``); the query fits budgets on bounds. On SST-2 and
MRPC here (results/deploy.md, AVX2 section) every one of 20 answers each then measured
within 1.05 x its budget on the median of 3 fresh processes (worst 0.778 x and
0.971 x); in the slowest of those processes alone, 20 and 17 of 20 did (worst
1.181 x): one process's rounds spread by more than the tolerance.

:func:`deployment_candidates` gathers every form; :func:`choose` answers a budget at once
from them; :func:`export` writes the answer as a model folder that loads with
``from_pretrained`` (precision and length configuration in its config), and as ONNX
where the exporter can trace it.

>>> prepare_deployment(run, data)                                   # doctest: +SKIP
>>> choose(run, "sst2", latency_ms=4.0)                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from nasbert.compress.forms import FormsRecord, LatencyBounds, MeasuredForm, TimedForm
from nasbert.compress.length import LengthDropConfig, LengthSearchConfig, lat_dir, search_lengths
from nasbert.compress.qat import QatConfig, qat_dir, train_quantization_aware
from nasbert.data.tasks import TaskData
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.record import FinetunedRecord
from nasbert.io import atomic_dir, atomic_write_text, read_record
from nasbert.latency.measure import PRECISIONS, Protocol, device_id, fingerprint, measure_precisions
from nasbert.latency.stage import reference
from nasbert.provenance import provenance
from nasbert.run import EMBEDDINGS, STATIC, TEACHER, RunDir, Variant, is_ngram


@dataclasses.dataclass(frozen=True)
class BoundConfig:
    """How the forms' latency bounds are measured (:func:`measure_bounds`)."""

    processes: int = 3  # fresh processes, one after another
    rounds: int = 9  # interleaved rounds in each, every form and the reference in each
    quantile: float = 0.9  # of the rescaled rounds: the bound

    def __post_init__(self) -> None:
        for name in ("processes", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, not {getattr(self, name)}",
                                  source="latency bound", field=name)
        if not 0.5 <= self.quantile <= 1:
            raise ConfigError(f"must be in [0.5, 1], not {self.quantile}; the bound is a "
                              "high quantile of the rounds (0.9: their 90th percentile)",
                              source="latency bound", field="quantile")


@dataclasses.dataclass(frozen=True)
class Deployable:
    """One way to deploy a fine-tuned model, with what was measured of it."""

    model_id: str
    folder: str  # the fine-tuned model folder (relative to the run)
    precision: str
    length_config: tuple[float, ...] | None
    metric: float  # the task's metric on its first dev split
    metrics: dict  # every dev split's metrics
    ms: float  # median latency, side by side with the others (see measure_bounds)
    device: str
    kind: str = "transformer"  # or "ngram": a sparse n-gram student, task-specific
    quantisation_aware: bool = False  # int8 after quantisation-aware fine-tuning
    # what a budget is checked against: a high quantile over rounds in several processes
    # (measure_bounds); ``ms`` for a form measured after the bounds were
    ms_bound: float | None = None
    # "pytorch", or "onnxruntime": the exported graph (fused; int8: ONNX Runtime's own
    # quantisation of it) in the student's ``onnx/`` folder
    runtime: str = "pytorch"

    def __post_init__(self) -> None:
        if self.ms_bound is None:
            object.__setattr__(self, "ms_bound", self.ms)

    def describe(self) -> str:
        if self.kind == "ngram":
            return f"{self.model_id} (an n-gram student: task-specific, {self.precision})"
        if self.kind == "static":
            return f"{self.model_id} (a static embedding student, {self.precision})"
        length = ("full length" if self.length_config is None
                  else "length " + ", ".join(f"{r:g}" for r in self.length_config))
        precision = self.precision + (" quantisation-aware" if self.quantisation_aware else "")
        runtime = ", ONNX Runtime" if self.runtime == "onnxruntime" else ""
        return f"{self.model_id} ({precision}, {length}{runtime})"


RUNTIMES = ("pytorch", "onnxruntime")
ONNX_DIR = "onnx"  # in a student's folder: its encoder as ONNX, float32 and int8


def onnx_graph(run: RunDir | str | Path, c: Deployable) -> Path:
    """The graph an ``onnxruntime`` form runs."""
    name = "encoder.int8.onnx" if c.precision == "int8" else "encoder.onnx"
    return RunDir.of(run).path / c.folder / ONNX_DIR / name


def _students(run: RunDir, task: str, models: list[str] | None) -> list[str]:
    folder = run.finetune_dir(task)
    if not folder.is_dir():
        raise ConfigError(f"has no fine-tuned models for {task}; run `nasbert finetune {run} "
                          f"--task {task}` first", source=str(run))
    have = [v.folder for v in run.finetuned(task)  # not the derived forms, nor bi-encoders
              if not v.form and not v.bi and v.model_id != TEACHER and not is_ngram(v.model_id)
              and (run.finetune_dir(task, v) / "model").is_dir()]
    if models:
        missing = [m for m in models if m not in have]
        if missing:
            raise ConfigError(f"holds no fine-tuned {missing[0]!r}; run `nasbert finetune {run} "
                              f"--task {task} --subnet {missing[0]}` first", source=str(folder))
        return list(models)
    subnets = set(run.subnet_ids())  # not the seeds' and ablations' copies
    plain = [m for m in have if Variant.parse(m).plain and m in subnets]
    return plain or have


def prepare_deployment(run: RunDir | str | Path, data: TaskData, *,
                       models: list[str] | None = None, protocol: Protocol | None = None,
                       lengths: LengthSearchConfig | None = None,
                       drop: LengthDropConfig | None = None, qat: QatConfig | None = None,
                       bounds: BoundConfig | None = BoundConfig(),
                       runtimes: tuple[str, ...] = RUNTIMES,
                       progress: bool = True) -> list[Deployable]:
    """float32 and int8 of each fine-tuned student of the task (default: every subnet's
    plain fine-tuned model), measured and evaluated, on each of ``runtimes`` (ONNX
    Runtime: NAS-BERT students, their exported graphs); with ``qat``, each student whose
    int8 form loses more than ``qat.threshold`` also fine-tuned quantisation-aware; with
    ``lengths``, each NAS-BERT student also trained with LengthDrop (``drop``) and
    searched for length configurations; then, with ``bounds``, every form of the task
    timed again for its latency bound (:func:`measure_bounds`). What is done with the
    same inputs is skipped. Returns the students' deployable forms."""
    import torch

    from nasbert.families import family_of
    from nasbert.quantize import quantize

    run = RunDir.of(run)
    family = family_of(data.spec.name)
    protocol = protocol or Protocol(**family.timing)
    _check_runtimes(runtimes)
    task = data.spec.name
    ids = _students(run, task, models)
    records = {m: FinetunedRecord.load(run.finetune_dir(task, m)) for m in ids}
    keys = {m: digest([records[m].key, dataclasses.asdict(protocol),
                       device_id(fingerprint(protocol)), sorted(runtimes)]) for m in ids}
    todo = [m for m in ids if _key(_stored(run, task, m)) != keys[m]]
    if todo:
        tokenizer = run.tokenizer()
        dirs = [run.finetune_dir(task, m) / "model" for m in todo]
        ms = measure_precisions(dirs, protocol, reference=reference(run, protocol))
        for i, m in enumerate(todo):
            schedule = records[m].schedule(str(dirs[i]))
            rows = []
            for p in PRECISIONS:
                if p == "float32":
                    metrics = {s: records[m].metrics[s] for s in data.spec.dev_splits}
                else:
                    model = quantize(family.model(dirs[i], data, schedule, schedule.seed))
                    with torch.inference_mode():
                        metrics, _ = family.evaluate(model, tokenizer, data, schedule)
                rows.append(MeasuredForm(p, metrics, ms[p][i], device_id(fingerprint(
                    dataclasses.replace(protocol, dtype=p)))))
            if "onnxruntime" in runtimes and json.loads(
                    (dirs[i] / "config.json").read_text()).get("model_type") == "nasbert":
                rows += _onnx_forms(run, data, m, schedule, protocol, tokenizer)
            if progress:
                for r in rows:
                    print(f"{m:<24} {r.precision:<8} {r.runtime:<12} {data.spec.metric} "
                          f"{r.metrics[data.spec.dev_splits[0]][data.spec.metric]:.4f}  "
                          f"{r.ms:.2f} ms", flush=True)
            FormsRecord(keys[m], m, task, dataclasses.asdict(protocol), rows,
                        provenance=provenance()).save(run.finetune_dir(task, m) / "deploy.json")
    if qat is not None:
        for m in ids:
            _quantisation_aware(run, data, m, qat, progress=progress)
    if lengths is not None:
        for m in ids:
            folder = run.finetune_dir(task, m)
            if json.loads((folder / "model" / "config.json").read_text()).get(
                    "model_type") != "nasbert":
                continue  # a teacher prefix (transformers' BERT) has no token dropping
            schedule = records[m].schedule(str(folder))
            search_lengths(run, data, m, schedule, lengths, drop=drop, protocol=protocol,
                           progress=progress)
    if bounds is not None:
        measure_bounds(run, task, protocol, bounds, progress=progress)
    return [c for c in deployment_candidates(run, task, protocol) if c.model_id in ids]


FIDELITY = "cosine"  # an embedding form's metric: its mean cosine to the teacher's embeddings


def prepare_embedding_deployment(run: RunDir | str | Path, models: list[str] | None = None,
                                 *, protocol: Protocol | None = None, texts: int = 256,
                                 bounds: BoundConfig | None = BoundConfig(),
                                 runtimes: tuple[str, ...] = RUNTIMES,
                                 progress: bool = True) -> list[Deployable]:
    """The embedding students' deployable forms (task ``embeddings``): each model after
    embedding distillation (``embed/<id>/model/``; default all, the static student
    included) in float32 and int8, its fidelity measured (the mean cosine between its
    sentence embeddings and the teacher's, both pooled as the teacher pools, over
    ``texts`` held-out spans of the run's corpus; no labels) and its latency, every
    model in both precisions side by side in one clean process; with ONNX Runtime among
    ``runtimes``, each NAS-BERT student's encoder exported too (float32 and int8 graphs
    in ``embed/<id>/onnx/``), measured the same way; each model's figures go to
    ``embed/<id>/deploy.json``, then, with ``bounds``, every form is timed again for
    its latency bound (:func:`measure_bounds`). What is done with the same inputs is
    skipped. ``query --task embeddings`` chooses among them."""
    import torch

    from nasbert.data.corpus import spans
    from nasbert.embed import load_encoder, run_encoders
    from nasbert.export import OnnxEncoder
    from nasbert.pooling import Pooling, pool
    from nasbert.quantize import quantize

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    _check_runtimes(runtimes)
    encoders = {k: Path(v) for k, v in run_encoders(run, models, stage="embeddings").items()
                if k != TEACHER}
    if not encoders:
        raise ConfigError(f"has no embedding students; run `nasbert distill-embeddings {run}` "
                          "first", source=str(run.embed))
    records = {m: read_record(folder / "embedding.json") for m, folder in encoders.items()}
    keys = {m: digest([(records[m] or {}).get("key"), dataclasses.asdict(protocol),
                       device_id(fingerprint(protocol)), texts, sorted(runtimes)])
            for m in encoders}
    todo = [m for m in encoders if _key(_stored(run, EMBEDDINGS, m)) != keys[m]]
    if todo:
        pooling = Pooling.of(run.teacher_name())
        tokenizer = run.tokenizer()
        ids, mask = spans(run.corpus().dev[:texts], 8, 64, seed=0,
                          pad_id=tokenizer.pad_token_id or 0)

        def embeddings(model) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([pool(model(input_ids=ids[i:i + 64],
                                             attention_mask=mask[i:i + 64]).last_hidden_state,
                                       mask[i:i + 64], pooling, normalize=True).float()
                                  for i in range(0, len(ids), 64)])

        target = embeddings(load_encoder(run.teacher_name(), tokenizer)[0])
        dirs = [encoders[m] for m in todo]
        ms = measure_precisions(dirs, protocol, reference=reference(run, protocol))
        for i, m in enumerate(todo):
            model = load_encoder(dirs[i], tokenizer)[0].eval()
            rows = []
            for p in PRECISIONS:
                form = model if p == "float32" else quantize(model)
                cosine = float((embeddings(form) * target).sum(-1).mean())
                rows.append(MeasuredForm(p, {"dev": {FIDELITY: cosine}}, ms[p][i], device_id(
                    fingerprint(dataclasses.replace(protocol, dtype=p)))))
            if "onnxruntime" in runtimes and model.config.model_type == "nasbert":
                graphs = _onnx_graphs(run, dirs[i], run.forms_dir(EMBEDDINGS) / m, protocol)
                for p, (graph, t) in graphs.items():
                    cosine = float((embeddings(OnnxEncoder(graph)) * target).sum(-1).mean())
                    rows.append(MeasuredForm(p, {"dev": {FIDELITY: cosine}}, t, device_id(
                        fingerprint(dataclasses.replace(protocol, dtype=p))),
                        runtime="onnxruntime"))
            if progress:
                for r in rows:
                    print(f"{m:<24} {r.precision:<8} {r.runtime:<12} cosine to the teacher "
                          f"{r.metrics['dev'][FIDELITY]:.4f}  {r.ms:.2f} ms", flush=True)
            FormsRecord(keys[m], m, EMBEDDINGS, dataclasses.asdict(protocol), rows,
                        kind="static" if m == STATIC else "transformer",
                        provenance=provenance(texts=texts)).save(
                run.forms_dir(EMBEDDINGS) / m / "deploy.json")
    if bounds is not None:
        measure_bounds(run, EMBEDDINGS, protocol, bounds, progress=progress)
    return [c for c in deployment_candidates(run, EMBEDDINGS, protocol) if c.model_id in encoders]


def _check_runtimes(runtimes: tuple[str, ...]) -> None:
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown or "pytorch" not in runtimes:
        raise ConfigError(f"must include pytorch and be among {', '.join(RUNTIMES)}, not "
                          f"{', '.join(runtimes)}", source="deployment", field="runtimes")


def _onnx_graphs(run: RunDir, model_dir: Path, folder: Path, protocol: Protocol
                 ) -> dict[str, tuple[Path, float]]:
    """A student's encoder exported (ONNX Runtime's fusions; int8: its quantisation of
    that graph) into ``folder/onnx/``, each graph timed side by side in a clean process
    and rescaled by the teacher as the PyTorch forms are: precision -> (graph, ms)."""
    from nasbert.export import export_onnx
    from nasbert.latency.measure import measure_clean

    out = folder / ONNX_DIR
    out.mkdir(exist_ok=True)
    # the int8 graph is judged by its measured quality, not by export's output check
    export_onnx(model_dir, out / "encoder.onnx", precision="int8", int8_rtol=float("inf"))
    graphs = {"float32": out / "encoder.onnx", "int8": out / "encoder.int8.onnx"}
    ms = measure_clean([str(g) for g in graphs.values()],
                       dataclasses.replace(protocol, dtype="float32"),
                       rounds=protocol.rounds, reference=reference(run, protocol))
    return {p: (g, t) for (p, g), t in zip(graphs.items(), ms)}


def _onnx_forms(run: RunDir, data: TaskData, model_id: str, schedule: FinetuneConfig,
                protocol: Protocol, tokenizer) -> list[MeasuredForm]:
    """A student's ONNX graphs (:func:`_onnx_graphs`, in ``<student>/onnx/``), evaluated
    on dev with the student's own head on top: its ``deploy.json`` rows."""
    import torch

    from nasbert.export import OnnxEncoder
    from nasbert.families import family_of

    folder = run.finetune_dir(data.spec.name, model_id)
    rows = []
    family = family_of(data.spec.name)
    model = family.model(folder / "model", data, schedule, schedule.seed)  # its head, once
    for p, (graph, t) in _onnx_graphs(run, folder / "model", folder, protocol).items():
        model.nasbert = OnnxEncoder(graph)
        with torch.inference_mode():
            metrics, _ = family.evaluate(model, tokenizer, data, schedule)
        rows.append(MeasuredForm(p, metrics, t, device_id(fingerprint(
            dataclasses.replace(protocol, dtype=p))), runtime="onnxruntime"))
    return rows


def _quantisation_aware(run: RunDir, data: TaskData, model_id: str, config: QatConfig, *,
                        progress: bool) -> None:
    """Quantisation-aware fine-tuning of one student when its int8 form loses more than
    ``config.threshold``, and that form's ``deploy.json``: dev metrics after quantising,
    and the plain int8 form's latency (the same kernels on the same shapes)."""
    task, metric, main = data.spec.name, data.spec.metric, data.spec.dev_splits[0]
    plain = _stored(run, task, model_id)
    assert plain is not None  # measured by prepare_deployment before
    rows = {c.precision: c for c in plain.candidates
            if c.runtime == "pytorch"}  # fine-tuned for PyTorch's int8
    loss = rows["float32"].metrics[main][metric] - rows["int8"].metrics[main][metric]
    folder = qat_dir(run, task, model_id)
    if config.threshold is not None and loss <= config.threshold:
        stale = FormsRecord.load(folder / "deploy.json")  # from an earlier form of the student
        if stale is not None and stale.plain_key != plain.key:
            (folder / "deploy.json").unlink()
        return
    record = train_quantization_aware(run, data, model_id, config, progress=progress)
    key = digest([record["key"], plain.key])
    if _key(FormsRecord.load(folder / "deploy.json")) == key:
        return
    metrics = {s: record[s] for s in data.spec.dev_splits}
    if progress:
        print(f"{model_id:<24} int8 quantisation-aware {metric} "
              f"{metrics[main][metric]:.4f} (plain int8 "
              f"{rows['int8'].metrics[main][metric]:.4f})", flush=True)
    FormsRecord(key, model_id, task, plain.protocol,
                [dataclasses.replace(rows["int8"], metrics=metrics)], quantisation_aware=True,
                plain_key=plain.key, int8_loss=loss, provenance=provenance()
                ).save(folder / "deploy.json")


def _stored(run: RunDir, task: str, model_id: str) -> FormsRecord | None:
    return FormsRecord.load(run.forms_dir(task) / model_id / "deploy.json")


def _key(record: FormsRecord | None) -> str | None:
    return record.key if record is not None else None


def deployment_candidates(run: RunDir | str | Path, task: str,
                          protocol: Protocol | None = None) -> list[Deployable]:
    """Every deployable form of the task's students measured under ``protocol``'s batch
    and sequence (either precision): full-length ones from ``deploy.json``, length
    configurations from ``lengths.json``, and the task's n-gram student
    (:mod:`~nasbert.compress.ngram_distill`) once measured; each with its median and
    bound from ``latency.json`` where :func:`measure_bounds` timed it."""
    run = RunDir.of(run)
    protocol = protocol or Protocol()
    bounds = _bounds(run, task, protocol)
    forms = bounds.forms if bounds is not None else {}
    out = []
    for c in _measured(run, task, protocol):
        timed = forms.get(_form(c))
        out.append(dataclasses.replace(c, ms=timed.ms, ms_bound=timed.ms_bound)
                   if timed else c)
    return out


def _form(c: Deployable) -> str:
    """What a form's latency depends on: the model's shape, precision, length
    configuration and runtime (a quantisation-aware int8 form, or a LengthDrop model at
    full length, runs the kernels of its plain twin on the same shapes)."""
    length = "full" if c.length_config is None else ",".join(f"{r:g}" for r in c.length_config)
    runtime = "" if c.runtime == "pytorch" else f" {c.runtime}"
    return f"{c.model_id} {c.precision} {length}{runtime}"


def _bounds(run: RunDir, task: str, protocol: Protocol) -> LatencyBounds | None:
    """The task's ``latency.json`` when it was measured under ``protocol`` on this device."""
    stored = LatencyBounds.load(run.forms_dir(task) / "latency.json")
    if stored is None or stored.device != device_id(fingerprint(protocol)):
        return None
    return stored


def measure_bounds(run: RunDir | str | Path, task: str, protocol: Protocol | None = None,
                   config: BoundConfig = BoundConfig(), *,
                   progress: bool = True) -> LatencyBounds | None:
    """Every deployable form of the task (:func:`deployment_candidates`, one per
    :func:`_form`) timed side by side with the run's teacher in ``config.processes``
    fresh processes of ``config.rounds`` interleaved rounds, each round rescaled against
    the teacher as profiled: per form the median (``ms``) and the ``config.quantile``
    quantile (``ms_bound``) of those rounds, written with the rounds to
    ``finetune/<task>/latency.json``. Skipped when the forms, protocol, device and
    config are those stored. Returns the record (None: the task has no form to time)."""
    import numpy as np

    from nasbert.latency.measure import measure_rounds, rescaled

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    forms: dict[str, Deployable] = {}
    for c in _measured(run, task, protocol):
        forms.setdefault(_form(c), c)
    device = device_id(fingerprint(protocol))
    # the records' keys too: a student fine-tuned again under its old id is timed again
    records = {str(p.relative_to(run.path)): _key(FormsRecord.load(p))
               for p in _sources(run, task)}
    key = digest([sorted(forms), {f: c.folder for f, c in forms.items()}, records,
                  dataclasses.asdict(protocol), device, dataclasses.asdict(config)])
    stored = _bounds(run, task, protocol)
    if _key(stored) == key or not forms:
        return stored
    ref = reference(run, protocol)
    encoders = [deployed_encoder(run, c) for c in forms.values()]
    rounds: list[list[float]] = [[] for _ in forms]
    for k in range(config.processes):
        if progress:
            print(f"latency bounds: {len(forms)} forms of {task}, process {k + 1} of "
                  f"{config.processes} ({config.rounds} rounds)", flush=True)
        times, ref_times = measure_rounds(encoders, protocol, rounds=config.rounds,
                                          reference=ref)
        for i, t in enumerate(times):
            rounds[i] += rescaled(t, ref_times, ref)
    record = LatencyBounds(
        key=key, task=task, device=device, protocol=dataclasses.asdict(protocol),
        config=dataclasses.asdict(config), reference=dataclasses.asdict(ref) if ref else None,
        forms={f: TimedForm(float(np.median(r)), float(np.quantile(r, config.quantile)),
                            c.folder, [round(x, 4) for x in r])
               for (f, c), r in zip(forms.items(), rounds)},
        provenance=provenance())
    record.save(run.forms_dir(task) / "latency.json")
    if progress:
        for f, row in record.forms.items():
            print(f"  {f:<48} {row.ms:7.2f} ms, bound {row.ms_bound:7.2f} ms", flush=True)
    return record


def deployed_encoder(run: RunDir | str | Path, c: Deployable):
    """The form's encoder as it is deployed, for a clean process to time: the model
    folder's encoder with the form's precision (int8 quantises where it is loaded, by
    its config) and length configuration; an ``onnxruntime`` form's graph, as a path."""
    from transformers import AutoModel

    from nasbert.hf.quiet import quiet_transformers

    run = RunDir.of(run)
    if c.runtime == "onnxruntime":
        return str(onnx_graph(run, c))
    folder = run.path / c.folder / "model"
    kind = json.loads((folder / "config.json").read_text()).get("model_type")
    with quiet_transformers():  # a nasbert folder loads float32 here, whatever it says
        model = AutoModel.from_pretrained(
            str(folder), **({"precision": "float32"} if kind == "nasbert" else {}))
    model.config.precision = c.precision
    if c.length_config is not None:
        model.config.length_config = list(c.length_config)
    return model


def _measured(run: RunDir, task: str, protocol: Protocol) -> list[Deployable]:
    """The forms as their stages measured them (``deploy.json``, ``lengths.json``)."""
    spec_metric = _metric(task)
    devices = {device_id(fingerprint(dataclasses.replace(protocol, dtype=p))) for p in PRECISIONS}
    out = []
    for path in _sources(run, task):
        stored = FormsRecord.load(path)
        if stored is None:
            continue
        for c in stored.candidates:
            if c.device not in devices:
                continue
            first = next(iter(c.metrics.values()))
            out.append(Deployable(stored.id, str(path.parent.relative_to(run.path)),
                                  c.precision, None if c.full_length else c.length_config,
                                  first[spec_metric], c.metrics, c.ms, c.device,
                                  stored.kind, stored.quantisation_aware, runtime=c.runtime))
    return out


def _sources(run: RunDir, task: str) -> list[Path]:
    """The stages' records of the task's forms."""
    folder = run.forms_dir(task)
    lengths = [lat_dir(run, task, v.model_id) / "lengths.json" for v in run.finetuned(task)
               if v.form == "length-adaptive"]
    return sorted(folder.glob("*/deploy.json")) + sorted(p for p in lengths if p.is_file())


def _metric(task: str) -> str:
    from nasbert.families import spec_of

    if task == EMBEDDINGS:
        return FIDELITY
    return spec_of(task).metric


def choose(run: RunDir | str | Path, task: str, latency_ms: float,
           protocol: Protocol | None = None) -> Deployable:
    """The most accurate deployable form of the task's students whose latency bound is
    within ``latency_ms`` (ties: the faster)."""
    run = RunDir.of(run)
    if task == EMBEDDINGS and not run.embed.is_dir():
        raise ConfigError(f"has no embedding students; run `nasbert distill-embeddings {run}` "
                          f"then `nasbert deploy {run} --task {task}`", source=str(run))
    if task != EMBEDDINGS and not run.finetune_dir(task).is_dir():
        raise ConfigError(f"has no models fine-tuned on {task}; run `nasbert finetune {run} "
                          f"--task {task}` then `nasbert deploy {run} --task {task}`",
                          source=str(run))
    candidates = deployment_candidates(run, task, protocol)
    if not candidates:
        raise ConfigError(f"has no measured deployment candidates for {task} on this device; "
                          f"run `nasbert deploy {run} --task {task}`", source=str(run))
    return pick(candidates, latency_ms)


def pick(candidates: Sequence[Deployable], latency_ms: float) -> Deployable:
    """The most accurate of ``candidates`` whose latency bound is within ``latency_ms``
    (ties: the lower bound, then the lower median); an impossible budget is one clear
    error naming the fastest form's bound. Measures nothing: what :func:`choose` applies
    to a run's measured forms."""
    if not candidates:
        raise ValueError("no candidates to pick from")
    fits = [c for c in candidates if c.ms_bound <= latency_ms]
    if not fits:
        fastest = min(candidates, key=lambda c: c.ms_bound)
        raise ConfigError(f"is impossible: the fastest deployable model's latency bound is "
                          f"{fastest.ms_bound:.2f} ms ({fastest.describe()}); raise the budget",
                          source=f"budget {latency_ms:g} ms")
    return max(fits, key=lambda c: (c.metric, -c.ms_bound, -c.ms))


def export(run: RunDir | str | Path, choice: Deployable, out: str | Path, *,
           onnx: bool = True) -> dict:
    """Write ``choice`` to ``out``: the fine-tuned model folder with its precision and
    length configuration in ``config.json`` (the task's Auto class,
    ``AutoModelForSequenceClassification``, ``...ForQuestionAnswering`` or
    ``...ForTokenClassification``, loads it as chosen with ``from_pretrained(out)``), and
    the encoder as ONNX where the exporter can trace it (int8: ONNX Runtime's
    quantisation beside it); an
    ``onnxruntime`` form, the graph it was measured and evaluated as, copied (its
    ``config.json`` says ``"runtime": "onnxruntime"``; the folder loads in PyTorch too).
    Returns what was written."""
    run = RunDir.of(run)
    source = run.path / choice.folder / "model"
    out = Path(out)
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        config = json.loads((tmp / "config.json").read_text())
        config["precision"] = choice.precision
        config["length_config"] = list(choice.length_config) if choice.length_config else None
        config["runtime"] = choice.runtime
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        graph = "model.int8.onnx" if choice.precision == "int8" else "model.onnx"
        if choice.runtime == "onnxruntime":  # the graph that was measured, as it was
            shutil.copyfile(onnx_graph(run, choice), tmp / graph)
        atomic_write_text(tmp / "deployment.json", json.dumps(
            {**dataclasses.asdict(choice), "run": str(run.path), **provenance()}, indent=1))
    written: dict = {"model": str(out)}
    if choice.runtime == "onnxruntime":
        written["onnx"] = str(out / graph)
    elif onnx and choice.kind == "ngram":
        from nasbert.compress.ngram import export_ngram_onnx

        written["onnx"] = str(export_ngram_onnx(out, out / "model.onnx"))
    elif onnx and config.get("model_type") == "nasbert":
        from nasbert.export import export_onnx

        written["onnx"] = export_onnx(out, out / "model.onnx", precision=choice.precision).path
    elif onnx:  # a teacher prefix: transformers' BERT, which nasbert's exporter does not take
        written["onnx"] = None
    return written
