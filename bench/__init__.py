"""Training-speed benchmarks of zoo models against their anchors (`python -m bench.bench`).

bench.py          the command: suites (cases as data), one worker process per backend, merge,
                  JSON + Markdown, goals against /work/shared/ANCHORS.md
keras_cases.py    zoo / keras.applications cases: one timed, compiled train step per backend
torch_anchors.py  timm (eager, torch.compile) and akamaster CIFAR ResNets in plain PyTorch
gpu.sh            the one command a session with the H100 runs
"""
