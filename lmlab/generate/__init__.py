"""Text generation on one decode core: sampling, beam search, streaming, chat, rollouts."""

from lmlab.cache import KVCache, LayerCache
from lmlab.generate.decode import Decoder, Decoding, Step
from lmlab.generate.generate import GenerationOutput, generate, stream_generate
from lmlab.generate.sampling import SamplingConfig
from lmlab.generate.stream import TextStream

GenerationConfig = SamplingConfig  # the sampling knobs, by the name transformers users look for

__all__ = [
    "Decoder",
    "Decoding",
    "GenerationConfig",
    "GenerationOutput",
    "KVCache",
    "LayerCache",
    "SamplingConfig",
    "Step",
    "TextStream",
    "generate",
    "stream_generate",
]
