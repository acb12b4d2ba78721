"""Real data (Bibtex, 4880 train / 2515 test, 159 labels): 2 epochs of training are far better
than no training, and an ensemble of 3 learners beats each of its learners.

Measured while writing this test (3 learners of 2 epochs, bases 0, 3, 6): untrained P@1 0.336,
single learners 0.547-0.569, their ensembles 0.582-0.586 (gain over the best member +0.014 to
+0.023, over learner 0 +0.027 to +0.035).
"""
import numpy as np
import pytest

from xhyp.datasets import load_split
from xhyp.metrics import evaluate, inv_propensity
from xhyp.prediction import Predictor
from xhyp.prediction.ensemble import Ensemble, train_ensemble
from xhyp.training import train

pytestmark = pytest.mark.slow

TRAIN = dict(epochs=2, batch_size=64, negatives=50, sampling="uniform", alpha=30.0, lr=3e-3, lr_labels=3e-3,
             optimizer="radam", val_fraction=0.05, patience=5, knn=20, weighting="count", features="l2",
             input_dropout=0.5, seed=0, device="cpu", threads=1, rerank="none", knn_grid="")
MODEL = dict(dim=50, projector="linear", geometry="poincare")


@pytest.fixture(scope="module")
def bibtex(shared_data_dir, tmp_path_factory):
    X, Y = load_split("bibtex", "train", data_dir=str(shared_data_dir))
    Xt, Yt = load_split("bibtex", "test", data_dir=str(shared_data_dir))
    out = tmp_path_factory.mktemp("bibtex") / "ens"
    train_ensemble(X, Y, out, n_learners=3, model_config=MODEL, train_config=TRAIN, jobs=2, progress=False)
    return (X, Y), (Xt, Yt), Ensemble.load(out)


def test_two_epochs_far_above_untrained(bibtex):
    (X, Y), (Xt, Yt), ens = bibtex
    untrained = train(X, Y, MODEL, dict(TRAIN, epochs=0), progress=False)
    p_untrained = evaluate(Yt, Predictor.from_train_result(untrained).predict(Xt, top_k=5))["P@1"]
    p_trained = evaluate(Yt, Predictor.load(ens.member_dirs[0]).predict(Xt, top_k=5))["P@1"]
    assert p_trained - p_untrained >= 0.15, (p_trained, p_untrained)
    assert p_trained > 0.5


def test_ensemble_beats_its_learners(bibtex):
    _, (Xt, Yt), ens = bibtex
    singles = [evaluate(Yt, Predictor.load(d).predict(Xt, top_k=5)) for d in ens.member_dirs]
    both = evaluate(Yt, ens.predict(Xt, top_k=5))
    p1 = [s["P@1"] for s in singles]
    assert both["P@1"] > max(p1), (both["P@1"], p1)
    assert both["P@1"] - p1[0] >= 0.01 and both["P@1"] - np.mean(p1) >= 0.01, (both["P@1"], p1)
    assert both["P@5"] > np.mean([s["P@5"] for s in singles])


def test_shortlist_reranker_lifts_the_vote(bibtex):
    """The same 2-epoch learner with the shortlist scorers (xhyp.rerank) against its plain vote.

    Measured while writing this test: vote P@1 0.565, P@5 0.244, PSP@1 0.426; reranked 0.634,
    0.285, 0.493 (k = 20 and weight 4 chosen on the validation split)."""
    (X, Y), (Xt, Yt), _ = bibtex
    res = train(X, Y, MODEL, dict(TRAIN, rerank="linear", knn_grid="10,20"), progress=False)
    pred = Predictor.from_train_result(res)
    assert res.config["predict"]["rerank_weight"] > 0
    ip = inv_propensity(Y)
    fused = evaluate(Yt, pred.predict(Xt, top_k=5), inv_prop=ip)
    plain = evaluate(Yt, pred.predict(Xt, top_k=5, rerank_weight=0), inv_prop=ip)
    assert fused["P@1"] - plain["P@1"] >= 0.03 and fused["P@5"] - plain["P@5"] >= 0.02, (fused, plain)
    assert fused["PSP@1"] - plain["PSP@1"] >= 0.03, (fused, plain)
