"""The ImageNet-C / CIFAR-10-C common corruptions (Hendrycks & Dietterich, ICLR 2019).

Fifteen benchmark corruptions in four groups (noise, blur, weather, digital) plus the four extra
("held-out") ones, each at five severities, implemented here from the benchmark's published
definitions with the parameter tables of both reference generators:

* ``protocol='imagenet'``: the ImageNet-C tables, defined for 224x224 centre crops.
* ``protocol='cifar'``: the CIFAR-10-C tables, defined for 32x32 images (also used here for other
  small images such as Fashion-MNIST).

Faithfulness notes (where this implementation and the reference generators differ or where the
reference has a quirk that is reproduced on purpose):

* Motion blur (motion_blur, snow) used ImageMagick's ``MotionBlurImage`` through Wand. It is
  re-implemented with the same kernel (one-sided Gaussian weights ``exp(-i^2 / 2 sigma^2)`` over
  ``2 ceil(radius) + 1`` taps, offsets ``ceil(i cos(a) - 0.5), ceil(i sin(a) - 0.5)``, edge pixels
  repeated), so no ImageMagick installation is needed.
* glass_blur: the reference's pixel "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on
  numpy views and therefore only copies ``x[h', w']`` into ``x[h, w]``; the released data sets
  were made that way and this implementation does the same.
* frost: the reference draws one of the first five of its six frost textures; so does this one.
  The textures (byte-identical to the reference files) are read from the ``corrupt-tta``
  package's assets. Images larger than a texture get the texture scaled up to cover them.
* Random draws come from a ``numpy.random.Generator`` per image and corruption (see
  :func:`image_rng`), shared by the five severities, so results do not depend on batching or worker
  count; the draws follow the same distributions as the reference's global-state calls, not the same
  stream.
* Outputs are truncated to uint8 like the reference's ``np.uint8(img)``. The pre-generated
  ImageNet-C files were additionally saved as JPEG (quality 85); images generated on the fly are not.
* Images of another size than the protocol's native one (224 or 32) use the protocol's constants in
  pixels, with size-dependent pieces (fog's fractal, frost crop, glass-blur loop, pixelate) sized to
  the image. Grey images are replicated to RGB, corrupted and averaged back to one channel.
"""
from __future__ import annotations

from functools import lru_cache
from io import BytesIO
from typing import Callable

import numpy as np

from timm_asap_lab.evaluation._deps import require

__all__ = [
    'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'ALL_CORRUPTIONS', 'CORRUPTION_GROUPS', 'PROTOCOLS', 'SEVERITIES',
    'corrupt', 'check_corruptions', 'check_severities', 'resolve_protocol', 'image_rng',
]

