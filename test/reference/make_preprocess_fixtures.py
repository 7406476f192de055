#!/usr/bin/env python3
"""Preprocessing references: upstream's image tiling (PIL) and video frame sampling (decord).

Runs `utils/preprocess.py` of OpenGVLab/PVC (the PVC quick start's load_image / dynamic_preprocess /
get_index / load_video, identical to InternVL2's), imported from a checkout given by --pvc, never
committed. Writes test/fixtures/images/ (generated test images) and test/fixtures/reference/preprocess/.
See README.md beside this file.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import types

import numpy as np
import torch
from PIL import Image

SEED = 20241212


def torchvision_stand_in():
    """PyPI's torchvision does not load beside the CPU torch wheel. preprocess.py uses five transforms
    on PIL images; these stand-ins do what torchvision does for PIL input: Resize calls PIL's resize
    with the given filter (antialiasing is PIL's own), ToTensor is uint8 HWC -> float32 CHW / 255,
    Normalize subtracts the mean and divides by the std per channel in float32."""
    tv = types.ModuleType('torchvision')
    T = types.ModuleType('torchvision.transforms')
    F = types.ModuleType('torchvision.transforms.functional')

    class InterpolationMode:
        BICUBIC = Image.BICUBIC

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class Lambda:
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            return self.f(x)

    class Resize:
        def __init__(self, size, interpolation):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            h, w = self.size
            return img.resize((w, h), self.interpolation)

    class ToTensor:
        def __call__(self, img):
            a = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], len(img.getbands()))
            return a.permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
            self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

        def __call__(self, t):
            return t.sub(self.mean).div(self.std)

    for name, obj in dict(Compose=Compose, Lambda=Lambda, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize).items():
        setattr(T, name, obj)
    F.InterpolationMode = InterpolationMode
    tv.transforms, T.functional = T, F
    sys.modules.update({'torchvision': tv, 'torchvision.transforms': T, 'torchvision.transforms.functional': F})


def load_upstream(pvc_dir):
    path = os.path.join(pvc_dir, 'utils', 'preprocess.py')
    if not os.path.exists(path):
        sys.exit(f'--pvc {pvc_dir}: no utils/preprocess.py (pass a checkout of OpenGVLab/PVC)')
    torchvision_stand_in()
    import importlib.util
    spec = importlib.util.spec_from_file_location('pvc_preprocess', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pattern(w, h, seed):
    """A smooth but non-trivial RGB image (compresses well, every pixel differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(0.002, 0.05, size=(3, 2))
    ph = rng.uniform(0, 6.28, size=3)
    img = np.stack([127.5 + 120 * np.sin(f[c, 0] * x + f[c, 1] * y + ph[c]) for c in range(3)], axis=-1)
    img += 6 * np.sin(0.9 * x)[..., None] * np.cos(0.7 * y)[..., None]  # fine detail the filters must handle
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generated_images(out_dir):
    """(file name, max_num) for each generated image; files written into out_dir."""
    specs = []

    def save(name, image, max_num, **kw):
        image.save(os.path.join(out_dir, name), **kw)
        specs.append((name, max_num))

    rgb = lambda w, h, s: Image.fromarray(pattern(w, h, s), 'RGB')
    save('tiny-1x1.png', Image.new('RGB', (1, 1), (200, 30, 90)), 12)
    save('tiny-13x7.png', rgb(13, 7, 1), 12)
    save('small-13x7-max1.png', rgb(13, 7, 2), 1)
    save('large-4000x3000.jpg', rgb(4000, 3000, 3), 12, quality=70)
    save('tall-1-12.png', rgb(60, 720, 4), 12)
    save('wide-12-1.png', rgb(720, 60, 5), 12)
    # Exact ties of the aspect-ratio rule: 11.5 is halfway between 11:1 and 12:1; the later candidate
    # wins only when the image area exceeds half the candidate's tiled area.
    save('tie-11.5-small.png', rgb(230, 20, 6), 12)
    save('tie-11.5-large.jpg', rgb(4600, 400, 7), 12, quality=80)
    save('tie-5.5-max6-small.png', rgb(110, 20, 8), 6)
    save('tie-5.5-max6-large.jpg', rgb(2200, 400, 9), 6, quality=80)
    save('gray.png', Image.fromarray(pattern(300, 200, 10)[..., 0], 'L'), 6)
    rgba = np.concatenate([pattern(320, 240, 11), pattern(320, 240, 12)[..., :1]], axis=-1)
    save('rgba.png', Image.fromarray(rgba, 'RGBA'), 12)
    save('palette.png', rgb(250, 180, 13).quantize(colors=64, method=Image.Quantize.MEDIANCUT), 12)
    save('odd-1000x747-max6.jpg', rgb(1000, 747, 14), 6, quality=80)
    return specs


# ---- formats: every kind of file upstream's Image.open(...).convert('RGB') opens in practice ---------
# Each file is made here: by Pillow where it writes the variant, else byte by byte (16-bit PNG, Adam7,
# BMP RLE / bitfields / OS/2, GIF frames smaller than the screen, YCCK and Adobe-less CMYK JPEG).

def png_file(w, h, depth, ctype, rows, interlace=False, chunks=()):
    """A PNG from unfiltered scanlines (rows: bytes of each row, already packed), optionally Adam7."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw = bytearray()
    if not interlace:  # filter 1 (Sub) on every row, so the decoder has to unfilter
        bpp = max(1, channels * depth // 8)
        for r in rows:
            r = bytes(r)
            raw += b'\x01' + bytes((r[i] - (r[i - bpp] if i >= bpp else 0)) & 255 for i in range(len(r)))
    else:
        assert depth == 8
        px = [bytes(r) for r in rows]
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            for y in range(y0, h, dy):
                line = b''.join(px[y][x * channels:(x + 1) * channels] for x in range(x0, w, dx))
                if line:
                    raw += b'\x00' + line
    ihdr = struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + b''.join(chunk(t, d) for t, d in chunks)
            + chunk(b'IDAT', zlib.compress(bytes(raw), 9)) + chunk(b'IEND', b''))


def bmp_file(w, h, bits, rows, palette=None, compression=0, masks=None, header=40, top_down=False, data=None):
    """A BMP: rows bottom-up as stored (already packed and padded) or `data` (RLE); palette as (r, g, b)."""
    import struct
    pal = b''
    if palette is not None:
        pal = b''.join(bytes((b, g, r)) + (b'' if header == 12 else b'\x00') for r, g, b in palette)
    body = data if data is not None else b''.join(rows)
    if header == 12:
        info = struct.pack('<IHHHH', 12, w, h, 1, bits)
    else:
        info = struct.pack('<IiiHHIIiiII', 40, w, -h if top_down else h, 1, bits, compression, len(body), 2835, 2835,
                           len(palette) if palette else 0, 0)
        if header == 124:  # BITMAPV5HEADER: the four masks inside the header, the rest (colour space) zero
            info = struct.pack('<I', 124) + info[4:] + struct.pack('<IIII', *masks) + bytes(124 - 56)
        elif masks is not None:
            info += struct.pack('<III', *masks)
    offset = 14 + len(info) + len(pal)
    return b'BM' + struct.pack('<IHHI', offset + len(body), 0, 0, offset) + info + pal + body


def bmp_rows(indices, bits):
    """Pack rows of palette indices (top row first) into padded BMP rows, bottom-up."""
    out = []
    for row in indices[::-1]:
        b = bytearray()
        if bits == 8:
            b = bytearray(row)
        elif bits == 4:
            for i in range(0, len(row), 2):
                b.append((row[i] << 4) | (row[i + 1] if i + 1 < len(row) else 0))
        while len(b) % 4:
            b.append(0)
        out.append(bytes(b))
    return out


def rle8(indices):
    """RLE8 of rows (bottom-up as stored): runs, absolute runs, a delta, end of line, end of bitmap."""
    out = bytearray()
    h = len(indices)
    for k, row in enumerate(indices[::-1]):
        if k == 2:  # skip two rows and three pixels with a delta; they stay index 0
            out += bytes((0, 2, 3, 2))
            row = row[3:]
        elif k in (3, 4):
            continue
        x = 0
        while x < len(row):
            n = 1
            while x + n < len(row) and n < 255 and row[x + n] == row[x]:
                n += 1
            if n >= 3 or len(row) - x < 3:
                out += bytes((n, row[x]))
                x += n
            else:  # absolute run of up to 7 pixels (odd lengths are padded to a word)
                m = min(7, len(row) - x)
                out += bytes((0, m)) + bytes(row[x:x + m]) + (b'\x00' if m % 2 else b'')
                x += m
        out += b'\x00\x00'
    out += b'\x00\x01'
    return bytes(out)


def rle4(indices):
    """RLE4: two-colour runs and absolute runs, end of line per row, end of bitmap."""
    out = bytearray()
    for row in indices[::-1]:
        x = 0
        while x < len(row):
            if (x // 6) % 2 == 0:
                n = min(6, len(row) - x)
                out += bytes((n, (row[x] << 4) | row[min(x + 1, len(row) - 1)]))
            else:
                n = min(5, len(row) - x)
                nib = list(row[x:x + n]) + [0]
                packed = bytes((nib[i] << 4) | (nib[i + 1] if i + 1 < n else 0) for i in range(0, n, 2))
                packed += b'\x00' * ((-len(packed)) % 2)
                out += bytes((0, n)) + packed if n >= 3 else bytes((n, (row[x] << 4) | row[min(x + 1, len(row) - 1)]))
            x += n
        out += b'\x00\x00'
    out += b'\x00\x01'
    return bytes(out)


def gif_file(screen, frames, global_palette=None, background=0):
    """A GIF89a; frames: (x, y, w, h, indices, local_palette, transparency, interlace). LZW as literal
    codes with a clear code every 250 codes, so the code width stays 9 bits."""
    import struct

    def pal_bytes(p):
        bits = max(1, (len(p) - 1).bit_length())
        return bits, b''.join(bytes(c) for c in p) + b'\x00' * 3 * ((1 << bits) - len(p))

    def lzw(indices):
        codes, clear, end = [], 256, 257
        for k, v in enumerate(indices):
            if k % 250 == 0:
                codes.append(clear)
            codes.append(v)
        codes.append(end)
        acc = nbits = 0
        out = bytearray()
        for c in codes:
            acc |= c << nbits
            nbits += 9
            while nbits >= 8:
                out.append(acc & 255)
                acc >>= 8
                nbits -= 8
        if nbits:
            out.append(acc)
        return b''.join(bytes((len(out[i:i + 255]),)) + bytes(out[i:i + 255]) for i in range(0, len(out), 255)) + b'\x00'

    out = bytearray(b'GIF89a' + struct.pack('<HH', *screen))
    if global_palette:
        bits, p = pal_bytes(global_palette)
        out += bytes((0x80 | 0x70 | (bits - 1), background, 0)) + p
    else:
        out += bytes((0, 0, 0))
    for x, y, w, h, indices, local, transparency, interlace in frames:
        if transparency is not None:
            out += b'\x21\xf9\x04' + bytes((1,)) + struct.pack('<H', 10) + bytes((transparency, 0))
        flags = 0x40 if interlace else 0
        p = b''
        if local:
            bits, p = pal_bytes(local)
            flags |= 0x80 | (bits - 1)
        rows = [indices[r * w:(r + 1) * w] for r in range(h)]
        if interlace:
            order = list(range(0, h, 8)) + list(range(4, h, 8)) + list(range(2, h, 4)) + list(range(1, h, 2))
            rows = [rows[r] for r in order]
        out += b'\x2c' + struct.pack('<HHHH', x, y, w, h) + bytes((flags,)) + p + bytes((8,)) + lzw([v for r in rows for v in r])
    return bytes(out + b'\x3b')


def icc_profile_p3():
    """A small ICC v2 RGB display profile (Display P3 primaries, gamma 1.8) that is not sRGB, as phone
    cameras embed: a colour-managed decoder would change every pixel; Pillow's open ignores it."""
    import struct

    def s15(v):
        return struct.pack('>i', int(round(v * 65536)))

    def xyz(x, y, z):
        return b'XYZ \0\0\0\0' + s15(x) + s15(y) + s15(z)

    def text(s):
        return b'text\0\0\0\0' + s.encode() + b'\0'

    def desc(s):
        return (b'desc\0\0\0\0' + struct.pack('>I', len(s) + 1) + s.encode() + b'\0' + b'\0' * 8 + b'\0' * 3 + b'\0' * 67)

    curve = b'curv\0\0\0\0' + struct.pack('>IH', 1, int(1.8 * 256)) + b'\0\0'
    tags = [(b'desc', desc('P3 gamma 1.8 test')), (b'cprt', text('none')), (b'wtpt', xyz(0.9642, 1.0, 0.8249)),
            (b'rXYZ', xyz(0.5151, 0.2412, -0.0011)), (b'gXYZ', xyz(0.2920, 0.6922, 0.0419)), (b'bXYZ', xyz(0.1571, 0.0666, 0.7841)),
            (b'rTRC', curve), (b'gTRC', curve), (b'bTRC', curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b'', b''
    for sig, body in tags:
        while (offset + len(data)) % 4:
            data += b'\0'
        table += sig + struct.pack('>II', offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack('>I', size) + b'lcms' + struct.pack('>I', 0x02100000) + b'mntrRGB XYZ ' + struct.pack('>6H', 2024, 1, 1, 0, 0, 0)
              + b'acsp' + b'APPL' + b'\0' * 4 + b'\0' * 4 + b'\0' * 4 + b'\0' * 8 + struct.pack('>I', 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b'lcms')
    header += b'\0' * (128 - len(header))
    return header + struct.pack('>I', len(tags)) + table + data


def format_images(out_dir):
    """(file name, max_num) for each format fixture; files written into out_dir."""
    from PIL import ImageCms
    specs = []

    def write(name, data, max_num=4):
        with open(os.path.join(out_dir, name), 'wb') as f:
            f.write(data)
        specs.append((name, max_num))

    def save(name, image, max_num=4, **kw):
        image.save(os.path.join(out_dir, name), **kw)
        specs.append((name, max_num))

    def encoded(image, **kw):
        b = io.BytesIO()
        image.save(b, **kw)
        return b.getvalue()

    rgb = lambda w, h, s: Image.fromarray(pattern(w, h, s), 'RGB')
    rng = np.random.default_rng(SEED + 1)

    # JPEG. Pillow reads any 4-component JPEG as Adobe-inverted CMYK ("CMYK;I"), with or without an
    # Adobe marker, and converts CMYK to RGB by its own formula, with no colour management.
    cmyk = Image.fromarray(np.concatenate([pattern(150, 110, 20), pattern(150, 110, 21)[..., :1] // 2], axis=-1), 'CMYK')
    adobe = encoded(cmyk, format='JPEG', quality=90)
    write('jpeg-cmyk-adobe.jpg', adobe)
    at = adobe.index(b'Adobe') - 4  # the APP14 segment: FFEE, length, "Adobe", ...
    assert adobe[at:at + 2] == b'\xff\xee'
    seg_len = int.from_bytes(adobe[at + 2:at + 4], 'big')
    write('jpeg-cmyk-no-adobe.jpg', adobe[:at] + adobe[at + 2 + seg_len:])
    transform = at + 15  # after "Adobe", version, flags0, flags1
    assert adobe[transform] == 0
    write('jpeg-ycck.jpg', adobe[:transform] + b'\x02' + adobe[transform + 1:])  # same data read as YCCK
    save('jpeg-rgb-adobe.jpg', rgb(140, 100, 22), format='JPEG', quality=90, keep_rgb=True)
    save('jpeg-gray.jpg', Image.fromarray(pattern(160, 120, 23)[..., 1], 'L'), quality=85)
    save('jpeg-progressive-422.jpg', rgb(210, 130, 24), quality=85, progressive=True, subsampling=1)
    srgb = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes())
    srgb[24:36] = bytes(12)  # LittleCMS stamps the creation time: cleared, so that reruns are identical,
    srgb[84:100] = bytes(16)  # and the profile ID (an MD5 that covers the time) with it: 0 is "not set"
    srgb = bytes(srgb)
    save('jpeg-444-icc.jpg', rgb(130, 170, 25), quality=92, subsampling=0, icc_profile=srgb)
    p3 = icc_profile_p3()
    ImageCms.ImageCmsProfile(io.BytesIO(p3))  # a profile LittleCMS accepts
    save('jpeg-p3-icc.jpg', rgb(120, 90, 57), quality=90, icc_profile=p3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation "rotate 90": upstream does not apply it
    save('jpeg-exif-orientation.jpg', rgb(120, 80, 26), quality=90, exif=exif.tobytes())

    # PNG
    def rows16(a):
        return [a[y].astype('>u2').tobytes() for y in range(a.shape[0])]
    a16 = (pattern(90, 70, 27).astype(np.uint16) * 257 + rng.integers(0, 257, size=(70, 90, 3))).astype(np.uint16)
    write('png-rgb16.png', png_file(90, 70, 16, 2, rows16(a16)))
    alpha16 = (pattern(90, 70, 28)[..., :1].astype(np.uint16) * 256 + 17).astype(np.uint16)
    write('png-rgba16.png', png_file(90, 70, 16, 6, rows16(np.concatenate([a16, alpha16], axis=-1))))
    g16 = np.concatenate([np.arange(0, 700, dtype=np.uint16).reshape(10, 70), (a16[:60, :70, 0])], axis=0)
    write('png-gray16.png', png_file(70, 70, 16, 0, rows16(g16)))  # Pillow: mode I;16, clipped to 255
    write('png-la16.png', png_file(90, 70, 16, 4, rows16(np.concatenate([a16[..., :1], alpha16], axis=-1))))
    save('png-la.png', Image.fromarray(np.stack([pattern(100, 80, 29)[..., 0], pattern(100, 80, 30)[..., 0]], -1), 'LA'))
    pal = rgb(120, 90, 31).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    save('png-palette-trns.png', pal, transparency=bytes([0, 60, 255, 128] + [255] * 12))
    save('png-palette-4bit.png', pal, bits=4)
    save('png-rgb-trns.png', rgb(100, 60, 32), transparency=(10, 20, 30))
    g = pattern(77, 50, 33)[..., 2]
    write('png-gray-2bit.png', png_file(77, 50, 2, 0, [bytes(int(''.join(f'{v >> 6:02b}' for v in row[i:i + 4]).ljust(8, '0'), 2)
                                                       for i in range(0, 77, 4)) for row in g]))
    save('png-gray-1bit.png', Image.fromarray(g).convert('1'))
    save('png-p3-icc.png', rgb(80, 60, 58), icc_profile=p3)
    write('png-gray16-trns.png', png_file(70, 70, 16, 0, rows16(g16), chunks=[(b'tRNS', (600).to_bytes(2, 'big'))]))
    save('png-apng.png', rgb(64, 48, 59), save_all=True, append_images=[rgb(64, 48, 60)], duration=100)
    write('png-gama-sbit.png', png_file(60, 40, 8, 2, [r.tobytes() for r in pattern(60, 40, 63)],
                                         chunks=[(b'gAMA', (100000).to_bytes(4, 'big')), (b'sBIT', bytes((5, 6, 5)))]))
    write('png-adam7.png', png_file(61, 45, 8, 2, [r.tobytes() for r in pattern(61, 45, 34)], interlace=True))

    # GIF: the first frame, as Pillow leaves it (palette indices, the canvas outside the frame filled
    # with the transparent index or 0, transparent pixels keeping their palette colour).
    frames = [rgb(96, 64, 35).quantize(colors=32), rgb(96, 64, 36).quantize(colors=32)]
    save('gif-animated.gif', frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    gp = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(16)]
    idx = [int(v) for v in rng.integers(0, 16, 30 * 25)]
    write('gif-offset-transparent.gif', gif_file((50, 40), [(6, 4, 30, 25, idx, None, 3, False),
                                                            (0, 0, 10, 10, [1] * 100, None, None, False)], gp, background=5))
    lp = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(8)]
    idx = [int(v) for v in rng.integers(0, 8, 45 * 37)]
    write('gif-interlaced-local-palette.gif', gif_file((45, 37), [(0, 0, 45, 37, idx, lp, None, True)], gp))
    write('gif-frame-past-screen.gif', gif_file((20, 15), [(10, 5, 25, 20, [int(v) for v in rng.integers(0, 16, 500)], None, None, False)], gp))
    extra = np.random.default_rng(SEED + 2)  # for files added later, so the earlier ones stay as they were
    no_palette = [int(v) for v in extra.integers(0, 256, 40 * 30)]  # no palette at all: Pillow's "L", value = index
    write('gif-no-palette.gif', gif_file((40, 30), [(0, 0, 40, 30, no_palette, None, None, False)]))
    ramp = [(k, k, k) for k in range(16)]  # a palette equal to the gray ramp is dropped: indices past it stay gray
    write('gif-ramp-palette.gif', gif_file((40, 30), [(0, 0, 40, 30, [v % 64 for v in no_palette], ramp, None, False)], gp))
    save('gif-gray.gif', Image.fromarray(pattern(70, 50, 37)[..., 0], 'L'))

    # WebP
    save('webp-lossy.webp', rgb(150, 100, 38), quality=80)
    save('webp-lossless.webp', rgb(120, 90, 39), lossless=True)
    rgba = np.concatenate([pattern(110, 80, 40), pattern(110, 80, 41)[..., :1]], axis=-1)
    save('webp-animated.webp', rgb(90, 70, 61), save_all=True, append_images=[rgb(90, 70, 62)], duration=100, quality=80)
    save('webp-lossy-alpha.webp', Image.fromarray(rgba, 'RGBA'), quality=75)

    # BMP
    save('bmp-24.bmp', rgb(91, 67, 42))
    save('bmp-32-rgba.bmp', Image.fromarray(rgba, 'RGBA'))
    save('bmp-8-palette.bmp', rgb(100, 70, 43).quantize(colors=200))
    save('bmp-8-gray.bmp', Image.fromarray(pattern(100, 70, 44)[..., 0], 'L'))
    save('bmp-1.bmp', Image.fromarray(pattern(101, 70, 45)[..., 0]).convert('1'))
    p16 = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(16)]
    ind4 = [[int(v) for v in r] for r in rng.integers(0, 16, size=(40, 53))]
    write('bmp-4.bmp', bmp_file(53, 40, 4, bmp_rows(ind4, 4), palette=p16))
    write('bmp-rle4.bmp', bmp_file(53, 40, 4, None, palette=p16, compression=2, data=rle4(ind4)))
    p256 = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(256)]
    ind8 = [[int(v) // 23 * 23 for v in r] for r in pattern(61, 44, 46)[..., 0]]
    write('bmp-rle8.bmp', bmp_file(61, 44, 8, None, palette=p256, compression=1, data=rle8(ind8)))
    write('bmp-8-os2.bmp', bmp_file(61, 44, 8, bmp_rows(ind8, 8), palette=p256, header=12))
    # Pillow's quirks with gray palettes: a two-entry black / white palette makes a "1" image, whose raw
    # mode reads 8-bit data as packed bits; through RLE the same palette gives values 0 / 1 as "L".
    bw = [(0, 0, 0), (255, 255, 255)]
    ind_bw = [[int(v) for v in r] for r in extra.integers(0, 2, size=(20, 33))]
    write('bmp-8-bw-palette.bmp', bmp_file(33, 20, 8, bmp_rows(ind_bw, 8), palette=bw))
    write('bmp-rle8-bw-palette.bmp', bmp_file(33, 20, 8, None, palette=bw, compression=1, data=rle8(ind_bw)))
    px = pattern(57, 41, 47).astype(np.uint32)

    def pack16(r, g, b, g_bits):
        return [b''.join(int(v).to_bytes(2, 'little') for v in row) + b'\x00' * ((-2 * 57) % 4) for row in
                ((r >> 3) << (5 + g_bits)) | ((g >> (8 - g_bits)) << 5) | (b >> 3)][::-1]
    write('bmp-16-565.bmp', bmp_file(57, 41, 16, pack16(px[..., 0], px[..., 1], px[..., 2], 6), compression=3,
                                     masks=(0xF800, 0x7E0, 0x1F)))
    write('bmp-16-555.bmp', bmp_file(57, 41, 16, pack16(px[..., 0], px[..., 1], px[..., 2], 5)))
    bgrx = [b''.join(bytes((int(p[2]), int(p[1]), int(p[0]), 0x55)) for p in row) for row in px]
    write('bmp-32-top-down.bmp', bmp_file(57, 41, 32, bgrx, top_down=True))
    bgra = [b''.join(bytes((int(p[2]), int(p[1]), int(p[0]), int(p[0]) ^ 0x5a)) for p in row) for row in px[::-1]]
    write('bmp-32-v5-bitfields.bmp', bmp_file(57, 41, 32, bgra, compression=3, masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000), header=124))

    # TIFF: the first page
    save('tiff-rgb-lzw.tif', rgb(130, 90, 48), compression='tiff_lzw')
    save('tiff-cmyk.tif', cmyk)
    save('tiff-multipage.tif', rgb(100, 80, 49), save_all=True, append_images=[rgb(60, 50, 50)], compression='tiff_deflate')
    save('tiff-palette.tif', rgb(90, 70, 51).quantize(colors=50))
    save('tiff-gray-packbits.tif', Image.fromarray(pattern(90, 70, 52)[..., 1], 'L'), compression='packbits')
    save('tiff-rgba.tif', Image.fromarray(rgba, 'RGBA'))
    save('tiff-1bit-g4.tif', Image.fromarray(pattern(101, 70, 53)[..., 0]).convert('1'), compression='group4')
    save('tiff-gray16.tif', Image.fromarray(g16))
    # Associated (premultiplied) alpha, Pillow's "RGBa", which it cannot write: its RGBA TIFF with the
    # ExtraSamples value patched from 2 (unassociated) to 1.
    t = bytearray(encoded(Image.fromarray(rgba, 'RGBA'), format='TIFF'))
    assert t[:4] == b'II*\0'
    ifd = int.from_bytes(t[4:8], 'little')
    for k in range(int.from_bytes(t[ifd:ifd + 2], 'little')):
        e = ifd + 2 + 12 * k
        if int.from_bytes(t[e:e + 2], 'little') == 338:
            assert t[e + 8] == 2
            t[e + 8] = 1
    write('tiff-rgba-premultiplied.tif', bytes(t))
    i32 = (extra.integers(-300, 600, size=(40, 50))).astype(np.int32)
    save('tiff-int32.tif', Image.fromarray(i32, 'I'))  # Pillow's "I": clipped to 0..255
    save('tiff-float32.tif', Image.fromarray((extra.random((40, 50)) * 400 - 50).astype(np.float32), 'F'))
    save('tiff-jpeg.tif', rgb(128, 96, 54), compression='jpeg', quality=85)

    # Netpbm
    save('ppm-rgb.ppm', rgb(70, 50, 55))
    save('pgm-gray.pgm', Image.fromarray(pattern(70, 50, 56)[..., 0], 'L'))
    return specs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pvc', required=True, help='checkout of OpenGVLab/PVC (holds utils/preprocess.py)')
    ap.add_argument('--pvc-commit', required=True)
    ap.add_argument('--assets', required=True, help='the shared assets folder (example_image1.jpg, ...)')
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    args = ap.parse_args()
    up = load_upstream(os.path.abspath(args.pvc))
    out = os.path.abspath(args.out)
    img_dir = os.path.join(out, 'images')
    ref_dir = os.path.join(out, 'reference', 'preprocess')
    for d in (img_dir, ref_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    fmt_dir = os.path.join(img_dir, 'formats')
    os.makedirs(fmt_dir)

    images = [(os.path.join(args.assets, f), f, 12) for f in ('example_image1.jpg', 'example_image2.jpg')]
    images += [(os.path.join(img_dir, f), f, m) for f, m in generated_images(img_dir)]
    records = []
    for path, name, max_num in images:
        image = Image.open(path).convert('RGB')
        tiles = up.dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_num)
        records.append({
            'file': name, 'asset': not path.startswith(img_dir),
            'max_num': max_num, 'size': list(image.size), 'num_tiles': len(tiles),
            'tile_sha256': [hashlib.sha256(np.asarray(t, np.uint8).tobytes()).hexdigest() for t in tiles],
        })
    # Every format: Pillow's size and mode at open (the size is what the pixel limit is checked on),
    # and the tiles of upstream's load_image path (Image.open(f).convert('RGB'), dynamic_preprocess).
    import warnings
    formats = []
    for name, max_num in format_images(fmt_dir):
        path = os.path.join(fmt_dir, name)
        with Image.open(path) as opened:
            fmt, mode, size = opened.format, opened.mode, list(opened.size)
            image = opened.convert('RGB')
        tiles = up.dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_num)
        # Pillow on the file cut in half and short of its last byte: an error, or the RGB it gives.
        truncated = {}
        with open(path, 'rb') as f:
            data = f.read()
        for n in (len(data) // 2, len(data) - 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    with Image.open(io.BytesIO(data[:n])) as cut:
                        truncated[str(n)] = hashlib.sha256(np.asarray(cut.convert('RGB'), np.uint8).tobytes()).hexdigest()
            except Exception as e:  # noqa: BLE001 - any failure to open or decode is what is recorded
                truncated[str(n)] = 'error: ' + type(e).__name__
        formats.append({
            'file': name, 'format': fmt, 'mode': mode, 'size': size, 'max_num': max_num, 'num_tiles': len(tiles),
            'truncated': truncated,
            'rgb_sha256': hashlib.sha256(np.asarray(image, np.uint8).tobytes()).hexdigest(),
            'tile_sha256': [hashlib.sha256(np.asarray(t, np.uint8).tobytes()).hexdigest() for t in tiles],
        })
    # Pillow's decompression-bomb limits (checked on the header's size in Image.open).
    bomb = {'max_image_pixels': Image.MAX_IMAGE_PIXELS, 'cases': []}
    for w, h in ((9459, 9459), (9460, 9460), (13377, 13377), (13378, 13378), (20000, 20000)):
        header = png_file(w, 1, 8, 2, [])[:33] + png_file(1, 1, 8, 2, [b'\0\0\0'])[-12:]  # signature, IHDR, IEND
        header = header[:16] + w.to_bytes(4, 'big') + h.to_bytes(4, 'big') + header[24:]
        import zlib
        header = header[:29] + zlib.crc32(header[12:29]).to_bytes(4, 'big') + header[33:]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                Image.open(io.BytesIO(header)).close()
                outcome = 'warning' if any(issubclass(c.category, Image.DecompressionBombWarning) for c in caught) else 'ok'
            except Image.DecompressionBombError:
                outcome = 'error'
        bomb['cases'].append({'size': [w, h], 'pixels': w * h, 'outcome': outcome})

    # Float pixel_values through upstream's load_image for one small image (1 tile).
    pv = up.load_image(os.path.join(img_dir, 'small-13x7-max1.png'), max_num=1)
    from safetensors.torch import save_file
    tensors = {'small-13x7-max1.pixel_values': pv.contiguous()}

    # Candidate grids in upstream's order (a set of tuples, then a stable sort by area).
    orders = {}
    for min_num in (1, 2, 3):
        for max_num in range(min_num, 41):
            target = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if i * j <= max_num and i * j >= min_num)
            orders[f'{min_num}-{max_num}'] = [list(r) for r in sorted(target, key=lambda x: x[0] * x[1])]

    # Video: decord's frame count and fps, get_index for several settings, frames of one of them.
    import decord
    video = os.path.join(args.assets, 'example_video.mp4')
    vr = decord.VideoReader(video, ctx=decord.cpu(0), num_threads=1)
    max_frame, fps = len(vr) - 1, float(vr.get_avg_fps())
    settings = [{'num_segments': 8, 'bound': None}, {'num_segments': 32, 'bound': None},
                {'num_segments': 64, 'bound': None}, {'num_segments': 16, 'bound': [3.5, 12.25]},
                {'num_segments': 1200, 'bound': None}]
    for s in settings:
        s['frame_indices'] = up.get_index(s['bound'], fps, max_frame, first_idx=0, num_segments=s['num_segments']).tolist()
    frames_dir = os.path.join(ref_dir, 'video-frames')
    os.makedirs(frames_dir)
    # Four of the eight frames of the first setting, as decord decodes them (lossless PNG).
    for k in settings[0]['frame_indices'][::2]:
        Image.fromarray(vr[k].asnumpy()).save(os.path.join(frames_dir, f'frame-{k:05d}.png'))
    _, npl = up.load_video(video, num_segments=8, max_num=1)
    save_file(tensors, os.path.join(ref_dir, 'tensors.safetensors'), metadata={'format': 'pt'})

    doc = {'pvc_commit': args.pvc_commit, 'images': records, 'formats_dir': 'formats', 'formats': formats,
           'decompression_bomb': bomb, 'candidate_orders': orders,
           'video': {'file': 'example_video.mp4', 'frames': len(vr), 'max_frame': max_frame, 'fps': fps,
                     'settings': settings, 'num_patches_list_8': npl,
                     'frames_dir': 'video-frames', 'frames_of_setting': 0},
           'versions': {'pillow': Image.__version__, 'decord': decord.__version__, 'numpy': np.__version__}}
    with open(os.path.join(ref_dir, 'reference.json'), 'w') as f:
        json.dump(doc, f, indent=1)
        f.write('\n')
    print('done', file=sys.stderr)


if __name__ == '__main__':
    main()
