"""Embedded synthetic driving scenes and a dashcam video, written in the Cityscapes layout.

Each scene is a small 3-D street (road, kerbed sidewalks, frontage blocks, traffic, people, poles)
seen through a pinhole car camera, so size, position and occlusion follow from perspective; one set
of polygons fills both the label map and a material map, so ground truth is exact. Colours and
textures come from ranges shared across classes (grey road and paving, masonry buildings and walls)
so that shape and context, not colour, decide the class. The video renders one such street while
the camera drives through it, which makes it temporally coherent by construction.

Modules, lowest first: camera (camera, painter, label ids), materials (colours, lighting,
textures), objects (things in a street), street (sampling a street, rendering it), writer (files).
"""
from training.data.synthetic.street import generate_scene, render_video_frames
from training.data.synthetic.writer import CITIES, SyntheticDataError, sample_stem, write_dataset, write_video

__all__ = ["CITIES", "SyntheticDataError", "generate_scene", "render_video_frames", "sample_stem", "write_dataset",
           "write_video"]
