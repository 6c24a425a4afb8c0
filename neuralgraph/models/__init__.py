"""Encoders on neural networks. Importing this package registers every model."""
from neuralgraph.models.registry import (create_model, list_models, model_arguments, model_class, model_task,
                                         register_model)
from neuralgraph.models.ng_gnn import NGGNN  # noqa: F401  (registers "ng-gnn")
from neuralgraph.models.ng_t import NGT  # noqa: F401  (registers "ng-t")
from neuralgraph.models.mlp import FlatMLP  # noqa: F401  (registers "mlp")
from neuralgraph.models.nfn import NFN  # noqa: F401  (registers the factories "nfn-np", "nfn-hnp", "nfn-pt")
from neuralgraph.models.sne import SNE  # noqa: F401  (registers "sne")
from neuralgraph.models.statnn import StatNN  # noqa: F401  (registers "statnn")
from neuralgraph.models.pyg_gine import PyGGINE  # noqa: F401  (registers "pyg-gine")

__all__ = ["create_model", "list_models", "model_arguments", "model_class", "model_task", "register_model"]