#: The 15 benchmark corruptions, in the ImageNet-C paper's order (noise, blur, weather, digital).
CORRUPTIONS: tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'impulse_noise',
    'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression',
)
#: The four extra (held-out validation) corruptions.
EXTRA_CORRUPTIONS: tuple[str, ...] = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
CORRUPTION_GROUPS: dict[str, str] = {
    **{c: 'noise' for c in ('gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise')},
    **{c: 'blur' for c in ('defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur', 'gaussian_blur')},
    **{c: 'weather' for c in ('snow', 'frost', 'fog', 'brightness', 'spatter')},
    **{c: 'digital' for c in ('contrast', 'elastic_transform', 'pixelate', 'jpeg_compression', 'saturate')},
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
PROTOCOLS: tuple[str, ...] = ('imagenet', 'cifar')

# Parameter tables, one entry per severity 1..5 (values of the reference generators).
_IM, _CI = 244.0, 32.0  # elastic-transform scale constants of the two generators (244 sic in ImageNet-C)
PARAMS: dict[str, dict[str, list]] = {
    'imagenet': {
        'gaussian_noise': [.08, .12, .18, .26, .38],
        'shot_noise': [60, 25, 12, 5, 3],
        'impulse_noise': [.03, .06, .09, .17, .27],
        'speckle_noise': [.15, .2, .35, .45, .6],
        'gaussian_blur': [1, 2, 3, 4, 6],
        'glass_blur': [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        'defocus_blur': [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        'motion_blur': [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        'zoom_blur': [(1, 1.11, .01), (1, 1.16, .01), (1, 1.21, .02), (1, 1.26, .02), (1, 1.31, .03)],
        'snow': [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        'frost': [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        'fog': [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
        'brightness': [.1, .2, .3, .4, .5],
        'contrast': [.4, .3, .2, .1, .05],
        'elastic_transform': [(_IM * 2, _IM * 0.7, _IM * 0.1), (_IM * 2, _IM * 0.08, _IM * 0.2),
                              (_IM * 0.05, _IM * 0.01, _IM * 0.02), (_IM * 0.07, _IM * 0.01, _IM * 0.02),
                              (_IM * 0.12, _IM * 0.01, _IM * 0.02)],
        'pixelate': [.6, .5, .4, .3, .25],
        'jpeg_compression': [25, 18, 15, 10, 7],
        'spatter': [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)],
        'saturate': [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    },
    'cifar': {
        'gaussian_noise': [.04, .06, .08, .09, .10],
        'shot_noise': [500, 250, 100, 75, 50],
        'impulse_noise': [.01, .02, .03, .05, .07],
        'speckle_noise': [.06, .1, .12, .16, .2],
        'gaussian_blur': [.4, .6, .7, .8, 1],
        'glass_blur': [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        'defocus_blur': [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        'motion_blur': [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        'zoom_blur': [(1, 1.06, .01), (1, 1.11, .01), (1, 1.16, .01), (1, 1.21, .01), (1, 1.26, .01)],
        'snow': [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        'frost': [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        'fog': [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],
        'brightness': [.05, .1, .15, .2, .3],
        'contrast': [.75, .5, .4, .3, .15],
        'elastic_transform': [(_CI * 0, _CI * 0, _CI * 0.08), (_CI * 0.05, _CI * 0.2, _CI * 0.07),
                              (_CI * 0.08, _CI * 0.06, _CI * 0.06), (_CI * 0.1, _CI * 0.04, _CI * 0.05),
                              (_CI * 0.1, _CI * 0.03, _CI * 0.03)],
        'pixelate': [.95, .9, .85, .75, .65],
        'jpeg_compression': [80, 65, 58, 50, 40],
        'spatter': [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
        'saturate': [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    },
}
_FROST_SCALE = {'imagenet': 1.0, 'cifar': 0.2}  # the CIFAR generator shrinks the textures by 5


def check_corruptions(names) -> tuple[str, ...]:
    """Validate corruption names (``'all'`` = 15 + 4 extra, ``'benchmark'`` = the 15).

    Raises:
        ValueError: an unknown name, naming it and the allowed ones; or an empty list.
    """
    if isinstance(names, str):
        names = [n for n in names.split(',') if n.strip()]
    out: list[str] = []
    for name in names:
        name = name.strip()
        if name == 'all':
            out.extend(ALL_CORRUPTIONS)
        elif name in ('benchmark', 'imagenet_c', 'default'):
            out.extend(CORRUPTIONS)
        elif name == 'extra':
            out.extend(EXTRA_CORRUPTIONS)
        elif name in ALL_CORRUPTIONS:
            out.append(name)
        else:
            raise ValueError(f"unknown corruption {name!r}; allowed: {list(ALL_CORRUPTIONS)} "
                             f"or 'benchmark' (the 15), 'extra' (the 4), 'all'")
    if not out:
        raise ValueError("no corruption selected; allowed: " + ', '.join(ALL_CORRUPTIONS))
    return tuple(dict.fromkeys(out))


def check_severities(severities) -> tuple[int, ...]:
    """Validate severities (integers 1..5).

    Raises:
        ValueError: a severity outside 1..5 or not an integer, or an empty list.
    """
    if isinstance(severities, (int, np.integer)) and not isinstance(severities, bool):
        severities = [severities]
    if isinstance(severities, str):
        severities = [s for s in severities.split(',') if s.strip()]
    out = []
    for s in severities:
        try:
            value = int(s)
        except (TypeError, ValueError):
            raise ValueError(f"severity must be an integer in 1..5, got {s!r}") from None
        if isinstance(s, bool) or value != float(s) or value not in SEVERITIES:
            raise ValueError(f"severity must be an integer in 1..5, got {s!r}")
        out.append(value)
    if not out:
        raise ValueError("no severity selected; allowed: 1..5")
    return tuple(sorted(set(out)))


def resolve_protocol(protocol: str, height: int, width: int) -> str:
    """``'auto'`` -> ``'cifar'`` for images whose larger side is below 100 px, else ``'imagenet'``.

    Raises:
        ValueError: an unknown protocol.
    """
    if protocol == 'auto':
        return 'cifar' if max(height, width) < 100 else 'imagenet'
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown corruption protocol {protocol!r}; allowed: 'auto', {list(PROTOCOLS)}")
    return protocol


def image_rng(seed: int, corruption: str, index: int) -> np.random.Generator:
    """The random generator for one image: a function of (seed, corruption, image index).

    The severity is deliberately not part of the key: every severity of a corruption draws the same
    random numbers for an image (common random numbers), so severity curves differ only by the
    corruption's strength, and every model sees the very same corrupted images.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, ALL_CORRUPTIONS.index(corruption), int(index)])


# ----------------------------------------------------------------------------------------------
# helpers

def _cv2():
    return require('cv2', 'image corruptions')


def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:
    """scikit-image's gaussian filter (the reference's ``gaussian(..., multichannel=True)`` for HWC)."""
    filters = require('skimage.filters', 'image corruptions')
    return filters.gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None, **kw)


def _disk(radius: float, alias_blur: float, dtype=np.float32) -> np.ndarray:
    """Normalised, slightly blurred disk kernel of the defocus blur."""
    if radius <= 8:
        span, ksize = np.arange(-8, 9), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(span, span)
    kernel = np.asarray(xx ** 2 + yy ** 2 <= radius ** 2, dtype=dtype)
    kernel /= kernel.sum()
    return _cv2().GaussianBlur(kernel, ksize=ksize, sigmaX=alias_blur)


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side ``mapsize`` (a power of two)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma fractal size must be a power of two, got {mapsize}")
    grid = np.empty((mapsize, mapsize), dtype=np.float64)
    grid[0, 0] = 0
    step = mapsize
    wibble = 100.0
    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its corners + noise
        corners = grid[0:mapsize:step, 0:mapsize:step]
        acc = corners + np.roll(corners, -1, axis=0)
        acc = acc + np.roll(acc, -1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        # diamonds: edge midpoints from the neighbouring centres and corners
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        acc = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:mapsize:step, half:mapsize:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        acc = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:mapsize:step, 0:mapsize:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        step //= 2
        wibble /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom the centre of an (H, W, C) array by ``zoom_factor`` and crop back to (H, W)."""
    ndimage = require('scipy.ndimage', 'image corruptions')
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = ndimage.zoom(img[top:top + ch, left:left + cw], (zoom_factor, zoom_factor, 1), order=1)
    trim_top, trim_left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[trim_top:trim_top + h, trim_left:trim_left + w]


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on an (H, W) or (H, W, C) array (edge pixels repeated)."""
    width = int(2 * np.ceil(radius) + 1) if radius > 0 else 3
    taps = np.arange(width, dtype=np.float64)
    weights = np.exp(-taps ** 2 / (2.0 * max(sigma, 1e-12) ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(angle)
    h, w = x.shape[:2]
    rows = np.arange(h)
    cols = np.arange(w)
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(width):
        dx = int(np.ceil(i * np.cos(theta) - 0.5))
        dy = int(np.ceil(i * np.sin(theta) - 0.5))
        src_r = np.clip(rows + dy, 0, h - 1)
        src_c = np.clip(cols + dx, 0, w - 1)
        out += weights[i] * x[src_r[:, None], src_c[None, :]]
    return out


def _rgb2hsv(x):
    return require('skimage.color', 'image corruptions').rgb2hsv(x)


def _hsv2rgb(x):
    return require('skimage.color', 'image corruptions').hsv2rgb(x)


@lru_cache(maxsize=None)
def _frost_texture(index: int, scale: float) -> np.ndarray:
    """Frost texture ``frost{index+1}`` as an RGB uint8 array, optionally resized by ``scale``."""
    cv2 = _cv2()
    require('corrupt_tta', 'the frost corruption (its texture images)')
    from importlib import resources
    name = f"frost{index + 1}.{'png' if index < 3 else 'jpg'}"
    ref = resources.files('corrupt_tta').joinpath('assets', 'frost', name)
    with resources.as_file(ref) as path:
        img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(f"frost texture {name} not found in the corrupt-tta package; reinstall it")
    if scale != 1.0:
        img = cv2.resize(img, (0, 0), fx=scale, fy=scale)
    return np.ascontiguousarray(img[..., ::-1])  # BGR -> RGB


# ----------------------------------------------------------------------------------------------
# the corruptions: x is an (H, W, 3) uint8 RGB array, the result a float array in [0, 255]

def gaussian_noise(x, c, rng, protocol):
    x = np.asarray(x) / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, rng, protocol):
    x = np.asarray(x) / 255.
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, c, rng, protocol):
    util = require('skimage.util', 'image corruptions')
    x = util.random_noise(np.asarray(x) / 255., mode='s&p', amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, c, rng, protocol):
    x = np.asarray(x) / 255.
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, c, rng, protocol):
    return np.clip(_gaussian(np.asarray(x) / 255., c), 0, 1) * 255


def glass_blur(x, c, rng, protocol):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(np.asarray(x) / 255., sigma) * 255)
    h, w = x.shape[:2]
    flat = x.reshape(h * w, -1)
    pixels = [tuple(p) for p in flat.tolist()]
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    for _ in range(iterations):
        shifts = rng.integers(-delta, delta, size=(len(rows), len(cols), 2)).tolist()
        for i, r in enumerate(rows):
            shifts_r = shifts[i]
            for j, col in enumerate(cols):
                dx, dy = shifts_r[j]
                # the reference's swap of numpy views copies the neighbour into (r, col)
                pixels[r * w + col] = pixels[(r + dy) * w + col + dx]
    x = np.asarray(pixels, dtype=np.uint8).reshape(x.shape)
    return np.clip(_gaussian(x / 255., sigma), 0, 1) * 255


def defocus_blur(x, c, rng, protocol):
    cv2 = _cv2()
    x = np.asarray(x) / 255.
    kernel = _disk(radius=c[0], alias_blur=c[1])
    channels = np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(x.shape[2])], axis=-1)
    return np.clip(channels, 0, 1) * 255


def motion_blur(x, c, rng, protocol):
    radius, sigma = c
    out = _motion_blur(np.asarray(x, dtype=np.float64), radius, sigma, rng.uniform(-45, 45))
    return np.clip(np.rint(out), 0, 255)  # ImageMagick returns 8-bit pixels


def zoom_blur(x, c, rng, protocol):
    factors = np.arange(*c)
    x = (np.asarray(x) / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in factors:
        out += _clipped_zoom(x, zoom_factor)
    x = (x + out) / (len(factors) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, c, rng, protocol):
    cv2 = _cv2()
    x = np.asarray(x, dtype=np.float32) / 255.
    h, w = x.shape[:2]
    layer = rng.normal(size=(h, w), loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer8 = np.uint8(np.clip(layer[..., 0], 0, 1) * 255)  # the reference blurs an 8-bit PNG
    layer = np.clip(np.rint(_motion_blur(layer8.astype(np.float64), c[4], c[5], rng.uniform(-135, -45))),
                    0, 255) / 255.
    layer = layer[..., None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x, c, rng, protocol):
    cv2 = _cv2()
    x = np.asarray(x)
    h, w = x.shape[:2]
    texture = _frost_texture(int(rng.integers(5)), _FROST_SCALE[protocol])
    th, tw = texture.shape[:2]
    if th <= h or tw <= w:  # texture too small for a random crop: scale it up to cover the image
        scale = max((h + 1) / th, (w + 1) / tw)
        texture = cv2.resize(texture, (int(np.ceil(tw * scale)), int(np.ceil(th * scale))))
        th, tw = texture.shape[:2]
    top, left = int(rng.integers(0, th - h)), int(rng.integers(0, tw - w))
    texture = texture[top:top + h, left:left + w]
    return np.clip(c[0] * x + c[1] * texture, 0, 255)


def fog(x, c, rng, protocol):
    x = np.asarray(x) / 255.
    h, w = x.shape[:2]
    size = 1 << max(int(np.ceil(np.log2(max(h, w)))), 1)
    max_val = x.max()
    x = x + c[0] * _plasma_fractal(size, c[1], rng)[:h, :w][..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, c, rng, protocol):
    x = _rgb2hsv(np.asarray(x) / 255.)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(_hsv2rgb(x), 0, 1) * 255


def contrast(x, c, rng, protocol):
    x = np.asarray(x) / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, c, rng, protocol):
    cv2 = _cv2()
    ndimage = require('scipy.ndimage', 'image corruptions')
    image = np.asarray(x, dtype=np.float32) / 255.
    shape = image.shape
    size = shape[:2]
    centre = np.float32(size) // 2
    square = min(size) // 3
    pts1 = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    affine = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, affine, size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (_gaussian(rng.uniform(-1, 1, size=size), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, size=size), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = (np.reshape(yy + dy[..., None], (-1, 1)), np.reshape(xx + dx[..., None], (-1, 1)),
              np.reshape(zz, (-1, 1)))
    out = ndimage.map_coordinates(image, coords, order=1, mode='reflect').reshape(shape)
    return np.clip(out, 0, 1) * 255


def pixelate(x, c, rng, protocol):
    from PIL import Image
    x = np.asarray(x)
    h, w = x.shape[:2]
    img = Image.fromarray(x)
    img = img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float64)


def jpeg_compression(x, c, rng, protocol):
    from PIL import Image
    buffer = BytesIO()
    Image.fromarray(np.asarray(x)).save(buffer, 'JPEG', quality=c)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert('RGB'), dtype=np.float64)


def spatter(x, c, rng, protocol):
    cv2 = _cv2()
    x = np.asarray(x, dtype=np.float32) / 255.
    liquid = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid = _gaussian(liquid, c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water drops
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid8, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, kernel)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        mask = (liquid8 * dist).astype(np.float32)
        peak = mask.max()
        mask = mask / peak * c[4] if peak > 0 else mask
        colour = np.array([175, 238, 238], dtype=np.float32) / 255.  # pale turquoise
        return np.clip(x + mask[..., None] * colour, 0, 1) * 255
    mask = _gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), c[4])  # mud
    mask[mask < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float32) / 255.  # brown
    return np.clip(x * (1 - mask[..., None]) + colour * mask[..., None], 0, 1) * 255


def saturate(x, c, rng, protocol):
    x = _rgb2hsv(np.asarray(x) / 255.)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(_hsv2rgb(x), 0, 1) * 255


_FUNCTIONS: dict[str, Callable] = {name: globals()[name] for name in ALL_CORRUPTIONS}


def corrupt(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator | int | None = None,
            protocol: str = 'auto') -> np.ndarray:
    """Apply one corruption at one severity to one image.

    Args:
        image: uint8 array, (H, W, 3) RGB, (H, W, 1) or (H, W) grey.
        corruption: a name from :data:`ALL_CORRUPTIONS`.
        severity: 1..5.
        rng: a ``numpy.random.Generator`` or an integer seed (None: fresh entropy).
        protocol: ``'imagenet'``, ``'cifar'`` or ``'auto'`` (see :func:`resolve_protocol`).

    Returns:
        uint8 array of the input's shape.

    Raises:
        ValueError: unknown corruption, protocol or severity; non-uint8 input or wrong shape.
    """
    if corruption not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; allowed: {list(ALL_CORRUPTIONS)}")
    (severity,) = check_severities([severity])
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"corrupt expects a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (1, 3):
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    else:
        raise ValueError(f"corrupt expects an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"corrupt needs images of at least 8x8 pixels, got {rgb.shape[:2]}")
    protocol = resolve_protocol(protocol, *rgb.shape[:2])
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    params = PARAMS[protocol][corruption][severity - 1]
    out = _FUNCTIONS[corruption](np.ascontiguousarray(rgb), params, rng, protocol)
    out = np.uint8(np.clip(np.asarray(out, dtype=np.float64), 0, 255))  # truncation, as the reference
    if image.ndim == 2 or image.shape[2] == 1:
        grey = np.uint8(np.clip(out.astype(np.float64).mean(axis=2), 0, 255))
        return grey if image.ndim == 2 else grey[..., None]
    return out
