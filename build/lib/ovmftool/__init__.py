"""ovmftool: audit and patch OVMF (EDK II) firmware images for string port-I/O instructions."""

__version__ = "0.1.0"
