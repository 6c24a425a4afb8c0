"""The named paper configurations (``--config NAME``): each resolves through the runner and builds; parameter
counts agree with the papers where they state them, up to the documented differences (docs/models.md)."""
import re
from pathlib import Path

import pytest
import torch

from benchmarks.perf.paper_configs import PAPER_PARAMS, build
from benchmarks.run import paper_configs, resolve_config
from neuralgraph.nn import EncoderConfig, NeuralGraphEncoder
from neuralgraph.data.graph import EDGE_KIND
from tests.nn.graphs import random_graph

EXPECTED = {"ng-gnn-wildpark", "ng-t-wildpark", "statnn-wildpark", "ng-gnn-cifar10gs", "ng-t-cifar10gs",
            "nfn-np-cifar10gs", "nfn-hnp-cifar10gs", "sne-cross-dataset", "sne-cross-dataset-cpu"}


DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def documented_counts() -> dict[str, tuple[int, int | None]]:
    """``{configuration: (ours, paper)}`` from the parameter table of docs/models.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `([\w-]+)` \| [^|]* \| ([\d,]+) \| ([\d,]+|–) \|", line)
        if m:
            paper = None if m[3] == "–" else int(m[3].replace(",", ""))
            rows[m[1]] = (int(m[2].replace(",", "")), paper)
    return rows


def test_every_paper_configuration_is_named():
    assert set(paper_configs()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_configuration_resolves_and_builds(name):
    task, model_name, model, cfg, _ = build(name)
    assert cfg["model"] and cfg["train"]["epochs"] >= 10
    # docs/models.md states the count this configuration builds, and the paper's beside it
    assert documented_counts()[name] == (count(model), PAPER_PARAMS.get(name))


def test_docs_table_lists_every_configuration():
    assert set(documented_counts()) == EXPECTED


def test_parameter_counts_beside_the_papers():
    # StatNN: 1000-1000 head; ours reads 6 depth slots of 18 features (14 statistics + 3 shape + 1 mask), the
    # paper's 6 layers x 14 statistics: exactly 6 x 4 x 1000 more weights in the first layer
    _, _, statnn, _, _ = build("statnn-wildpark")
    assert count(statnn) - PAPER_PARAMS["statnn-wildpark"] == 6 * 4 * 1000
    # NG-GNN: the message-passing stack and the head alone are 370,689, 1,664 (0.45 %) above the paper's total;
    # the input encoder (projections, embedding tables) comes on top (docs/models.md)
    _, _, gnn, _, _ = build("ng-gnn-wildpark")
    assert count(gnn.convs) + count(gnn.norms) + count(gnn.head) == PAPER_PARAMS["ng-gnn-wildpark"] + 1664
    # the encoder as docs/models.md breaks it down: Fourier projections, conv geometry, 64-wide embeddings
    # (activation 35, edge kind 22 = one per kind, pooling 9, role 4, flatten position 2, position tables 29 rows)
    assert len(EDGE_KIND) == 22
    assert count(gnn.encoder) == 2 * 16448 + 192 * 64 + 64 * (35 + 22 + 9 + 4 + 2 + 29) == 51648
    assert gnn.head.readout == "output_cat" and gnn.head.num_outputs == 10


def test_sne_cpu_variant_reduces_only_the_chunk_encoder_width():
    """sne-cross-dataset-cpu is the paper's configuration with the chunk encoder 16 wide instead of 512 (the
    width that drives memory; docs/models.md), nothing else."""
    _, _, paper, cfg, _ = build("sne-cross-dataset")
    _, _, cpu, cpu_cfg, _ = build("sne-cross-dataset-cpu")
    assert cpu_cfg["train"] == cfg["train"] and cpu_cfg["task"] == cfg["task"]
    assert {k: v for k, v in cpu_cfg["model"].items() if k != "chunk_hidden"} == \
        {k: v for k, v in cfg["model"].items() if k != "chunk_hidden"}
    assert (cfg["model"]["chunk_hidden"], cpu_cfg["model"]["chunk_hidden"]) == (512, 16)
    assert cpu.chunk_size == 32 and cpu.hidden == 512 and cpu_cfg["train"]["batch_size"] == 64
    # the parts after the chunk encoder are the paper configuration's, parameter for parameter
    for part in ("layer_encoder", "wb_encoder", "net_encoder", "head"):
        assert count(getattr(cpu, part)) == count(getattr(paper, part)), part


def test_config_for_another_model_is_refused():
    with pytest.raises(SystemExit, match="is for --task wildpark --model ng-gnn"):
        resolve_config("wildpark", "ng-t", "ng-gnn-wildpark", False, [])
    with pytest.raises(SystemExit, match="named: .*ng-gnn-wildpark"):
        resolve_config("wildpark", "ng-t", "no-such-config", False, [])


def test_linear_layers_get_their_own_projection():
    """separate_linear (NG-GNN on CIFAR10-GS): linear weights are not treated as 1x1 convolutions."""
    g = random_graph(seed=0)
    g.edge_kind[: g.edge_kind.numel() // 2] = EDGE_KIND["conv"]
    lin = g.edge_kind == EDGE_KIND["linear"]
    torch.manual_seed(0)
    enc = NeuralGraphEncoder(4, 49, 8, 6, EncoderConfig(separate_linear=True, fourier_features=4))
    with torch.no_grad():
        e0 = enc.encode_edges(g)
        enc.linear_proj.bias.add_(1.0)
        e1 = enc.encode_edges(g)
        assert torch.allclose(e1[lin] - e0[lin], torch.ones(1)) and torch.equal(e1[~lin], e0[~lin])
        # a linear edge's state depends on its centre tap only
        g2 = g.clone()
        g2.edge_attr[lin, 0] += 5.0
        assert torch.equal(enc.encode_edges(g2)[lin], e1[lin])


NG_CONFIGS = ("ng-gnn-wildpark", "ng-t-wildpark", "ng-gnn-cifar10gs", "ng-t-cifar10gs")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_neural_graph_configs_standardise_each_layer(name):
    """Neural Graphs §2 "Normalization": (W - mu) / sigma per layer is part of the method, so the NG configs
    switch it on; the other papers' models read weight spaces (their own standardisation, if any)."""
    _, _, _, cfg, _ = build(name)
    assert cfg["task"].get("normalize_layers", False) is (name in NG_CONFIGS)


