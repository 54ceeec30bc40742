"""Convert an open_clip VisionTransformer into a transformers CLIPVisionModel (same outputs).

The demo pretrains a tiny CLIP contrastively with open_clip, then uses its image tower inside a
transformers LLaVA. The two implementations are the same network (Radford et al. 2021, arXiv 2103.00020)
with different parameter names; the map below follows transformers' own converter
(transformers/models/clip/convert_clip_original_pytorch_to_hf.py), adapted to open_clip's names:

    conv1                      -> embeddings.patch_embedding        (no bias in either)
    class_embedding            -> embeddings.class_embedding
    positional_embedding       -> embeddings.position_embedding.weight
    ln_pre                     -> pre_layrnorm                      (sic, transformers' spelling)
    resblocks.i.ln_1 / ln_2    -> encoder.layers.i.layer_norm1 / layer_norm2
    resblocks.i.attn.in_proj_* -> self_attn.{q,k,v}_proj (packed [q; k; v] along dim 0, nn.MultiheadAttention)
    resblocks.i.attn.out_proj  -> self_attn.out_proj
    resblocks.i.mlp.c_fc/c_proj-> mlp.fc1 / fc2
    ln_post                    -> post_layernorm
    proj (width x embed)       -> visual_projection.weight = proj.T (CLIPVisionModelWithProjection only)

open_clip's default MLP activation is exact GELU (nn.GELU), so hidden_act is "gelu"; towers built with
quick_gelu=True map to "quick_gelu". Layer scale (ls_init_value) and attentional pooling have no
counterpart in CLIPVisionModel and are rejected.
"""

from __future__ import annotations

import torch
from torch import nn


def _activation(visual: nn.Module) -> str:
    act = visual.transformer.resblocks[0].mlp.gelu
    if isinstance(act, nn.GELU):
        if act.approximate != "none":
            raise ValueError(f"open_clip tower uses GELU(approximate={act.approximate!r}); CLIP HF has no match")
        return "gelu"
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    raise ValueError(f"unsupported MLP activation {type(act).__name__}")


def _check_supported(visual: nn.Module) -> None:
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "ls_1", nn.Identity()), nn.Identity):
        raise ValueError("open_clip tower uses layer scale (ls_init_value); CLIPVisionModel has none")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("open_clip tower uses attentional pooling; CLIPVisionModel pools the class token")
    if isinstance(visual.ln_pre, nn.Identity):
        raise ValueError("open_clip tower has no ln_pre (no_ln_pre=True); CLIPVisionModel always has one")
    if visual.conv1.bias is not None:
        raise ValueError("open_clip tower has a patch-embedding bias; CLIPVisionModel has none")


def vision_config(visual: nn.Module):
    """A transformers CLIPVisionConfig with the shapes of an open_clip VisionTransformer.

    Args:
        visual: open_clip `VisionTransformer` (e.g. `model.visual` of a CLIP from open_clip).

    Returns:
        transformers.CLIPVisionConfig.
    """
    from transformers import CLIPVisionConfig

    _check_supported(visual)
    block = visual.transformer.resblocks[0]
    proj = getattr(visual, "proj", None)
    return CLIPVisionConfig(
        hidden_size=visual.conv1.out_channels,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        image_size=int(visual.image_size[0]),
        patch_size=int(visual.conv1.kernel_size[0]),
        num_channels=visual.conv1.in_channels,
        hidden_act=_activation(visual),
        layer_norm_eps=visual.ln_pre.eps,
        projection_dim=int(proj.shape[1]) if proj is not None else visual.conv1.out_channels,
    )


def convert_state_dict(visual: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """open_clip VisionTransformer weights renamed for transformers' CLIPVisionModel.

    Args:
        visual: open_clip `VisionTransformer`.
        prefix: key prefix. transformers 5's CLIPVisionModel has no "vision_model." level in its
            state dict (4.x had one); `load_tower_into` picks the prefix from the target's own keys.

    Returns:
        State dict (tensors are detached copies); `visual_projection.weight` included when the tower has `proj`.
    """
    _check_supported(visual)
    src = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    out = {
        f"{prefix}embeddings.patch_embedding.weight": src["conv1.weight"],
        f"{prefix}embeddings.class_embedding": src["class_embedding"],
        f"{prefix}embeddings.position_embedding.weight": src["positional_embedding"],
        f"{prefix}pre_layrnorm.weight": src["ln_pre.weight"],
        f"{prefix}pre_layrnorm.bias": src["ln_pre.bias"],
        f"{prefix}post_layernorm.weight": src["ln_post.weight"],
        f"{prefix}post_layernorm.bias": src["ln_post.bias"],
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for i in range(len(visual.transformer.resblocks)):
        s, d = f"transformer.resblocks.{i}.", f"{prefix}encoder.layers.{i}."
        for old, new in names.items():
            for p in ("weight", "bias"):
                out[f"{d}{new}.{p}"] = src[f"{s}{old}.{p}"]
        # nn.MultiheadAttention packs q, k, v as rows [0:w], [w:2w], [2w:3w] of in_proj
        for p in ("weight", "bias"):
            q, k, v = src[f"{s}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{d}self_attn.q_proj.{p}"], out[f"{d}self_attn.k_proj.{p}"], out[f"{d}self_attn.v_proj.{p}"] = q, k, v
    if getattr(visual, "proj", None) is not None:
        out["visual_projection.weight"] = src["proj"].t().contiguous()
    return out


def to_hf_vision_model(visual: nn.Module):
    """A transformers CLIPVisionModel holding the open_clip tower's weights (eval mode).

    Args:
        visual: open_clip `VisionTransformer`.

    Returns:
        transformers.CLIPVisionModel.
    """
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(vision_config(visual))
    load_tower_into(model, visual)
    return model.eval()


def load_tower_into(tower: nn.Module, visual: nn.Module) -> None:
    """Copy an open_clip tower into an existing CLIPVisionModel (e.g. a LLaVA's `model.vision_tower`).

    Args:
        tower: transformers CLIPVisionModel with matching shapes (use `vision_config(visual)` to build it).
        visual: open_clip `VisionTransformer`.

    Raises:
        ValueError: when a shape differs (the message names the parameter).
    """
    own = tower.state_dict()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in own) else ""
    sd = convert_state_dict(visual, prefix=prefix)
    sd.pop("visual_projection.weight", None)
    for k, v in sd.items():
        if k not in own or own[k].shape != v.shape:
            got = tuple(own[k].shape) if k in own else "missing"
            raise ValueError(f"vision tower parameter {k}: open_clip {tuple(v.shape)} vs target {got}")
    tower.load_state_dict(sd, strict=True)


def attach_tower(llava_model: nn.Module, visual: nn.Module) -> None:
    """Replace a LLaVA's vision tower (and its config) by the converted open_clip tower, in place.

    The model factory's tiny tower may differ in shape from the CLIP being pretrained (e.g. MLP width),
    so the tower is rebuilt from the open_clip shapes rather than loaded into the existing one. The
    projector's input width must equal the tower width.

    Args:
        llava_model: a transformers LLaVA-family model with `model.vision_tower` (CLIPVisionModel).
        visual: open_clip `VisionTransformer`.

    Raises:
        ValueError: when the projector does not take the tower's width.
    """
    cfg = vision_config(visual)
    proj_in = llava_model.model.multi_modal_projector.linear_1.in_features
    if proj_in != cfg.hidden_size:
        raise ValueError(f"projector takes {proj_in}-dim features but the open_clip tower is {cfg.hidden_size} wide")
    llava_model.model.vision_tower = to_hf_vision_model(visual)
    llava_model.config.vision_config = cfg
