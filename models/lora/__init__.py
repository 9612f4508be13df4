"""LoRAs for the SD v1 models: read the files people have, merge them into the weights, switch fast.

    pipe.load_lora("style.safetensors", scale=0.8)           # name "style" (the file stem)
    pipe.set_loras([("style", 0.5), ("detail", 1.0)])        # exactly this set, each its scale
    with pipe.loras_applied([("style", 0.7)]): ...           # a request's own set, thread-safe
    pipe.unload_loras()                                      # the base weights, bit for bit
    text, loras = prompt_loras("a cat <lora:style:0.8>", pipe.loaded_loras)

    files.py          read a .safetensors (or, opted in, a pickle) LoRA; describe_lora
    formats.py        the key grammar of kohya/A1111, LoCon, diffusers/PEFT files -> modules, and back
                      (lora_state_dict: the kohya / diffusers files training/lora.py writes)
    peft_metadata.py  alpha/rank per module from diffusers' lora_adapter_metadata
    targets.py        our weights by every name files use (file_name: the inverse); strict binding
    delta.py          the update in Keras layout as two factors
    describe.py       what a file is (networks, ranks, base model) without a model
    merge.py          the merge, the exact restore, the lock
    prompt_tags.py    <lora:name:scale> in prompts
    specs.py          FILE[:SCALE] on the command line
"""

from .describe import describe
from .errors import LoraError, LoraMismatchError, UnsupportedLoraError
from .files import default_name, describe_lora, read_lora
from .formats import LoraModule, ParsedLora, parse_lora
from .merge import LoraMerger
from .prompt_tags import lookup_loras, parse_lora_tags, prompt_loras
from .specs import lora_list, parse_lora_spec

__all__ = ["LoraError", "LoraMismatchError", "UnsupportedLoraError", "LoraMerger", "LoraModule", "ParsedLora",
           "parse_lora", "read_lora", "describe_lora", "describe", "default_name", "parse_lora_tags",
           "lookup_loras", "prompt_loras", "parse_lora_spec", "lora_list"]
