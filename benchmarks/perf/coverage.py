"""Coverage on real architectures: torchvision and timm classification models, converted and checked.

    PY=$(../shared/tools/realworld-venv)     # a venv with torchvision / timm model definitions
    $PY -m benchmarks.perf.coverage [--models resnet18 timm/vit_tiny_patch16_224 ...] [--json FILE]

Each model (random initialisation, eval mode) runs in its own process, one at a time and on one thread, so
its peak memory is its own and a crash or an out-of-memory stops only that row. Per model it

1. builds the model and makes every constant-initialised tensor random (BatchNorm statistics and affine
   terms, zero-initialised heads, class tokens, layer scales), so no branch computes zero and every stored
   number is checked;
2. converts it with ``to_neural_graph(model, example_input=x)`` on a reduced input (``size`` below), timing
   the first (tracing) conversion and reading the process's peak resident memory after it;
3. checks the round trip bit for bit: ``from_neural_graph`` into a copy whose every floating tensor is NaN
   must give back every parameter and floating buffer of the model exactly;
4. runs the graph alone with ``neuralgraph.execute`` and reports ``max |execute(g, x) - model(x)| /
   max |model(x)|`` (the acceptance bound is 1e-4).

Prints the table (model | converted | nodes / edges | time | peak MB | round trip | executor error), the
reason for every refusal or failure below it, and writes everything as JSON. A library that is not
installed skips its models with a message.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field

#: memory limit per model process (virtual address space, MB): a model past it fails fast
DEFAULT_MAX_MB = 12000


@dataclass(frozen=True)
class Case:
    """One model of the table."""

    name: str  # "torchvision/resnet18" or "timm/efficientnet_b0": library / factory name
    size: int = 32  # input height = width (reduced; 224 only where an adaptive pool needs the full map)
    kwargs: dict = field(default_factory=dict)  # extra factory arguments (image size of a ViT, ...)
    convert: dict = field(default_factory=dict)  # converter options (max_kernel=(3, 3): 9 taps per edge, not 49)


CASES = [
    Case("torchvision/resnet18"),
    Case("torchvision/resnet50"),
    Case("torchvision/resnet50", convert={"max_kernel": (3, 3)}),  # its 7x7 stem as shifted maps: 9 taps per edge
    Case("torchvision/resnext50_32x4d"),
    Case("torchvision/wide_resnet50_2"),
    Case("torchvision/densenet121"),
    Case("torchvision/googlenet", kwargs={"aux_logits": False, "init_weights": True}),
    Case("torchvision/squeezenet1_1", size=64),
    Case("torchvision/mobilenet_v2"),
    Case("torchvision/mobilenet_v3_small"),
    Case("torchvision/mobilenet_v3_large"),
    Case("torchvision/mnasnet0_5"),
    Case("torchvision/efficientnet_b0"),
    Case("torchvision/regnet_x_400mf"),
    Case("torchvision/regnet_y_400mf"),
    Case("torchvision/shufflenet_v2_x0_5"),
    Case("torchvision/convnext_tiny"),
    Case("torchvision/convnext_tiny", convert={"max_kernel": (3, 3)}),  # 7x7 depthwise convs as shifted maps
    Case("torchvision/vit_b_16", kwargs={"image_size": 32}, convert={"max_kernel": (3, 3)}),
    Case("torchvision/alexnet", size=224),  # its 11x11 stem as shifted maps; 55M edges x 49 taps: about 12 GB
    Case("torchvision/alexnet", size=224, convert={"max_kernel": (3, 3)}),  # 11x11 and 5x5 as shifted maps
    Case("torchvision/vgg11", size=224),  # refused at the default max_kernel: about 28 GB
    Case("torchvision/vgg11", size=224, convert={"max_kernel": (3, 3)}),
    Case("torchvision/swin_t"),  # 8 x 8 patches: one padded window per block, no shift
    Case("torchvision/swin_t", size=64),  # 16 x 16 patches: padded to 21 x 21, shifted windows with masks
    Case("torchvision/maxvit_t", size=224, convert={"max_kernel": (3, 3)}),  # block and grid attention; 224 only
    # Swin V2: cosine attention, the bias MLP as neurons; 8 x 8 patches: one window per block (padded from stage 2)
    Case("torchvision/swin_v2_t"),
    Case("torchvision/swin_v2_t", size=64),  # 16 x 16 patches: 2 x 2 windows of 8, shifted, masked
    # timm's Swin V1 at 64 px: 16 x 16 patches, window 7 padded to 21 x 21 and shifted (timm rolls, then pads)
    Case("timm/swin_tiny_patch4_window7_224", size=64, kwargs={"img_size": 64}),
    # timm's Swin V2 at 64 px: 16 x 16 patches in windows of 8, shifted (the window cut to the map in later stages)
    Case("timm/swinv2_tiny_window8_256", size=64, kwargs={"img_size": 64}),
    Case("timm/resnet18"),
    Case("timm/resnet50d"),
    Case("timm/efficientnet_b0"),
    Case("timm/mobilenetv3_small_100"),
    Case("timm/mobilenetv3_large_100"),
    Case("timm/regnetx_002"),
    Case("timm/regnety_002"),
    Case("timm/convnext_atto"),
    Case("timm/vit_tiny_patch16_224", kwargs={"img_size": 32}),
    Case("timm/deit_tiny_patch16_224", kwargs={"img_size": 32}),
    Case("timm/mobilevit_xxs", size=64),
    # from the session-7 sweep of further architectures (docs/conversion.md): blocks added or refused then
    Case("timm/poolformer_s12"),  # pool(x) - x
    Case("timm/hgnetv2_b0"),  # [1]-shaped scale / shift parameters, zero padding
    Case("timm/ghostnetv2_100", size=64),  # nearest upsampling to another tensor's size
    Case("timm/inception_v3", size=75),
    Case("timm/vit_small_patch14_reg4_dinov2", size=28, kwargs={"img_size": 28}),  # register tokens
    Case("timm/mixer_s16_224", kwargs={"img_size": 32}),  # refused: a Linear over the tokens
    Case("timm/nf_resnet26"),  # refused: weight standardisation computed from the parameter in forward
    # session 8: tokens back to a map, PVT's packed key / value projection over spatially reduced keys
    Case("timm/pvt_v2_b0"),
    Case("timm/twins_pcpvt_small", size=64),
    Case("timm/fastvit_sa12", size=64),
    Case("timm/caformer_s18", size=64, convert={"max_kernel": (3, 3)}),
    Case("timm/pit_ti_224", size=64, kwargs={"img_size": 64}),  # a [1, C, H, W] position embedding
    Case("timm/tf_efficientnetv2_b0"),  # TF "same" padding computed from sizes: traced at the example's sizes
    Case("timm/convnextv2_atto"),  # GRN: an L2 norm over positions divided by its mean over the channels
    Case("timm/ecaresnet26t"),  # ECA: a Conv1d along the channels of pooled features
]


def build(case: Case):
    """The model of ``case`` (random init, eval mode) and its input, or ``None`` if the library is missing."""
    import torch

    lib, name = case.name.split("/", 1)
    try:
        mod = importlib.import_module(lib)
    except ImportError:
        return None
    torch.manual_seed(0)
    if lib == "timm":
        model = mod.create_model(name, pretrained=False, **case.kwargs)
    else:
        model = getattr(mod.models, name)(weights=None, **case.kwargs)
    model.eval()
    _randomize_constants(model)
    return model, torch.randn(2, 3, case.size, case.size)


def _randomize_constants(model) -> None:
    """Replace every floating tensor whose elements are all equal (ones, zeros, a layer-scale constant) by
    random values: positive ones by U(0.5, 1.5) (variances, scales stay positive), others by N(0, 0.1). Parameters
    and persistent buffers only: a non-persistent buffer is structure the module derives at construction (timm Swin
    V2's zero key bias, as its masks), which no checkpoint sets."""
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.state_dict(keep_vars=True).values()):
            if t.is_floating_point() and t.numel() > 1 and bool((t == t.view(-1)[0]).all()):
                if float(t.view(-1)[0]) > 0:
                    t.uniform_(0.5, 1.5)
                else:
                    t.normal_(0.0, 0.1)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(case: Case) -> dict:
    """Convert and check one model (in this process); returns its row."""
    import torch

    from neuralgraph import UnsupportedModuleError, from_neural_graph, to_neural_graph

    torch.set_num_threads(1)
    row: dict = {"model": case.name, "size": case.size, "options": case.convert}
    built = build(case)
    if built is None:
        return row | {"converted": "skipped", "why": f"{case.name.split('/')[0]} is not installed"}
    model, x = built
    with torch.no_grad():
        y = model(x)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["rss_model_mb"] = _rss_mb()
    start = time.perf_counter()
    try:
        g = to_neural_graph(model, example_input=x, **case.convert)
    except UnsupportedModuleError as err:
        return row | {"converted": "refused", "why": str(err)}
    except MemoryError as err:
        return row | {"converted": "out of memory", "why": f"MemoryError: {err}"}
    except Exception as err:  # noqa: BLE001 - a crash is a row of the table, not the end of it
        return row | {"converted": "crash", "why": f"{type(err).__name__}: {err}"}
    row.update(converted="yes", time_s=time.perf_counter() - start, peak_mb=_rss_mb(),
               nodes=g.num_nodes, edges=g.edge_index.size(1))
    # round trip: every parameter and floating buffer read back bit for bit into a NaN-filled copy (of what the state
    # dict holds: non-persistent buffers, such as timm Swin's attention masks, are structure derived at construction)
    blank = copy.deepcopy(model)
    with torch.no_grad():
        for t in blank.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    try:
        back = dict(from_neural_graph(g, blank, example_input=x, **case.convert).state_dict())
        wrong = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, back[k])]
        row["round_trip"] = "exact" if not wrong else f"{len(wrong)} differ ({', '.join(wrong[:3])})"
    except Exception as err:  # noqa: BLE001
        row["round_trip"] = f"error: {type(err).__name__}: {err}"
    del blank
    try:
        from neuralgraph import execute
    except ImportError:
        row["executor"] = "n/a (no neuralgraph.execute)"
        return row
    try:
        with torch.no_grad():
            out = execute(g, x, max_kernel=case.convert.get("max_kernel"))
        err = float((out.reshape(y.shape) - y).abs().max() / y.abs().max().clamp_min(1e-30))
        row["executor_error"] = err
        row["executor"] = f"{err:.1e}"
    except Exception as err:  # noqa: BLE001
        row["executor"] = f"error: {type(err).__name__}: {err}"
    return row


