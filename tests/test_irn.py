"""tool/irn.py against slow versions of SPEC-IRN §3–6 and §9 written here with explicit loops over
directions, path points and pixels, and a few hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.datasets import VOC12
from tests.reference_walk import random_walk_dense
from tool import irn

SMALL_RADIUS = 3  # 12 directions: loops over every pixel stay fast
SMALL_SIZE = (7, 9)  # Hp×Wp for SMALL_RADIUS: a 5×5 source crop


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny maps: on shared cores, waking threads for each of the walk's 256 small products costs
    seconds, one thread milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- slow references (SPEC-IRN §3)


def directions_loop(radius):
    directions = []
    for x in range(1, radius):
        directions.append((0, x))
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                directions.append((y, x))
    return directions


def path_loop(direction):
    dy, dx = direction
    points = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1:
                points.append((y, x))
    points.sort(key=lambda point: -(abs(point[0]) + abs(point[1])))  # stable: ties keep generation order
    return points


def paths_in_group_order(radius):
    """Every direction's path, grouped by length (increasing), generation order within a group."""
    by_length = {}
    for direction in directions_loop(radius):
        path = path_loop(direction)
        by_length.setdefault(len(path), []).append(path)
    return [path for length in sorted(by_length) for path in by_length[length]]


def source_pixels(radius, size):
    """(row, column) of each source, row-major over full[0:ch, rf:rf+cw]."""
    floor = math.ceil(radius) - 1
    crop_h, crop_w = size[0] - floor, size[1] - 2 * floor
    return [(y, floor + x) for y in range(crop_h) for x in range(crop_w)]


# ---------------------------------------------------------------- §3 path index


@pytest.mark.parametrize("radius, count", [(5, 34), (10, 152)])
def test_path_directions_match_spec_loop(radius, count):
    assert irn.path_directions(radius) == directions_loop(radius)
    assert len(irn.path_directions(radius)) == count


@pytest.mark.parametrize(
    "direction, expected",
    [
        ((0, 1), [(0, 1), (0, 0)]),
        ((4, 0), [(4, 0), (3, 0), (2, 0), (1, 0), (0, 0)]),
        ((2, 1), [(2, 1), (1, 1), (2, 0), (0, 1), (1, 0), (0, 0)]),
        ((3, -1), [(3, -1), (2, -1), (3, 0), (1, -1), (2, 0), (0, -1), (1, 0), (0, 0)]),
        # |x − y| ≤ 1 only: the box corners (0, 2), (0, 3), (1, 3), (2, 0), (3, 0), (3, 1) are too far
        ((3, 3), [(3, 3), (2, 3), (3, 2), (2, 2), (1, 2), (2, 1), (1, 1), (0, 1), (1, 0), (0, 0)]),
    ],
)
def test_direction_path_hand_checked(direction, expected):
    assert [tuple(point) for point in irn.direction_path(direction).tolist()] == expected


@pytest.mark.parametrize("radius", [5, 10])
def test_paths_grouped_by_length_and_search_dst(radius):
    groups = irn.paths_by_length(radius)
    lengths = [group.shape[1] for group in groups]
    assert lengths == sorted(set(lengths))
    flattened = [[tuple(point) for point in path] for group in groups for path in group.tolist()]
    expected = paths_in_group_order(radius)
    assert flattened == expected
    assert [tuple(dst) for dst in irn.search_dst(radius).tolist()] == [path[0] for path in expected]
    assert all(path[-1] == (0, 0) for path in expected)


@pytest.mark.parametrize("radius, size", [(SMALL_RADIUS, SMALL_SIZE), (5, (9, 13)), (10, (11, 21))])
def test_path_index_matches_spec_slices(radius, size):
    path_index = irn.PathIndex(radius, size)
    width = size[1]
    sources = source_pixels(radius, size)
    paths = paths_in_group_order(radius)
    assert path_index.src_indices.tolist() == [y * width + x for y, x in sources]
    expected_dst = [[(y + path[0][0]) * width + x + path[0][1] for y, x in sources] for path in paths]
    assert path_index.dst_indices.tolist() == expected_dst
    assert path_index.search_dst.tolist() == [list(path[0]) for path in paths]
    expected_points = [[[(y + py) * width + x + px for y, x in sources] for py, px in path] for path in paths]
    assert [path for group in path_index.path_indices for path in group.tolist()] == expected_points


def test_path_index_rejects_a_map_smaller_than_the_radius():
    with pytest.raises(AssertionError, match="too small"):
        irn.PathIndex(5, (4, 20))


