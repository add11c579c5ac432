"""What the edge agent and the cloud service both run on: the YOLO runtime (detect/), config loading,
atomic files, periodic and
supervised tasks.

A leaf package: it imports nothing of edge/, cloud/ or sim/, so both images carry it.
"""
