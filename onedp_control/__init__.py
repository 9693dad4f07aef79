"""onedp_control: a one-step distilled diffusion policy controller for a Franka Panda."""

__version__ = "0.1.0"
