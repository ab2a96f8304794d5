"""What the autograd engine needs of a backward formula."""

import torch

_will_execute = getattr(torch._C, "_will_engine_execute_node", None)


def engine_needs(ctx) -> list:
    """Per input of the op whose backward is running: whether the running backward pass needs its gradient.

    ``ctx.needs_input_grad`` says which inputs required grad in the forward; an inner gradient
    (``torch.autograd.grad(loss, fast_weights)``) needs only those on a path to the requested tensors, and torch's
    own derivatives (C++) skip the rest. A formula asks the engine whether it will run the node an input's gradient
    goes to. Where the engine cannot say (a requested leaf under ``torch.autograd.grad``; no backward pass running,
    e.g. while torch.compile traces one) the input counts as needed.
    """
    needs = list(ctx.needs_input_grad)
    if _will_execute is None:
        return needs
    for i, (node, _) in enumerate(ctx.next_functions):
        if needs[i]:
            try:
                needs[i] = node is not None and _will_execute(node)
            except RuntimeError:
                pass
    return needs
