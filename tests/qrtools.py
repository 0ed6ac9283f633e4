"""Decode QR codes with a real decoder (zxing-cpp), as a phone would."""
import io

import zxingcpp
from PIL import Image


def decode_qr(png: bytes) -> str:
    # Only QR codes, as the WireGuard apps scan only those (a 1-D reader can "see" noise in the modules).
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1, "exactly one QR code expected"
    return results[0].text
