"""A convolutional S-TLLR network on the embedded Digits data (scikit-learn's 8x8 digits, each pixel
a Bernoulli spike train), trained time-fused: each batch is one call per layer on the whole
sequence, with a loss on each of the last D time steps.

    python examples/digits_conv.py           # 5 epochs, a few minutes on a CPU
    python examples/digits_conv.py --tiny    # a few hundred samples, one epoch (what CI runs)
"""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from stllr_kernels.nn import Conv2dSTLLR, reset_states
from training.data import DigitsSpikes, pad_collate


class ConvNet(nn.Module):
    """Two Conv2d S-TLLR layers, average pooling, and a linear head whose output at each step is
    that step's logits (as the paper's VGG)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = Conv2dSTLLR(1, 16, 3, padding=1, factors=[0.2, 0.75, -1, 1])
        self.conv2 = Conv2dSTLLR(16, 32, 3, padding=1, factors=[0.2, 0.75, -1, 1])
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x, loss_steps):
        """x [T, B, 1, 8, 8] -> logits [T, B, classes]; the final `loss_steps` steps get a loss."""
        s = self.conv2(self.conv1(x, loss_steps), loss_steps)                  # [T, B, 32, 8, 8]
        pooled = self.pool(s.flatten(0, 1))                                   # [T * B, 32, 4, 4]
        return self.head(pooled.flatten(1)).view(*x.shape[:2], -1)


def images(x):
    """The loader's [T, B, 64] spikes as [T, B, 1, 8, 8] images."""
    return x.view(*x.shape[:2], 1, 8, 8)


def evaluate(net, loader):
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            reset_states(net)
            logits = net(images(x), loss_steps=0)            # 0 loss steps: nothing saved for backward
            correct += (logits.sum(0).argmax(1) == y).sum().item()   # the prediction sums every step
            total += len(y)
    return 100.0 * correct / total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few hundred samples, one epoch")
    args = parser.parse_args(argv)
    steps, delay, epochs = (10, 5, 1) if args.tiny else (20, 10, 5)

    torch.manual_seed(0)
    train_set, test_set = DigitsSpikes(train=True, steps=steps), DigitsSpikes(train=False, steps=steps)
    if args.tiny:
        train_set, test_set = Subset(train_set, range(256)), Subset(test_set, range(128))
    train = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=pad_collate)  # [T, B, 64] batches
    test = DataLoader(test_set, batch_size=128, collate_fn=pad_collate)

    net = ConvNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        net.train()
        for x, y in train:
            reset_states(net)                                 # before each sequence
            optimizer.zero_grad()
            logits = net(images(x), loss_steps=delay)
            T = logits.shape[0]
            sum(criterion(logits[t], y) for t in range(T - delay, T)).backward()
            optimizer.step()
        net.eval()
        print(f"epoch {epoch}: test accuracy {evaluate(net, test):.2f}%")


if __name__ == "__main__":
    main()
