"""The MuJoCo pick-and-place cell: scene, tracking controller, tasks and world."""

import os

# Offscreen rendering without a display: EGL (Mesa's software rasteriser on a CPU-only machine).
# MuJoCo reads this when it is first imported, so it is set before any sim module imports it.
os.environ.setdefault("MUJOCO_GL", "egl")