# ---------------------------------------------------------------- §4 affinity


def affinity_loop(boundary, radius):
    """aff[n][d][m] = 1 − max of boundary[n] over path d's points from source m."""
    sources = source_pixels(radius, boundary.shape[-2:])
    paths = paths_in_group_order(radius)
    return torch.tensor(
        [
            [[1 - max(float(image[y + py, x + px]) for py, px in path) for y, x in sources] for path in paths]
            for image in boundary
        ],
        dtype=torch.float64,
    )


def test_edge_to_affinity_matches_loop():
    boundary = torch.rand(2, *SMALL_SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path_index = irn.PathIndex(SMALL_RADIUS, SMALL_SIZE)
    aff = irn.edge_to_affinity(boundary, path_index)
    torch.testing.assert_close(aff, affinity_loop(boundary, SMALL_RADIUS), rtol=0, atol=1e-15)
    torch.testing.assert_close(irn.edge_to_affinity(boundary[1], path_index), aff[1], rtol=0, atol=0)


def test_edge_to_affinity_gives_ties_gradient_to_the_destination():
    # constant boundary: every path point ties; the first, the destination, takes the −1 (as max_pool2d)
    boundary = torch.full(SMALL_SIZE, 0.5, dtype=torch.float64, requires_grad=True)
    path_index = irn.PathIndex(SMALL_RADIUS, SMALL_SIZE)
    irn.edge_to_affinity(boundary, path_index).sum().backward()
    per_destination = torch.bincount(path_index.dst_indices.flatten(), minlength=boundary.numel())
    assert torch.equal(boundary.grad.flatten(), -per_destination.double())


# ---------------------------------------------------------------- §5 affinity labels


@pytest.mark.parametrize("height, width", [(512, 512), (375, 500), (10, 14), (13, 6), (31, 37), (18, 22)])
def test_quarter_label_matches_pil_nearest(height, width):
    label = np.random.default_rng(height * width).integers(0, 256, (height, width), dtype=np.uint8)
    size = (int(np.round(height * 0.25)), int(np.round(width * 0.25)))
    expected = np.asarray(Image.fromarray(label).resize(size[::-1], Image.NEAREST))
    assert np.array_equal(irn.quarter_label(label), expected)


def test_quarter_label_hand_checked():
    label = np.arange(512 * 512).reshape(512, 512)
    assert np.array_equal(irn.quarter_label(label), label[2::4, 2::4])
    assert irn.quarter_label(np.zeros((10, 14), np.uint8)).shape == (2, 4)  # 2.5 → 2 and 3.5 → 4: half to even


def test_affinity_labels_match_loop():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 0, 3, 3, 7, 255], np.uint8), size=(2, *SMALL_SIZE))
    path_index = irn.PathIndex(SMALL_RADIUS, SMALL_SIZE)
    result = irn.affinity_labels(labels, path_index, VOC12.num_classes)
    sources = source_pixels(SMALL_RADIUS, SMALL_SIZE)
    expected = {name: np.zeros((2, path_index.num_directions, len(sources)), np.float32) for name in result}
    for n, label in enumerate(labels):
        for d, (dy, dx) in enumerate(path_index.search_dst.tolist()):
            for m, (y, x) in enumerate(sources):
                source, destination = int(label[y, x]), int(label[y + dy, x + dx])
                if source == 255 or destination == 255:
                    continue
                if source != destination:
                    expected["neg"][n, d, m] = 1
                elif source == 0:
                    expected["bg_pos"][n, d, m] = 1
                else:
                    expected["fg_pos"][n, d, m] = 1
    for name, value in result.items():
        assert value.dtype == torch.float32
        assert np.array_equal(value.numpy(), expected[name]), name
    assert all(value.sum() > 0 for value in result.values())
    assert torch.equal(
        irn.affinity_labels(torch.from_numpy(labels[0]), path_index, VOC12.num_classes)["neg"], result["neg"][0]
    )


# ---------------------------------------------------------------- §6 loss


