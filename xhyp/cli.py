"""Command-line interface: ``xhyp train|ensemble|predict|aggregate|evaluate|run|plot|info|export|data``.

Each verb parses its arguments and calls one public function (:mod:`xhyp.commands`,
:mod:`xhyp.datasets.registry`); there is no logic here. Model and training options are generated
from the :class:`xhyp.embedding.model.ModelConfig` and :class:`xhyp.training.loop.TrainConfig` dataclasses, so
every hyper-parameter has a flag (``--dim``, ``--alpha``, ``--lr-labels``...).
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import MISSING, fields

# torch-free: `xhyp --help` starts fast
from .config import ANN_CODES, INDEX_KINDS, WEIGHTINGS, ModelConfig, TrainConfig, parse_bool

_SKIP = {"n_features", "n_labels"}


def _attribute_docs(cls) -> dict:
    """``{name: text}`` from the ``Attributes:`` section of a dataclass docstring (Google style)."""
    docs, name, in_attrs = {}, None, False
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        m = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if m:
            name = m.group(1)
            docs[name] = m.group(2)
        elif stripped and name and line.startswith(" " * 8):
            docs[name] += " " + stripped
        elif stripped:
            break
    return docs


def add_config_args(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    """Add one ``--field-name`` flag per field of a configuration dataclass (``--dim``,
    ``--alpha``, ``--lr-labels``...), typed by the field's default, with the help text of the
    dataclass's ``Attributes:`` docs; every flag defaults to ``None`` (not given). The experiment
    drivers (``eval/``) use the same flags. ``n_features`` / ``n_labels`` (taken from the data)
    get none, nor the fields in ``skip``. Read them back with :func:`config_from_args`.
    """
    g = parser.add_argument_group(title)
    docs = _attribute_docs(cls)
    for f in fields(cls):
        if f.name in _SKIP or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        typ = type(default) if default is not None else str
        text = re.sub(r":\w+:`([^`]*)`", r"\1", docs.get(f.name, "")).replace("``", "").replace("%", "%%")
        g.add_argument(flag, dest=f"{cls.__name__}.{f.name}", type=parse_bool if typ is bool else typ, default=None,
                       metavar=typ.__name__.upper(), help=f"{text} (default: {default})".strip())


def config_from_pairs(pairs, cls) -> dict:
    """``["epochs=10", "alpha=20"]`` -> ``{"epochs": 10, "alpha": 20.0}``: ``KEY=VALUE`` items read
    through the flags of :func:`add_config_args` (same names, types and checks as ``--KEY VALUE``).

    Raises:
        ValueError: an item without ``=``, or an unknown key or bad value (the message names it).
    """
    argv = []
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        argv += ["--" + key.replace("_", "-"), value]
    parser = argparse.ArgumentParser(prog=f"{cls.__name__} KEY=VALUE", add_help=False, exit_on_error=False)
    add_config_args(parser, cls, cls.__name__)
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; choose from "
                         f"{sorted(f.name for f in fields(cls))}")
    return config_from_args(args, cls)


def config_from_args(args: argparse.Namespace, cls) -> dict:
    """``{field: value}`` of the flags of :func:`add_config_args` that were given."""
    prefix = cls.__name__ + "."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def _add_data_args(p, split_default=None):
    p.add_argument("--dataset", help="registry dataset name (see `xhyp data list`)")
    p.add_argument("--data-dir", help="data directory (default: $XHYP_DATA, else ./data)")
    p.add_argument("--file", dest="path", help="an Extreme Classification Repository text file instead of --dataset")
    if split_default is not None:
        p.add_argument("--split", default=split_default, choices=("train", "test"))


def _print_json(d):
    print(json.dumps(d, indent=2, sort_keys=True))


def _add_hmc_args(p):
    from .hmc.commands import add_hmc_args  # --method flat|cascaded|joint and the HMC-only flags

    add_hmc_args(p)


def _add_training_args(p, replaced: str) -> None:
    """``--overwrite``, ``--config``, ``--no-progress``, the model and training flags and the HMC
    flags of the verbs that train (``replaced``: what ``--overwrite`` replaces)."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {replaced}")
    p.add_argument("--config", help="JSON file with {'model': {...}, 'train': {...}} defaults")
    p.add_argument("--no-progress", action="store_true")
    add_config_args(p, ModelConfig, "model")
    add_config_args(p, TrainConfig, "training")
    _add_hmc_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="xhyp", description="Extreme multi-label classification with a joint "
                                "hyperbolic embedding of examples and labels (Gerald & Baskiotis, CAp 2019).")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb")

    t = sub.add_parser("train", help="train one learner and write a model directory")
    _add_data_args(t)
    t.add_argument("--out", required=True, help="model directory")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_training_args(t, "the model OUT already holds")

    en = sub.add_parser("ensemble", help="train M learners (seeds seed, seed+1, ...) into OUT/learner_XX "
                        "plus OUT/ensemble.json; rerunning skips complete learners")
    _add_data_args(en)
    en.add_argument("--out", required=True, help="ensemble directory")
    en.add_argument("--learners", "-M", type=int, default=3, help="number of learners M (default: 3)")
    en.add_argument("--jobs", type=int, default=1, help="learners trained at once, one process each (default: 1)")
    en.add_argument("--resume", action="store_true", help="complete the ensemble OUT holds (the default)")
    _add_training_args(en, "the ensemble OUT holds")

    pr = sub.add_parser("predict", help="score queries; saves a sparse (Q x L) score matrix (.npz)")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", nargs="+", help="model directory, or ensemble directory "
                     "(several, or an ensemble: summed votes)")
    src.add_argument("--ensemble", metavar="DIR", help="ensemble directory from `xhyp ensemble` "
                     "(its learners' votes are summed, as in Gerald & Baskiotis 2019)")
    _add_data_args(pr, "test")
    pr.add_argument("--out", required=True, help="output .npz")
    pr.add_argument("--k", type=int, help="neighbours (default: the model's)")
    pr.add_argument("--top-k", type=int, default=100, help="labels kept per query")
    pr.add_argument("--index", default="exact", choices=INDEX_KINDS,
                    help="kNN search backend (default: exact); ann: approximate, balanced k-means clusters, "
                    "exact distances inside the probed ones (about 20x exact at recall@10 0.95, bench/README.md)")
    pr.add_argument("--weighting", choices=WEIGHTINGS)
    pr.add_argument("--nprobe", type=int, help="clusters probed (ann: default 30; clustered/faiss-ivf: see "
                    "xhyp.knn.index); more = higher recall, slower")
    pr.add_argument("--n-clusters", type=int, help="clusters of the ann/clustered index (default: ann N/384, "
                    "clustered N/3000)")
    pr.add_argument("--ann-codes", choices=ANN_CODES, help="row codes of the ann index's scan (default "
                    "int8: 72 bytes a row at dimension 50 instead of 200; same results, exact re-check)")
    pr.add_argument("--device", default="auto", help="where queries are embedded and searched: auto (a GPU when "
                    "there is one), cpu, cuda, cuda:N (default: auto; see xhyp.config.PredictConfig)")
    pr.add_argument("--rerank-weight", type=float, help="weight w of the shortlist scorers in vote/k + "
                    "w*sigmoid(margin) (default: the weight chosen after training; 0: the plain kNN vote; "
                    "w > 0 needs a model trained with --rerank linear)")
    pr.add_argument("--rerank-knn", type=int, help="neighbours whose labels form a query's shortlist "
                    "(default: the model's --rerank-knn)")
    pr.add_argument("--rerank-shortlist", type=int, help="labels of the shortlist (and of the vote) scored at most, "
                    "those carried by the most neighbours (default: the model's --rerank-shortlist; 0: all)")

    ag = sub.add_parser("aggregate", help="sum saved score matrices (.npz) of several learners (summed votes)")
    ag.add_argument("--pred", nargs="+", required=True, help=".npz files from `xhyp predict`")
    ag.add_argument("--out", required=True, help="output .npz")
    ag.add_argument("--top-k", type=int, default=100, help="labels kept per query after summing")

    pl = sub.add_parser("plot", help="draw a saved model's label embeddings in 2-D, or (--history) its "
                        "training curves (PNG)")
    what = pl.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model directory (an ensemble directory: its first learner)")
    what.add_argument("--history", metavar="DIR", help="draw loss and validation P@1 against epochs instead: "
                      "a model, `xhyp run` or ensemble directory, or a history.json")
    pl.add_argument("--out", required=True, help="output .png")
    pl.add_argument("--examples", type=int, default=0, help="also draw up to this many training examples")
    pl.add_argument("--title", help="first title line")

    e = sub.add_parser("evaluate", help="P@k, nDCG@k, PSP@k, PSnDCG@k of saved scores")
    e.add_argument("--pred", required=True, help=".npz from `xhyp predict`")
    _add_data_args(e, "test")
    e.add_argument("--train-file", help="training XC file for propensities (with --file)")
    e.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    e.add_argument("--A", type=float, help="propensity A (default: the dataset's)")
    e.add_argument("--B", type=float, help="propensity B (default: the dataset's)")
    e.add_argument("--out", help="write the metrics as JSON here")

    r = sub.add_parser("run", help="train + predict + evaluate in one directory (the main job)")
    r.add_argument("--dataset", help="registry dataset name (default: synthetic-hier, unless --train-file)")
    r.add_argument("--data-dir")
    r.add_argument("--train-file", help="your own training file (Extreme Classification Repository text "
                   "format) instead of --dataset; needs --test-file")
    r.add_argument("--test-file", help="your own test file (same format and label space as --train-file)")
    r.add_argument("--out", required=True)
    r.add_argument("--index", default="exact", choices=INDEX_KINDS, help="kNN search backend (default: exact)")
    _add_training_args(r, "the model OUT/model already holds")

    inf = sub.add_parser("info", help="what a model or ensemble directory holds: configuration, data "
                         "fingerprint, best epoch, validation curve, files")
    inf.add_argument("--model", required=True, help="model or ensemble directory")
    inf.add_argument("--json", action="store_true", help="print JSON instead of text")

    ex = sub.add_parser("export", help="write label and training-example embeddings (float32) to an .npz")
    ex.add_argument("--model", required=True, help="model directory, or ensemble directory (see --member)")
    ex.add_argument("--out", required=True, help="output .npz")
    ex.add_argument("--member", type=int, default=0, help="learner of an ensemble directory (default: 0)")

    d = sub.add_parser("data", help="dataset registry: list, info, fetch")
    dsub = d.add_subparsers(dest="data_verb")
    dsub.add_parser("list", help="registered datasets")
    di = dsub.add_parser("info", help="a dataset's specification, whether it is present and verified")
    di.add_argument("name")
    di.add_argument("--data-dir")
    df = dsub.add_parser("fetch", help="download, unpack and verify a dataset")
    df.add_argument("name")
    df.add_argument("--data-dir")
    df.add_argument("--url", help="mirror URL of the archive (overrides the registry's)")
    return p


