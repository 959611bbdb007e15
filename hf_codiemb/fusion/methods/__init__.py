"""Built-in fusion methods, one module per method (importing this package registers them)."""

from hf_codiemb.fusion.methods import delta, mergekit_methods, task_arithmetic, uniform  # noqa: F401
