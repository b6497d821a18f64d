"""A component whose call cannot be captured in a CUDA graph: it reads a value back on the host (`bool(...)`
of a device tensor), as VisionZip's boolean-mask indexing did. Its failed capture leaves the CUDA generator in
capture mode; the rows after it draw random inputs on the device, so they fail unless the state is put back."""
import torch


class HostRead(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x):
        y = self.lin(x)
        if bool((y > 0).any()):  # a host read-back: not permitted while the stream is capturing
            y = y + 1
        return y


def host_read(width: int = 256):
    return HostRead(width), lambda batch: (torch.randn(batch, width),)
