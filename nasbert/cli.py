"""The ``nasbert`` command: a thin layer over the Python API, one sub-command per verb.

The grammar, the same on every verb:

* a verb that works on a run takes the run directory as its first positional
  (``nasbert finetune RUN --task sst2``, ``nasbert train-supernet RUN --recipe R``);
* every field of the configuration dataclasses a verb takes is a flag, generated from the
  dataclass (:func:`_add_config`): ``FinetuneConfig.max_seq_len`` is ``--max-seq-len``, a
  nested or secondary section's field carries the section's name
  (``--augment-per-example``, ``--sweep-trials``, ``--length-trials``); booleans are
  ``--x/--no-x``, lists take several values; and ``--set key=value`` sets the same field
  by its path (``--set augment.per_example=4``, ``--set timing.batch=8``). Flags and
  ``--set`` go through :func:`nasbert.schema.parse`, the one parsing edge, whose errors
  name the field;
* one name per meaning: ``--device`` is where a model trains, ``--timing-*`` is how a
  latency is measured (``--timing-device``, ``--timing-batch``, ...), ``--batch-size`` a
  training batch, ``--latency-ms`` / ``--params-m`` one or more budgets;
* ``--json`` (``query``, ``search``, ``latency fit``) prints one JSON document on stdout;
* old spellings still work for one release, with a warning on stderr.

Each verb's parser (``_add_<verb>``) sits beside its handler (``_<verb>``); only the
chosen verb's parser is built, so that ``nasbert query`` imports no torch.

Bad input prints one line, ``nasbert: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nasbert.errors import ConfigError
from nasbert.io import writable_output

# ------------------------------------------------------------------ flags from dataclasses
#
# Why argparse, generated here from the dataclasses, and not a library. Measured on this
# machine (Python 3.11, `python -X importtime -c "import X"`, cumulative): argparse 9 ms
# (and the standard library's), tyro 1.0 73-75 ms, simple-parsing 0.1.9 80-116 ms,
# jsonargparse 4.53 95-114 ms. Import time alone would fit under `nasbert query`'s
# 1.5 s; what does not fit: each library converts and checks the values itself and
# builds the dataclass with every default filled in (tyro prints a multi-line boxed
# error for a bad int), so that a flag could not be layered over a recipe file and
# `--set` through `nasbert.schema.parse`, the one place that checks a value and names
# its field; and an old spelling that warns needs a custom argparse action anyway (tyro
# 1.0's markers have none). What is needed here is ~150 lines.


class _Parser(argparse.ArgumentParser):
    """Errors in one line that names the fix; no abbreviated flags (an old ``--batch``
    must never silently mean ``--batch-size``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        print(f"nasbert: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _warn(old: str, new: str) -> None:
    print(f"nasbert: warning: {old} is deprecated and goes in the next release; use {new}",
          file=sys.stderr)


class _Deprecated(argparse.Action):
    """An old spelling: warns on stderr, then does what ``new`` does (stores the value, a
    constant, or adds to a list)."""

    def __init__(self, option_strings, dest, *, new: str, const=None, extend=False,
                 nargs=None, **kwargs):
        super().__init__(option_strings, dest, nargs=0 if const is not None else nargs,
                         **kwargs)
        self.new, self.value, self.extend = new, const, extend

    def __call__(self, parser, namespace, values, option_string=None):
        _warn(option_string, self.new)
        if self.value is not None:
            values = self.value
        if self.extend:
            values = [*(getattr(namespace, self.dest, None) or []), *values]
        setattr(namespace, self.dest, values)


def _alias(p: argparse.ArgumentParser, old: str, dest: str, new: str, **kwargs) -> None:
    """``old``, a deprecated spelling of the flag whose value lands in ``dest``."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS,
                   **kwargs)
    note = f"{old} (now {new})"
    p.epilog = (p.epilog + ", " + note) if p.epilog else \
        "deprecated spellings (they warn, and go in the next release): " + note


@dataclasses.dataclass
class _Section:
    """A configuration dataclass a verb takes, as flags.

    ``name``: its key in ``--set`` ("" for the verb's own config, whose keys are bare);
    its flags are ``--<name>-<field>`` unless ``prefix`` says otherwise; a nested
    dataclass field's flags add its name (``--augment-per-example``) unless it is in
    ``flat``; ``flags`` renames a field's flag; ``skip`` fields have none (``--set``
    still sets them); ``custom``: field -> (flag, choices, encode) for a field whose flag
    speaks another vocabulary (``--device cuda`` for ``use_gpu: true``); ``needs``: the
    switch (a dest) without which the section's flags are an error; ``defaults``: show
    the dataclass's defaults in the help (not where a file gives them)."""

    name: str
    cls: type
    title: str = ""
    prefix: str | None = None
    flat: tuple[str, ...] = ()
    flags: dict[str, str] = dataclasses.field(default_factory=dict)
    skip: tuple[str, ...] = ()
    custom: dict[str, tuple[str, tuple[str, ...], Callable[[str], str], str]] = \
        dataclasses.field(default_factory=dict)
    needs: str | None = None
    defaults: bool = True
    entries: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)

    def flag_prefix(self) -> str:
        return self.prefix if self.prefix is not None else \
            (self.name.replace("_", "-") + "-" if self.name else "")


def _unoptional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's comment (on its line, else the lines just above it), its first
    sentence: the help of its flag, written once, where the field is."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    lines, docs = source.splitlines(), {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            said = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments]
            if not said:
                n = node.lineno - 1
                while n in comments and lines[n - 1].lstrip().startswith("#"):
                    said.insert(0, comments[n])
                    n -= 1
            text = " ".join(said)
            docs[node.target.id] = text.split(". ")[0].rstrip(".")
    return docs


def _add_config(p: argparse.ArgumentParser, section: _Section) -> None:
    """One flag per field of ``section.cls`` (nested dataclasses too), each storing the
    text as typed; :func:`_configs` turns them into ``key=value`` overrides."""
    if not any(a.dest == "set" for a in p._actions):
        field = dataclasses.fields(section.cls)[0].name
        key = f"{section.name}.{field}" if section.name else field
        flag = section.flag_prefix() + field.replace("_", "-")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"set any configuration field by its path: --{flag} X is "
                            f"--set {key}=X (repeatable; read as YAML: null, true, [1, 2])")
    doc = (section.cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc.startswith(section.cls.__name__ + "("):
        doc = ""  # no docstring: the dataclass's signature
    group = p.add_argument_group(
        section.title or f"{section.cls.__name__}"
        + (f" (--set {section.name}.KEY=VALUE)" if section.name else ""),
        (doc + ("" if section.defaults else " Defaults: the file's.")).replace("%", "%%"))
    try:
        top = section.cls() if section.defaults else None
    except (TypeError, ConfigError):
        top = None

    def walk(cls: type, path: str, prefix: str, instance: Any) -> None:
        hints, docs = typing.get_type_hints(cls), _field_docs(cls)
        for f in dataclasses.fields(cls):
            key = f"{path}.{f.name}" if path else f.name
            if not f.init or key in section.skip:
                continue
            tp = _unoptional(hints[f.name])
            value = getattr(instance, f.name) if instance is not None else (
                f.default if f.default is not dataclasses.MISSING else None)
            if dataclasses.is_dataclass(tp):
                walk(tp, key, prefix if key in section.flat else
                     prefix + f.name.replace("_", "-") + "-", value)
                continue
            help_ = docs.get(f.name, "")
            kwargs: dict[str, Any] = {}
            kind = "raw"
            if key in section.custom:
                flag, choices, _, help_ = section.custom[key]
                kwargs["choices"], kind = choices, "custom"
            else:
                flag = section.flags.get(key) or prefix + f.name.replace("_", "-")
                origin, args = typing.get_origin(tp), typing.get_args(tp)
                if tp is bool:
                    kwargs["action"], kind = argparse.BooleanOptionalAction, "bool"
                elif origin is typing.Literal:
                    kwargs["choices"], kind = args, "str"
                elif origin in (tuple, list) and args:
                    if len(args) == 2 and args[1] is Ellipsis or origin is list:
                        kwargs.update(nargs="+", action="extend")
                    else:
                        kwargs["nargs"] = len(args)
                    kind = "list-str" if args[0] in (str, Path) else "list"
                    kwargs["metavar"] = getattr(args[0], "__name__", "X").upper()
                elif tp in (str, Path):
                    kind, kwargs["metavar"] = "str", tp.__name__.upper()
                elif tp in (int, float):
                    kwargs["metavar"] = tp.__name__.upper()
                else:
                    continue  # a mapping or anything else: --set only
            if section.defaults and kind != "custom" and value is not None:
                shown = list(value) if isinstance(value, tuple) else value
                help_ += f" (default {shown})" if help_ else f"default {shown}"
            dest = f"config:{section.name}:{key}"
            group.add_argument(f"--{flag}", dest=dest, default=None,
                               help=help_.replace("%", "%%") or None, **kwargs)
            section.entries.append((dest, key, kind, flag))

    walk(section.cls, "", section.flag_prefix(), top)
    sections = p.get_default("sections") or []
    p.set_defaults(sections=[*sections, section])


def _yaml(value: Any, kind: str) -> str:
    """A flag's value as ``--set`` reads it: text as typed for numbers and null, quoted
    for strings and paths (``--token-pattern '[a-z]+'`` stays a string)."""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return json.dumps(value)
    if kind in ("list", "list-str"):
        return "[" + ", ".join(_yaml(v, "str" if kind == "list-str" else "raw")
                               for v in value) + "]"
    return str(value)


def _route(item: str, names: set[str]) -> tuple[str, str]:
    """The section a ``--set`` item goes to (its first key, when that names a section;
    else the verb's own config), and the item within that section."""
    head, dot, _ = item.partition("=")[0].partition(".")
    if dot and head in names - {""}:
        return head, item[len(head) + 1:]
    if "" not in names:
        known = sorted(names)
        raise ConfigError(f"names no section here; give one of {', '.join(known)} "
                          f"(e.g. --set {known[0]}.KEY=VALUE)", source=f"--set {item}")
    return "", item


def _overrides(args: argparse.Namespace, section: _Section) -> list[str]:
    """The section's ``--set`` items, then ``key=value`` for each of its flags given
    (flags win)."""
    names = {s.name for s in args.sections}
    sets = [rest for name, rest in (_route(item, names) for item in args.set)
            if name == section.name]
    flags = []
    for dest, key, kind, _ in section.entries:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if kind == "custom":
            value, kind = section.custom[key][2](value), "raw"
        flags.append(f"{key}={_yaml(value, kind)}")
    return sets + flags


def _configs(args: argparse.Namespace, *, bases: dict[str, dict] | None = None
             ) -> dict[str, Any]:
    """The verb's configuration dataclasses, by section name: each the dataclass's
    defaults (or ``bases[name]``), then ``--set``, then the flags, parsed and checked by
    :func:`nasbert.schema.parse`. A section whose switch is off while one of its flags
    is given is an error."""
    from nasbert.schema import apply_overrides, parse, to_dict

    out = {}
    for section in args.sections:
        overrides = _overrides(args, section)
        if section.needs and not getattr(args, section.needs) and overrides:
            switch = "--" + section.needs.replace("_", "-")
            given = [f"--{flag}" for dest, _, _, flag in section.entries
                     if getattr(args, dest, None) is not None]
            raise ConfigError(f"applies with {switch} only; add {switch}",
                              source=given[0] if given else f"--set {section.name}.*")
        try:
            base = to_dict(section.cls())
        except (TypeError, ConfigError):
            base = {}
        base.update((bases or {}).get(section.name, {}))
        source = f"nasbert {args.command}" + (f" ({section.name})" if section.name else "")
        data = apply_overrides(base, overrides, source=source)
        out[section.name] = parse(section.cls, data, source=source, prefix=section.name)
    return out


# ------------------------------------------------------------------ arguments many verbs share


def _add_run(p: argparse.ArgumentParser, *, optional: bool = False, default=None) -> None:
    p.add_argument("run", metavar="RUN", nargs="?" if optional else None, default=default,
                   help="the run directory" + (f" (default {default})" if default else ""))


def _add_task(p: argparse.ArgumentParser, *, required: bool = True,
              embeddings: bool = False) -> None:
    p.add_argument("--task", required=required, help="cola, sst2, mrpc, stsb, qqp, mnli, "
                   "qnli, rte, wnli, tweets (the embedded default), squad (extractive question "
                   "answering) or conll2003 (named entities)" + (
                       "; embeddings: the students after embedding distillation"
                       if embeddings else ""))
    p.add_argument("--data-dir", help="the task's local folder (a GLUE folder such as "
                   "glue/SST-2, SQuAD v1.1's train.json and dev.json, CoNLL-2003's train.txt "
                   "and valid.txt); default: the hub")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout (and nothing else there)")


def _add_subnets(p: argparse.ArgumentParser, *, all_: bool = False) -> None:
    p.add_argument("--subnet", action="append", help="a model under RUN/subnets/ "
                   "(repeatable; default: all of them)")
    if all_:
        p.add_argument("--all", action="store_true", help="every model under RUN/subnets/")


def _add_device(p: argparse.ArgumentParser, section: str, key: str) -> dict:
    """``--device cpu|cuda``: where models train (``key``, a boolean field of the
    section, is true on cuda); the old ``--gpu``, deprecated. Returns the section's
    ``custom`` entry."""
    _alias(p, "--gpu", f"config:{section}:{key}", "--device cuda", const="cuda")
    return {key: ("device", ("cpu", "cuda"), lambda v: "true" if v == "cuda" else "false",
                  "where models train: cpu, or cuda (a GPU per worker)")}


def _add_timing(p: argparse.ArgumentParser, *, aliases: bool = True) -> None:
    """``--timing-*``: how a latency is measured (:class:`~nasbert.latency.protocol.
    Protocol`), with the old spellings where the verb had them."""
    from nasbert.latency.protocol import Protocol

    _add_config(p, _Section("timing", Protocol, title="how latency is measured "
                            "(--set timing.KEY=VALUE)"))
    if not aliases:
        return
    for old, field in (("--batch", "batch"), ("--seq", "seq"), ("--threads", "threads"),
                       ("--warmup", "warmup"), ("--repeats", "repeats"),
                       ("--rounds", "rounds"), ("--precision", "dtype")):
        _alias(p, old, f"config:timing:{field}", f"--timing-{field.replace('_', '-')}")
    _alias(p, "--gpu", "config:timing:device", "--timing-device cuda", const="cuda")


def _protocol(args: argparse.Namespace, task: str | None = None):
    """The timing protocol of the flags, over the task family's own defaults (question
    answering is timed at 384 tokens, as the field times it)."""
    base = {}
    if task:
        from nasbert.families import family_of

        base = family_of(task).timing
    protocol = _configs(args, bases={"timing": base})["timing"]
    if protocol.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("torch sees no CUDA GPU here; measure with --timing-device cpu",
                              source="--timing-device")
    return protocol


def _run_given(args: argparse.Namespace, verb: str) -> str:
    """The run directory: the first positional, or the deprecated ``--run``."""
    old = getattr(args, "old_run", None)
    if old is not None:
        if args.run not in (None, getattr(args, "run_default", None)):
            raise ConfigError(f"give the run directory once, first: nasbert {verb} RUN",
                              source="--run")
        args.run = old
    if args.run is None:
        raise ConfigError(f"give the run directory first: nasbert {verb} RUN ...",
                          source=f"nasbert {verb}")
    return args.run


def _dump(doc: Any) -> None:
    def plain(value: Any) -> Any:
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)

    print(json.dumps(doc, indent=2, default=plain))


