"""Offline auto-labelling of recordings into stage-2 training data (``ovsam-label``).

One job per module: :mod:`.sources` (bags / image folders -> planned frames), :mod:`.shards`
(the plan cut into shards, one atomic result file each), :mod:`.labeller` (one frame -> COCO
instances with the predictor), :mod:`.coco_writer` (records -> COCO JSON), :mod:`.merge`
(shard files -> one dataset, independent of the number of processes), :mod:`.review` (contact
sheets), :mod:`.runner` (single process or torchrun ranks) and :mod:`.cli` (arguments).
"""
