"""imagestudio: a batch back end for AI product-image generation.

The flow, one folder a step: api -> store -> scheduler -> providers -> imaging -> storage.
"""

__version__ = "0.1.0"
