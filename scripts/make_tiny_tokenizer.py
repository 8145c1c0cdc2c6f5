"""Build the tiny byte-level BPE tokenizer shipped in yollava/assets/tiny/tokenizer (for --model tiny).

Deterministic: trained by the `tokenizers` library on the question banks in templates/ plus a short
built-in English corpus. Byte-level, so any text encodes without <unk>. Special tokens follow
LLaVA-1.5's Llama tokenizer: <unk>, <s> (BOS, prepended), </s> (EOS), <pad>, <image>.

    python scripts/make_tiny_tokenizer.py            # rewrites yollava/assets/tiny/tokenizer
"""

from __future__ import annotations

from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "yollava" / "assets" / "tiny" / "tokenizer"
VOCAB_SIZE = 1024
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

CORPUS = """
A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the human's questions. USER: ASSISTANT: What is in this image?
The photo shows a dog sitting on the grass next to a red ball. The cat is sleeping on a blue sofa.
What colour is the fur? It is brown with white spots. Describe the person in the picture.
She has long dark hair, wears glasses and a green jacket. He is smiling. The mug is white with a
black handle and a small logo. Where is it? It is on the table in the kitchen, near the window.
Yes. No. I don't know who that is. There is nothing else to say. One two three four five six.
"""


def main() -> None:
    texts = [CORPUS]
    for path in sorted((ROOT / "templates").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for value in data.values():
            if isinstance(value, list):
                # with a leading space too: answers follow "ASSISTANT:" as " Yes, ..." in prompts
                texts.extend(f"{v} ASSISTANT: {v}" for v in value)
            elif isinstance(value, str):
                texts.append(value)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts * 4, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    OUT.mkdir(parents=True, exist_ok=True)
    # tokenizer.json only: yollava.models.tiny_tokenizer() wraps it with the special tokens, the same
    # way on transformers 4.57 and 5.x (a saved tokenizer_config.json is version-specific)
    tokenizer.save(str(OUT / "tokenizer.json"))
    print(f"wrote {OUT / 'tokenizer.json'} ({tokenizer.get_vocab_size()} entries)")


if __name__ == "__main__":
    main()
