"""fdcore's degradation library: operators (``ntire.py``, ``ops_*.py``) on the framework in ``base.py``, helpers by
topic (``pixels``, ``color_spaces``, ``lut``, ``kernels``, ``resampling``, ``codecs``, ``randomness``), policies and
records (``policy.py``), the public functions (``api.py``) and the batched torch path (``torch_ops.py``).

Operators are registered through the built-in plugin ``fdcore.builtin.degraders``; use them through
``fdcore.get_degrader``, ``fdcore.degrade``, ``fdcore.apply_policy`` and ``fdcore.replay``.
"""
