"""The NPR expert: its residual, its architecture, and the native-resolution promise (no pixel is ever resampled)."""

import numpy as np
import pytest
import torch
from PIL import Image

import fdcore
from fdcore.preprocess import Preprocessing, crop_grid, grid_shape, tile_to_size
from fdcore.testing import EXPERT_CHECKS, check_expert
from fdcore_npr.expert import IMAGENET_MEAN, IMAGENET_STD, NPRExpert, npr_residual


@pytest.mark.parametrize("check", EXPERT_CHECKS)
def test_fdcore_conformance(check):
    check_expert("npr", checks=check)


def test_residual_is_each_pixel_minus_the_top_left_of_its_2x2_block():
    pixels = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6) ** 1.5
    residual = npr_residual(pixels)
    assert torch.equal(residual[..., ::2, ::2], torch.zeros_like(residual[..., ::2, ::2]))
    for row in range(4):
        for column in range(6):
            anchor = pixels[..., row - row % 2, column - column % 2]
            assert torch.equal(residual[..., row, column], pixels[..., row, column] - anchor)
    reference = pixels - torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(pixels, scale_factor=0.5, mode="nearest", recompute_scale_factor=True),
        scale_factor=2, mode="nearest")
    assert torch.equal(residual, reference)  # the published implementation's two interpolations


def test_architecture_is_the_papers():
    expert = fdcore.get_expert("npr")
    assert sum(p.numel() for p in expert.parameters()) == 1_438_274
    assert (expert.conv1.kernel_size, expert.conv1.stride, expert.conv1.in_channels, expert.conv1.out_channels) == \
        ((3, 3), (2, 2), 3, 64)
    assert expert.conv1.bias is None and len(expert.layer1) == 3 and len(expert.layer2) == 4
    assert expert.layer2[0].conv2.stride == (2, 2) and expert.fc.in_features == 512 and expert.fc.out_features == 2
    assert expert.preprocessing == Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, resize="native", crops=4)
    with pytest.raises(ValueError, match="even"):
        NPRExpert(crop_size=33)
    with pytest.raises(ValueError, match="blocks"):
        NPRExpert(blocks=[3])


def _window_probability(expert, window: np.ndarray) -> torch.Tensor:
    pixels = expert.preprocessing.normalize(window)[None]
    with torch.no_grad():
        return expert(torch.cat([pixels, pixels]))[:1]  # logits; a batch of two like the ensemble's


def test_a_score_is_the_network_on_exactly_the_windows_pixels(tmp_path):
    expert = NPRExpert(crop_size=32, crops=1, width=8, blocks=[1, 1]).eval()
    fdcore.save_expert(expert, tmp_path / "npr")
    ensemble = fdcore.load_ensemble(tmp_path / "npr", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (90, 101, 3), dtype=np.uint8)
    window = image[29:61, 34:66]  # the centre window, cut by hand: round((90-32)/2), round((101-32)/2)
    logits = _window_probability(expert, window)
    expected = torch.softmax(logits, -1)[0, 1].item()
    assert ensemble.predict_pil([Image.fromarray(image)])[0] == pytest.approx(expected, abs=1e-6)


