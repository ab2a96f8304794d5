"""A few float64 meta-training steps (second order, AdamW, global-norm clip) of a small TTT-E2E model, on one
process or under torchrun with a ttt_kernels.distributed strategy; rank 0 saves the final full parameters and the
global losses to OUT (torch.save). test_distributed.py runs it both ways and compares.

    python tests/distributed_worker.py OUT [CHECKPOINT]
    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT [CHECKPOINT] --strategy fsdp
"""

import argparse

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ttt_kernels import distributed
from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

BATCH, CONTEXT, STEPS = 4, 96, 3  # global batch; tokens per window (3 chunks of 32); steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("checkpoint", nargs="?", default="auto", help="meta_loss's checkpoint: auto, true, false")
    parser.add_argument("--strategy", default="ddp")
    args = parser.parse_args()
    world = distributed.world_from_env()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if world is not None:
        distributed.init_process_group(device, 120)
    torch.manual_seed(0)
    config = TTTE2EConfig.preset("tiny", num_layers=4, window=48, mini_batch_size=32, hidden_size=64, num_heads=2)
    model = TTTE2EModel(config).double()
    step_module = model if world is None else distributed.wrap(model, args.strategy, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    tokens = torch.randint(
        0, config.vocab_size, (STEPS, BATCH, CONTEXT + 1), generator=torch.Generator().manual_seed(1)
    )
    rows, _ = distributed.share(tokens.transpose(0, 1), world)  # this rank's sequences of every step
    checkpoint = {"auto": "auto", "true": True, "false": False}[args.checkpoint]
    losses = []
    for step in range(STEPS):
        loss, _ = step_module(rows[:, step], 0.5, checkpoint=checkpoint)
        loss.backward()
        norm = distributed.local_value(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05))
        loss = loss.detach()
        if world is not None:
            dist.all_reduce(loss)
            loss /= world.size
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert norm.item() > 0.05, "the clip must act, or a wrong (e.g. local) norm would pass unnoticed"
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world is None or world.is_main:
        torch.save({"losses": losses, "state": state}, args.out)
    if world is not None:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
