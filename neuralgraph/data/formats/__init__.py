"""Zoo file formats: ours (arrays + JSON, read/write) and read-only readers for published zoos.

Every reader returns a :class:`~neuralgraph.data.formats.native.BaseZoo`: ``members`` (one per
checkpoint, with ``run_id``, ``architecture``, ``metrics``, lazy ``params()`` / ``model()``), so
:class:`neuralgraph.data.zoo.ZooDataset` works on all of them. Nothing here unpickles objects.
"""
from neuralgraph.data.formats.dwsnets import DWSNetsINRs
from neuralgraph.data.formats.native import (BaseZoo, Zoo, ZooFormatError, ZooMember, load_zoo, member_splits,
                                             split_by_run, write_member)
from neuralgraph.data.formats.safe import UnsafeFileError, safe_torch_load
from neuralgraph.data.formats.small_cnn_zoo import SmallCNNZoo
from neuralgraph.data.formats.wildpark import WildParkZoo

__all__ = ["BaseZoo", "Zoo", "ZooMember", "ZooFormatError", "load_zoo", "split_by_run", "member_splits",
           "write_member", "SmallCNNZoo", "WildParkZoo", "DWSNetsINRs", "UnsafeFileError", "safe_torch_load"]