@contextlib.contextmanager
def _stdout_for(args: argparse.Namespace):
    """With ``--json``, whatever the API prints goes to stderr: stdout is the document's."""
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


# ------------------------------------------------------------------ verbs
#
# One module, each verb's `_add_<verb>` beside its handler, rather than a package of verb
# modules: tests/test_layout.py lets `nasbert.cli` (and `nasbert.pipeline`) alone import
# the trainer.

_VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}
_GROUPS = {"space": "inspect a search space", "latency": "latency lookup table and predictor"}


def _verb(name: str, help_: str):
    def register(add: Callable[[argparse.ArgumentParser], None]):
        _VERBS[name] = (help_, add)
        return add
    return register


# ---- space show, space sample, extract, export: a search space or a model folder, no run


@_verb("space show", "size, parameter range and example architectures")
def _add_space_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a shipped search space (minilm_l6, nasbert_base, tiny) or "
                   "a YAML path")
    p.add_argument("--examples", type=int, default=3, help="example architectures to print")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_space_show)


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


@_verb("space sample", "print N random architectures")
def _add_space_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a shipped search space or a YAML path")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", action="store_true", help="also print the parameter count")
    p.set_defaults(func=_space_sample)


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


@_verb("extract", "extract a subnet to a model folder and check it")
def _add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a shipped search space or a YAML path")
    p.add_argument("--arch", help="architecture string (default: a random one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the weights")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(func=_extract)


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


