"""Which image pairs to match: exhaustive for small sets, sequential with loop closure for sequences.

Sequential pairs follow the capture order (video frames, or photos by name): every image with
the next `overlap` ones, plus pairs at power-of-two distances (as COLMAP's quadratic overlap),
which tie far parts of a slow sweep together cheaply.

Loop closure without a vocabulary tree (COLMAP's needs a downloaded file): every `stride`-th
image is a keyframe; keyframes are matched to keyframes outside the sequential window. With few
keyframes, to all of them; with many, to the `candidates` most similar by a global image
descriptor, VLAD on the images' own SIFT descriptors with a codebook clustered from this very
set (so it needs nothing but the database). A camera that comes back to where it has been gets
the pairs that close the loop; pairs that do not overlap fail geometric verification and cost
only their matching time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Pair = tuple[int, int]  # positions in the ordered image list, i < j
EXHAUSTIVE_KEYFRAMES = 40  # up to this many keyframes, every far keyframe pair is matched


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most `k` of the positions 0..n-1, evenly spaced, the first and the last among them."""
    if n <= k:
        return list(range(n))
    if k <= 1:
        return [0][:k]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def exhaustive_pairs(n: int) -> list[Pair]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def sequential_pairs(n: int, overlap: int) -> list[Pair]:
    pairs: set[Pair] = set()
    for i in range(n):
        for d in range(1, overlap + 1):
            if i + d < n:
                pairs.add((i, i + d))
        d = 1
        while i + d < n:
            if d > overlap:
                pairs.add((i, i + d))
            d *= 2
    return sorted(pairs)


def keyframes(n: int, stride: int) -> list[int]:
    ks = list(range(0, n, max(1, stride)))
    if ks and ks[-1] != n - 1:
        ks.append(n - 1)  # the end of the sequence is where a loop closes
    return ks


def loop_pairs(keys: Sequence[int], min_gap: int, similarity: np.ndarray | None = None,
               candidates: int = 8, exhaustive_keys: int = EXHAUSTIVE_KEYFRAMES) -> list[Pair]:
    """Keyframe pairs further apart than `min_gap` in the sequence.

    `similarity` (len(keys) x len(keys)) picks each keyframe's `candidates` best partners when
    there are more than `exhaustive_keys` keyframes; with fewer, every far pair is taken.
    """
    pairs: set[Pair] = set()
    if len(keys) <= exhaustive_keys or similarity is None:
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                if keys[b] - keys[a] > min_gap:
                    pairs.add((keys[a], keys[b]))
        return sorted(pairs)
    for a in range(len(keys)):
        order = np.argsort(-similarity[a])
        taken = 0
        for b in order:
            if b == a or abs(keys[b] - keys[a]) <= min_gap:
                continue
            i, j = sorted((keys[a], keys[int(b)]))
            pairs.add((i, j))
            taken += 1
            if taken >= candidates:
                break
    return sorted(pairs)


# -- global descriptors (VLAD) ---------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, iters: int = 12, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the k x d centres."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    k = min(k, len(x))
    centers = [x[rng.integers(len(x))]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        c = x[rng.choice(len(x), p=p)]
        centers.append(c)
        d2 = np.minimum(d2, ((x - c) ** 2).sum(1))
    c = np.stack(centers)
    for _ in range(iters):
        assign = nearest(x, c)
        for j in range(k):
            m = assign == j
            if m.any():
                c[j] = x[m].mean(0)
    return c


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return d.argmin(1)


def vlad(descriptors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Intra-normalised, power-normalised, L2-normalised VLAD of one image's descriptors."""
    x = np.asarray(descriptors, np.float32)
    k, dim = centers.shape
    v: np.ndarray = np.zeros((k, dim), np.float32)
    if len(x):
        assign = nearest(x, centers)
        np.add.at(v, assign, x - centers[assign])
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    v = v.reshape(-1)
    v = np.sign(v) * np.sqrt(np.abs(v))
    return v / (np.linalg.norm(v) + 1e-12)


def similarity_matrix(per_image: Sequence[np.ndarray], words: int = 64, sample: int = 30000,
                      seed: int = 0) -> np.ndarray:
    """Cosine similarity of the images' VLAD vectors (codebook clustered from a sample of theirs)."""
    rng = np.random.default_rng(seed)
    per_image = [np.asarray(d, np.float32) for d in per_image]
    pool = np.concatenate([d for d in per_image if len(d)]) if any(len(d) for d in per_image) else None
    if pool is None:
        return np.eye(len(per_image), dtype=np.float32)
    if len(pool) > sample:
        pool = pool[rng.choice(len(pool), sample, replace=False)]
    centers = kmeans(pool, words, seed=seed)
    g = np.stack([vlad(d, centers) for d in per_image])
    return g @ g.T
