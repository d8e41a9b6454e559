"""Line data: connector observations turned into stored samples, live values and gaps.

The only part of ``mes`` that knows ``connectors``.
"""
