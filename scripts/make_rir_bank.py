"""Simulate a seeded room-impulse-response bank with pyroomacoustics (image-source method).

    python scripts/make_rir_bank.py rirs/ --count 200 --seed 0

Same as ``specstream make-rir-bank``; needs ``pip install "specstream[rir]"``.
"""
import sys

from specstream.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-rir-bank", *sys.argv[1:]]))
