"""The names of the reference's pretrain LM classes this project implements, without the classes (no torch).

Planning a pipeline that imports or trains a reference run checks the class a config names against these on a
login node; spd/targets/pretrain_run.py maps the same names to the config and model classes that build them.
"""

from __future__ import annotations

MODEL_CONFIG_FILE = "model_config.yaml"  # in a reference pretrain run directory, beside checkpoints/
TOKENIZER_FILE = "tokenizer.json"

# Every class of the reference's spd.pretrain.models, by module: the vocabulary a reference config can name.
REFERENCE_MODEL_MODULES: dict[str, str] = {
    "GPT2": "gpt2",
    "GPT2Simple": "gpt2_simple",
    "Llama": "llama",
    "LlamaSimple": "llama_simple",
    "LlamaSimpleMLP": "llama_simple_mlp",
}
IMPLEMENTED_NAMES: tuple[str, ...] = ("GPT2", "GPT2Simple", "Llama", "LlamaSimple", "LlamaSimpleMLP")


class UnsupportedReferenceModelError(ValueError):
    """A reference model class or model_type this project does not implement."""


def class_paths(name: str) -> list[str]:
    """The spellings reference configs use for one class: full path, package re-export, bare name, and the
    pre-move `simple_stories_train.models.*` path that the reference still rewrites to spd.pretrain."""
    module = REFERENCE_MODEL_MODULES[name]
    return [
        f"spd.pretrain.models.{module}.{name}",
        f"spd.pretrain.models.{name}",
        f"simple_stories_train.models.{module}.{name}",
        name,
    ]


PRETRAIN_CLASS_NAMES: dict[str, str] = {path: name for name in IMPLEMENTED_NAMES for path in class_paths(name)}


def pretrain_class_name(class_path: str) -> str:
    """The implemented class a reference class path or bare name stands for; UnsupportedReferenceModelError naming
    the supported ones otherwise."""
    if class_path in PRETRAIN_CLASS_NAMES:
        return PRETRAIN_CLASS_NAMES[class_path]
    name = class_path.rsplit(".", 1)[-1]
    known = "a reference class not implemented here" if name in REFERENCE_MODEL_MODULES else "not a reference class"
    raise UnsupportedReferenceModelError(
        f"model class {class_path!r} is {known}; supported reference pretrain classes: "
        f"{', '.join(sorted(IMPLEMENTED_NAMES))}"
    )
