"""How much class information a linear read-out finds in an INR zoo, and why weight-only models need so much data.

    python -m benchmarks.inr_signal [--preset inr-glyphs] [--runs 3000] [--sizes 300 1200 2400] [--json PATH]

On the ``inr-cls`` splits of the zoo (train / val by run, as the task splits them), logistic regression
(standardised inputs, L2, ``C=0.1``) on the first ``n`` training INRs of each size, scored on the validation
split, for four views of the same members:

* ``rendered``          the INR evaluated on the image's pixel grid (the function: an upper bound);
* ``flat``              the 1,185 weights and biases flattened (what ``mlp`` sees);
* ``statnn``            the per-layer weight statistics of ``statnn``;
* ``flat-shared-init``  the same images refitted with the preset's fit from ONE shared initialisation
                        (every member's init seed equal), then flattened.

The zoo's INRs start from independent initialisations (``seed_for(seed, run, "inr")``, as the NFN paper's
INR datasets, appendix D.3). The first-layer weights of a 2-32-32-1 SIREN barely move while fitting (their
spread is set by the init), so which hidden weights encode which part of the image differs from member to
member: the last two views measure how much that alone costs a weight-space read-out. One torch thread;
about two minutes for 3,000 INRs, most of it the shared-init refit.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from neuralgraph.data.weightspace import WeightSpace
from neuralgraph.io import atomic_write_text
from neuralgraph.models.statnn import slot_features
from neuralgraph.tasks import create_task
from neuralgraph.zoo.inr import fit_sirens, member_image, render_sirens
from neuralgraph.zoo.presets import INR_FIT

#: the one init seed of every member in the ``flat-shared-init`` view
SHARED_SEED = 12345


def _params(ws: WeightSpace) -> dict[str, torch.Tensor]:
    """SIREN parameters ``seq.{i}.weight`` ``[B, out, in]`` / ``seq.{i}.bias`` ``[B, out]`` of a weight space."""
    out = {}
    for i, (w, b) in enumerate(zip(ws.weights, ws.biases)):
        out[f"seq.{i}.weight"], out[f"seq.{i}.bias"] = w.reshape(w.shape[:3]), b
    return out


def views(split) -> dict[str, np.ndarray]:
    """The four inputs of one task split, ``{view: [n, features]}``."""
    ws = WeightSpace.stack(split.weights())
    ds = split.dataset
    images = torch.from_numpy(np.stack([member_image(ds.member(i)) for i in range(len(ds))]))   # [n, H, W]
    n, H, W = images.shape
    shared = fit_sirens(images, [SHARED_SEED] * n, INR_FIT).params
    shared_ws = WeightSpace(tuple(shared[f"seq.{i}.weight"] for i in range(len(ws.weights))),
                            tuple(shared[f"seq.{i}.bias"] for i in range(len(ws.biases))))
    with torch.no_grad():
        rendered = render_sirens(_params(ws), H, W).reshape(n, -1)                             # [n, H * W]
    return {"rendered": rendered.numpy(), "flat": ws.flatten().numpy(),
            "statnn": slot_features(ws, len(ws.weights)).numpy(), "flat-shared-init": shared_ws.flatten().numpy()}


def linear_accuracy(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray) -> tuple[float, float]:
    """Train and validation accuracy of standardised L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300)).fit(xtr, ytr)
    return float(clf.score(xtr, ytr)), float(clf.score(xva, yva))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="inr-glyphs")
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1200, 2400], help="training INRs per fit")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    task = create_task("inr-cls", preset=args.preset, runs=args.runs)
    train, val = task.splits["train"], task.splits["val"]
    xtr, xva = views(train), views(val)
    ytr, yva = train.y.long().numpy(), val.y.long().numpy()
    sizes = [n for n in args.sizes if n <= len(ytr)]
    rows = []
    print(f"{args.preset}, {args.runs} INRs: logistic regression, validation accuracy ({len(yva)} INRs; "
          f"majority class {np.bincount(yva).max() / len(yva):.3f})")
    print(f"{'view':18s} " + " ".join(f"{'n=' + str(n):>8s}" for n in sizes))
    for view in xtr:
        accs = []
        for n in sizes:
            tr_acc, va_acc = linear_accuracy(xtr[view][:n], ytr[:n], xva[view], yva)
            rows.append({"view": view, "train_size": n, "train_accuracy": tr_acc, "val_accuracy": va_acc})
            accs.append(va_acc)
        print(f"{view:18s} " + " ".join(f"{a:8.3f}" for a in accs))
    print(f"({time.time() - t0:.0f}s)")
    if args.json:
        atomic_write_text(args.json, json.dumps({"preset": args.preset, "runs": args.runs, "threads": 1,
                                                 "shared_seed": SHARED_SEED, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