def test_cifar10gs_config_standardises_a_small_cnn_zoo_directory(tmp_path, monkeypatch):
    """The cifar10gs configurations point the task at a Small CNN Zoo directory: normalize_layers applies
    there too (statistics of the training split: per layer, its weights have mean 0 and std 1)."""
    from neuralgraph.data.graph import EDGE_KIND_TABLE
    from neuralgraph.tasks import create_task
    from tests.data.test_zoo_readers import write_small_cnn_zoo

    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    write_small_cnn_zoo(tmp_path, rows=40)
    cfg = resolve_config("cnn-zoo", "ng-gnn", "ng-gnn-cifar10gs", False,
                         [f"task.zoo={tmp_path}", f"task.permutation_file={tmp_path / 'perm.csv'}"])
    graphs = create_task("cnn-zoo", **cfg["task"]).splits["train"].graphs()
    params = torch.tensor([i for i, k in enumerate(EDGE_KIND_TABLE) if k.params])
    layers, values = [], []
    for g in graphs:
        sel = torch.isin(g.edge_kind, params)
        attr = g.edge_attr[sel]
        nz = attr != 0
        layers.append(g.node_layer[g.edge_index[1, sel]].view(-1, 1).expand_as(attr)[nz])
        values.append(attr[nz])
    layer, value = torch.cat(layers), torch.cat(values).double()
    assert layer.unique().numel() == 4                      # 3 convolutions and the linear layer
    for l in layer.unique():
        v = value[layer == l]
        assert abs(v.mean().item()) < 1e-5 and abs(v.std(unbiased=False).item() - 1) < 1e-5, int(l)


def test_paper_configs_tool_measures_apart_with_overrides():
    """benchmarks.perf.paper_configs --memory builds each configuration in a fresh process and reports its peak
    resident memory; --set overrides options as the runner's --set (how sne-cross-dataset-cpu was sized)."""
    from benchmarks.perf.paper_configs import main

    row, = main(["--only", "sne-cross-dataset", "--memory", "--set", "model.chunk_hidden=16"])
    assert row["params"] == documented_counts()["sne-cross-dataset-cpu"][0]
    assert row["set"] == ["model.chunk_hidden=16"] and 0.05 < row["peak_gb"] < 10
