"""The model: the arithmetic of MODEL.md and the order of a step, with no Ray and no I/O.

- `step.py`: one layer's phases of a time step (predict, correct, carry) as pure functions;
- `learn.py`: the local weight updates (outer products, clipped), written against an array module;
- `layer.py`: `LayerCore`, one layer's state calling them; `spec.py`: a layer's shape and settings;
- `weights.py`, `optim.py`, `adam_kernel.py`: the weight layout and the optimizers;
- `schedule.py`: THE order of a step, exact and pipelined; `activations.py`, `finite.py`,
  `backend.py` (NumPy or CuPy), `model.py` (the layer specs of a config).
"""
