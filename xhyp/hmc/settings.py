"""Per-dataset settings of the HMC methods on the four shared Clus-HMC sets.

Chosen on each set's validation split only (never on test) by ``python -m xhyp.eval.hmc_table
--tune`` (the candidates and their validation AU(PRC) are in ``docs/results/hmc/hmc_tuning.md``);
``xhyp train --method flat|cascaded|joint --dataset NAME`` and the results table start from them,
and explicit flags override them.

Common to every set (C-HMCNN's network, Giunchiglia & Lukasiewicz 2020, with a larger batch
and learning rate so that a run takes seconds to minutes on a CPU): an MLP with two hidden ReLU
layers and dropout 0.7, representation and label-vector dimension 128, Adam (weight decay
1e-5), batch 64, the max-constraint module and loss, early stopping on the validation AU(PRC)
(patience 10, at most 100 epochs), then a refit on the training and validation examples for the
best number of epochs (C-HMCNN's final training).

A dataset's entry may also hold per-method settings (``"cascaded"``, ``"joint"``: ``{"model": ...,
"train": ...}``), applied on top for that method only: the label score (``label_score``, stage 5
of the tuning) is chosen per set and method.
"""
from __future__ import annotations

__all__ = ["COMMON", "DATASET_SETTINGS", "settings_for"]

COMMON = {"model": {"dim": 128, "projector": "mlp", "layers": 2, "dropout": 0.7, "coherent": True},
          "train": {"batch_size": 64, "lr": 1e-3, "weight_decay": 1e-5, "epochs": 100, "patience": 10,
                    "refit": True, "joint_init": "random", "label_weight": 0.01}}

DATASET_SETTINGS = {
    "cellcycle_FUN": {"model": {"hidden": 512, "layers": 2}, "train": {"joint_init": "pretrained", "label_weight": 0.01,
                                                                           "contrastive_weight": 0.01},
                      "cascaded": {"model": {"label_score": "unit"}}},
    "derisi_GO": {"model": {"hidden": 512, "layers": 1}, "train": {"joint_init": "random", "label_weight": 0.003,
                                                                       "contrastive_weight": 0.01},
                  "cascaded": {"model": {"label_score": "unit"}}},
    "Enron_corr": {"model": {"hidden": 512, "layers": 1}, "train": {"joint_init": "random", "label_weight": 0.03,
                                                                        "contrastive_weight": 0.01},
                   "cascaded": {"model": {"label_score": "unit"}}},
    "ImCLEF07D": {"model": {"hidden": 512, "layers": 2}, "train": {"joint_init": "pretrained", "label_weight": 0.003,
                                                                       "contrastive_weight": 0.01},
                  "joint": {"model": {"label_score": "unit"}}},
}


def settings_for(dataset: str | None, method: str | None = None) -> tuple[dict, dict]:
    """``(model fields, training fields)`` for ``dataset``: :data:`COMMON` updated with the
    dataset's entry of :data:`DATASET_SETTINGS`, then with that entry's settings for ``method``
    when it has some (only :data:`COMMON` for another dataset)."""
    d = DATASET_SETTINGS.get(dataset or "", {})
    by_method = d.get(method or "", {})
    return ({**COMMON["model"], **d.get("model", {}), **by_method.get("model", {})},
            {**COMMON["train"], **d.get("train", {}), **by_method.get("train", {})})
