"""Chat templates: the Jinja templates models ship, rendered as ``transformers`` renders them, in worker
processes that bound each render's time, memory and output (:mod:`splitup.chat.renderer`).

Nothing is imported here: a render worker imports this package, and it must start in milliseconds."""

# The tokenizer's special tokens a template sees by name, as transformers' ``special_tokens_map`` gives them
# (the ones a GGUF file or a ``tokenizer_config.json`` can name; sep, cls and mask are an encoder's).
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
