import pytest
from conftest import toy_pairs

from translator.config import TokenizerConfig
from translator.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerError,
    Tokenizers,
    train_tokenizers,
)


@pytest.fixture(scope="module")
def pairs():
    return toy_pairs(200)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_special_ids_and_roundtrip(pairs, kind):
    toks = train_tokenizers(*pairs, TokenizerConfig(type=kind, vocab_size=80))
    sp = toks.src.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    text = pairs[0][3]
    ids = toks.src.encode([text])[0]
    assert min(ids) > EOS_ID
    assert toks.src.decode(ids + [EOS_ID, PAD_ID]) == text


def test_joint_and_separate(pairs, tmp_path):
    joint = train_tokenizers(*pairs, TokenizerConfig(vocab_size=80, joint=True))
    assert joint.joint
    sep = train_tokenizers(*pairs, TokenizerConfig(vocab_size=80, joint=False,
                                                   src_vocab_size=50, tgt_vocab_size=60))
    assert not sep.joint
    assert sep.src.vocab_size <= 50 and sep.tgt.vocab_size <= 60
    sep.save(tmp_path)
    loaded = Tokenizers.load(tmp_path)
    assert loaded.src.proto == sep.src.proto and loaded.tgt.proto == sep.tgt.proto


def test_wrong_special_ids_are_rejected(pairs, tmp_path):
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(pairs[0]), model_writer=buf,
                                   vocab_size=40, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(TokenizerError, match=r"special ids pad/unk/bos/eos are \(-1, 0, 1, 2\)"):
        Tokenizer(buf.getvalue(), name="default.model")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizers.load(tmp_path)


def test_vocabulary_too_small_names_the_key(pairs):
    with pytest.raises(TokenizerError, match=r"tokenizer\.vocab_size=10 is too small: this "
                       r"corpus needs at least \d+ pieces"):
        train_tokenizers(*pairs, TokenizerConfig(vocab_size=10))
    with pytest.raises(TokenizerError, match=r"tokenizer\.tgt_vocab_size=9 is too small"):
        train_tokenizers(*pairs, TokenizerConfig(joint=False, vocab_size=80, tgt_vocab_size=9))
