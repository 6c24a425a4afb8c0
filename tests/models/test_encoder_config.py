"""One input-encoder configuration shared by NG-GNN and NG-T: declared once (EncoderConfig), reported with its real
defaults, set from YAML / --set as a nested group, merged over each model's default."""
import dataclasses

import pytest

from benchmarks.run import resolve_config
from neuralgraph.models import create_model, model_arguments
from neuralgraph.nn import EncoderConfig

FIELDS = {f.name for f in dataclasses.fields(EncoderConfig)}


def test_both_models_take_the_one_encoder_config():
    for name, sigma in (("ng-gnn", 3.0), ("ng-t", 1.0)):
        args = model_arguments(name)
        assert not FIELDS & set(args)  # no repeated encoder keywords
        assert isinstance(args["encoder"], EncoderConfig) and args["encoder"].fourier_sigma == sigma
        m = create_model(name, encoder={"act_emb": False, "max_inputs": 7}, readout="mean")
        # a dict is merged over the model's own default
        assert m.encoder.config == dataclasses.replace(args["encoder"], act_emb=False, max_inputs=7)
        assert m.encoder.act_emb is None
    with pytest.raises(ValueError, match=r"unknown encoder option\(s\) \['act_embedding'\]; valid options"):
        create_model("ng-t", encoder={"act_embedding": False}, readout="mean")


def test_runner_sets_nested_encoder_options():
    cfg = resolve_config("wildpark", "ng-t", None, False, ["model.encoder.act_emb=false"])
    assert cfg["model"]["encoder"] == {"act_emb": False}
    # a paper configuration's group merges key by key with --set
    cfg = resolve_config("wildpark", "ng-gnn", "ng-gnn-wildpark", False, ["model.encoder.max_layers=32"])
    assert cfg["model"]["encoder"] == {"max_inputs": 3, "max_outputs": 10, "max_layers": 32, "max_spatial": 1}
    with pytest.raises(SystemExit, match=r"model.encoder: unknown option\(s\) \['nope'\]"):
        resolve_config("wildpark", "ng-t", None, False, ["model.encoder.nope=1"])
    with pytest.raises(SystemExit, match=r"model.encoder.max_inputs=0: expected an integer >= 1"):
        resolve_config("wildpark", "ng-t", None, False, ["model.encoder.max_inputs=0"])
    cfg = resolve_config("wildpark", "ng-t", None, False, ["model.encoder.fourier_features=0"])  # 0: off
    assert cfg["model"]["encoder"]["fourier_features"] == 0
