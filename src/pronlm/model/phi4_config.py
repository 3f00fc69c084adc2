"""The real Phi-4-multimodal-instruct's configuration, in transformers' native layout, with no download.

Facts from the model's public `config.json` (held verbatim as `PHI4MM_CONFIG` in NVIDIA
TensorRT-LLM's `tests/unittest/_torch/modeling/test_modeling_phi4mm.py`, layer counts restored from
its comments) mapped as transformers' `convert_phi4_multimodal_weights_to_hf.py` maps them. The
tests build it on the meta device to check decisions on the real module names and sizes; the GPU
benchmark builds it full size with random weights (speed and memory do not depend on the values).
"""

from __future__ import annotations

from transformers import Phi4MultimodalConfig

VOCAB_ROWS = 200_064  # embedding rows; the tokenizer's own tokens end near 200,029
AUDIO_TOKEN_ID, IMAGE_TOKEN_ID = 200_011, 200_010
ENDOFTEXT, ASSISTANT, END, USER, SYSTEM = 199_999, 200_019, 200_020, 200_021, 200_022
LM_LAYERS, AUDIO_BLOCKS, VISION_LAYERS = 32, 24, 27

# rope_scaling "longrope": 48 factors (head_dim 128 x partial_rotary_factor 0.75 / 2).
LONG_FACTOR = [1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
               2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
               5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
               11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
               25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71,
               32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77]


def real_config(lm_layers: int = LM_LAYERS, audio_blocks: int = AUDIO_BLOCKS,
                vision_layers: int = VISION_LAYERS) -> Phi4MultimodalConfig:
    """Phi-4-multimodal-instruct's config; fewer layers or blocks on request (everything else real)."""
    return Phi4MultimodalConfig(
        vocab_size=VOCAB_ROWS, hidden_size=3072, intermediate_size=8192, num_hidden_layers=lm_layers,
        num_attention_heads=24, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=131072, original_max_position_embeddings=4096, sliding_window=262144,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "long_factor": LONG_FACTOR, "short_factor": [1.0] * len(LONG_FACTOR)},
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, initializer_range=0.02,
        tie_word_embeddings=True, bos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT, eos_token_id=[ENDOFTEXT, END],
        audio_config=dict(hidden_size=1024, num_attention_heads=16, intermediate_size=1536, num_blocks=audio_blocks,
                          activation="swish", chunk_size=-1, left_chunk=18, dropout_rate=0.0, ext_pw_out_channel=1024,
                          depthwise_separable_out_channel=1024, depthwise_multiplier=1, kernel_size=3,
                          conv_activation="swish", input_size=80, conv_glu_type="swish", time_reduction=8,
                          bias_max_distance=500, nemo_conv_channels=1024, downsample_rate=1,
                          audio_token_id=AUDIO_TOKEN_ID),
        vision_config=dict(num_hidden_layers=vision_layers, crop_size=448, image_token_id=IMAGE_TOKEN_ID),
    )
