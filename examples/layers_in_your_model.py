"""S-TLLR layers in your own model: trained online (one time step per call), then time-fused in
chunks of time steps with the states carried from chunk to chunk. Both give the same gradients,
which the script checks before training.

    python examples/layers_in_your_model.py           # the paper's SHD sizes: 700 -> 450 -> 20, T=100
    python examples/layers_in_your_model.py --tiny    # seconds (what CI runs)

The data is synthetic: each class makes its own group of input channels fire more often.
"""
import argparse

import torch
import torch.nn as nn

from stllr_kernels.nn import LinearRecSTLLR, LinearSTLLR, reset_states


class SpikingNet(nn.Module):
    """A recurrent S-TLLR layer and a leaky readout (the paper's SHD network)."""

    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.hidden = LinearRecSTLLR(inputs, hidden, leak=5.0)
        self.readout = LinearSTLLR(hidden, classes, accumulate=True, leak=5.0, factors=[0, 0.99, 0, 1])

    def forward(self, x, loss_steps=None):
        """One time step x [B, inputs] -> [B, classes]; or a chunk of steps x [n, B, inputs] ->
        [n, B, classes], of which the final `loss_steps` will get a loss."""
        if loss_steps is None:
            return self.readout(self.hidden(x))
        return self.readout(self.hidden(x, loss_steps), loss_steps)


def synthetic_batch(T, batch, inputs, classes, generator):
    """Spikes [T, B, inputs] whose firing rate is higher on the input group of the label."""
    labels = torch.randint(0, classes, (batch,), generator=generator)
    rates = torch.full((batch, inputs), 0.02)
    group = inputs // classes
    for b, c in enumerate(labels.tolist()):
        rates[b, c * group:(c + 1) * group] = 0.3
    return (torch.rand(T, batch, inputs, generator=generator) < rates).float(), labels


def online_step(net, x, y, delay, criterion):
    """One sequence, one call per time step; a loss at each of the last `delay` steps."""
    T, prediction = x.shape[0], 0
    for t in range(T):
        out = net(x[t])
        prediction = prediction + out.detach()
        if t >= T - delay:
            criterion(out, y).backward()      # the S-TLLR gradient of step t goes into .grad now
    return prediction


def chunked_step(net, x, y, delay, chunk, criterion):
    """The same sequence in time-fused calls of `chunk` steps; the states carry between calls."""
    T, prediction = x.shape[0], 0
    for start in range(0, T, chunk):
        stop = min(start + chunk, T)
        loss_steps = max(0, stop - max(start, T - delay))   # how many of this chunk's steps are in the last `delay`
        out = net(x[start:stop], loss_steps=loss_steps)      # [stop - start, B, classes]
        prediction = prediction + out.detach().sum(0)
        if loss_steps:
            sum(criterion(out[k], y) for k in range(stop - start - loss_steps, stop - start)).backward()
    return prediction


def gradients(net, step, *args):
    net.zero_grad()
    reset_states(net)
    step(net, *args)
    return [p.grad.clone() for p in net.parameters() if p.grad is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and four batches (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        T, delay, chunk, batch, inputs, hidden, classes, batches = 20, 6, 4, 8, 40, 32, 4, 4
    else:  # the paper's SHD network and loss window; batches of 32
        T, delay, chunk, batch, inputs, hidden, classes, batches = 100, 90, 25, 32, 700, 450, 20, 10

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = SpikingNet(inputs, hidden, classes)
    criterion = nn.CrossEntropyLoss()

    # the two ways of running a sequence give the same gradients
    x, y = synthetic_batch(T, batch, inputs, classes, generator)
    online = gradients(net, online_step, x, y, delay, criterion)
    chunked = gradients(net, chunked_step, x, y, delay, chunk, criterion)
    worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(online, chunked))
    print(f"online vs chunked gradients: largest relative difference {worst:.1e}")
    assert worst < 1e-3, "the chunked gradients should equal the online ones up to float32 rounding"

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for i in range(1, batches + 1):
        mode = "online" if i % 2 else "chunked"   # alternating, to show both; train with either
        x, y = synthetic_batch(T, batch, inputs, classes, generator)
        reset_states(net)                         # before each sequence
        optimizer.zero_grad()
        if mode == "online":
            prediction = online_step(net, x, y, delay, criterion)
        else:
            prediction = chunked_step(net, x, y, delay, chunk, criterion)
        optimizer.step()                          # once per sequence, as the paper's `stllr` mode
        accuracy = (prediction.argmax(1) == y).float().mean().item()
        print(f"batch {i} ({mode}): accuracy {accuracy:.2f}")


if __name__ == "__main__":
    main()
