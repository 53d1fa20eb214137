"""Baseline recurrent learners compared with P-TNCN: BPTT, truncated BPTT, RTRL, UORO, ESN and
a PyTorch LSTM (truncated BPTT; needs the `torch` extra, imported only when one is built).

All gradient methods train the same Elman network (elman.py); build_baseline gives any of them
behind one interface (registry.Baseline) so the trainer drives them like P-TNCN.
"""
from .bptt import BPTT, bptt_gradients
from .elman import init_params, sequence_objective
from .esn import ESN, ridge_readout
from .lstm import LSTM
from .registry import KINDS, Baseline, BaselineConfig, build_baseline, frozen_eval
from .rtrl import RTRL, RTRL_MAX_HIDDEN, rtrl_gradients
from .uoro import UORO, uoro_gradients

__all__ = [
    "BPTT", "ESN", "KINDS", "LSTM", "RTRL", "RTRL_MAX_HIDDEN", "UORO", "Baseline", "BaselineConfig",
    "bptt_gradients", "build_baseline", "frozen_eval", "init_params", "ridge_readout",
    "rtrl_gradients", "sequence_objective", "uoro_gradients",
]
