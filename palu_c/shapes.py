"""Attention shapes of the models our benchmarks and tables name, as (query heads, KV heads, head_dim): the presets
of ``palu-c bench --shape``, of ``python/bench_attention.py`` and of the group-size speed table
(``python/group_speed_table.py``). Plain data: importing it pulls in neither torch nor the extension."""

ATTENTION_SHAPES = {
    "llama2-7b": (32, 32, 128),   # MHA
    "llama3-8b": (32, 8, 128),    # GQA, 4 query heads per KV head (Mistral-7B has the same)
    "smollm2": (9, 3, 64),        # SmolLM2-135M, the embedded default model
}
