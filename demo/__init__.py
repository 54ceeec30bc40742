"""The synthetic world behind `mmpo demo`: procedural shapes with exact ground truth (`world.py`) and the
open_clip -> transformers CLIP tower converter that lets the tiny LLaVA reuse a pretrained tower (`clip_to_hf.py`)."""
