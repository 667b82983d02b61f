import pytest
import torch

from findlit.metrics import RetrievalRecall


def _data(num_images: int = 40, captions_per_image: int = 5, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, dim, generator=g)
    image_ids = torch.randperm(10 * num_images, generator=g)[:num_images] + 1000
    owner = torch.arange(num_images).repeat_interleave(captions_per_image)
    # captions near their image so that recall is neither 0 nor 1
    texts = images[owner] + 1.5 * torch.randn(owner.numel(), dim, generator=g)
    return images, image_ids, texts, image_ids[owner]


def _brute_force(images, image_ids, texts, text_image_ids, ks=(1, 5, 10)):
    sims = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
    match = text_image_ids[:, None] == image_ids[None, :]  # [T, N]
    out = {}
    for k in ks:
        top_images = sims.topk(k, dim=1).indices
        out[f"IR@{k}"] = match.gather(1, top_images).any(1).float().mean()
    for k in ks:
        top_texts = sims.T.topk(k, dim=1).indices
        out[f"TR@{k}"] = match.T.gather(1, top_texts).any(1).float().mean()
    return out


def _feed(metric, images, image_ids, texts, text_image_ids, batch_size, captions_per_image=5):
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        sl = slice(start * captions_per_image, stop * captions_per_image)
        metric.update(images[start:stop], image_ids[start:stop], texts[sl], text_image_ids[sl])


def test_matches_brute_force():
    data = _data()
    expected = _brute_force(*data)
    metric = RetrievalRecall()
    _feed(metric, *data, batch_size=7)
    result = metric.compute()
    assert set(result) == {"IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10"}
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value.item()), key
    # the data are not degenerate
    assert 0 < result["IR@1"] < 1 and 0 < result["TR@1"] < 1


@pytest.mark.parametrize("batch_size", [1, 3, 40])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_batch_and_chunk_sizes_agree(batch_size, chunk_size):
    data = _data(seed=1)
    expected = _brute_force(*data)
    metric = RetrievalRecall(chunk_size=chunk_size)
    _feed(metric, *data, batch_size=batch_size)
    result = metric.compute()
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value.item()), key


def test_duplicated_samples_are_not_double_counted():
    images, image_ids, texts, text_image_ids = _data(seed=2)
    reference = RetrievalRecall()
    _feed(reference, images, image_ids, texts, text_image_ids, batch_size=8)
    # a padded last batch (as a distributed sampler makes) repeats the first 3 samples
    padded = RetrievalRecall()
    _feed(padded, images, image_ids, texts, text_image_ids, batch_size=8)
    _feed(padded, images[:3], image_ids[:3], texts[:15], text_image_ids[:15], batch_size=3)
    expected = reference.compute()
    result = padded.compute()
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value.item()), key


def test_perfect_embeddings_and_reset():
    images = torch.eye(12)
    ids = torch.arange(12)
    metric = RetrievalRecall()
    metric.update(images, ids, images.repeat_interleave(5, dim=0), ids.repeat_interleave(5))
    assert all(v.item() == 1.0 for v in metric.compute().values())
    metric.reset()
    assert metric.image_embeddings == []


def test_unknown_caption_image_raises():
    metric = RetrievalRecall()
    metric.update(torch.randn(2, 4), torch.tensor([0, 1]), torch.randn(1, 4), torch.tensor([5]))
    with pytest.raises(ValueError, match="not in the image gallery"):
        metric.compute()
