"""diffuse's JPEG and WebP images read back as AUTOMATIC1111 reads an image's parameters (Pillow's EXIF,
decoded with piexif), so PNG Info and "send to txt2img" work on them."""

import subprocess

import piexif
import piexif.helper
from PIL import Image

from conftest import MODEL, diffuse_bin


def a1111_parameters(path):
    """What A1111's read_info_from_image returns for a JPEG or WebP: the EXIF UserComment."""
    items = (Image.open(path).info or {}).copy()
    exif = piexif.load(items.pop("exif"))
    comment = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    return piexif.helper.UserComment.load(comment)


def test_jpeg_and_webp_parameters_read_as_a1111_reads_them(tmp_path):
    for extension in ["jpg", "webp"]:
        out = tmp_path / f"tower.{extension}"
        subprocess.run(
            [diffuse_bin(), "generate", "a tower \u2014 \u00abu\u0308\u00bb", "--model", str(MODEL), "--steps", "2",
             "--seed", "3", "--quiet", "-o", str(out)],
            check=True,
        )
        text = a1111_parameters(out)
        assert text.startswith("a tower \u2014 \u00abu\u0308\u00bb\nSteps: 2, "), text
        assert "Seed: 3, Size: 64x64" in text, text
        info = subprocess.run([diffuse_bin(), "info", str(out)], check=True, capture_output=True, text=True)
        assert info.stdout.strip() == text