@_verb("export", "export a model folder to ONNX (checked against torch) or as a "
       "sentence-transformers folder")
def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--onnx", help="the .onnx file to write")
    to.add_argument("--sentence-transformers", metavar="DIR", dest="sentence_transformers",
                    help="the folder to write: the model, the tokenizer and the teacher's "
                    "pooling, for SentenceTransformer(DIR) after `import nasbert`")
    p.add_argument("--teacher", help="with --sentence-transformers: the teacher whose pooling "
                   "(and tokenizer, for a folder without one) to use: a sentence-transformers "
                   "folder, hub id or packaged name (default: the teacher of the run the "
                   "folder is in)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--no-optimize", action="store_true",
                   help="write the graph as exported, without ONNX Runtime's fusions")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    if args.sentence_transformers:
        from nasbert.embed import export_sentence_transformers
        from nasbert.pooling import Pooling
        from nasbert.run import RunDir
        from nasbert.teacher import resolve

        writable_output(args.sentence_transformers, flag="--sentence-transformers",
                        inputs=(args.model_dir,))
        folder = Path(args.model_dir).resolve()
        run = next((RunDir(p) for p in folder.parents if (p / "run.yaml").is_file()), None)
        if args.teacher:
            teacher = resolve(args.teacher)
        elif run is not None:  # a run's model: the run's teacher
            teacher = run.teacher_name()
        elif (folder / "modules.json").is_file():  # a sentence-transformers folder already
            teacher = str(folder)
        else:
            raise ConfigError("is neither a run's model nor a sentence-transformers folder; "
                              "give --teacher, the teacher it was made from",
                              source=args.model_dir)
        pooling = Pooling.of(teacher)
        out = export_sentence_transformers(args.model_dir, args.sentence_transformers,
                                           teacher=teacher, pooling=pooling)
        print(f"pooling       {pooling.mode}{', normalised' if pooling.normalize else ''}, "
              f"at most {pooling.max_seq_length} tokens")
        print(f"wrote         {out}/ (SentenceTransformer('{out}') after `import nasbert`)")
        return
    from nasbert.export import export_onnx

    writable_output(args.onnx, flag="--onnx", folder=False)
    report = export_onnx(args.model_dir, args.onnx, opset=args.opset, atol=args.atol,
                         optimize=not args.no_optimize)
    for b, t, d in report.checks:
        print(f"check         batch {b}, sequence {t}: max |onnx - torch| {d:.2e}")
    if report.fusions:
        print("fused         " + ", ".join(f"{n} {op}" for op, n in report.fusions))
    print(f"wrote         {report.path}  (opset {report.opset}, dynamic batch and sequence)")