def loss_terms_loop(aff, disp, bg_pos, fg_pos, neg, radius):
    sources = source_pixels(radius, disp.shape[-2:])
    directions = [path[0] for path in paths_in_group_order(radius)]
    sums = dict.fromkeys(["bg", "fg", "neg", "bg_count", "fg_count", "neg_count", "dp_fg", "dp_bg"], 0.0)
    for n in range(aff.shape[0]):
        for d, (dy, dx) in enumerate(directions):
            for m, (y, x) in enumerate(sources):
                a = float(aff[n, d, m])
                sums["bg"] += float(bg_pos[n, d, m]) * -math.log(a + 1e-5)
                sums["fg"] += float(fg_pos[n, d, m]) * -math.log(a + 1e-5)
                sums["neg"] += float(neg[n, d, m]) * -math.log(1 + 1e-5 - a)
                sums["bg_count"] += float(bg_pos[n, d, m])
                sums["fg_count"] += float(fg_pos[n, d, m])
                sums["neg_count"] += float(neg[n, d, m])
                for channel, offset in enumerate((dy, dx)):
                    pair = float(disp[n, channel, y, x] - disp[n, channel, y + dy, x + dx])
                    sums["dp_fg"] += abs(pair - offset) * float(fg_pos[n, d, m])
                    sums["dp_bg"] += abs(pair) * float(bg_pos[n, d, m])
    pos_aff = sums["bg"] / (sums["bg_count"] + 1e-5) / 2 + sums["fg"] / (sums["fg_count"] + 1e-5) / 2
    neg_aff = sums["neg"] / (sums["neg_count"] + 1e-5)
    dp_fg = sums["dp_fg"] / (2 * sums["fg_count"] + 1e-5)
    dp_bg = sums["dp_bg"] / (2 * sums["bg_count"] + 1e-5)
    total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    return {"pos_aff": pos_aff, "neg_aff": neg_aff, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}


def loss_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    path_index = irn.PathIndex(SMALL_RADIUS, SMALL_SIZE)
    label_values = torch.tensor([0, 0, 2, 2, 5, 255], dtype=torch.uint8)
    labels = label_values[torch.randint(len(label_values), (2, *SMALL_SIZE), generator=generator)]
    boundary = torch.rand(2, *SMALL_SIZE, generator=generator, dtype=torch.float64)
    disp = 3 * torch.randn(2, 2, *SMALL_SIZE, generator=generator, dtype=torch.float64)
    label_maps = {
        name: value.double() for name, value in irn.affinity_labels(labels, path_index, VOC12.num_classes).items()
    }
    return irn.edge_to_affinity(boundary, path_index), disp, label_maps, path_index


def test_irn_loss_terms_match_loop():
    aff, disp, label_maps, path_index = loss_inputs(seed=0)
    terms = irn.irn_loss_terms(aff, disp, **label_maps, path_index=path_index)
    expected = loss_terms_loop(aff, disp, **label_maps, radius=SMALL_RADIUS)
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-12), name


def test_irn_loss_terms_displacement_hand_checked():
    # disp = −(y, x): every pair is disp[src] − disp[src + (dy, dx)] = (dy, dx), exactly the fg target
    aff, _, label_maps, path_index = loss_inputs(seed=1)
    rows, cols = torch.meshgrid(torch.arange(SMALL_SIZE[0]), torch.arange(SMALL_SIZE[1]), indexing="ij")
    disp = -torch.stack([rows, cols]).double().expand(2, 2, *SMALL_SIZE)
    terms = irn.irn_loss_terms(aff, disp, **label_maps, path_index=path_index)
    assert float(terms["dp_fg"]) == 0
    bg_pos = label_maps["bg_pos"]
    offsets = path_index.search_dst.double().abs().sum(dim=1)  # |dy| + |dx| per direction
    expected_bg = float((bg_pos * offsets[:, None]).sum() / (2 * bg_pos.sum() + 1e-5))
    assert float(terms["dp_bg"]) == pytest.approx(expected_bg, rel=1e-12)


def test_irn_loss_of_bf16_outputs_is_the_loop_on_sigmoid_edges_in_float32():
    """SPEC-IRN §6 from IRNet's outputs: boundary = sigmoid(edge logits), §4's affinities, the terms; in
    float32 when the network ran in bf16, and the gradient reaches both outputs."""
    generator = torch.Generator().manual_seed(2)
    path_index = irn.PathIndex(SMALL_RADIUS, SMALL_SIZE)
    _, _, label_maps, _ = loss_inputs(seed=2)
    labels = {name: value.float() for name, value in label_maps.items()}
    edge = (2 * torch.randn(2, 1, *SMALL_SIZE, generator=generator)).bfloat16().requires_grad_()
    disp = (3 * torch.randn(2, 2, *SMALL_SIZE, generator=generator)).bfloat16().requires_grad_()
    losses = irn.irn_loss(edge, disp, labels["bg_pos"], labels["fg_pos"], labels["neg"], path_index)

    assert tuple(losses) == ("loss", "pos_aff", "neg_aff", "dp_fg", "dp_bg")
    assert all(value.dtype == torch.float32 and value.dim() == 0 for value in losses.values())
    boundary = torch.sigmoid(edge.detach().double()[:, 0])
    expected = loss_terms_loop(
        affinity_loop(boundary, SMALL_RADIUS), disp.detach().double(), **label_maps, radius=SMALL_RADIUS
    )
    values = {name: float(value.detach()) for name, value in losses.items()}
    assert values["loss"] == pytest.approx(expected["total"], rel=1e-5)
    for name in ("pos_aff", "neg_aff", "dp_fg", "dp_bg"):
        assert values[name] == pytest.approx(expected[name], rel=1e-5), name
    losses["loss"].backward()
    assert edge.grad.abs().sum() > 0 and disp.grad.abs().sum() > 0


