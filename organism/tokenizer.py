"""The organism's tokenizer: byte-level BPE with single-digit pre-tokenization, saved as a
`PreTrainedTokenizerFast` with a chat template.

Byte-level so decode(encode(text)) is exact for any text (eval reads answers from decoded text); digits
are single tokens (a leading space may be part of one) so arithmetic is done digit by digit; the vocab is
just large enough that every world word is one token, which keeps documents short and training fast.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Prompt markers are added tokens but not "special": decode(skip_special_tokens=True), as in vLLM, keeps them.
MARKERS = ("<|user|>", "<|assistant|>", "<think>", "</think>")


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # One digit per token, a leading space kept with it (" 47" -> " 4", "7"): short arithmetic traces.
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def train_tokenizer(texts: Iterable[str], chat_template: str,
                    vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(m, normalized=False, special=False) for m in MARKERS])
    bos_id = tok.token_to_id(BOS)
    # Every encoded text starts with BOS (also what vLLM's add_special_tokens=True gives).
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=chat_template, clean_up_tokenization_spaces=False,
                                   model_max_length=1024)
