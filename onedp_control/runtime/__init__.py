"""The controller's real-time core, with no ROS import: ring buffers, the deadline-paced loop,
action chunks and their timing, the watchdog rules, the node graph. ROS nodes (onedp_control.ros)
are thin adapters around these."""