# ---- train-supernet, distill: stage one


@_verb("train-supernet", "block-wise distillation of the supernet with progressive "
       "shrinking (resumes when re-run)")
def _add_train_supernet(p: argparse.ArgumentParser) -> None:
    from nasbert.recipe import Recipe

    _add_run(p, optional=True)
    p.add_argument("--recipe", help="a shipped recipe (quickstart, minilm_wiki, "
                   "bert_base_paper) or a YAML path (required)")
    _alias(p, "--run", "old_run", "the first positional: nasbert train-supernet RUN "
           "--recipe RECIPE")
    custom = _add_device(p, "", "scaling.use_gpu")
    _add_config(p, _Section("", Recipe, title="the recipe's fields (--set SECTION.KEY=VALUE)",
                            flat=("train", "scaling"), custom=custom, defaults=False))
    _add_quiet(p)
    p.set_defaults(func=_train_supernet)


def _train_supernet(args: argparse.Namespace) -> None:
    from nasbert.recipe import load_recipe
    from nasbert.run import RunDir
    from nasbert.train import train_supernet

    if args.old_run is not None and args.recipe is None and args.run is not None:
        args.recipe, args.run = args.run, None  # the old order: RECIPE --run RUN
    run_dir = _run_given(args, "train-supernet")
    if args.recipe is None:
        raise ConfigError("give the recipe: nasbert train-supernet RUN --recipe quickstart "
                          "(a shipped name or a YAML path)", source="--recipe")
    (section,) = args.sections
    recipe = load_recipe(args.recipe, _overrides(args, section))
    run = RunDir(run_dir)
    summary = train_supernet(recipe, run, progress=not args.quiet)
    start, end = summary["dev_loss_start"], summary["dev_loss_end"]
    print(f"trained       {summary['steps']} steps on {summary['workers']} worker(s)")
    for key in sorted(end):
        print(f"{key:<13} dev loss {start.get(key, float('nan')):.4f} -> {end[key]:.4f} "
              "(mean over reference paths)")
    print(f"wrote         {run.final}/ (supernet), {run.shrink}/ (shrink tables), "
          f"{run.summary}")


@_verb("distill", "stage one: distil extracted models end to end on the run's corpus, "
       "one token budget for all (resumes when re-run)")
def _add_distill(p: argparse.ArgumentParser) -> None:
    from nasbert.train.stage_one import DistillConfig

    _add_model_training(p, DistillConfig)
    p.set_defaults(func=_distill)


def _add_model_training(p: argparse.ArgumentParser, config: type) -> None:
    """A training of each of a run's models: RUN, --subnet, ``config``'s fields, where
    it trains and how it scales."""
    from nasbert.recipe import ScalingConfig

    _add_run(p)
    _add_subnets(p)
    _add_config(p, _Section("", config))
    custom = _add_device(p, "scaling", "use_gpu")
    _add_config(p, _Section("scaling", ScalingConfig, prefix="", custom=custom,
                            title="how it scales (--set scaling.KEY=VALUE)"))
    _add_quiet(p)


def _distill(args: argparse.Namespace) -> None:
    from nasbert.run import RunDir
    from nasbert.train import distill

    configs = _configs(args)
    run = RunDir(args.run)
    records = distill(run, args.subnet, configs[""], scaling=configs["scaling"],
                      progress=not args.quiet)
    for model_id, r in records.items():
        a, b = r["dev_loss_start"], r["dev_loss_end"]
        terms = ", ".join(f"{k} {a[k]:.4f} -> {b[k]:.4f}" for k in b if k != "loss")
        print(f"{model_id:<24} dev loss {a['loss']:.4f} -> {b['loss']:.4f} ({terms}; "
              f"{r['tokens']:,} tokens)")
    for model_id in records:
        print(f"wrote         {run.distilled_dir(model_id)}/")


@_verb("distill-embeddings", "train models to reproduce the teacher's sentence embeddings "
       "on unlabelled text, after stage one or from the extracted weights (resumes when "
       "re-run); each becomes a sentence-transformers folder")
def _add_distill_embeddings(p: argparse.ArgumentParser) -> None:
    from nasbert.train.embedding import EmbedDistillConfig

    _add_model_training(p, EmbedDistillConfig)
    p.add_argument("--static", action="store_true",
                   help="the static student (one vector per token of the teacher's "
                   "vocabulary, made from the teacher's embedding of each token alone, then "
                   "distilled here): alone, or beside the models --subnet names")
    p.set_defaults(func=_distill_embeddings)


def _distill_embeddings(args: argparse.Namespace) -> None:
    from nasbert.run import RunDir
    from nasbert.train import distill_embeddings

    configs = _configs(args)
    run = RunDir(args.run)
    models = args.subnet
    if args.static:
        from nasbert.run import STATIC
        from nasbert.train import make_static

        make_static(run, progress=not args.quiet)
        models = [*(models or ()), STATIC]
    records = distill_embeddings(run, models, configs[""], scaling=configs["scaling"],
                                 progress=not args.quiet)
    for model_id, r in records.items():
        a, b = r["dev_start"], r["dev_end"]
        print(f"{model_id:<24} dev loss {a['loss']:.4f} -> {b['loss']:.4f}, cosine to the "
              f"teacher {a['cosine_to_teacher']:.4f} -> {b['cosine_to_teacher']:.4f} "
              f"({r['steps']} steps from {r['start']})")
    for model_id in records:
        print(f"wrote         {run.embedded_dir(model_id)}/ (a sentence-transformers folder)")


# ---- latency profile, latency fit


