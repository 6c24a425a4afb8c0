"""Conversion rules, one file per family; importing this package registers them all
(:mod:`neuralgraph.convert.registry` holds the registries and decorators)."""
from neuralgraph.convert.rules import activation, conv, embedding, functional, linear, norm  # noqa: F401
from neuralgraph.convert.rules import attention, attention_calls, attention_pattern, layout, resample, tokens  # noqa: F401
from neuralgraph.convert.rules import channel_conv, maxvit, timm_swin, window_attention  # noqa: F401