def run_isolated(case: Case, max_mb: int, timeout: float) -> dict:
    """:func:`run_one` in a fresh process limited to ``max_mb`` of address space and ``timeout`` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.perf.coverage", "--one", json.dumps(case.__dict__),
           "--max-mb", str(max_mb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": case.name, "size": case.size, "converted": "timeout", "why": f"over {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    what = "out of memory" if "alloc" in tail.lower() or proc.returncode in (-9, 137) else "crash"
    return {"model": case.name, "size": case.size, "converted": what, "why": f"exit {proc.returncode}: {tail}"}


def table(rows: list[dict]) -> str:
    head = f"| {'model':34s} | converted | {'nodes / edges':>21s} | {'time':>7s} | {'peak MB':>7s} | " \
           f"{'round trip':10s} | executor error |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    notes = []
    for r in rows:
        ok = r["converted"] == "yes"
        size = f"{r['nodes']:,} / {r['edges']:,}" if ok else "-"
        t = f"{r['time_s']:.1f} s" if ok else "-"
        peak = f"{r['peak_mb']:.0f}" if ok else "-"
        rt = r.get("round_trip", "-")
        ex = r.get("executor", "-")
        conv = r["converted"]
        if not ok or rt != "exact" or not ex[:1].isdigit():
            notes.append(r)
            conv += f" [{len(notes)}]"
        kernel = r.get("options", {}).get("max_kernel")
        label = f"{r['model']} ({r['size']}px{', ' + 'x'.join(map(str, kernel)) if kernel else ''})"
        lines.append(f"| {label:34s} | {conv:9s} | "
                     f"{size:>21s} | {t:>7s} | {peak:>7s} | {rt[:10]:10s} | {ex[:14]:14s} |")
    for k, r in enumerate(notes, 1):
        why = r.get("why") or (r.get("round_trip") if r.get("round_trip", "exact") != "exact" else r.get("executor"))
        lines.append(f"[{k}] {r['model']}: {' '.join(str(why).split())[:400]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="models to run (names as in the table, e.g. torchvision/resnet18 "
                                                "or just resnet18 for every library that has it); default all")
    ap.add_argument("--max-mb", type=int, default=DEFAULT_MAX_MB, help="address-space limit per model (MB)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    ap.add_argument("--json", default=None, help="write the rows here as JSON (default, for a run of every "
                    "model: results/perf/coverage.json; a --models run writes only where asked)")
    ap.add_argument("--markdown", default=None, help="write the table here (Markdown; default as for --json: "
                    "results/perf/coverage.md)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON) in this process
    args = ap.parse_args()
    if args.one:
        limit = args.max_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        case = json.loads(args.one)
        case["convert"] = {k: tuple(v) if isinstance(v, list) else v for k, v in case.get("convert", {}).items()}
        print(json.dumps(run_one(Case(**case))), flush=True)
        return
    cases = CASES
    if not args.models:  # the committed table is only ever replaced by a run of every model
        args.json = args.json or "results/perf/coverage.json"
        args.markdown = args.markdown or "results/perf/coverage.md"
    if args.models:
        cases = [c for c in CASES if c.name in args.models or c.name.split("/", 1)[1] in args.models]
        unknown = set(args.models) - {c.name for c in cases} - {c.name.split("/", 1)[1] for c in cases}
        if unknown:
            raise SystemExit(f"unknown model(s) {sorted(unknown)}; choices: {[c.name for c in CASES]}")
    for lib in sorted({c.name.split("/")[0] for c in cases}):
        if importlib.util.find_spec(lib) is None:
            print(f"{lib} is not installed: its models are skipped (build a venv with "
                  f"shared/tools/realworld-venv)", file=sys.stderr)
    rows = []
    for case in cases:
        rows.append(run_isolated(case, args.max_mb, args.timeout))
        r = rows[-1]
        print(f"  {r['model']}: {r['converted']} {r.get('round_trip', '')} {r.get('executor', '')}",
              file=sys.stderr, flush=True)
    print(table(rows))
    if args.markdown:
        from neuralgraph.io import atomic_write_text

        atomic_write_text(args.markdown, table(rows) + "\n")
    if args.json:
        from neuralgraph.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"threads": 1, "max_mb": args.max_mb, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
