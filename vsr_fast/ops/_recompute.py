"""Backward by recomputation, shared by the ops whose forward is a chain of convolutions.

Only the op's inputs are saved; the backward pass re-runs an eager ATen version of the forward under
autograd and differentiates it. Correct by construction, and only one op's activations are alive at
a time. Inputs may be tensors, None, or lists of tensors (one needs_input_grad flag per input).
"""

import torch

__all__ = ["register_recompute_autograd", "setup_recompute", "recompute_backward"]


def setup_recompute(ctx, inputs):
    """setup_context body: save the tensor inputs, remembering which were None or lists."""
    flat, layout = [], []
    for item in inputs:
        if item is None:
            layout.append(None)
        elif isinstance(item, (list, tuple)):
            layout.append(len(item))
            flat += list(item)
        else:
            layout.append(-1)
            flat.append(item)
    ctx.save_for_backward(*flat)
    ctx.recompute_layout = layout


def recompute_backward(ctx, eager_fn, grad_out):
    """Gradients of eager_fn(*inputs) for the inputs that need them, in the inputs' structure."""
    saved = iter(ctx.saved_tensors)
    inputs = []
    for entry, need in zip(ctx.recompute_layout, ctx.needs_input_grad):
        if entry is None:
            inputs.append(None)
        elif entry == -1:
            inputs.append(next(saved).detach().requires_grad_(bool(need)))
        else:
            inputs.append([next(saved).detach().requires_grad_(bool(need)) for _ in range(entry)])
    wanted = [
        t
        for item in inputs
        if item is not None
        for t in (item if isinstance(item, list) else [item])
        if t.requires_grad
    ]
    if not wanted:
        return (None,) * len(inputs)
    with torch.enable_grad():
        grads = iter(torch.autograd.grad(eager_fn(*inputs), wanted, grad_out))
    result = []
    for item in inputs:
        if isinstance(item, list):
            result.append([next(grads) for _ in item] if item and item[0].requires_grad else None)
        else:
            result.append(next(grads) if item is not None and item.requires_grad else None)
    return tuple(result)


def register_recompute_autograd(op, eager_fn):
    """Register autograd for the op named `op` by recomputation: its inputs saved, its gradients those
    of eager_fn (an ATen version of its forward, taking the same inputs) re-run in backward."""

    def setup_context(ctx, inputs, output):
        setup_recompute(ctx, inputs)

    def backward(ctx, grad_out):
        return recompute_backward(ctx, eager_fn, grad_out)

    torch.library.register_autograd(op, backward, setup_context=setup_context)
