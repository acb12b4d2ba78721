"""Mutation run: apply planted bugs one at a time to a temporary copy of the repository and check
that the test suite catches each of them.

Usage (from the repository root; ``bash scripts/mutation.sh`` runs it with the project's venv)::

    python scripts/mutation.py                 # every mutant; table on stdout, JSON in mutation.json
    python scripts/mutation.py --check         # only check that every snippet matches exactly once
    python scripts/mutation.py --only I05 M12  # some mutants
    python scripts/mutation.py --list

A mutant is ``(id, file, old snippet, replacement, description, tests)``: the old snippet must occur
exactly once in the file, otherwise the mutant is reported as ``ERROR`` (the code moved: re-target
the snippet) and counts as not caught. Each mutant runs only the test files relevant to its
module (``TESTS``), with ``pytest -x`` (the first failure is enough). Mutants ``I01``-``I11`` are
the planted bugs of issue 14; ``S00`` is a sanity mutant that must be caught (if it survives, the
copy's modules are not the ones imported and the run is aborted).

The copy is the working tree minus ``.venv``/``.git``/build outputs, in a temporary directory;
the tests run with the current interpreter and a ``sitecustomize`` that maps ``xhyp``,
``xhyp.datasets`` and ``xhyp.eval`` to the copy (the package is installed editable from the
checkout, so without it the checkout's modules would be imported).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    id: str
    file: str
    old: str
    new: str
    description: str
    tests: list = field(default_factory=list)  # empty: the module's default test selection


# test selection per module, fastest first (pytest -x stops at the first failure)
LO, BA, LS, OP = ("xhyp/training/loop.py", "xhyp/training/batches.py", "xhyp/training/loss.py",
                  "xhyp/training/optim.py")
PR, EN, CF = "xhyp/prediction/predictor.py", "xhyp/prediction/ensemble.py", "xhyp/config.py"
CO, RE = "xhyp/commands.py", "datasets/registry.py"
_TRAINING = ["tests/test_learning.py", "tests/test_train.py", "tests/test_predict.py",
             "tests/test_cli.py::test_cli_resume_continues_the_run"]
TESTS = {
    LO: _TRAINING + ["tests/test_integrity.py"],
    BA: _TRAINING,
    LS: _TRAINING,
    OP: ["tests/test_learning.py", "tests/test_train.py"],
    PR: ["tests/test_predict.py", "tests/test_train.py"],
    CF: ["tests/test_predict.py", "tests/test_train.py"],
    EN: ["tests/test_ensemble.py"],
    CO: ["tests/test_evaluate.py", "tests/test_cli.py::test_cli_resume_continues_the_run",
         "tests/test_predict.py::test_cli_predict_settings", "tests/test_ensemble.py"],
    RE: ["tests/test_evaluate.py", "tests/test_datasets.py"],
}

MUTANTS = [
    # sanity: must be caught, else the copy is not what the tests import
    Mutant("S00", PR, '        cfg = config.for_model(self.config.get("train"), self.config.get("predict"))\n', '        raise RuntimeError("mutation sanity mutant")\n',
           "sanity: Predictor.predict raises"),
    # -- the 11 planted bugs of issue 14 ----------------------------------------------------------
    Mutant("I01", RE, "return spec.propensity_a, spec.propensity_b", "return spec.propensity_b, spec.propensity_a",
           "propensity (A, B) swapped"),
    Mutant("I02", CO, 'load_split(dataset, "train", train_path, data_dir)[1]', "load_split(dataset, split, path, data_dir)[1]",
           "propensities computed from the test labels"),
    Mutant("I03", CF, "alpha=float(pick(self.alpha, \"alpha\", tc.alpha))", "alpha=float(pick(self.alpha, \"alpha\", 1.0))",
           "the predictor ignores the training alpha"),
    Mutant("I04", EN, "self.predict_members(X, member_top_k or top_k, **predict_kw)",
           "self.predict_members(X, member_top_k or top_k // 2, **predict_kw)",
           "ensemble members cut to top_k // 2 before summing"),
    Mutant("I05", LO, "    model.load_state_dict(best_state)\n    # the kNN database", "    # the kNN database",
           "the final model is the last epoch, not the best"),
    Mutant("I06", LO, "if bad >= tcfg.patience and len(va_idx) > 0:", "if bad > tcfg.patience and len(va_idx) > 0:",
           "patience off by one"),
    Mutant("I07", OP, "opts.append(torch.optim.Adam(model.mlp.parameters(), lr=lr))", "pass",
           "MLP projector parameters never optimised"),
    Mutant("I08", OP, "m.mul_(b1).add_(g, alpha=1 - b1)\n    v.mul_", "m.mul_(b2).add_(g, alpha=1 - b2)\n    v.mul_",
           "the paper's Adam: first moment decays with beta2"),
    Mutant("I09", BA, "w = w * keep / (1.0 - cfg.input_dropout)", "w = w * keep",
           "input-dropout rescale removed"),
    Mutant("I10", LS, "    for o in opts:\n        o.step()\n", "    for o in opts:\n        pass\n",
           "the optimiser never steps"),
    Mutant("I11", PR, "make_index(kind, geometry=self.model.config.geometry, **params)",
           'make_index(kind, geometry="euclidean", **params)', "a Euclidean index on Poincaré embeddings"),
    # -- xhyp/training (loop, batches, loss) -----------------------------------------------------------------------------
    Mutant("T01", LS, "logits = -alpha * d", "logits = alpha * d", "softmax logits: sign flip"),
    Mutant("T02", LS, "manifold.pairwise_dist_float64(r, Wc[P:], model.config.geometry)).masked_fill(batch.is_pos, -1e30)", "manifold.pairwise_dist_float64(r, Wc[P:], model.config.geometry))",
           "sampled positives not masked out of the softmax (shared negatives)"),
    Mutant("T03", LS, "(torch.logaddexp(pos_logits, lse_neg) - pos_logits).sum()",
           "(torch.logaddexp(pos_logits, lse_neg) - lse_neg).sum()",
           "loss target: the negatives, not the positive (shared negatives)"),
    Mutant("T04", BA, "w = np.power(label_freq.astype(np.float64), 0.75)",
           "w = np.power(label_freq.astype(np.float64), 1.0)", "frequency sampling: power 1 instead of 0.75"),
    Mutant("T05", BA, "return torch.randint(0, self.L, shape, generator=self.gen)",
           "return torch.randint(0, self.L - 1, shape, generator=self.gen)", "uniform sampling never draws the last label"),
    Mutant("T06", LO, "return np.sort(perm[n_val:]), np.sort(perm[:n_val])",
           "return np.sort(perm[:n_val]), np.sort(perm[n_val:])", "train/validation split swapped"),
    Mutant("T07", LO, "n_val = int(round(n * val_fraction))", "n_val = int(n * val_fraction) + 1",
           "validation size off by one"),
    Mutant("T08", LO, "            if p1 > best:", "            if p1 >= best:", "a tie counts as an improvement"),
    Mutant("T09", LO, "best, best_epoch, bad, best_alpha = p1, epoch + 1, 0, float(alpha)", "best, best_epoch, bad, best_alpha = p1, epoch, 0, float(alpha)",
           "best epoch off by one"),
    Mutant("T10", LO, "                bad += 1", "                bad += 2", "patience counter counts double"),
    Mutant("T11", LO, "rows = tr_idx[np.sort(perm[s:s + tcfg.batch_size])]",
           "rows = tr_idx[np.sort(perm[s + 1:s + tcfg.batch_size])]", "one example per batch skipped"),
    Mutant("T12", LO, "db = _embed_rows(model, Xp, db_rows, device)", "db, Y_db = _embed_rows(model, Xp, q_rows, device), Y_q",
           "validation kNN searches the validation rows themselves"),
    Mutant("T13", BA, "keep = torch.rand(w.shape, generator=gen) >= cfg.input_dropout",
           "keep = torch.rand(w.shape, generator=gen) < cfg.input_dropout", "input dropout keeps p instead of 1 - p"),
    Mutant("T14", BA, "if cfg.input_dropout > 0:", "if cfg.input_dropout > 0.5:", "input dropout only above 0.5"),
    Mutant("T15", LO, "start_epoch = ck[\"epoch\"] + 1", "start_epoch = ck[\"epoch\"]", "resume repeats the last epoch"),
    Mutant("T16", LO, "for _ in range(start_epoch):  # keep", "for _ in range(start_epoch - 1):  # keep",
           "resume: shuffling stream misaligned"),
    Mutant("T17", LO, '        gen.set_state(ck["generator"])\n', "", "resume: sampling generator not restored"),
    Mutant("T18", OP, "SparseRiemannianAdam([model.labels], lr=lr_labels)",
           "SparseRiemannianAdam([model.labels], lr=lr)", "Riemannian Adam (sparse) uses lr, not lr_labels"),
    Mutant("T19", OP, "cls([model.labels], lr=lr_labels, max_norm=", "cls([model.labels], lr=lr, max_norm=",
           "paper's Adam uses lr, not lr_labels"),
    Mutant("T20", OP, "torch.optim.SparseAdam)([model.bag.weight], lr=lr)",
           "torch.optim.SparseAdam)([model.bag.weight], lr=lr_labels)", "projector uses lr_labels"),
    Mutant("T21", OP, "opts.append(LazyAdam([model.labels], lr=lr_labels) if sparse",
           "opts.append(LazyAdam([model.labels], lr=lr) if sparse", "Euclidean labels (sparse) use lr"),
    Mutant("T22", OP, 'if cfg.optimizer == "radam":', 'if cfg.optimizer != "radam":', "optimizer option inverted"),
    Mutant("T23", LO, "emb = model.embed(Xp, device=device)", "emb = model.embed(X_tr, device=device)",
           "kNN database without the validation rows (misaligned with the labels)"),
    Mutant("T24", LO, 'atomic_save_sparse(out / "train_labels.npz", Y)', 'atomic_save_sparse(out / "train_labels.npz", Y_tr)',
           "saved database labels are the training part only"),
    Mutant("T25", LO, "pipe = FeaturePipeline(tcfg.features).fit(X)", 'pipe = FeaturePipeline("l2").fit(X)',
           "the features option is ignored"),
    Mutant("T26", LO, "tcfg.weighting, float(alpha), mcfg.geometry, device=device)", "tcfg.weighting, 1.0, mcfg.geometry, device=device)",
           "validation ignores alpha (distance weighting)"),
    Mutant("T27", LO, "return vote(I, D, Y_db, top_k=top_k, weighting=weighting, alpha=alpha)",
           'return vote(I, D, Y_db, top_k=top_k, weighting="count", alpha=alpha)', "validation ignores the weighting"),
    Mutant("T28", LO, "                atomic_torch_save(best_state, out / \"model.pt\")\n", "                pass\n",
           "model.pt not written at each new best epoch"),
    Mutant("T29", LO, "perm = shuffle_rng.permutation(n_tr)\n", "perm = np.arange(n_tr)\n",
           "no shuffling between epochs"),
    Mutant("T30", LO, "train_step(model, opts, b.to(device), alpha, sparse_labels, world)",
           "train_step(model, opts, b.to(device), 1.0, sparse_labels, world)", "training ignores alpha"),
    Mutant("T31", LO, "sampler = NegativeSampler(label_counts, tcfg.sampling, gen,",
           'sampler = NegativeSampler(label_counts, "uniform", gen,',
           "the sampling option is ignored"),
    # the trainer's non-default paths: per-pair negatives, dense label update
    Mutant("T32", LS, '(-alpha * d[:, 1:]).masked_fill(batch.is_pos, float("-inf"))', "(-alpha * d[:, 1:])",
           "sampled positives not masked out of the softmax (per-pair negatives)"),
    Mutant("T33", LS, "loss = (torch.logsumexp(logits, 1) - logits[:, 0]).sum() / batch.n_pairs",
           "loss = (torch.logsumexp(logits, 1) - logits[:, 1]).sum() / batch.n_pairs",
           "loss target: a negative, not the positive (per-pair negatives)"),
    Mutant("T34", OP, "geoopt.optim.RiemannianAdam([model.labels], lr=lr_labels)",
           "geoopt.optim.RiemannianAdam([model.labels], lr=lr)", "Riemannian Adam (dense) uses lr, not lr_labels"),
    Mutant("T35", OP, "else torch.optim.Adam([model.labels], lr=lr_labels))",
           "else torch.optim.Adam([model.labels], lr=lr))", "Euclidean labels (dense) use lr"),
    Mutant("T36", BA, "k = cfg.shared_negatives if cfg.negative_mode == \"batch\" else cfg.negatives",
           "k = cfg.negatives", "shared_negatives ignored (batch negatives drawn `negatives` at a time)"),
    Mutant("T37", LS, "W_pos = Wc[:, 0]", "W_pos = Wc[:, 1]",
           "radial term (per-pair negatives) pulls the first negative, not the positive", ["tests/test_radial.py"]),
    Mutant("T38", BA, "n_pairs, radial_weight=cfg.radial_weight)", "n_pairs)", "radial_weight ignored by training",
           ["tests/test_radial.py"]),
    Mutant("T39", LS, "d0 = d0 * batch.radial_pair_w", "d0 = d0", "radial_power's pair weights ignored",
           ["tests/test_radial.py"]),
    Mutant("T40", CF, "t_old.get(k, ABSENT_MEANS.get(k))", "t_old.get(k, getattr(TrainConfig(), k, None))",
           "an option missing from an older saved configuration compares as today's default",
           ["tests/test_radial.py"]),
    # -- xhyp/training/optim.py -----------------------------------------------------------------------------
    Mutant("O01", OP, "m_hat = m / (1 - b1 ** t)", "m_hat = m", "no bias correction of m"),
    Mutant("O02", OP, "v_hat = v / (1 - b2 ** t)", "v_hat = v / (1 - b1 ** t)",
           "bias correction of v with beta1"),
    Mutant("O03", OP, "g = grad * ((1.0 - sq) / 2.0) ** 2", "g = grad * ((1.0 - sq) / 2.0)",
           "inverse metric not squared"),
    Mutant("O04", OP, 'x - group["lr"] * m_hat', 'x + group["lr"] * m_hat', "ascent instead of descent"),
    Mutant("O05", OP, 'return manifold.project(x - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]), group["max_norm"])',
           'return x - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])',
           "no projection back into the ball"),
    Mutant("O06", OP, '                t = state["step"]\n', '                t = state["step"] + 1\n',
           "bias correction one step ahead"),
    Mutant("O07", OP, "sq = (x * x).sum(-1, keepdim=True)", "sq = (x * x).sum()", "squared norm over all rows"),
    Mutant("O08", OP, "guard used by the projection.\n    \"\"\"\n\n    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999),",
           "guard used by the projection.\n    \"\"\"\n\n    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99),",
           "wrong default beta2 (PaperAdam)"),
    Mutant("O09", OP, "v.mul_(b2).addcmul_(g, g, value=1 - b2)", "v.mul_(b2).addcmul_(g, g, value=1 - b1)",
           "second moment mixes beta1 in"),
    Mutant("O10", OP, "max-norm guard.\n    \"\"\"\n\n    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999),",
           "max-norm guard.\n    \"\"\"\n\n    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99),",
           "wrong default beta2 (SparsePaperAdam)"),
    # -- xhyp/prediction/predictor.py and PredictConfig (xhyp/config.py) ---------------------------------------------------------------------------
    Mutant("P01", CF, 'k=int(pick(self.k, "k", tc.knn))', 'k=int(pick(None, "k", tc.knn))',
           "the caller's k is ignored"),
    Mutant("P02", CF, "weighting=self.weighting or tc.weighting", "weighting=tc.weighting",
           "the caller's weighting is ignored"),
    Mutant("P03", CF, 'k=int(pick(self.k, "k", tc.knn))', "k=int(self.k or 10)",
           "the model's k (chosen after training, else knn) is ignored"),
    Mutant("P04", CF, "weighting=self.weighting or tc.weighting", 'weighting=self.weighting or "count"',
           "the model's weighting is ignored"),
    Mutant("P05", PR, "params = dict(cfg.index_params)\n", "params = {}\n",
           "index parameters (nprobe) dropped"),
    Mutant("P06", PR, "idx = self.index(cfg.index, **params)", 'idx = self.index("exact", **params)',
           "the index kind is ignored"),
    Mutant("P07", PR, "key = (kind, tuple(sorted(params.items())))", "key = kind",
           "index cache ignores the parameters"),
    Mutant("P08", PR, "        return self.pipeline.transform(X)", "        return X", "queries not preprocessed"),
    Mutant("P09", PR, "Xp = self.features(X[s:s + cfg.batch_size])", "Xp = self.features(X[s + 1:s + cfg.batch_size + 1])",
           "query chunks shifted by one row"),
    # -- xhyp/prediction/ensemble.py --------------------------------------------------------------------------
    Mutant("E01", EN, "t = dict(tdict, seed=base_seed + i)", "t = dict(tdict, seed=base_seed)", "every learner has the same seed"),
    Mutant("E02", EN, 'members = meta["members"][:n_members] if n_members else meta["members"]',
           'members = meta["members"][:n_members + 1] if n_members else meta["members"]', "n_members off by one"),
    Mutant("E03", EN, "    if not all((d / n).is_file() for n in (SUMMARY_FILE, *PREDICTOR_FILES)):\n        return False\n"
           "    try:\n        modeldir.verify(d, checksums=False)\n    except modeldir.ModelDirError:\n        return False\n"
           "    return True\n", "    return (d / SUMMARY_FILE).is_file()\n", "a learner missing files counts as complete"),
    Mutant("E04", EN, '{"model": mdict, "train": tdict}):', '{"model": old.get("model", {}), "train": tdict}):',
           "an ensemble with another model configuration is accepted"),
    Mutant("E05", EN, "todo = [i for i, (d, _) in enumerate(tasks) if not is_complete(d)]",
           "todo = [i for i, (d, _) in enumerate(tasks) if is_complete(d)]", "parallel mode trains the complete learners"),
    Mutant("E06", EN, "total = sum_top_scores(load(), top_k)", "total = sum_top_scores(load(), top_k + 1)",
           "aggregate keeps one label too many"),
    Mutant("E07", EN, "**predict_kw), top_k)\n", "**predict_kw), member_top_k or top_k)\n",
           "ensemble sum cut to member_top_k instead of top_k"),
    Mutant("E08", EN, "t = dict(tdict, seed=base_seed + i)", "t = dict(tdict, seed=base_seed + 2 * i)",
           "learner seeds not consecutive"),
    Mutant("E09", EN, "resume = (d / \"checkpoint.pt\").is_file()", "resume = False",
           "an interrupted learner restarts from scratch"),
    # -- xhyp/commands.py --------------------------------------------------------------------------
    Mutant("C01", CO, "inv_propensity(Ytr, A if A is not None else a, B if B is not None else b)",
           "inv_propensity(Ytr, a, B if B is not None else b)", "--A ignored"),
    Mutant("C02", CO, "inv_propensity(Ytr, A if A is not None else a, B if B is not None else b)",
           "inv_propensity(Ytr, A if A is not None else a, b)", "--B ignored"),
    Mutant("C03", CO, "metrics = evaluate(Y, S, ks=tuple(ks), inv_prop=inv_p)",
           "metrics = evaluate(Y, S, ks=(1, 3, 5), inv_prop=inv_p)", "--k ignored"),
    Mutant("C04", CO, "if Y_train is not None or dataset is not None or train_path is not None:",
           "if Y_train is not None or dataset is not None:", "--train-file ignored"),
    Mutant("C05", RE, '    "default": (0.55, 1.5),\n', '    "default": (0.5, 0.4),\n',
           "wrong default propensity parameters"),
    Mutant("C06", CO, "weighting=weighting, index_params=index_params, device=device,",
           "weighting=weighting, device=device,", "xhyp predict drops --nprobe"),
    Mutant("C07", CO, "res = train(X, Y, model or {}, train_cfg or {}, out_dir=out_dir, resume=resume,",
           "res = train(X, Y, model or {}, train_cfg or {}, out_dir=out_dir, resume=False,", "xhyp train ignores --resume"),
    Mutant("C08", CO, "if len(dirs) == 1 and not is_ensemble_dir(dirs[0]):", "if len(dirs) == 1:",
           "an ensemble directory is read as one model"),
    Mutant("C09", CO, "data_dir=data_dir, Y=Y_test, Y_train=Y)", "data_dir=data_dir, Y=Y_test, Y_train=Y_test)",
           "xhyp run: propensities from the test labels", ["tests/test_cli.py::test_run_synthetic_end_to_end"]),
    Mutant("C10", CO, "kw = dict(k=k, top_k=top_k, index=index,", "kw = dict(k=None, top_k=top_k, index=index,",
           "xhyp predict drops --k"),
]


# mutants known to survive, and why they are harmless (or not worth a test)
KNOWN_SURVIVORS = {
    "T26": "only the validation score (early-stopping choice) with weighting='distance' changes; on the "
           "test data the top-1 vote is the same for alpha=1 and the configured alpha; prediction uses alpha",
    "T27": "same as T26: count and distance weighting give the same validation top-1 on the test data; "
           "prediction uses the configured weighting",
    "E04": "redundant check: train_learner() refuses the other configuration with the same error",
}


def check(root: Path, mutants) -> dict:
    """``{id: None}`` when a mutant's snippet occurs exactly once, else ``{id: error message}``."""
    out = {}
    for m in mutants:
        path = root / m.file
        if not path.is_file():
            out[m.id] = f"{m.file} does not exist"
            continue
        n = path.read_text().count(m.old)
        out[m.id] = None if n == 1 else f"snippet found {n} times in {m.file} (expected exactly once): {m.old!r}"
    return out


