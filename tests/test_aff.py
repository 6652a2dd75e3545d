"""tool/aff.py against SPEC_AFF §1-4: the pairs and affinities against loops, the confident label and the affinity
labels on hand-built cases and loops, the loss against a loop, the sparse walk against the dense squarings."""

import numpy as np
import pytest
import torch

from tests.reference_aff import directions_loop, pairs_loop, walk_dense, walk_labels_dense
from tool import aff, walk


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny maps: waking threads for each of the walk's 64 small products costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- §1 pairs and affinities


def test_radius_5_has_the_spec_s_34_directions_in_generation_order():
    pairs = aff.pair_index((12, 13))
    width = 13
    offsets = (pairs.dst_indices - pairs.src_indices)[:, 0].tolist()
    assert len(offsets) == 34 and offsets == [dy * width + dx for dy, dx in directions_loop(5)]
    assert offsets[:5] == [1, 2, 3, 4, width - 4]  # (0, 1) … (0, 4), then (1, −4)


@pytest.mark.parametrize(("grid", "radius"), [((12, 13), 5), ((56, 56), 5), ((7, 6), 3), ((9, 9), 4)])
def test_pair_index_matches_the_spec_loop(grid, radius):
    pairs = aff.pair_index(grid, radius)
    sources, targets = pairs_loop(grid, radius)
    assert pairs.src_indices.tolist() == sources
    assert pairs.dst_indices.tolist() == targets
    assert pairs.grid == grid and pairs.radius == radius


def test_448_crop_has_2496_sources():
    assert aff.pair_index((56, 56)).dst_indices.shape == (34, 52 * 48)


@pytest.mark.parametrize(("grid", "radius"), [((56, 56), 5), ((11, 40), 5), ((10, 40), 4), ((40, 7), 3), ((3, 9), 1)])
def test_network_radius_shrinks_below_11(grid, radius):
    assert aff.network_radius(grid) == radius


def test_pair_affinities_match_the_spec_loop():
    torch.manual_seed(0)
    features = torch.randn(2, 6, 7, 10)
    pairs = aff.pair_index((7, 10), radius=3)
    result = aff.pair_affinities(features, pairs)
    sources, targets = pairs_loop((7, 10), 3)
    flat = features.flatten(2).double()
    assert result.shape == (2, len(targets), len(sources))
    for n in range(2):
        for d, row in enumerate(targets):
            for m, (src, dst) in enumerate(zip(sources, row)):
                expected = torch.exp(-(flat[n, :, dst] - flat[n, :, src]).abs().mean())
                assert result[n, d, m].item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- §2 labels


def test_block_means_are_8x8_means_channels_last():
    marginals = np.random.default_rng(0).random((16, 24, 3), dtype=np.float32)
    pooled = aff.block_means(marginals)
    assert pooled.shape == (2, 3, 3) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[1, 2], marginals[8:16, 16:24].mean(axis=(0, 1)), rtol=1e-6)


def one_hot_marginals(positions: np.ndarray, channels: int) -> np.ndarray:
    """(channels)×g×g marginals with all mass at `positions`; -1 means no mass (a padding block)."""
    marginals = np.zeros((channels, *positions.shape), np.float32)
    for index in np.ndindex(positions.shape):
        if positions[index] >= 0:
            marginals[(positions[index], *index)] = 0.9
    return marginals


def test_confident_label_hand_built():
    # dict positions: 0 background, 1 and 2 two classes; -1 a block wholly in the crop's padding
    la = np.array([[1, 1, 0, 2], [0, 2, 1, -1]])
    ha = np.array([[1, 0, 0, 2], [2, 0, 0, -1]])
    label = aff.confident_label(one_hot_marginals(la, 3), one_hot_marginals(ha, 3))
    assert label.dtype == np.uint8
    # la's fg kept where ha agrees it is not bg; ha's bg overrides la's fg; la bg with ha fg: not confident
    np.testing.assert_array_equal(label, [[1, 0, 0, 2], [255, 0, 0, 255]])


