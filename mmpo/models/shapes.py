"""Published 7B model shapes, shared by the two checkpoint factories (`mmpo.models.tiny` writes 7B-shaped configs
from them, `mmpo.models.real_format` unshrunk real-format ones)."""

# Published 7B shapes. CLIP ViT-L/14-336 (LLaVA-1.5 vision tower) and Llama-2-7B / Vicuna-7B.
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, image_size=336, projection_dim=768)
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
# llava-onevision-qwen2-7b: SigLIP so400m-patch14-384 + Qwen2-7B.
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                     patch_size=14, image_size=384)
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6)
VOCAB_7B = {"llava_onevision": 152064}  # others: 32000 (Llama-2 vocabulary size)
# LLaVA-NeXT anyres grid (llava-v1.6 / NeXT-Video configs).
PINPOINTS_7B = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
PINPOINTS_ONEVISION_7B = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
