"""`python -m lmlab.native`: build (once) and load lmlab's C++ kernels; print where they are."""

from lmlab.native import load

print(load())