def test_confident_label_padding_needs_both_alphas_below_threshold_and_ties_take_the_first():
    la = np.zeros((3, 1, 3), np.float32)
    ha = np.zeros((3, 1, 3), np.float32)
    la[1, 0, 0] = 2e-5  # la alone above 1e-5: a real block; ha's all-zero argmax is 0 = background
    la[2, 0, 1], la[1, 0, 1] = 0.5, 0.5  # a tie: first maximum (position 1); ha argmax 0 again
    ha[1, 0, 1] = 0.3
    ha[0, 0, 1] = 0.3  # ha tie of bg and 1: first maximum is bg
    la[:, 0, 2] = 9e-6  # every marginal below 1e-5: padding
    ha[:, 0, 2] = 9e-6
    np.testing.assert_array_equal(aff.confident_label(la, ha), [[0, 0, 255]])


def affinity_labels_loop(label: np.ndarray, radius: int):
    sources, targets = pairs_loop(label.shape, radius)
    flat = label.ravel().tolist()
    maps = np.zeros((3, len(targets), len(sources)), np.float32)
    for d, row in enumerate(targets):
        for m, (src, dst) in enumerate(zip(sources, row)):
            a, b = flat[src], flat[dst]
            valid = a < 255 and b < 255
            maps[0, d, m] = a == b == 0
            maps[1, d, m] = valid and a == b and a != 0
            maps[2, d, m] = valid and a != b
    return maps


def test_affinity_labels_match_the_spec_loop():
    label = np.random.default_rng(0).choice(np.array([0, 1, 2, 255], np.uint8), size=(9, 12), p=[0.4, 0.2, 0.2, 0.2])
    bg_pos, fg_pos, neg = aff.affinity_labels(label)
    assert bg_pos.shape == (34, 5 * 4) and bg_pos.dtype == torch.float32
    expected = affinity_labels_loop(label, 5)
    for name, result, loop in zip(("bg_pos", "fg_pos", "neg"), (bg_pos, fg_pos, neg), expected):
        np.testing.assert_array_equal(result.numpy(), loop, err_msg=name)


def test_affinity_labels_hand_built():
    label = np.zeros((5, 9), np.uint8)  # one source: (0, 4); direction 0 is (0, 1), direction 4 is (1, −4)
    label[0, 4], label[0, 5], label[1, 0] = 3, 3, 255
    bg_pos, fg_pos, neg = aff.affinity_labels(label)
    assert (fg_pos[0, 0], neg[0, 0], bg_pos[0, 0]) == (1, 0, 0)  # 3 with 3
    assert (fg_pos[4, 0], neg[4, 0], bg_pos[4, 0]) == (0, 0, 0)  # 3 with 255: in no map
    assert neg[1, 0] == 1  # 3 with 0
    assert bg_pos.sum() == 0 and fg_pos.sum() == 1 and neg.sum() == 32


# ---------------------------------------------------------------- §3 loss


def test_affinity_loss_matches_the_loop():
    generator = torch.Generator().manual_seed(0)
    affinities = torch.rand(2, 34, 6, generator=generator) * 0.98 + 0.01
    labels = torch.randint(0, 4, (2, 34, 6), generator=generator)
    bg_pos, fg_pos, neg = ((labels == value).float() for value in range(3))  # value 3: no label
    result = aff.affinity_loss(affinities, bg_pos, fg_pos, neg)
    sums = {"bg": 0.0, "fg": 0.0, "neg": 0.0}
    counts = {"bg": 1e-5, "fg": 1e-5, "neg": 1e-5}
    for index in np.ndindex(*affinities.shape):
        value, kind = affinities[index].item(), ("bg", "fg", "neg", None)[labels[index].item()]
        if kind is not None:
            sums[kind] -= np.log(1 + 1e-5 - value) if kind == "neg" else np.log(value + 1e-5)
            counts[kind] += 1
    terms = {kind: sums[kind] / counts[kind] for kind in sums}
    for kind, value in terms.items():
        assert result[kind].item() == pytest.approx(value, rel=1e-5)
    assert result["loss"].item() == pytest.approx(terms["bg"] / 4 + terms["fg"] / 4 + terms["neg"] / 2, rel=1e-5)


