"""Resampling: remaps, warps, shifts and resizes, bilinear or nearest, replicate borders.

What goes here: anything that moves pixels to new positions or changes the image size, including the coordinate
grids the warps are built on.
"""

from __future__ import annotations

import numpy as np

from fdcore.degradations.base import ImageTooLargeError

# OpenCV's remap asserts that the source and the maps are under SHRT_MAX pixels on each side.
_REMAP_MAX_SIDE = 32766


def remap_any_size(source: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: int,
                   dst: np.ndarray | None = None, tile: int = 8192) -> np.ndarray:
    """``cv2.remap`` with replicate borders for images of any size: output pixel (i, j) takes ``source`` at
    (``map_y[i, j]``, ``map_x[i, j]``). OpenCV refuses sources or maps of 32767 px or more on a side (a 2x70000
    strip, a panorama), so those are resampled tile by tile from the source window each output tile reads, with
    identical pixels (the window keeps every sample the tile touches; shifting float32 coordinates by an integer
    is exact). Writes into ``dst`` when given."""
    import cv2

    if max(source.shape[:2]) <= _REMAP_MAX_SIDE and max(map_x.shape[:2]) <= _REMAP_MAX_SIDE:
        return cv2.remap(source, map_x, map_y, interpolation, dst=dst, borderMode=cv2.BORDER_REPLICATE)
    height, width = source.shape[:2]
    out_height, out_width = map_x.shape[:2]
    out = np.empty((out_height, out_width, *source.shape[2:]), dtype=source.dtype) if dst is None else dst
    for top in range(0, out_height, tile):
        for left in range(0, out_width, tile):
            tile_x = map_x[top:top + tile, left:left + tile]
            tile_y = map_y[top:top + tile, left:left + tile]
            # The window of source pixels the tile can read: bilinear needs floor and floor + 1; borders clamp.
            x0 = int(np.clip(np.floor(np.nanmin(tile_x)) - 1, 0, width - 1))
            x1 = int(np.clip(np.floor(np.nanmax(tile_x)) + 3, 1, width))
            y0 = int(np.clip(np.floor(np.nanmin(tile_y)) - 1, 0, height - 1))
            y1 = int(np.clip(np.floor(np.nanmax(tile_y)) + 3, 1, height))
            if max(x1 - x0, y1 - y0) > _REMAP_MAX_SIDE:
                raise ImageTooLargeError(f"a resampling tile reads a {y1 - y0}x{x1 - x0} px window of a "
                                         f"{height}x{width} image, over OpenCV's {_REMAP_MAX_SIDE} px limit; use "
                                         f"an image under {_REMAP_MAX_SIDE} px a side")
            window = np.ascontiguousarray(source[y0:y1, x0:x1])
            target = out[top:top + tile, left:left + tile]
            target[...] = cv2.remap(window, tile_x - np.float32(x0), tile_y - np.float32(y0), interpolation,
                                    borderMode=cv2.BORDER_REPLICATE).reshape(target.shape)
    return out


def remap(image: np.ndarray, source_y: np.ndarray, source_x: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Resampling: output pixel (i, j) takes ``image`` at (``source_y[i, j]``, ``source_x[i, j]``) in pixel
    coordinates (bilinear, or nearest), replicate borders. Same dtype and channel layout as ``image``."""
    import cv2

    height, width = np.broadcast_shapes(np.shape(source_y), np.shape(source_x))
    map_x = np.ascontiguousarray(np.broadcast_to(source_x, (height, width)), dtype=np.float32)
    map_y = np.ascontiguousarray(np.broadcast_to(source_y, (height, width)), dtype=np.float32)
    out = remap_any_size(np.ascontiguousarray(image), map_x, map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out.reshape(height, width, *image.shape[2:])


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float32, broadcastable HxW) of pixel centres, origin at the image centre."""
    ys = (np.arange(height, dtype=np.float32) - np.float32((height - 1) / 2.0))[:, None]
    xs = (np.arange(width, dtype=np.float32) - np.float32((width - 1) / 2.0))[None, :]
    return ys, xs


def shift_bilinear(plane: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Translate an HxW (or HxWx3) image by (dy, dx) pixels (content moves down/right), bilinear, replicate
    borders; float32 output on the input's scale."""
    import cv2

    height, width = plane.shape[:2]
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    source = plane if plane.dtype == np.float32 else plane.astype(np.float32)
    return cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_linear(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp by a 3x3 projective ``matrix`` mapping OUTPUT centred coordinates (x, y, 1) to INPUT centred
    coordinates (origin at the image centre, pixel units); bilinear, replicate borders."""
    import cv2

    height, width = image.shape[:2]
    centre = np.array([[1.0, 0.0, (width - 1) / 2.0], [0.0, 1.0, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    pixel_matrix = centre @ np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(centre)
    return cv2.warpPerspective(np.ascontiguousarray(image), pixel_matrix, (width, height),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def cover_zoom(matrix: np.ndarray, height: int, width: int) -> float:
    """Smallest zoom z >= 1 such that ``matrix`` composed with a 1/z scaling of the output maps every output
    corner inside the input frame: warps then fill the whole frame without invented borders."""
    half_w, half_h = max(width - 1, 1) / 2.0, max(height - 1, 1) / 2.0
    zoom = 1.0
    for cx, cy in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)):
        x, y, w = np.asarray(matrix, float) @ np.array([cx, cy, 1.0])
        zoom = max(zoom, abs(x / w) / half_w, abs(y / w) / half_h)
    return zoom


def resize(image: np.ndarray, height: int, width: int, resample: str = "bicubic") -> np.ndarray:
    """Pillow resize of a uint8 RGB array (Pillow antialiases when shrinking)."""
    from PIL import Image

    filters = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
               "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}
    if (height, width) == image.shape[:2]:
        return image.copy()
    pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
    return np.array(pil.resize((max(1, int(width)), max(1, int(height))), filters[resample]))


def resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 HxW plane (used to upsample smooth random fields)."""
    import cv2

    return cv2.resize(np.ascontiguousarray(plane, dtype=np.float32), (int(width), int(height)),
                      interpolation=cv2.INTER_LINEAR)
