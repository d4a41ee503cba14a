"""Writes a small PyTorch CNN the way users hand it over: a state_dict (`tiny_cnn.pt`) and
the Python file defining its class and input shape (`tiny_cnn.py`). Run in the PyTorch venv:

    python make_torch_model.py OUT_DIR
"""
import os
import sys

CLASS_SOURCE = '''
import torch
import torch.nn as nn

INPUT_SHAPE = (3, 8, 8)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))
'''


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tiny_cnn.py"), "w") as f:
        f.write(CLASS_SOURCE)
    import torch
    namespace = {}
    exec(CLASS_SOURCE, namespace)  # noqa: S102 - our own source, written above
    torch.manual_seed(0)
    model = namespace["TinyCNN"]()
    torch.save(model.state_dict(), os.path.join(out, "tiny_cnn.pt"))


if __name__ == "__main__":
    main()
