"""MultimodalLM: the inputs_embeds hook, sequence layout, text-only labels, cached generation, checkpoints."""

import pytest
import torch
from torch.nn import functional as F

from tinylm.core import TinyLM
from tinylm.core.data import CharTokenizer
from tinylm.core.model.transformer import IGNORE_INDEX
from tinylm.core.registry import UnknownNameError
from tinylm.mm import (
    CaptionBatch,
    MultimodalConfig,
    MultimodalLM,
    is_captioner,
    load_captioner,
    save_captioner,
)
from tinylm.mm.data import CaptionData, collate

LM = dict(dim=32, n_layers=2, n_heads=2, max_seq_len=64)
PATCH = {"name": "patch", "image_size": 8, "patch_size": 4, "width": 16, "n_layers": 1, "n_heads": 2}
VQ_AUDIO = {"name": "vq_audio", "mel": {"n_mels": 16}, "hidden": 16, "code_dim": 8, "codebook_size": 12}


def tiny_model(encoders=None, text_vocab=20) -> MultimodalLM:
    torch.manual_seed(0)
    config = MultimodalConfig(lm=LM, text_vocab_size=text_vocab, encoders=encoders or {"image": PATCH})
    return MultimodalLM(config)


def batch_of(captions=("ab", "abcde", "c")) -> tuple[CaptionBatch, CharTokenizer]:
    tok = CharTokenizer.build(["abcde"])
    data = CaptionData("image", torch.rand(len(captions), 1, 8, 8), list(captions))
    return collate(data, list(range(len(captions))), tok), tok


def test_tinylm_inputs_embeds_equals_input_ids():
    torch.manual_seed(0)
    lm = TinyLM(vocab_size=50, dim=32, n_layers=2, n_heads=2)
    ids = torch.randint(0, 50, (2, 7))
    labels = torch.randint(0, 50, (2, 7))
    a = lm(ids, labels=labels)
    b = lm(None, labels=labels, inputs_embeds=lm.tok_emb(ids))
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.loss, b.loss)
    with pytest.raises(ValueError, match="exactly one"):
        lm(ids, inputs_embeds=lm.tok_emb(ids))
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        lm(None, inputs_embeds=torch.randn(2, 7, 31))


def test_vocab_layout_and_shapes():
    model = tiny_model({"image": PATCH, "audio": VQ_AUDIO})
    assert model.special == {"image": (20, 21), "audio": (22, 23)}
    assert model.code_offset == {"audio": 24}
    assert model.lm.config.vocab_size == 24 + 12
    prefix = model.prefix_embeddings("image", torch.rand(3, 1, 8, 8))
    assert prefix.shape == (3, 4 + 3, 32)  # 4 patches of 4x4 + <bos> <image> </image>
    wave = torch.randn(2, 4000)
    codes = model.encoders["audio"](wave)
    assert codes.shape == (2, 16) and codes.dtype == torch.long  # 32 frames -> 16 codes
    assert model.prefix_embeddings("audio", wave).shape == (2, 16 + 3, 32)


def test_labels_mask_everything_but_text():
    model = tiny_model()
    batch, tok = batch_of()
    embeds, labels = model.inputs_and_labels(batch)
    n_prefix = 4 + 3
    assert embeds.shape[:2] == labels.shape == (3, n_prefix + batch.text.size(1) - 1)
    assert (labels[:, : n_prefix - 1] == IGNORE_INDEX).all()  # no target is media or a special token
    for row, caption in enumerate(("ab", "abcde", "c")):
        text = labels[row, n_prefix - 1 :]
        expected = tok.encode(caption, add_eos=True)
        assert text[: len(expected)].tolist() == expected
        assert (text[len(expected) :] == IGNORE_INDEX).all()  # padding
    assert int((labels != IGNORE_INDEX).sum()) == int(batch.text_mask.sum())


def test_loss_is_cross_entropy_on_text_positions_only():
    model = tiny_model()
    batch, _ = batch_of()
    out = model(batch, loss_reduction="sum")
    _, labels = model.inputs_and_labels(batch)
    keep = labels != IGNORE_INDEX
    manual = F.cross_entropy(out.logits[keep].double(), labels[keep], reduction="sum")
    torch.testing.assert_close(out.loss.double(), manual, rtol=1e-5, atol=1e-5)
    # gradients reach the image encoder through the spliced embeddings
    out.loss.backward()
    assert model.encoders["image"].patchify.weight.grad.abs().sum() > 0


def test_padding_does_not_change_the_loss_of_other_rows():
    model = tiny_model()
    short, _ = batch_of(("ab",))
    padded, _ = batch_of(("ab", "abcde"))
    padded = CaptionBatch("image", torch.cat([short.media, padded.media[1:]]), padded.text, padded.text_mask)
    full = model(padded, loss_reduction="sum")
    alone = model(short, loss_reduction="sum")
    row0 = F.cross_entropy(
        full.logits[0], model.inputs_and_labels(padded)[1][0], ignore_index=IGNORE_INDEX, reduction="sum"
    )
    torch.testing.assert_close(row0, alone.loss, rtol=1e-5, atol=1e-5)


def test_cached_generation_matches_full_recomputation():
    model = tiny_model().eval()
    media = torch.rand(3, 1, 8, 8)
    got = model.generate("image", media, max_new_tokens=6)
    for row in range(3):  # greedy by rerunning the whole sequence every step, no cache
        x = model.prefix_embeddings("image", media[row : row + 1])
        ids = []
        for _ in range(6):
            logits = model.lm(None, inputs_embeds=x).logits[0, -1, :20]
            nxt = int(logits.argmax())
            if nxt == model.config.eos_id:
                break
            ids.append(nxt)
            x = torch.cat([x, model.lm.tok_emb(torch.tensor([[nxt]]))], dim=1)
        assert got[row] == ids
        assert all(i < model.config.text_vocab_size for i in got[row])


def test_generation_needs_room_and_a_known_modality():
    model = tiny_model()
    with pytest.raises(ValueError, match="reads"):
        model.generate("audio", torch.randn(1, 4000))
    with pytest.raises(ValueError, match="images must be"):
        model.generate("image", torch.rand(1, 1, 7, 7))


def test_config_errors_are_clear():
    with pytest.raises(UnknownNameError, match="known media encoder names: patch"):
        tiny_model({"image": {"name": "nope"}})
    with pytest.raises(ValueError, match="encoder for 'image' handles 'audio'"):
        tiny_model({"image": {"name": "whisper_conv"}})
    with pytest.raises(ValueError, match="derived"):
        MultimodalConfig(lm={**LM, "vocab_size": 10}, text_vocab_size=5, encoders={"image": PATCH})


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model({"image": PATCH, "audio": VQ_AUDIO})
    _, tok = batch_of()
    save_captioner(model, tok, tmp_path / "ckpt")
    assert is_captioner(tmp_path / "ckpt") and not is_captioner(tmp_path)
    loaded, tok2 = load_captioner(tmp_path / "ckpt")
    assert tok2 == tok
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    media = torch.rand(2, 1, 8, 8)
    assert loaded.generate("image", media, 5) == model.eval().generate("image", media, 5)
    with pytest.raises(FileNotFoundError, match="not a tinylm-mm"):
        load_captioner(tmp_path)
