"""Published figures to read a model's results against, as `evaluate` prints them.

- NIH ChestX-ray14, per finding: CheXNet (Rajpurkar et al. 2017, DenseNet-121, Table 2), on a
  **random** patient split of its own (70/10/20), not NIH's official split lists; its mean is
  0.841. On the **official** split (`test_list.txt`, the converter's default), the same recipe
  gives less: the README's reference is a mean AUROC of about 0.81 (reports range 0.81-0.835);
  no per-finding figure is cited for it, so that column holds the mean only.
- Kaggle pneumonia: Kermany et al. (Cell 2018), on the archive's own test folder, which the
  converter keeps as the test split.
"""

from __future__ import annotations

CHEXNET_RANDOM_SPLIT = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}
CHEXNET_MEAN = 0.841
OFFICIAL_SPLIT_MEAN = 0.81
KERMANY = {"accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "auroc": 0.968}

SOURCES = {
    "chexnet_random_split": "Rajpurkar et al. 2017 (CheXNet), random patient split, not NIH's "
    "official lists",
    "official_split": "the README's reference for NIH's official split: mean AUROC about 0.81 "
    "(no per-finding figure cited)",
    "kermany2018": "Kermany et al. 2018, the archive's test folder",
}


def nih14(result: dict) -> dict:
    """The `references` section of metrics.json for an NIH evaluation: per finding the model's
    AUROC and CI beside CheXNet's; the mean beside both references."""
    out = {"sources": SOURCES, "findings": {}}
    for name, c in result["classes"].items():
        out["findings"][name] = {
            "auroc": c["auroc"],
            "auroc_ci95": c["auroc_ci95"],
            "chexnet_random_split": CHEXNET_RANDOM_SPLIT.get(name),
        }
    out["mean"] = {
        "auroc": result["macro"]["auroc"],
        "chexnet_random_split": CHEXNET_MEAN,
        "official_split": OFFICIAL_SPLIT_MEAN,
    }
    return out


def pneumonia(result: dict) -> dict:
    """The `references` section for a pneumonia evaluation, beside Kermany et al."""
    classes = result["classes"]
    c = classes.get("PNEUMONIA") or list(classes.values())[-1]
    mine = {
        "accuracy": result["accuracy"],
        "sensitivity": c.get("sensitivity"),
        "specificity": c.get("specificity"),
        "auroc": c["auroc"],
    }
    return {
        "sources": {"kermany2018": SOURCES["kermany2018"]},
        "metrics": {k: {"model": v, "kermany2018": KERMANY[k]} for k, v in mine.items()},
        "auroc_ci95": c["auroc_ci95"],
    }
