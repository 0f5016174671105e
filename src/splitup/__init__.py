"""SplitUp: run models too large for one consumer GPU on many of them, paid for and verified on Solana."""

__version__ = "0.1.0"