@_verb("latency profile", "measure the table and random subnets (resumable)")
def _add_latency_profile(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--samples", type=int, default=200, help="random subnets measured")
    p.add_argument("--seed", type=int, default=0)
    _add_timing(p)
    _add_quiet(p)
    p.set_defaults(func=_latency_profile)


def _latency_profile(args: argparse.Namespace) -> None:
    from nasbert.latency.stage import profile

    folder = profile(args.run, _protocol(args), samples=args.samples, seed=args.seed,
                     progress=not args.quiet)
    print(f"wrote         {folder}/table_raw.json, {folder}/samples.jsonl")


@_verb("latency fit", "fit the predictors; report held-out error")
def _add_latency_fit(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    p.add_argument("--seed", type=int, default=0)
    _add_timing(p)
    _add_json(p)
    p.set_defaults(func=_latency_fit)


def _latency_fit(args: argparse.Namespace) -> None:
    from nasbert.latency.stage import fit
    from nasbert.run import RunDir

    protocol = _protocol(args)
    with _stdout_for(args):
        predictors = fit(args.run, protocol, seed=args.seed)
    folder = RunDir(args.run).latency_dir(protocol)
    if args.json:
        return _dump({"run": str(args.run), "folder": str(folder),
                      "predictors": {k: dict(p.error) for k, p in predictors.items()}})
    for kind, predictor in predictors.items():
        e = predictor.error
        print(f"{kind:<8} held-out MAPE {e['mape']:.2f} %, RMSE {e['rmse']:.3f} ms, "
              f"Kendall tau {e['tau']:.3f} (n={e['n']})")
    print(f"wrote         {folder}/table.json, {folder}/learned.json, {folder}/best.json")


# ---- search, query


def _add_budgets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-ms", nargs="+", metavar="MS",
                   help="latency budgets, milliseconds on the timing device (one or more)")
    p.add_argument("--params-m", nargs="+", metavar="M",
                   help="parameter budgets, millions (one or more)")


def _budget_values(args: argparse.Namespace, name: str) -> list[float]:
    flag, out = "--" + name.replace("_", "-"), []
    for text in getattr(args, name) or ():
        if "," in text:
            _warn(f"{flag} {text} (commas)", f"{flag} {text.replace(',', ' ')}")
        for part in filter(None, text.split(",")):
            try:
                out.append(float(part))
            except ValueError:
                raise ConfigError(f"{part!r} is not a number; give budgets such as "
                                  f"{flag} 4 8 16", source=flag) from None
    return out


def _budgets(args: argparse.Namespace) -> list:
    """One budget per value of ``--latency-ms`` and of ``--params-m``."""
    from nasbert.search.searchers import Budget

    budgets = [Budget(latency_ms=v) for v in _budget_values(args, "latency_ms")] + \
        [Budget(params_m=v) for v in _budget_values(args, "params_m")]
    if not budgets:
        raise ConfigError("give a budget: --latency-ms 8 (or several: 4 8 16), or "
                          "--params-m 10", source=f"nasbert {args.command}")
    return budgets


@_verb("search", "best subnet per budget (exact; or Optuna, Ray Tune)")
def _add_search(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    _add_budgets(p)
    p.add_argument("--backend", choices=["exact", "optuna", "ray"], default="exact",
                   help="exact: dynamic programming on the latency table (default); optuna "
                        "(NSGA-II) and ray take --search-trials and any predictor")
    p.add_argument("--search-trials", type=int, default=300,
                   help="architectures optuna and ray try (default 300)")
    _alias(p, "--trials", "search_trials", "--search-trials", type=int)
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
    _add_timing(p)
    _add_json(p)
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> None:
    from nasbert.run import RunDir
    from nasbert.search.stage import search

    run = RunDir(args.run)
    budgets, protocol = _budgets(args), _protocol(args)
    with _stdout_for(args):
        chosen = search(run, budgets, backend=args.backend, trials=args.search_trials,
                        predictor=args.predictor, top_k=args.top_k, protocol=protocol,
                        allow_foreign=args.any_device, export=not args.no_export,
                        refine=args.refine)
    exported = [] if args.no_export else [str(run.subnet_dir(name)) for name in chosen]
    if args.json:
        return _dump({"run": str(run.path), "search": str(run.search),
                      "chosen": {name: c.to_dict() for name, c in chosen.items()},
                      "exported": exported})
    print(f"wrote         {run.search}/ (candidates.json, front.json, pareto.json, pareto.png, "
          "chosen.json)")
    for folder in exported:
        print(f"wrote         {folder}/")


@_verb("query", "the best stored subnet within each budget, at once; with --task, the "
       "most accurate deployable form `nasbert deploy` measured")
def _add_query(p: argparse.ArgumentParser) -> None:
    _add_run(p)
    _add_budgets(p)
    p.add_argument("--task", help="choose among the task's fine-tuned models in every "
                   "precision and length configuration `nasbert deploy` measured (a budget "
                   "is then --latency-ms, measured with the --timing-* protocol); "
                   "`embeddings`: the most faithful embedding student")
    p.add_argument("--export", help="also write the answer to this folder (one budget)")
    _add_timing(p)
    _add_json(p)
    p.set_defaults(func=_query)


def _query(args: argparse.Namespace) -> None:
    """One command with one vocabulary: ``--task`` changes what is chosen from (the
    task's measured deployable forms instead of the search's subnets), not the flags."""
    from nasbert.run import RunDir

    _configs(args)  # checked, whether or not --task uses them
    run = RunDir(args.run)
    budgets = _budgets(args)
    if args.export:
        if len(budgets) > 1:
            raise ConfigError("writes one model; give one budget with --export",
                              source="--export")
        writable_output(args.export, inputs=(run.path,), flag="--export")
    if args.task:
        return _query_deployment(args, run, budgets)
    from nasbert.search.stage import query

    answers = [(b, query(run, b)) for b in budgets]
    exported = None
    if args.export:
        from nasbert.extract import save_subnet

        with _stdout_for(args):
            exported = str(save_subnet(run.supernet(), answers[0][1].arch, args.export,
                                       info={"budget": budgets[0].name}).path)
    if args.json:
        return _dump({"run": str(run.path), "task": None, "exported": exported, "answers": [
            {"budget": dataclasses.asdict(b), **c.to_dict()} for b, c in answers]})
    for b, c in answers:
        if len(answers) > 1:
            print(f"budget        {b.name}")
        print(f"architecture  {c.arch}")
        print(f"parameters    {c.params / 1e6:.2f}M")
        print(f"latency       predicted {c.latency_ms:.2f} ms"
              + (f", measured {c.measured_ms:.2f} ms" if c.measured_ms else ""))
        print(f"score         {c.score:.4f} (approximated)"
              + (f", end-to-end dev loss {c.full_loss:.4f}" if c.full_loss is not None else "")
              + (f" ({c.origin})" if c.origin else ""))
    if exported:
        print(f"wrote         {exported}/")


def _query_deployment(args: argparse.Namespace, run, budgets: list) -> None:
    from nasbert.compress.deploy import FIDELITY, choose, export
    from nasbert.families import spec_of
    from nasbert.latency.stage import teacher_ms
    from nasbert.run import EMBEDDINGS

    if args.task == EMBEDDINGS:  # the embedding students: faithfulness to the teacher
        name, metric = EMBEDDINGS, FIDELITY
    else:
        spec = spec_of(args.task)
        name, metric = spec.name, spec.metric
    if any(b.params_m is not None for b in budgets):
        raise ConfigError("with --task, a budget is --latency-ms alone (the deployable family "
                          "is chosen by measured latency); drop --params-m",
                          source="nasbert query")
    protocol = _protocol(args, None if args.task == EMBEDDINGS else name)
    with _stdout_for(args):
        answers = [(b, choose(run, name, b.latency_ms, protocol)) for b in budgets]
        base = teacher_ms(run, protocol)
        written = export(run, answers[0][1], args.export) if args.export else None
    if args.json:
        return _dump({"run": str(run.path), "task": name, "teacher_ms": base,
                      "protocol": dataclasses.asdict(protocol), "exported": written,
                      "answers": [{"budget": dataclasses.asdict(b), **dataclasses.asdict(c)}
                                  for b, c in answers]})
    for b, c in answers:
        if len(answers) > 1:
            print(f"budget        {b.name}")
        print(f"model         {c.model_id}  ({c.folder})")
        if c.kind == "ngram":
            print(f"kind          a sparse n-gram student: task-specific, it classifies "
                  f"{name} only")
        elif c.kind == "static":
            print("kind          a static embedding student: one vector per token, no "
                  "attention")
        print(f"precision     {c.precision}")
        print("runtime       " + ("ONNX Runtime (the exported graph)"
                                  if c.runtime == "onnxruntime" else "PyTorch"))
        print("length        " + ("every token" if c.length_config is None else
                                  ", ".join(f"{r:g}" for r in c.length_config)
                                  + " (kept per block)"))
        print(f"dev {metric:<9} {c.metric:.4f}"
              + (" (mean cosine to the teacher's embeddings)" if name == EMBEDDINGS else ""))
        print(f"latency       measured {c.ms:.2f} ms (batch {protocol.batch}, sequence "
              f"{protocol.seq}): {base / c.ms:.2f}x the float32 teacher's {base:.2f} ms")
        print(f"bound         {c.ms_bound:.2f} ms (the budget was checked against it: a high "
              "quantile of rounds in several processes)")
    if written:
        print(f"wrote         {written['model']}/")
        if written.get("onnx"):
            print(f"wrote         {written['onnx']}")


# ---- embed-eval


@_verb("embed-eval", "zero-shot sentence-embedding quality of a run's models or a folder")
def _add_embed_eval(p: argparse.ArgumentParser) -> None:
    from nasbert.embed import EmbeddingEval

    p.add_argument("run", metavar="RUN", help="a run directory (its teacher and every model "
                   "under subnets/, at --stage) or one model folder")
    _add_subnets(p)
    p.add_argument("--stage", default="latest",
                   choices=("extracted", "stage-one", "embeddings", "latest"),
                   help="which of a run's models to score: as extracted, after stage one, "
                   "after embedding distillation, or the last of these each has been "
                   "through (default)")
    p.add_argument("--teacher", help="the sentence-transformers folder whose pooling (and "
                   "tokenizer, for a folder that has none) to use (default: the run's teacher; "
                   "for one folder, the folder itself)")
    _add_config(p, _Section("", EmbeddingEval))
    _add_json(p)
    p.set_defaults(func=_embed_eval)


def _embed_eval(args: argparse.Namespace) -> None:
    from nasbert.embed import evaluate, run_encoders
    from nasbert.pooling import Pooling
    from nasbert.run import RunDir

    config = _configs(args)[""]
    target = Path(args.run)
    if (target / "config.json").is_file():  # one model folder
        from transformers import AutoTokenizer

        models: dict = {target.name: target}
        pooling = Pooling.of(args.teacher or target)
        own = any((target / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
        if not own and not args.teacher:
            raise ConfigError("has no tokenizer; give --teacher, the folder of the teacher "
                              "it was made from", source=str(target))
        tokenizer = AutoTokenizer.from_pretrained(str(target if own else args.teacher))
    else:
        run = RunDir(target)
        models = run_encoders(run, args.subnet or None, stage=args.stage)
        pooling = Pooling.of(args.teacher or run.teacher_name())
        tokenizer = run.tokenizer()
    with _stdout_for(args):
        scores = evaluate(models, config, pooling=pooling, tokenizer=tokenizer)
    if args.json:
        _dump({"pooling": dataclasses.asdict(pooling), "models": scores})
        return
    print(f"pooling       {pooling.mode}{', normalised' if pooling.normalize else ''}, "
          f"at most {pooling.max_seq_length} tokens")
    for name, row in scores.items():
        extra = f"  recall@1 {row['recall@1']:.1f}" if "recall@1" in row else ""
        print(f"{name:<24} Spearman {row['spearman']:6.2f}  Pearson {row['pearson']:6.2f}"
              f"{extra}  ({row['pairs']} pairs)")


# ---- finetune, sweep


@_verb("finetune", "fine-tune the teacher, then subnets with distillation")
def _add_finetune(p: argparse.ArgumentParser) -> None:
    from nasbert.finetune.config import FinetuneConfig

    _add_run(p)
    _add_task(p)
    _add_subnets(p, all_=True)
    _add_config(p, _Section("", FinetuneConfig))
    _add_quiet(p)
    p.set_defaults(func=_finetune)


def _models(args: argparse.Namespace) -> list[str] | None:
    if args.subnet and args.all:
        raise ConfigError("give --subnet or --all, not both", source=f"nasbert {args.command}")
    return args.subnet or None


def _finetune(args: argparse.Namespace) -> None:
    from nasbert.data.tasks import task_folder
    from nasbert.families import spec_of
    from nasbert.finetune.config import task_defaults
    from nasbert.finetune.stage import finetune, student_variant, teacher_variant
    from nasbert.run import TEACHER, RunDir

    spec, run = spec_of(args.task), RunDir(args.run)
    config = _configs(args, bases={"": task_defaults(spec.name)})[""]
    results = finetune(run, args.task, data_dir=args.data_dir, models=_models(args),
                       config=config, progress=not args.quiet)
    folder = task_folder(spec.name, config.fold, config.folds)
    print(f"{'model':<24} {'parameters':>10}  " + "  ".join(
        f"{split} {m}" for split in spec.dev_splits for m in spec.metrics))
    for model_id, r in results.items():
        print(f"{model_id:<24} {r['params'] / 1e6:>9.2f}M  " + "  ".join(
            f"{r[split][m]:.4f}".rjust(len(split) + len(m) + 1)
            for split in spec.dev_splits for m in spec.metrics))
    for model_id in results:
        variant = (teacher_variant(config) if model_id == TEACHER
                   else student_variant(model_id, config))
        print(f"wrote         {run.finetune_dir(folder, variant)}/")


@_verb("sweep", "hyper-parameter sweep per subnet (Ray Tune, Optuna, ASHA)")
def _add_sweep(p: argparse.ArgumentParser) -> None:
    from nasbert.finetune.config import FinetuneConfig, SweepConfig

    _add_run(p)
    _add_task(p)
    _add_subnets(p, all_=True)
    _add_config(p, _Section("", FinetuneConfig, title="FinetuneConfig: the schedule every "
                            "trial starts from"))
    _add_config(p, _Section("sweep", SweepConfig, flags={"address": "address"}))
    _alias(p, "--trials", "config:sweep:trials", "--sweep-trials")
    _alias(p, "--cpus-per-trial", "config:sweep:cpus_per_trial", "--sweep-cpus-per-trial")
    _add_quiet(p)
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> None:
    from nasbert.families import spec_of
    from nasbert.finetune.config import task_defaults
    from nasbert.finetune.sweep import sweep

    base = _configs(args, bases={"": task_defaults(spec_of(args.task).name)})[""]
    # the sweep's own seed follows --seed unless --sweep-seed says otherwise, as before
    config = _configs(args, bases={"sweep": {"seed": base.seed}})["sweep"]
    records = sweep(args.run, args.task, data_dir=args.data_dir, models=_models(args),
                    base=base, config=config, progress=not args.quiet)
    for model_id, r in records.items():
        stopped = sum(t["stopped_early"] for t in r["trials"])
        print(f"{model_id:<24} {len(r['trials'])} trials ({stopped} stopped early by ASHA); "
              f"best {r['metric']} {r['best']['score']:.4f}")
    for r in records.values():
        print(f"wrote         {r['path']}")


# ---- deploy, ngram, compress


@_verb("deploy", "measure a task's fine-tuned models in float32 and int8, on PyTorch and "
       "ONNX Runtime, optionally length-adaptive, for `query --task`")
def _add_deploy(p: argparse.ArgumentParser) -> None:
    from nasbert.compress.deploy import BoundConfig
    from nasbert.compress.length import LengthDropConfig, LengthSearchConfig
    from nasbert.compress.qat import QatConfig

    _add_run(p)
    _add_task(p, embeddings=True)
    p.epilog = "deprecated spellings (they warn, and go in the next release): " \
        "--quantisation-aware POINTS (now --quantisation-aware --qat-threshold POINTS/100)"
    p.add_argument("--subnet", action="append", help="a fine-tuned model (repeatable; "
                   "default: every subnet's)")
    p.add_argument("--length-adaptive", action="store_true",
                   help="LengthDrop training and a search over length configurations")
    _add_config(p, _Section("length", LengthSearchConfig, needs="length_adaptive"))
    _alias(p, "--trials", "config:length:trials", "--length-trials")
    _add_config(p, _Section("length_drop", LengthDropConfig, needs="length_adaptive"))
    p.add_argument("--quantisation-aware", action=_QuantisationAware, nargs="?", default=False,
                   help="fine-tune quantisation-aware each model whose int8 form loses "
                        "more than --qat-threshold of the task's metric")
    _add_config(p, _Section("qat", QatConfig, needs="quantisation_aware"))
    _add_config(p, _Section("bound", BoundConfig))
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="PyTorch forms only (default: NAS-BERT students also as their "
                   "exported ONNX graphs, float32 and int8, on ONNX Runtime)")
    _add_timing(p)
    _add_quiet(p)
    p.set_defaults(func=_deploy)


class _QuantisationAware(argparse.Action):
    """``--quantisation-aware``, a switch; its old form took the threshold in points
    (``--quantisation-aware 2``): now ``--qat-threshold 0.02``, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.quantisation_aware = True
        if values is not None:
            try:
                threshold = float(values) / 100
            except ValueError:
                parser.error(f"argument --quantisation-aware: {values!r} is not a number")
            _warn(f"--quantisation-aware {values}",
                  f"--quantisation-aware --qat-threshold {threshold:g}")
            setattr(namespace, "config:qat:threshold", str(threshold))


def _deploy(args: argparse.Namespace) -> None:
    from nasbert.compress.deploy import FIDELITY, prepare_embedding_deployment
    from nasbert.families import family_of
    from nasbert.run import EMBEDDINGS

    configs = _configs(args)
    protocol = _protocol(args, None if args.task == EMBEDDINGS else args.task)
    if args.task == EMBEDDINGS:
        if args.length_adaptive or args.quantisation_aware:
            raise ConfigError("embedding students deploy in float32 and int8 at full length; "
                              "drop --length-adaptive and --quantisation-aware",
                              source="--task embeddings")
        rows = prepare_embedding_deployment(args.run, args.subnet, protocol=protocol,
                                            bounds=configs["bound"], runtimes=_runtimes(args),
                                            progress=not args.quiet)
        metric = FIDELITY
    else:
        family = family_of(args.task)
        if family.name != "sentence" and args.quantisation_aware:
            raise ConfigError(f"{args.task} deploys in float32 and int8 (its "
                              "quantisation-aware forms are not built yet); drop "
                              "--quantisation-aware", source=f"--task {args.task}")
        data = family.load(args.task, args.data_dir)
        rows = _deploy_task(args, data, configs, protocol)
        metric = data.spec.metric
    print(f"{'deployable':<52} {metric:>9} {'ms':>8} {'bound':>8}")
    for c in sorted(rows, key=lambda c: c.ms_bound):
        print(f"{c.describe():<52} {c.metric:>9.4f} {c.ms:>8.2f} {c.ms_bound:>8.2f}")


def _runtimes(args: argparse.Namespace) -> tuple[str, ...]:
    from nasbert.compress.deploy import RUNTIMES

    return ("pytorch",) if args.no_onnxruntime else RUNTIMES


def _deploy_task(args: argparse.Namespace, data, configs: dict, protocol) -> list:
    from nasbert.compress.deploy import prepare_deployment

    return prepare_deployment(
        args.run, data, models=args.subnet, protocol=protocol,
        lengths=configs["length"] if args.length_adaptive else None,
        drop=configs["length_drop"] if args.length_adaptive else None,
        qat=configs["qat"] if args.quantisation_aware else None, bounds=configs["bound"],
        runtimes=_runtimes(args), progress=not args.quiet)


@_verb("ngram", "distil a task's fine-tuned teacher into a sparse n-gram student (far "
       "below any transformer's latency; task-specific)")
def _add_ngram(p: argparse.ArgumentParser) -> None:
    from nasbert.compress.ngram_distill import NgramStudentConfig

    _add_run(p)
    _add_task(p)
    _add_config(p, _Section("", NgramStudentConfig, flat=("mining",)))
    _alias(p, "--text", "config::texts", "--texts", nargs=1, extend=True)
    _alias(p, "--augment", "config::augment.per_example", "--augment-per-example")
    _alias(p, "--dim", "config::hidden_size", "--hidden-size")
    _add_timing(p)
    _add_quiet(p)
    p.set_defaults(func=_ngram)


def _ngram(args: argparse.Namespace) -> None:
    from nasbert.compress.ngram_distill import measure_ngram, train_ngram_student
    from nasbert.data.tasks import load_task
    from nasbert.families import FAMILY_TASKS

    config, protocol = _configs(args)[""], _protocol(args)
    if args.task.lower() in FAMILY_TASKS:
        raise ConfigError("an n-gram student labels a whole sentence from its n-grams; it "
                          "does not apply to answer spans or per-token labels: deploy the "
                          "task's transformer students (nasbert deploy)",
                          source=f"--task {args.task}")
    data = load_task(args.task, args.data_dir)
    record = train_ngram_student(args.run, data, config, progress=not args.quiet)
    deploy = measure_ngram(args.run, data.spec.name, protocol)
    split, metric = data.spec.dev_splits[0], data.spec.metric
    print(f"n-gram student  {args.run}/finetune/{data.spec.name}/ngram/  "
          f"({record['rows']:,} n-grams, table {record['memory_mb']['table']:,} MB)")
    print(f"{split} {metric:<11} {record[split][metric]:.4f}")
    print(f"latency         {deploy['candidates'][0]['ms']:.3f} ms (batch {protocol.batch}, "
          f"{protocol.seq} words)")


@_verb("compress", "offline compression of a fine-tuned BERT classifier (autoencoder, SVD "
       "or pruning; no training)")
def _add_compress(p: argparse.ArgumentParser) -> None:
    from nasbert.compress.offline import OfflineConfig

    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="a fine-tuned model folder, e.g. RUN/finetune/sst2/teacher/model")
    p.add_argument("--out", required=True, help="the model folder to write")
    _add_task(p, required=False)
    _add_config(p, _Section("", OfflineConfig))
    p.set_defaults(func=_compress)


def _compress(args: argparse.Namespace) -> None:
    from nasbert.compress.offline import compress

    writable_output(args.out, inputs=(args.model_dir,))
    config = _configs(args)[""]
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


# ---- quickstart


@_verb("quickstart", "every stage on the embedded default, in minutes")
def _add_quickstart(p: argparse.ArgumentParser) -> None:
    from nasbert.pipeline import QuickstartConfig

    _add_run(p, optional=True, default="runs/quickstart")
    p.set_defaults(run_default="runs/quickstart")
    _alias(p, "--run", "old_run", "the first positional: nasbert quickstart RUN")
    custom = _add_device(p, "", "gpu")
    _add_config(p, _Section("", QuickstartConfig, custom=custom))
    _add_timing(p, aliases=False)
    _add_quiet(p)
    p.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> None:
    from nasbert.data.tasks import task_spec
    from nasbert.pipeline import quickstart, render
    from nasbert.run import RunDir

    run = RunDir(_run_given(args, "quickstart"))
    config = _configs(args)[""]
    spec = task_spec(config.task)
    rows = quickstart(run, config, protocol=_protocol(args), progress=not args.quiet)
    print()
    print(render(rows, spec.name, spec.metric))
    print(f"\nwrote         {run.results}; models in {run.subnets}/, fine-tuned in "
          f"{run.finetune_dir(spec.name)}/")


# ------------------------------------------------------------------ the parser, main


def _chosen(argv: Sequence[str]) -> str | None:
    """The verb ``argv`` names (``"latency fit"``), as far as it names one."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return None
    if words[0] in _GROUPS:
        return " ".join(words[:2])
    return words[0]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``argv``, only the verb it names gets its flags (the
    others' dataclasses import torch, which ``nasbert query`` must not)."""
    chosen = None if argv is None else _chosen(argv)
    parser = _Parser(
        prog="nasbert", description="Compress BERT-family models by neural architecture search.",
        epilog="A verb that works on a run takes the run directory first: nasbert VERB RUN "
               "[flags]. Every configuration field is a flag (--max-seq-len), and --set "
               "KEY=VALUE sets it by its path; --device is where models train, --timing-* "
               "how latency is measured; --json (query, search, latency fit) prints one JSON "
               "document. `nasbert VERB --help` lists a verb's flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, (help_, add) in _VERBS.items():
        head, _, action = name.partition(" ")
        if action:
            if head not in groups:
                group = sub.add_parser(head, help=_GROUPS[head], description=_GROUPS[head])
                groups[head] = group.add_subparsers(dest=f"{head}_command", required=True,
                                                    metavar="ACTION")
            p = groups[head].add_parser(action, help=help_, description=help_)
        else:
            p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(command=name, sections=[])
        if argv is None or chosen == name:
            add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad flag (2, its one line printed)
        return e.code if isinstance(e.code, int) else 2
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
