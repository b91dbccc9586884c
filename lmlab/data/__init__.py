"""Training data: token memmaps, corpus preparation, TinyShakespeare and synthetic tasks.

Every data source has `get_batch(split, batch_size, generator) -> (x, y)` with `y = -100` where
no loss is taken; sampling depends only on the generator, so resuming restores the exact stream.
"""

from lmlab.data.tokens import TokenData, TokenDataError, TokenWriter, token_dtype, write_tokens

__all__ = ["TokenData", "TokenDataError", "TokenWriter", "token_dtype", "write_tokens"]
