"""One module per config key: a frozen, sans-I/O Policy and the Filter that carries it out.

Policies build on the engine's currency (``_engine/base.py``, ``context.py``, ...) and never import the
snapshot; ``_snapshot/compile.py`` makes them from config and hands them to the engine's stack builders.
"""
