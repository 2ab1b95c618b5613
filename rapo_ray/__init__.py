"""rapo_ray: a Ray-distributed trainer for Risk-Aware Preference Optimization (safe reasoning)."""

__version__ = "0.1.0"
