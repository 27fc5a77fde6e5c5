"""`medjax bench` rows of kind "dp_sgd": one DP-SGD training step, medjax against Opacus on the same model, weights
and batch, each also against its own non-private step.

The medjax side is what `medjax train` runs with `config.privacy.enabled`: the config's task and optimizer,
`medjax.train.steps.make_train_step` with `medjax.privacy.dpsgd.make_dp_grads` (per-example gradients by
`vmap(grad)`, clipping, one Gaussian draw per batch), jitted with the state donated. The torch side is the same
GroupNorm ResNet as an `nn.Module` (`torch_resnet`, weights converted from medjax's) wrapped in Opacus's
`GradSampleModule` (per-sample gradients by hooks) with its `DPOptimizer` (clipping to the same norm, noise of the
same multiplier, the same expected batch size) around `torch.optim.Adam`, eager or with its forward through
`torch.compile`. Every row of the batch is a real example on both sides (the timing does not depend on who was
sampled). The first step's loss must agree within 1e-4.

Besides the usual fields, each side's record has `nonprivate_train_step_s` (the same step without DP: medjax's
ordinary step, plain torch) and `dp_over_nonprivate`, the cost of privacy in each framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medjax.bench import bench as B


def torch_resnet(params: dict, stage_sizes: tuple[int, ...], num_groups: int = 8) -> Any:
    """medjax's basic-block ResNet with the small stem and GroupNorm (`medjax.models.resnet.ResNet`, norm="group")
    as a torch `nn.Module` holding `params`' values (Opacus needs modules to hook)."""
    import torch
    from torch import nn

    from medjax.bench.twins import torch_weights

    w = torch_weights(params)

    def conv(name: str, stride: int) -> nn.Conv2d:
        k = w[f"{name}/kernel"]
        m = nn.Conv2d(k.shape[1], k.shape[0], k.shape[-1], stride, k.shape[-1] // 2, bias=False)
        m.weight.data.copy_(k)
        return m

    def norm(name: str) -> nn.GroupNorm:
        scale = w[f"{name}/scale"]
        m = nn.GroupNorm(num_groups, scale.shape[0], eps=1e-5)
        m.weight.data.copy_(scale)
        m.bias.data.copy_(w[f"{name}/bias"])
        return m

    class Block(nn.Module):
        def __init__(self, name: str, stride: int):
            super().__init__()
            self.conv1, self.bn1 = conv(f"{name}/conv1", stride), norm(f"{name}/bn1")
            self.conv2, self.bn2 = conv(f"{name}/conv2", 1), norm(f"{name}/bn2")
            self.down = (nn.Sequential(conv(f"{name}/downsample_conv", stride), norm(f"{name}/downsample_bn"))
                         if f"{name}/downsample_conv/kernel" in w else None)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv("stem_conv", 1), norm("stem_bn"), nn.ReLU())
            self.blocks = nn.Sequential(*[Block(f"stage{i}_block{j}", 2 if i > 1 and j == 1 else 1)
                                          for i, n in enumerate(stage_sizes, start=1) for j in range(1, n + 1)])
            kernel = w["head/kernel"]
            self.head = nn.Linear(kernel.shape[1], kernel.shape[0])
            self.head.weight.data.copy_(kernel)
            self.head.bias.data.copy_(w["head/bias"])

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return Net()


def run_dp_case(case: B.Case, mode: str, warmup: int, repeats: int, frameworks=B.FRAMEWORKS, log=print,
                budget: B.CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    """Records for one DP-SGD row (float32: Opacus's per-sample gradients are float32)."""
    import jax
    import torch.nn.functional as F

    from medjax.privacy.dpsgd import make_dp_grads
    from medjax.tasks import make_task
    from medjax.train.optim import make_optimizer

    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
    except ImportError as e:
        raise B.BenchError("the DP-SGD rows compare against Opacus: pip install 'medjax[bench]'") from e
    budget = budget or B.CompileBudget()
    config = B.case_config(case, mode, "float32")
    batch = B.case_data(case, config, mode)
    n = len(batch["image"])
    batch["index"] = np.arange(n, dtype=np.int32)
    task = make_task(config, [f"class{i}" for i in range(case.num_classes)])
    tx = make_optimizer(config.optimizer, int(config.num_train_steps))
    variables = jax.jit(lambda: task.init_variables(jax.random.key(config.seed), batch["image"][:1]))()
    p = config.privacy
    sigma, clip = float(p.noise_multiplier), float(p.clip_norm)
    dp_grads = make_dp_grads(task, clip, sigma * clip, float(n))
    torch_batch = B.to_torch_layout(batch, False)
    common = dict(B._common(case, config, mode, warmup, repeats, "float32", batch), noise_multiplier=sigma,
                  clip_norm=clip, reference="opacus.GradSampleModule + opacus.optimizers.DPOptimizer")
    if precision != "float32":
        common["precision_note"] = f"DP-SGD rows run in float32 (asked: {precision})"

    def loss_fn(out, b):
        return F.cross_entropy(out.float(), b["label"])

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            rec = B.time_medjax(task, tx, variables, batch, warmup, repeats, dp_grads=dp_grads)
            plain = B.time_medjax(task, tx, variables, batch, warmup, repeats)
        else:
            params = jax.device_get(variables["params"])
            model = GradSampleModule(torch_resnet(params, tuple(config.model.stage_sizes)), loss_reduction="mean")

            def private(optimizer):
                return DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=n,
                                   loss_reduction="mean")

            rec = B.time_torch(lambda x, train: model.train(train)(x), list(model.parameters()), loss_fn,
                               torch_batch, config.optimizer, backend, warmup, repeats, wrap_optimizer=private)
            net = torch_resnet(params, tuple(config.model.stage_sizes))
            plain = B.time_torch(lambda x, train: net.train(train)(x), list(net.parameters()), loss_fn,
                                 torch_batch, config.optimizer, backend, warmup, repeats)
        rec["nonprivate_train_step_s"] = plain["train_step_s"]
        rec["dp_over_nonprivate"] = rec["train_step_s"] / plain["train_step_s"]
        return rec

    results = B.run_frameworks(case.name, n, common, frameworks, run, budget, log)
    B.check_losses(results)
    for fw, rec in results.items():
        if rec["status"] == "ok":
            log(f"  {case.name} {fw}: DP step / non-private step {rec['dp_over_nonprivate']:.2f}x")
    return [results[fw] for fw in frameworks]