def test_affinity_loss_of_an_empty_label_set_is_zero():
    assert aff.affinity_loss(torch.full((1, 34, 4), 0.5), *torch.zeros(3, 1, 34, 4))["loss"].item() == 0


# ---------------------------------------------------------------- §4 random walk


def test_walk_scores_keep_background_and_present_classes():
    cams = {14: np.full((2, 3), 0.5, np.float32), 2: np.array([[0.9, 0, -1e-6], [0, 0, 0]], np.float32)}
    kept, scores = aff.walk_scores(cams, num_classes=21, alpha=2)
    np.testing.assert_array_equal(kept, [0, 3, 15])
    np.testing.assert_array_equal(scores[1], cams[2])
    np.testing.assert_allclose(scores[0], np.float32([[0.01, 0.25, 0.25], [0.25, 0.25, 0.25]]), rtol=1e-6)


def test_walk_scores_with_every_class_present_take_the_max_of_the_maps_alone():
    cams = {key: np.full((1, 1), -0.5, np.float32) for key in range(20)}
    _, scores = aff.walk_scores(cams, num_classes=21, alpha=1)
    assert scores[0, 0, 0] == 1.5  # no absent channel's 0 enters the max


@pytest.mark.parametrize(("grid", "radius", "seed"), [((6, 11), 5, 0), ((9, 12), 5, 1), ((5, 5), 2, 2)])
def test_random_walk_matches_the_dense_squarings(grid, radius, seed):
    generator = torch.Generator().manual_seed(seed)
    pairs = aff.pair_index(grid, radius)
    affinities = torch.rand(pairs.dst_indices.shape, generator=generator, dtype=torch.float64)
    x = torch.rand(3, grid[0] * grid[1], generator=generator, dtype=torch.float64)
    sparse = aff.random_walk(x, affinities, pairs, beta=2, logt=4)
    torch.testing.assert_close(sparse, walk_dense(x, affinities, grid, radius, beta=2, logt=4))


def test_nodes_without_pairs_keep_their_own_value():
    pairs = aff.pair_index((6, 11))
    x = torch.rand(1, 66, dtype=torch.float64)
    walked = walk.walk(aff.walk_transition(torch.rand(pairs.dst_indices.shape, dtype=torch.float64), pairs), x, 64)
    lonely = [0, 1, 2, 3, 4 * 11, 4 * 11 + 10, 5 * 11, 5 * 11 + 1, 5 * 11 + 9, 5 * 11 + 10]  # SPEC_AFF §6.9
    torch.testing.assert_close(walked[0, lonely], x[0, lonely])


def test_walk_labels_equal_the_dense_reference_on_all_channels():
    generator = torch.Generator().manual_seed(0)
    height, width = 61, 83  # padded to 64×88: grid 8×11
    cams = {
        key: torch.rand(height // 6 + 1, width // 6 + 1, generator=generator)
        .repeat_interleave(6, 0)
        .repeat_interleave(6, 1)[:height, :width]
        .numpy()
        ** 3
        for key in (4, 11)
    }
    kept, scores = aff.walk_scores(cams, num_classes=21)
    pairs = aff.pair_index((8, 11))
    affinities = torch.rand(pairs.dst_indices.shape, generator=generator) * 0.5 + 0.5
    labels = kept[aff.walk_labels(torch.from_numpy(scores), affinities, pairs).numpy()]
    full = torch.zeros(21, height, width)
    full[kept] = torch.from_numpy(scores)
    dense = walk_labels_dense(full, affinities, (8, 11), 5, aff.WALK_BETA, aff.WALK_LOGT).numpy()
    assert labels.shape == (height, width)
    assert set(np.unique(dense)) == {0, 5, 12}
    np.testing.assert_array_equal(labels, dense)
