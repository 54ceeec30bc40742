"""Preference-set builders: each takes a typed config and writes pairs.jsonl + manifest.json (resumable).

`BUILDERS` maps the `mmpo build <name>` sub-command to (config dataclass, build function).
"""

from mmpo.builders import augment, difficulty, self_qa

BUILDERS = {
    "augment": (augment.AugmentConfig, augment.build),
    "self_qa": (self_qa.SelfQAConfig, self_qa.build),
    "difficulty": (difficulty.DifficultyConfig, difficulty.build),
}
