"""What robot teams chain a segmenter with, free of ROS imports (the node glues them in).

* :mod:`.frame_buffer`: recent frames keyed by stamp + frame_id, and stamp matching;
* :mod:`.detections`: detector output (``vision_msgs/Detection2DArray``-shaped) -> prompts;
* :mod:`.tracking`: persistent instance ids across frames;
* :mod:`.depth3d`: aligned depth + pinhole intrinsics -> per-instance 3D centroid and extent.
"""
