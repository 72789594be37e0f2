"""Published weight files: where they come from (``ovsam_ros/data/weights/sources.yaml``), fetching
them with resume and checksums (``ovsam weights download``), and reporting what is there
(``ovsam weights check``). Nothing here runs unless asked: building a model never downloads."""
