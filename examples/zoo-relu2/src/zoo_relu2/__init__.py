"""zoo-relu2: a squared-ReLU feed-forward layer for the zoo (Primer, So et al. 2021,
arXiv:2109.08668) and the named model ``gpt2-relu2`` that uses it.

The zoo finds the modules through the entry points in pyproject.toml; nothing here needs importing.
"""

# The zoo plugin API this package was written for; the zoo refuses the package (with a warning
# naming it) if it provides an incompatible API. Declared once here for all modules below.
ZOO_API = "1.0"
__version__ = "0.1.0"
