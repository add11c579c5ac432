"""The world GLM's shape: a ~3M-parameter GLM-4V config, its byte-level BPE tokenizer, its image processor.

The sizes follow the measured recipe in shared/TRAINING-NOTES.md: text hidden 192 x 4 layers (3
heads, 1 KV head, head_dim 64, half of it rotary so `mrope_section` is [4, 6, 6]); vision depth 3,
hidden 128, out_hidden_size = text hidden; 112x112 images, patch 14, merge 2 -> 16 image tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cloud.backends.glm_inputs import END_OF_TEXT, SPECIAL_TOKENS

IMAGE_SIZE = 112
PATCH_SIZE = 14
MERGE_SIZE = 2
TEXT_HIDDEN = 192
VOCAB_SIZE = 1024


def train_tokenizer(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` whose first ids are GLM-4.1V's special tokens, in order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if core.token_to_id(token) != expected_id:
            raise RuntimeError(f"tokenizer: {token} got id {core.token_to_id(token)}, expected {expected_id}")
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        padding_side="left",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )


def build_config(tokenizer: Any) -> Any:
    """The GLM-4V config, its token ids pointed at the local tokenizer's special tokens."""
    from transformers import Glm4vConfig

    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}
    eos = ids[END_OF_TEXT]
    settings: dict[str, Any] = dict(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [4, 6, 6],
            },
            "pad_token_id": eos,
            "eos_token_id": eos,
        },
        vision_config={
            "depth": 3,
            "hidden_size": 128,
            "num_heads": 2,
            "intermediate_size": 256,
            "out_hidden_size": TEXT_HIDDEN,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        pad_token_id=eos,
        eos_token_id=eos,
    )
    return Glm4vConfig(**settings)


def build_image_processor() -> Any:
    """`Glm4vImageProcessorPil` for square IMAGE_SIZE crops (no torchvision needed)."""
    from transformers import Glm4vImageProcessorPil

    settings: dict[str, Any] = dict(
        size={"shortest_edge": IMAGE_SIZE * IMAGE_SIZE, "longest_edge": IMAGE_SIZE * IMAGE_SIZE * 4},
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
    )
    return Glm4vImageProcessorPil(**settings)
