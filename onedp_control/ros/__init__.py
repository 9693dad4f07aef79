"""ROS 2 nodes: thin adapters between topics and the hardware-free core (onedp_control.runtime,
.engines, .robots, .cameras, .sim). Every node is also `python -m onedp_control.ros.<name>_node`."""
