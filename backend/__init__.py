"""The executing backend: a real PyTorch decoder that runs a plan's operations and times each one.

Data flow, one module per step:

    plan ──► runtime.py   weights placed, pinned host stores (stores.py), device buffers
         ──► executor.py  advisor.opgraph's operations, in graph order, on lanes.py's streams
                          (each operation's work is a piece of a layer from model.py)
         ──► command.py   the measured Trace (`advisor execute`), with measure.py's figures

checkpoint.py reads Hugging Face safetensors folders; bench/gpu_check.py drives the same pieces
for the GPU check. Nothing here imports textual, and nothing is downloaded.
"""
