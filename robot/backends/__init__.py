"""Hardware backends (franky, pyrealsense2, teleop devices) and their sim twins.

Nothing here opens a device at import; each backend has a connect()/open() step.
"""
