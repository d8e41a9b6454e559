"""GS1 / UDI identification (DOMAIN 6): parse scans and typed HRI into a typed ``UdiScan``,
log every scan attempt (ID-1), and build, render and verify GS1 DataMatrix UDI labels
(UDI-1..UDI-5).

``rules`` is pure (parsing, validation, element strings); ``label`` renders symbols with
zxing-cpp and verifies them by decoding (CPU work: call it from a thread); ``service`` stores
``ScanEvent`` rows; ``router`` is the thin HTTP surface (``/scans``).
"""
