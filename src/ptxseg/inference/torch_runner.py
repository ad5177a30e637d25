"""PyTorch inference on the CPU or a GPU: 8-bit model inputs in, probabilities out, on the device.

The `torch` runtime of the Predictor. What makes it fast on a GPU:

- inputs travel as uint8 (a quarter of float32's bytes) through pinned host buffers, copied
  asynchronously, so the copy of one batch overlaps the model's work on the previous one;
- bf16 under autocast and channels_last tensors (tensor-core convolutions);
- optionally `torch.compile` (`ptxseg.model.acceleration`; mode `reduce-overhead` adds CUDA
  graphs): batches keep one shape, a short last batch is padded, so the model compiles once;
- the sigmoid and the flip TTA run on the device, and one copy brings the result back.

On the CPU the same code runs eagerly; the arithmetic of the input (`uint8 / 255` in float32) is
that of `ptxseg.data.preprocess.to_float`, so the probabilities match the other runtimes'.
"""

from __future__ import annotations

import numpy as np
import torch

from ptxseg.model.acceleration import compile_function

PINNED_BUFFERS = 2  # one filling while the other one's copy is in flight


class TorchRunner:
    """A model in eval mode on `device`, run in chunks of `batch_size`."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str = "default",
        batch_size: int = 4,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"torch runtime precision {precision!r}: expected fp32 or bf16")
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device).eval().to(memory_format=self.memory_format)
        self.compiled = bool(compile)
        self._forward = compile_function(self.model, compile_mode) if compile else self.model
        self._pinned: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0

    # ------------------------------------------------------------------ host -> device

    def upload(self, inputs: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S) host inputs on the device; pinned and asynchronous on CUDA."""
        array = np.ascontiguousarray(inputs)
        if not array.flags.writeable:  # a read-only cache (memmap): torch wants writable memory
            array = array.copy()
        host = torch.from_numpy(array)
        if self.device.type != "cuda":
            return host.to(self.device)
        buffer, done = self._pinned_buffer(host.shape)
        if done is not None:
            done.synchronize()  # the copy that last used this buffer has finished
        staged = buffer[: host.shape[0]]
        staged.copy_(host)
        out = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pinned[self._turn] = (buffer, event)
        self._turn = (self._turn + 1) % PINNED_BUFFERS
        return out

    def _pinned_buffer(self, shape) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        rows = max(int(shape[0]), self.batch_size)
        while len(self._pinned) < PINNED_BUFFERS:
            self._pinned.append((torch.empty(0, dtype=torch.uint8), None))
        buffer, done = self._pinned[self._turn]
        if buffer.shape[0] < rows or tuple(buffer.shape[1:]) != tuple(shape[1:]):
            if done is not None:
                done.synchronize()
            buffer = torch.empty((rows, *shape[1:]), dtype=torch.uint8, pin_memory=True)
            done = None
        return buffer, done

    # ------------------------------------------------------------------ the model

    def _chunk_logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits (b, 1, S, S) of float inputs (b, 1, S, S), b <= batch_size."""
        n = x.shape[0]
        if self.compiled and n < self.batch_size:  # one static shape: pad the last batch
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self._forward(x)
        out = logits[:n].float()
        # Compiled graphs (CUDA graphs in particular) may reuse their output memory next call.
        return out.clone() if self.compiled and out.data_ptr() == logits.data_ptr() else out

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits (B, 1, S, S) of float inputs in [0, 1] (B, 1, S, S) on the device."""
        with torch.inference_mode():
            parts = [
                self._chunk_logits(x[i : i + self.batch_size])
                for i in range(0, x.shape[0], self.batch_size)
            ]
        return torch.cat(parts) if parts else x.new_zeros((0, 1, *x.shape[2:]))

    def probabilities(self, inputs: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """float32 probabilities (B, S, S) on the device of uint8 inputs (B, S, S) on it.

        `tta="hflip"` averages with the prediction of the mirrored image, mirrored back.
        """
        with torch.inference_mode():
            x = inputs.to(self.device, non_blocking=True)[:, None].float() / 255.0
            prob = torch.sigmoid(self.logits(x))[:, 0]
            if tta == "hflip":
                flipped = torch.sigmoid(self.logits(x.flip(-1)))[:, 0].flip(-1)
                prob = (prob + flipped) / 2
        return prob

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The Runner interface: float32 (B, 1, S, S) numpy in [0, 1] -> float32 numpy logits."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self.logits(x).cpu().numpy()
