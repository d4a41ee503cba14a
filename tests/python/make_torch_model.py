"""Writes small PyTorch models the way users hand them over: a state_dict and the Python file
defining the class and input shape(s). Run in the PyTorch venv:

    python make_torch_model.py OUT_DIR

- `tiny_cnn.pt` + `tiny_cnn.py`: a CNN on (3, 8, 8)
- `two_input.pt` + `two_input.py`: forward(x_profile, y_profile) over two vectors (21 and 13),
  each through its own Linear, concatenated, then a Linear to one logit and a sigmoid
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


TWO_INPUT_SOURCE = '''
import torch
import torch.nn as nn

INPUT_SHAPE = [(21,), (13,)]


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.x_branch = nn.Linear(21, 8)
        self.y_branch = nn.Linear(13, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(16, 1)
        self.out = nn.Sigmoid()

    def forward(self, x_profile, y_profile):
        x = self.relu(self.x_branch(x_profile))
        y = self.relu(self.y_branch(y_profile))
        return self.out(self.head(torch.cat([x, y], dim=1)))
'''


def write_model(out, name, source, class_name):
    with open(os.path.join(out, f"{name}.py"), "w") as f:
        f.write(source)
    import torch
    namespace = {}
    exec(source, namespace)  # noqa: S102 - our own source, written above
    torch.manual_seed(0)
    model = namespace[class_name]()
    torch.save(model.state_dict(), os.path.join(out, f"{name}.pt"))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    write_model(out, "tiny_cnn", CLASS_SOURCE, "TinyCNN")
    write_model(out, "two_input", TWO_INPUT_SOURCE, "TwoInput")


if __name__ == "__main__":
    main()