def _run(args) -> int:
    if args.verb == "data":
        from xhyp.datasets import registry

        if args.data_verb == "list":
            for name in registry.DATASETS:
                print(name)
        elif args.data_verb == "info":
            _print_json(registry.dataset_info(args.name, args.data_dir))
        elif args.data_verb == "fetch":
            print(registry.fetch(args.name, args.data_dir, url=args.url))
        else:
            print("usage: xhyp data {list,info,fetch} ...", file=sys.stderr)
            return 2
        return 0
    if args.verb is None:
        build_parser().print_help()
        return 2
    from . import commands  # imports torch: only for the verbs that need it

    if args.verb in ("train", "run", "ensemble"):
        model, train_cfg = {}, {}
        if getattr(args, "config", None):
            from .modeldir import read_json

            cfg = read_json(args.config, "configuration JSON file")
            if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, {}), dict) for k in ("model", "train")):
                raise ValueError(f"{args.config}: expected a JSON object {{\"model\": {{...}}, \"train\": {{...}}}}")
            model, train_cfg = dict(cfg.get("model", {})), dict(cfg.get("train", {}))
        model.update(config_from_args(args, ModelConfig))
        train_cfg.update(config_from_args(args, TrainConfig))
        if getattr(args, "method", "xmc") != "xmc":  # HMC classifiers (xhyp.hmc)
            from .hmc.commands import run_hmc_verb

            _print_json(run_hmc_verb(args, model, train_cfg))
            return 0
        if args.verb == "ensemble":
            _print_json(commands.ensemble_model(args.out, args.dataset, args.path, args.data_dir, model, train_cfg,
                                                n_learners=args.learners, jobs=args.jobs,
                                                progress=not args.no_progress, overwrite=args.overwrite))
        elif args.verb == "train":
            _print_json(commands.train_model(args.out, args.dataset, args.path, args.data_dir, model,
                                             train_cfg, resume=args.resume, progress=not args.no_progress,
                                             overwrite=args.overwrite))
        else:
            res = commands.run_pipeline(args.out, args.dataset, args.data_dir, model, train_cfg,
                                        index=args.index, progress=not args.no_progress,
                                        train_path=args.train_file, test_path=args.test_file,
                                        overwrite=args.overwrite)
            from .metrics import format_table

            print(format_table({res["dataset"]: res["metrics"]}))
            _print_json(res)
        return 0
    if args.verb == "predict":
        params = {k: v for k, v in (("nprobe", args.nprobe), ("n_clusters", args.n_clusters),
                                    ("codes", args.ann_codes)) if v is not None} or None
        if args.ensemble is not None:
            from .prediction.ensemble import ENSEMBLE_FILE, is_ensemble_dir

            if not is_ensemble_dir(args.ensemble):
                raise FileNotFoundError(f"--ensemble {args.ensemble}: no {ENSEMBLE_FILE} there; it is not a "
                                        "directory written by `xhyp ensemble` (use --model for one model)")
        _print_json(commands.predict_model(args.model or args.ensemble, args.out, args.dataset, args.path, args.split,
                                           args.data_dir, args.k, args.top_k, args.index, args.weighting,
                                           params, device=args.device, rerank_weight=args.rerank_weight,
                                           rerank_knn=args.rerank_knn, rerank_shortlist=args.rerank_shortlist))
        return 0
    if args.verb == "aggregate":
        _print_json(commands.aggregate_predictions(args.pred, args.out, args.top_k))
        return 0
    if args.verb == "plot":
        if args.history is not None:
            _print_json(commands.plot_history(args.history, args.out, args.title))
        else:
            _print_json(commands.plot_model(args.model, args.out, args.examples, args.title))
        return 0
    if args.verb == "info":
        info = commands.model_info(args.model)
        if args.json:
            _print_json(info)
        else:
            print(commands.format_info(info))
        return 0
    if args.verb == "export":
        _print_json(commands.export_embeddings(args.model, args.out, args.member))
        return 0
    if args.verb == "evaluate":
        from .metrics import format_table

        m = commands.evaluate_predictions(args.pred, args.dataset, args.path, args.split, args.data_dir,
                                          args.train_file, args.k, args.A, args.B, args.out)
        print(format_table({str(args.pred): m}))
        return 0
    build_parser().print_help()
    return 2


def _one_line(exc) -> str:
    """The message of an expected failure; an OS error without a file name gets its type."""
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def main(argv=None) -> int:
    """Entry point of the ``xhyp`` command; returns the exit status.

    Expected failures (bad input files, missing datasets, offline downloads, bad options) are
    reported as one ``xhyp: error: ...`` line with exit status 2, never as a traceback.
    """
    args = build_parser().parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError, ImportError, EOFError) as exc:
        print(f"xhyp: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown names (datasets, options) carry their message as args[0]
        print(f"xhyp: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xhyp: interrupted (model directory keeps the last finished epoch; use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
