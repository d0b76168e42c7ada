#!/usr/bin/env python3
"""Draws the OCR test images: text in Debian's fonts (DejaVu for Latin, Noto CJK for Chinese) in several sizes,
line counts, colours, backgrounds and rotations (0, 180 degrees, a slight skew), the same bytes on every run.

    python3 scripts/ocr/make_images.py OUT_DIR [--count N]

Writes OUT_DIR/NNN_<kind>.png (and a few .jpg) and OUT_DIR/manifest.json listing each file with the lines drawn.
Needs Pillow (PyPI) and the fonts-dejavu and fonts-noto-cjk packages (scripts/setup.sh installs them)."""
import argparse
import json
import math
import os
import random
import sys

from PIL import Image, ImageDraw, ImageFilter, ImageFont

LATIN_FONTS = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
               "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"]
CJK_FONTS = ["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc"]

WORDS = ["kernel", "invoice", "total", "amount", "date", "server", "model", "batch", "parse", "image", "receipt",
         "order", "number", "price", "tax", "customer", "address", "station", "north", "river", "garden", "window"]
CHINESE = ["你好世界", "发票号码", "金额合计", "服务器", "模型推理", "文字识别", "北京市", "上海", "欢迎光临", "今天天气很好",
           "中华人民共和国", "数据中心", "开发票", "营业执照"]


def line_text(rng, chinese):
    if chinese:
        text = rng.choice(CHINESE)
        if rng.random() < 0.5:
            text += str(rng.randint(10, 9999))
        return text
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.5:
        words.append(str(rng.randint(1, 99999)))
    text = " ".join(words)
    return text.capitalize() if rng.random() < 0.5 else text


def background(rng, size):
    kind = rng.choice(["white", "solid", "gradient", "noise"])
    width, height = size
    if kind == "white":
        return Image.new("RGB", size, (255, 255, 255)), kind
    base = tuple(rng.randint(190, 255) for _ in range(3))
    if kind == "solid":
        return Image.new("RGB", size, base), kind
    if kind == "gradient":
        image = Image.new("RGB", size)
        other = tuple(rng.randint(170, 255) for _ in range(3))
        draw = ImageDraw.Draw(image)
        for x in range(width):
            t = x / max(1, width - 1)
            draw.line([(x, 0), (x, height)], fill=tuple(int(a + (b - a) * t) for a, b in zip(base, other)))
        return image, kind
    noise = random.Random(rng.random())
    image = Image.new("RGB", size, base)
    pixels = image.load()
    for _ in range(width * height // 12):
        x, y = noise.randrange(width), noise.randrange(height)
        pixels[x, y] = tuple(max(0, c - noise.randint(10, 45)) for c in base)
    return image, kind


def draw_image(rng, index):
    chinese = index % 3 == 1
    fonts = CJK_FONTS if chinese else LATIN_FONTS
    font_path = rng.choice(fonts)
    size = rng.choice([22, 28, 34, 42, 54])
    font = ImageFont.truetype(font_path, size)
    count = rng.randint(1, 5)
    lines = [line_text(rng, chinese) for _ in range(count)]
    spacing = int(size * rng.uniform(1.6, 2.2))
    widths = [font.getbbox(text)[2] for text in lines]
    width = max(widths) + rng.randint(40, 160)
    height = spacing * count + rng.randint(40, 120)
    image, kind = background(rng, (width, height))
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randint(0, 90) for _ in range(3))
    if rng.random() < 0.2:
        colour = rng.choice([(160, 20, 20), (20, 40, 150), (10, 110, 40)])
    top = rng.randint(15, 45)
    left = rng.randint(15, 60)
    for row, text in enumerate(lines):
        draw.text((left, top + row * spacing), text, fill=colour, font=font)
    rotation = rng.choice([0, 0, 0, 180, "skew"])
    if rotation == 180:
        image = image.rotate(180)
    elif rotation == "skew":
        angle = rng.choice([-3, -2, -1.5, 1.5, 2, 3])
        fill = image.getpixel((0, 0))
        image = image.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=fill)
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image, {"lines": lines, "font": os.path.basename(font_path), "size": size, "background": kind,
                   "rotation": rotation, "chinese": chinese}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=60)
    args = parser.parse_args()
    for path in LATIN_FONTS + CJK_FONTS:
        if not os.path.exists(path):
            sys.exit(f"make_images: {path} is missing: apt-get install fonts-dejavu fonts-noto-cjk (scripts/setup.sh)")
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for index in range(args.count):
        rng = random.Random(1000 + index)
        image, description = draw_image(rng, index)
        # Most as PNG (lossless: both decoders see the same pixels); every tenth as JPEG.
        extension = "jpg" if index % 10 == 9 else "png"
        name = f"{index:03d}_{'zh' if description['chinese'] else 'en'}.{extension}"
        path = os.path.join(args.out, name)
        if extension == "jpg":
            image.save(path, quality=92)
        else:
            image.save(path, optimize=False)
        manifest.append({"file": name, "width": image.width, "height": image.height, **description})
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
    print(f"make_images: {len(manifest)} images in {args.out}")


if __name__ == "__main__":
    main()
