"""The base layer every other package may import (and which imports none of them): config, errors and the CLI
handler, image I/O, MATLAB-compatible resizing, the NTIRE metrics, the dihedral augmentations, atomic writes and the
output-path guard. See pipeline/README.md for the layers."""
