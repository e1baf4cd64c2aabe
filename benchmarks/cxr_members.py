"""Single-member test AUCs of a CXR ensemble recipe on a synthetic cohort (CPU minutes).

    nice python benchmarks/cxr_members.py --n 500 --recipe cxr-ensemble-cpu --work /tmp/cxrb

Writes a synthetic DeepCOVID-XR cohort, prepares the (crop, size) stores the recipe's members
need (`cinelab.pipelines.cxr.prepare.stores_for_recipe`), trains every member (resuming finished
ones) and scores each on the test split: AUC (Mann-Whitney), accuracy at 0.5, and the mean of
the members' probabilities as a plain-average reference. Prints a table and writes
<work>/member_aucs.csv. With --lung, first trains the lung U-Net (cxr-lungseg-cpu) on the
cohort's masks and reports its Dice on the synthetic test split and on the real images of
../shared/data/real/cxr-lungseg (<work>/lung_dice.csv).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinelab.data.store import PreparedStore
from cinelab.data.transforms import Normalize
from cinelab.evaluate.metrics import roc_auc
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.prepare import lung_dice, stores_for_recipe, train_lung_unet
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.train.checkpoint import load_checkpoint
from cinelab.train.fit import MODEL_FILE, fit
from cinelab.train.recipe import ensemble_members, load_recipe
from cinelab.utils import write_csv

BATCH = 64
REAL_LUNGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cxr-lungseg"


def lung_benchmark(manifest: pd.DataFrame, work: Path) -> pd.DataFrame:
    """Train the lung U-Net on the cohort; Dice on its test split and the real images."""
    t0 = time.time()
    checkpoint = train_lung_unet(manifest, work / "lung", workers=1)
    test = lung_dice(checkpoint, manifest[manifest["split"] == "test"]).assign(data="synthetic")
    parts = [test]
    images = sorted(p for p in (REAL_LUNGS / "Data").glob("*.jpg")) if REAL_LUNGS.exists() \
        else []
    if images:
        real = pd.DataFrame({"sample_id": [p.stem for p in images], "path": map(str, images),
                             "mask_path": [str(p.with_name(f"{p.stem}-mask.png"))
                                           for p in images]})
        parts.append(lung_dice(checkpoint, real).assign(data="real"))
    table = pd.concat(parts, ignore_index=True)
    write_csv(table, work / "lung_dice.csv")
    print(table.groupby("data")["dice"].describe().to_string())
    print(f"lung U-Net: {time.time() - t0:.0f} s")
    return table


def test_probabilities(checkpoint: Path, store: PreparedStore) -> tuple[list[str], np.ndarray]:
    """Test-split ids and positive probabilities of a binary image classifier."""
    loaded = load_checkpoint(checkpoint)
    spec = loaded.input_spec
    norm = Normalize(spec.mean, spec.std)
    ids = store.split_ids("test")
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), BATCH):
            batch = np.stack([np.asarray(store.frames(i)[0]) for i in ids[start:start + BATCH]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            out.append(torch.sigmoid(loaded.model(norm(x))[:, 0]).numpy())
    return ids, np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cxr-ensemble-cpu")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--raw-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/cinelab-cxr-members")
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--lung", action="store_true", help="also train/score the lung U-Net")
    parser.add_argument("--no-members", action="store_true", help="skip the classifiers")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    recipe = load_recipe(args.recipe, args.override)
    t0 = time.time()
    if not (work / "cohort" / "synth.json").exists():
        synth_cxr_cohort(work / "cohort", n=args.n, seed=args.seed, size=args.raw_size)
    manifest = read_cxr_folders(work / "cohort").manifest
    if args.lung:
        lung_benchmark(manifest, work)
    if args.no_members:
        return
    stores = stores_for_recipe(recipe, manifest, work / "stores", workers=1)
    print(f"cohort + stores: {time.time() - t0:.0f} s; splits "
          f"{manifest['split'].value_counts().to_dict()}; crops applied "
          f"{int(stores.crops['crop_applied'].sum())}/{len(stores.crops)}")
    rows, probs = [], {}
    for name, member in ensemble_members(recipe):
        store = PreparedStore(stores.stores[(member.data.crop, int(member.data.size))])
        run = work / "members" / name
        t1 = time.time()
        if not (run / MODEL_FILE).exists():
            fit(member, store, run, resume=True, progress=False)
        ids, p = test_probabilities(run / MODEL_FILE, store)
        truth = store.manifest.set_index("sample_id").loc[ids, "label"].to_numpy(int)
        probs[name] = pd.Series(p, index=ids)
        rows.append({"member": name, "test_auc": roc_auc(truth, p),
                     "test_accuracy": float(((p >= 0.5) == truth).mean()),
                     "n_test": len(ids), "train_s": round(time.time() - t1)})
        print(rows[-1], flush=True)
    joined = pd.DataFrame(probs).dropna()
    truth = PreparedStore(next(iter(stores.stores.values()))).manifest.set_index(
        "sample_id").loc[joined.index, "label"].to_numpy(int)
    rows.append({"member": "plain average", "test_auc": roc_auc(truth, joined.mean(axis=1)),
                 "test_accuracy": float(((joined.mean(axis=1) >= 0.5) == truth).mean()),
                 "n_test": len(joined), "train_s": 0})
    table = pd.DataFrame(rows)
    write_csv(table, work / "member_aucs.csv")
    print(table.to_string(index=False))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
