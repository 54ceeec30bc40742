"""`mmpo demo`: a synthetic world with exact ground truth and the whole build -> train -> evaluate loop on it.

The layer above everything else: it uses `mmpo`, `mmpo.builders` and `mmpo.eval` as a user's script would, and
nothing imports it but the CLI. `world.py` renders the world, `image_models.py` / `video_models.py` make its
models (`clip_to_hf.py` puts a trained open_clip tower into a tiny LLaVA), `pairs.py` writes the pairs its
ground truth gives for free, `pipeline.py` runs the stages and `report.py` writes report.md and the plots.
"""
