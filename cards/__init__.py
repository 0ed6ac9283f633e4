"""Pure rendering: plain values in, Adaptive Card dicts, text or QR images out. No I/O, no imports of ours."""
