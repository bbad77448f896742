"""Class names in prompt templates as a text tower's queries: what CLIP's contrastive
training (`clip_contrastive`) and OWL-ViT's detector share.

`ClassPrompts` is a base-model mixin. It reads the top-level config keys `tokenizer`
('clip' or 'bytes'), `tokenizer_path` and `prompt_templates` (each with one '{}'; default:
the name alone), builds the tokenizer and the `[T, C, L]` token ids of every template with
every class name, and evaluates with the class queries computed once per evaluation pass:
`eval_constants` applies the module's `class_queries` method, `eval_apply` passes them to
the module as `class_queries`.
"""

from __future__ import annotations

import dataclasses

from scenic.common_lib.config_utils import ConfigError
from scenic_baselines import clip_tokenizer

DEFAULT_TEMPLATES = ("{}",)
CONFIG_KEYS = ("tokenizer", "tokenizer_path", "prompt_templates")


def module_config_keys(module_cls) -> tuple[str, ...]:
    """`config.model` keys of a class-prompted model: `variant` and the Flax module's fields,
    less Flax's own and `class_tokens` (which the model builds from the class names)."""
    excluded = ("parent", "name", "class_tokens")
    return ("variant", *(f.name for f in dataclasses.fields(module_cls) if f.name not in excluded))


class ClassPrompts:
    """Mixin for a `BaseModel` whose module has a `class_tokens` attribute and a
    `class_queries()` method (the class names' query embeddings)."""

    @property
    def templates(self) -> tuple[str, ...]:
        templates = tuple(self.config.get("prompt_templates") or DEFAULT_TEMPLATES)
        for template in templates:
            if template.count("{}") != 1:
                raise ConfigError(
                    f"prompt_templates: {template!r} must hold exactly one '{{}}' for the "
                    "class name."
                )
        return templates

    def class_prompt_tokens(self, class_names, vocab_size: int, context_length: int):
        """Builds `self.tokenizer` and returns the class prompts' token ids as nested tuples
        `[T][C][L]` (a hashable module attribute), or None without class names."""
        self.tokenizer = clip_tokenizer.from_config(
            self.config.get("tokenizer") or "clip", self.config.get("tokenizer_path")
        )
        if self.tokenizer.vocab_size > vocab_size:
            raise ConfigError(
                f"model.vocab_size {vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size} ids."
            )
        if not class_names:
            return None
        ids = clip_tokenizer.prompt_tokens(
            self.tokenizer, class_names, self.templates, context_length
        )
        return tuple(tuple(map(tuple, template)) for template in ids.tolist())

    def has_eval_constants(self) -> bool:
        return self.flax_model.class_tokens is not None

    def eval_constants(self, variables):
        """The class names' queries, once per evaluation pass: the text tower runs on
        templates x classes (LVIS: 1,203 names) once a pass, not once a batch."""
        return self.flax_model.apply(variables, method=type(self.flax_model).class_queries)

    def eval_apply(self, variables, inputs, constants=None):
        return self.flax_model.apply(variables, inputs, train=False, class_queries=constants)
