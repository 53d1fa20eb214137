"""The paper comparison: P-TNCN against BPTT, truncated BPTT, RTRL, UORO, an echo state network
and an LSTM at matched parameter counts, as Ray Tune trials (`python -m experiments.compare`)."""