def test_the_grid_averages_logits_over_windows_cut_by_hand(tmp_path):
    expert = NPRExpert(crop_size=32, crops=6, width=8, blocks=[1, 1]).eval()
    fdcore.save_expert(expert, tmp_path / "npr")
    ensemble = fdcore.load_ensemble(tmp_path / "npr", device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    tops, lefts = [0, 38], [0, 49, 98]  # 2 x 3 on a landscape image, spread from edge to edge
    assert crop_grid(70, 130, 32, 6) == (tops, lefts)
    logits = torch.cat([_window_probability(expert, image[t:t + 32, l:l + 32]) for t in tops for l in lefts])
    expected = torch.softmax(logits.mean(0), -1)[1].item()
    scores = ensemble.predict_pil([Image.fromarray(image), Image.fromarray(image[:, ::-1].copy())], batch_size=2)
    assert scores[0] == pytest.approx(expected, abs=1e-6)
    alone = ensemble.predict_pil([Image.fromarray(image)], batch_size=1)
    assert alone[0] == scores[0]  # batch composition does not change a score


def test_crop_grid_is_deterministic_and_covers_the_image():
    for height, width, crops in ((512, 512, 9), (1536, 2048, 12), (300, 240, 6), (224, 224, 4), (225, 1000, 5)):
        tops, lefts = crop_grid(height, width, 224, crops)
        assert (tops, lefts) == crop_grid(height, width, 224, crops) and len(tops) * len(lefts) == crops
        assert all(0 <= t <= height - 224 for t in tops) and all(0 <= l <= width - 224 for l in lefts)
        rows, columns = grid_shape(crops, height, width)
        assert (len(tops), len(lefts)) == (rows, columns) and (rows <= columns) == (height <= width)
        covered = np.zeros((height, width), bool)
        for top in tops:
            for left in lefts:
                covered[top:top + 224, left:left + 224] = True
        if rows * 224 >= height and columns * 224 >= width:
            assert covered.all()
        if len(tops) > 1:
            assert tops[0] == 0 and tops[-1] == height - 224  # spread from edge to edge
    assert grid_shape(9, 10, 10) == (3, 3) and grid_shape(5, 10, 20) == (1, 5) and grid_shape(5, 20, 10) == (5, 1)


def test_small_images_are_tiled_never_enlarged():
    image = np.random.default_rng(2).integers(0, 256, (10, 13, 3), dtype=np.uint8)
    tiled = tile_to_size(image, 32)
    assert tiled.shape == (32, 32, 3)
    assert np.array_equal(tiled[:10, :13], image) and np.array_equal(tiled[10:20, 13:26], image)
    native = Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD, resize="native", crops=4)
    windows = native.arrays(Image.fromarray(image))
    assert windows.shape == (4, 32, 32, 3)
    assert set(map(tuple, windows.reshape(-1, 3))) <= set(map(tuple, image.reshape(-1, 3)))  # no new colour
    strip = np.random.default_rng(3).integers(0, 256, (8, 400, 3), dtype=np.uint8)
    assert native.arrays(Image.fromarray(strip)).shape == (4, 32, 32, 3)


def test_training_windows_are_native_pixels(tmp_path):
    from fdcore.data import DetectionDataset

    path = tmp_path / "fake" / "a.png"
    path.parent.mkdir()
    image = np.random.default_rng(4).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    expert = NPRExpert(crop_size=32, crops=4, width=8, blocks=[1, 1])
    dataset = DetectionDataset([{"path": str(path), "label": 1}], expert, random_crop_seed=5)
    windows = set()
    for epoch in range(4):
        dataset.use_epoch(epoch)
        item = dataset[0]
        top, left, height, width = item["crop"]
        assert (height, width) == (32, 32)
        expected = expert.preprocessing.normalize(image[top:top + 32, left:left + 32])
        assert torch.equal(item["pixels"], expected)
        windows.add((top, left))
    assert len(windows) > 1


def test_a_4000x3000_photograph_is_scored_from_its_own_pixels_in_bounded_memory(tmp_path):
    expert = NPRExpert(crop_size=64, crops=4, width=8, blocks=[1, 1]).eval()
    fdcore.save_expert(expert, tmp_path / "npr")
    ensemble = fdcore.load_ensemble(tmp_path / "npr", device="cpu")
    big = np.random.default_rng(5).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path, compress_level=0)
    result = ensemble.predict_paths([path])[0]
    assert result["error"] is None and 0 <= result["score"] <= 1
    tops, lefts = crop_grid(3000, 4000, 64, 4)
    logits = torch.cat([_window_probability(expert, big[t:t + 64, l:l + 64]) for t in tops for l in lefts])
    assert result["score"] == pytest.approx(torch.softmax(logits.mean(0), -1)[1].item(), abs=1e-6)