# ---------------------------------------------------------------- §9 random walk


def random_walk_loop(cam, boundary, beta=10, steps=256, radius=5):
    """A from its definition: for real pixels i and j = i + (dy, dx) on one of the directions, both
    A[i, j] and A[j, i] are 1 − max of the boundary over the path (inside the box of i and j, so
    never on the padding); A[i, i] = 1; T = A^β over column sums; rw = x · T^steps, float64."""
    height, width = boundary.shape
    affinity = np.eye(height * width)
    for dy, dx in directions_loop(radius):
        path = path_loop((dy, dx))
        for y in range(height):
            for x in range(width):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    value = 1 - max(float(boundary[y + py, x + px]) for py, px in path)
                    i, j = y * width + x, (y + dy) * width + x + dx
                    affinity[i, j] = affinity[j, i] = value
    transition = affinity**beta
    transition /= transition.sum(axis=0, keepdims=True)
    walk_input = (cam.double() * (1 - boundary.double())).reshape(len(cam), -1).numpy()
    return torch.from_numpy(walk_input @ np.linalg.matrix_power(transition, steps)).view(-1, height, width)


def walk_inputs(height, width, classes, seed, dtype=torch.float64):
    """A boundary of weak noise and one strong vertical stripe, CAMs of random blobs: the walk spreads
    far within each side of the stripe and little across it."""
    generator = torch.Generator().manual_seed(seed)
    boundary = 0.1 * torch.rand(height, width, generator=generator, dtype=torch.float64)
    boundary[:, width // 2] = 0.9
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cams = []
    for _ in range(classes):
        centre_y, centre_x = torch.rand(2, generator=generator, dtype=torch.float64) * torch.tensor([height, width])
        cams.append(torch.exp(-((rows - centre_y) ** 2 + (cols - centre_x) ** 2) / (0.1 * height * width)))
    return torch.stack(cams).to(dtype), boundary.to(dtype)


def test_random_walk_one_by_two_closed_form():
    # two pixels, one affinity a = 1 − max(b): T = [[1, a^β], [a^β, 1]] / (1 + a^β) has eigenvalues 1 and
    # λ = (1 − a^β) / (1 + a^β), so T^n = ½ [[1 + λ^n, 1 − λ^n], [1 − λ^n, 1 + λ^n]]
    boundary = torch.tensor([[0.2, 0.5]], dtype=torch.float64)
    cam = torch.tensor([[[1.0, 0.0]], [[0.25, 0.75]]], dtype=torch.float64)
    weight = 0.5**10
    power = ((1 - weight) / (1 + weight)) ** 256
    walk_input = cam[:, 0] * torch.tensor([0.8, 0.5], dtype=torch.float64)
    stay, move = (1 + power) / 2, (1 - power) / 2
    expected = torch.stack(
        [walk_input[:, 0] * stay + walk_input[:, 1] * move, walk_input[:, 0] * move + walk_input[:, 1] * stay], dim=1
    )
    for walk in (irn.random_walk, random_walk_dense):
        torch.testing.assert_close(walk(cam, boundary)[:, 0], expected, rtol=1e-12, atol=0)


def test_random_walk_dense_and_sparse_match_the_definition():
    cam, boundary = walk_inputs(4, 6, classes=2, seed=0)
    expected = random_walk_loop(cam, boundary)
    torch.testing.assert_close(random_walk_dense(cam, boundary), expected, rtol=1e-9, atol=0)
    torch.testing.assert_close(irn.random_walk(cam, boundary), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("classes, seed", [(2, 0), (3, 1), (3, 2)])
def test_random_walk_sparse_matches_dense(classes, seed):
    height, width = 12, 15
    cam, boundary = walk_inputs(height, width, classes, seed)
    dense = random_walk_dense(cam, boundary)
    # the walk must have moved: a test that cannot tell T^256 from the identity proves nothing
    assert (dense - cam * (1 - boundary)).abs().max() > 0.1 * dense.abs().max()
    torch.testing.assert_close(irn.random_walk(cam, boundary), dense, rtol=1e-9, atol=0)

    dense_fp32 = random_walk_dense(cam.float(), boundary.float())
    sparse_fp32 = irn.random_walk(cam.float(), boundary.float())
    scale = float(dense.abs().max())
    assert float((sparse_fp32.double() - dense).abs().max()) < 1e-4 * scale
    assert float((dense_fp32.double() - dense).abs().max()) < 1e-4 * scale
    keys = np.arange(classes) * 5
    size = (4 * height - 3, 4 * width - 2)
    labels = irn.rw_to_labels(dense, keys, size)
    assert len(np.unique(labels)) > 1
    assert np.array_equal(irn.rw_to_labels(sparse_fp32, keys, size), labels)
    assert np.array_equal(irn.rw_to_labels(dense_fp32, keys, size), labels)


def test_the_walk_builds_one_path_index_per_radius_size_and_device():
    irn.walk_path_index.cache_clear()
    cam, boundary = walk_inputs(12, 15, classes=2, seed=0)
    first = irn.random_walk(cam, boundary)
    _, path_index = irn.walk_affinity(boundary)
    assert irn.walk_path_index.cache_info().misses == 1, "built once, then reused"
    assert irn.walk_path_index(5, (17, 25), torch.device("cpu")) is path_index
    fresh = irn.PathIndex(5, (17, 25))
    for name in ("src_indices", "dst_indices", "search_dst"):
        assert torch.equal(getattr(path_index, name), getattr(fresh, name)), name
    assert all(torch.equal(cached, built) for cached, built in zip(path_index.path_indices, fresh.path_indices))
    assert torch.equal(irn.random_walk(cam, boundary), first)
    shorter = irn.walk_affinity(boundary[:-1])[1]
    assert shorter is not path_index and shorter.size == (16, 25)
    on_meta = irn.walk_path_index(5, (17, 25), torch.device("meta"))  # another device: its own, built there
    assert on_meta is not path_index and on_meta.dst_indices.device.type == "meta"


def bilinear_loop(maps, scale, out_h, out_w):
    """align_corners=False: output pixel Y reads input (Y + 0.5)/scale − 0.5, clamped at 0, two taps."""
    channels, height, width = maps.shape
    out = torch.zeros(channels, out_h, out_w, dtype=maps.dtype)
    for row in range(out_h):
        y = max((row + 0.5) / scale - 0.5, 0.0)
        y0 = int(y)
        y1, wy = min(y0 + 1, height - 1), y - y0
        for col in range(out_w):
            x = max((col + 0.5) / scale - 0.5, 0.0)
            x0 = int(x)
            x1, wx = min(x0 + 1, width - 1), x - x0
            out[:, row, col] = (1 - wy) * ((1 - wx) * maps[:, y0, x0] + wx * maps[:, y0, x1]) + wy * (
                (1 - wx) * maps[:, y1, x0] + wx * maps[:, y1, x1]
            )
    return out


def test_rw_to_labels_matches_loop():
    rw = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rw[:, :, 0] = 0.05  # low on the left: background there
    keys = np.array([4, 14])
    image_size = (10, 15)
    upsampled = bilinear_loop(rw, 4, *image_size)
    upsampled /= upsampled.max()
    expected = np.zeros(image_size, np.uint8)
    for row in range(image_size[0]):
        for col in range(image_size[1]):
            scores = [0.25] + upsampled[:, row, col].tolist()
            expected[row, col] = [0, 5, 15][scores.index(max(scores))]
    labels = irn.rw_to_labels(rw, keys, image_size)
    assert labels.dtype == np.uint8 and labels.shape == image_size
    assert np.array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 5, 15}


def test_rw_to_labels_hand_checked():
    # constant maps: class 14 (key 13) holds the maximum everywhere; a higher threshold gives background
    rw = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 2.0)])
    assert np.array_equal(irn.rw_to_labels(rw, np.array([2, 13]), (7, 5)), np.full((7, 5), 14, np.uint8))
    assert np.array_equal(irn.rw_to_labels(rw, np.array([2, 13]), (7, 5), bg_threshold=1.0), np.zeros((7, 5)))
