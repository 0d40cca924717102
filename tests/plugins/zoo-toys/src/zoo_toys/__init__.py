"""Toy components of every open kind of the zoo's plugin contract, for its tests."""
ZOO_API = "1.1"