SITECUSTOMIZE = '''"""Mutation run: import xhyp from this copy, not from the editable install."""
import os
import sys
from importlib.util import spec_from_file_location

_MAP = {"xhyp": %r, "xhyp.datasets": %r, "xhyp.eval": %r}


class _CopyFinder:
    """The three packages from the copy; their modules then follow the packages' __path__."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in _MAP:
            return spec_from_file_location(name, os.path.join(_MAP[name], "__init__.py"),
                                           submodule_search_locations=[_MAP[name]])
        return None


sys.meta_path.insert(0, _CopyFinder)
'''


def make_copy(tmp: Path) -> Path:
    """Copy the working tree (minus .venv, .git, caches, build outputs) and the import shim."""
    dst = tmp / "repo"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "build", "*.egg-info", "runs",
                                    "mutation.json")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    shim = tmp / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE % (str(dst / "xhyp"), str(dst / "datasets"), str(dst / "eval")))
    return dst


def env_for(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp / "shim"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XHYP_DATA"] = env.get("XHYP_DATA") or str(ROOT.parent / "shared" / "data")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def imported_from(copy: Path, env: dict) -> list:
    code = "import xhyp, xhyp.eval, xhyp.datasets, xhyp.training.loop; print(xhyp.__file__); print(xhyp.eval.__file__); " \
           "print(xhyp.datasets.__file__); print(xhyp.training.loop.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def run_tests(copy: Path, env: dict, tests, timeout: float):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return rc, failed, round(time.time() - t0, 1), text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="mutant ids to run")
    ap.add_argument("--check", action="store_true", help="only check that every snippet matches exactly once")
    ap.add_argument("--list", action="store_true", help="list the mutants")
    ap.add_argument("--out", default=str(ROOT / "mutation.json"), help="JSON report (default: mutation.json)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.id in args.only or m.id == "S00"]
    if args.list:
        for m in mutants:
            print(f"{m.id}  {m.file:18s} {m.description}")
        return 0
    errors = check(ROOT, mutants)
    if args.check:
        bad = {k: v for k, v in errors.items() if v}
        for k, v in bad.items():
            print(f"ERROR {k}: {v}")
        print(f"{len(mutants) - len(bad)}/{len(mutants)} snippets match exactly once")
        return 1 if bad else 0

    tmp = Path(tempfile.mkdtemp(prefix="xhyp-mutation-"))
    results = []
    t_start = time.time()
    try:
        copy = make_copy(tmp)
        env = env_for(tmp)
        where = imported_from(copy, env)
        if not all(str(copy) in w for w in where):
            print(f"the copy's modules are not the ones imported: {where}", file=sys.stderr)
            return 2
        print(f"copy: {copy} (imports: {', '.join(where)})", flush=True)
        for m in mutants:
            rec = dict(asdict(m), tests=m.tests or TESTS[m.file])
            if errors[m.id]:
                rec.update(status="ERROR", error=errors[m.id])
                results.append(rec)
                print(f"{m.id}  ERROR     {errors[m.id]}", flush=True)
                continue
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            try:
                rc, failed, secs, text = run_tests(copy, env, rec["tests"], args.timeout)
            finally:
                path.write_text(original)
            status = "survived" if rc == 0 else "caught"
            rec.update(status=status, rc=rc, seconds=secs, failed=failed[:3])
            if rc not in (0, 1):
                rec["tail"] = text[-1500:]
            results.append(rec)
            print(f"{m.id}  {status:9s} {secs:6.1f}s  {m.file:18s} {m.description}"
                  + (f"   <- {failed[0]}" if failed else ""), flush=True)
            if m.id == "S00" and status != "caught":
                print("sanity mutant survived: the tests do not exercise the copy; aborting", file=sys.stderr)
                return 2
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    real = [r for r in results if r["id"] != "S00"]
    caught = [r for r in real if r["status"] == "caught"]
    issue = [r for r in real if r["id"].startswith("I")]
    print("\n| id | module | mutant | result | first failing test |\n|---|---|---|---|---|")
    for r in real:
        print(f"| {r['id']} | {r['file']} | {r['description']} | {r['status']} | {(r.get('failed') or [''])[0]} |")
    score = len(caught) / max(len(real), 1)
    print(f"\nscore: {len(caught)}/{len(real)} caught ({100 * score:.1f} %); issue-14 bugs caught: "
          f"{sum(r['status'] == 'caught' for r in issue)}/{len(issue)}; "
          f"errors: {sum(r['status'] == 'ERROR' for r in real)}; {time.time() - t_start:.0f}s")
    survivors = [r for r in real if r["status"] != "caught"]
    for r in survivors:
        why = KNOWN_SURVIVORS.get(r["id"], "NEW SURVIVOR: add a test or explain it in KNOWN_SURVIVORS")
        print(f"  not caught: {r['id']} {r['description']} ({r['status']}): {why}")
    report = {"score": score, "caught": len(caught), "total": len(real),
              "issue_caught": sum(r["status"] == "caught" for r in issue), "issue_total": len(issue),
              "seconds": round(time.time() - t_start, 1), "python": sys.executable, "mutants": results}
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
