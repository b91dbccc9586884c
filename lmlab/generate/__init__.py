"""Text generation: a static KV cache, sampling, beam search, streaming, chat."""

from lmlab.cache import KVCache, LayerCache
from lmlab.generate.generate import GenerationOutput, generate, stream_generate
from lmlab.generate.sampling import SamplingConfig
from lmlab.generate.stream import TextStream

GenerationConfig = SamplingConfig  # the sampling knobs, by the name transformers users look for

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "KVCache",
    "LayerCache",
    "SamplingConfig",
    "TextStream",
    "generate",
    "stream_generate",
]
